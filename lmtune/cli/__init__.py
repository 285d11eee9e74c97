"""The `lmtune` command: main.py builds its parser from the command groups (train, tune, infer,
report, data, reference: one module each, registering and holding its commands; common.py what they
share) and runs a command; `main` is the console script's entry point (lmtune = "lmtune.cli:main")
and what python -m lmtune runs."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
