"""The forgetting check's text: the general text that ships with lmtune reads as passages, a user's
own .txt or .jsonl text too, and a bad one is a one-line error naming the file (and line)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from lmtune.core.errors import LmtuneError
from lmtune.training import forgetting

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_text_reads_as_many_passages_of_plain_prose():
    path = forgetting.text_path(True)
    assert path is not None and path.is_file()
    passages = forgetting.read_passages(path)
    assert len(passages) >= 100
    assert len(set(passages)) == len(passages)
    assert all(40 <= len(p.split()) <= 90 for p in passages)
    assert all(p.isascii() and "<" not in p and "#" not in p for p in passages)


def test_the_shipped_text_is_in_the_wheel():
    """pyproject.toml's package data names the shipped text (else an installed lmtune lacks it)."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = forgetting.text_path(True).relative_to(ROOT / "lmtune")
    assert any(shipped.match(pattern) for pattern in package_data.get("lmtune", []))


def test_false_is_no_text_and_a_path_is_that_file(tmp_path):
    assert forgetting.text_path(False) is None
    own = tmp_path / "mine.txt"
    own.write_text("first passage\n\n  second passage  \n")
    assert forgetting.text_path(str(own)) == own
    assert forgetting.read_passages(own) == ["first passage", "second passage"]


def test_a_missing_file_names_the_key_and_the_path(tmp_path):
    with pytest.raises(LmtuneError) as e:
        forgetting.text_path(str(tmp_path / "nowhere.txt"))
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith(f"eval.forgetting: {tmp_path / 'nowhere.txt'}: file not found")


def test_jsonl_reads_the_text_field_and_a_bad_line_is_named(tmp_path):
    good = tmp_path / "general.jsonl"
    good.write_text('{"text": "one"}\n\n{"text": "two", "source": "x"}\n')
    assert forgetting.read_passages(good) == ["one", "two"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "one"}\n{"text": "two"\n')
    with pytest.raises(LmtuneError, match=rf"^{re.escape(str(broken))}:2: invalid JSON"):
        forgetting.read_passages(broken)
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(LmtuneError, match=rf"^{re.escape(str(no_text))}:2: expected a JSON object with a \"text\" string"):
        forgetting.read_passages(no_text)


def test_other_kinds_and_empty_files_are_refused(tmp_path):
    csv = tmp_path / "general.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(LmtuneError, match=r"expected \.txt \(one passage a line\) or \.jsonl"):
        forgetting.read_passages(csv)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(LmtuneError, match=rf"^eval.forgetting: {re.escape(str(empty))}: no passages"):
        forgetting.read_passages(empty)


def test_change_is_relative_to_the_base_perplexity():
    assert forgetting.change(10.0, 13.5) == pytest.approx(0.35)
    assert forgetting.change(20.0, 15.0) == pytest.approx(-0.25)
    assert forgetting.change(7.0, 7.0) == 0.0
    with pytest.raises(ValueError):
        forgetting.change(0.0, 5.0)
