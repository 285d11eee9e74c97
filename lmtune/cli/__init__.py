"""The `lmtune` command: its parser and commands are in main.py; `main` is the console script's
entry point (lmtune = "lmtune.cli:main") and what python -m lmtune runs."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
