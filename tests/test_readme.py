"""The README's commands name files that ship with the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_examples_path_in_the_readme_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"(?<![\w./])(examples/[\w./-]+\.(?:ya?ml|csv|tsv|jsonl|json|txt|conll))", text))
    assert "examples/data/sentiment/reviews.txt" in paths
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"README names files that do not exist: {missing}"


def test_the_readme_calls_lmtune_one_way():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.findall(r"\.venv/bin/lmtune \w", text)
