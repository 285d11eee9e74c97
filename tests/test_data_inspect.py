"""`lmtune data inspect` against a hand-counted file."""

from __future__ import annotations

import json

import pytest

from lmtune.cli import main
from lmtune.data.inspect import inspect_file, normalise, render

# line: 2 dup-of-4 (normalised), 3 conflicting label, 4 exact dup of 2, 5 empty, 7 mojibake, 8 control char,
# 9 not UTF-8
ROWS = (
    b"text,label\n"
    b"Good movie,pos\n"
    b"good  MOVIE,neg\n"
    b"Good movie,pos\n"
    b",neg\n"
    b"Bad film,neg\n"
    + "CafÃ© was nice,pos\n".encode()
    + b"ctrl\x07char,pos\n"
    b"\xff\xfe bad bytes,pos\n"
    b"fine,pos\n"
    b"great,pos\n"
    b"lovely,pos\n"
    b"superb,pos\n"
)


@pytest.fixture
def messy(tmp_path):
    path = tmp_path / "messy.csv"
    path.write_bytes(ROWS)
    return path


def test_counts_match_the_hand_counted_file(messy, tiny_bert):
    from transformers import AutoTokenizer

    report = inspect_file(messy, tokenizer=AutoTokenizer.from_pretrained(tiny_bert), max_length=4)
    assert report["rows"] == 12 and report["empty_texts"] == 1
    assert report["exact_duplicates"] == 1  # "Good movie" twice
    assert report["normalised_duplicates"] == 2  # and "good  MOVIE"
    assert report["conflicting_texts"] == 1 and report["conflicting_rows"] == 3
    assert report["labels"] == {"pos": 9, "neg": 3} and report["imbalance"] == 3.0
    assert report["encoding"] == {"non_utf8_lines": 1, "control_character_rows": 1, "mojibake_rows": 1}
    assert report["chars"]["min"] == 0 and report["chars"]["max"] == len("CafÃ© was nice")
    # the tiny tokenizer knows few words: every word is one token, [CLS] and [SEP] add two
    assert report["tokens"]["max"] == 5 and report["over_max_length"] == 1
    assert any("line 9" in w for w in report["warnings"]) and any("line 5" in w for w in report["warnings"])
    assert not any("imbalanced" in w for w in report["warnings"])  # 3.0 is not above the threshold


def test_length_percentiles_are_whole_numbers(messy):
    # the lengths in characters: 0 4 5 6 6 8 9 10 10 11 12 14 (line 9's two bad bytes read as two characters);
    # interpolated, p50 8.5, p90 11.9 and p99 13.78: rounded half up to whole characters
    report = inspect_file(messy)
    chars = report["chars"]
    assert (chars["p50"], chars["p90"], chars["p99"]) == (9, 12, 14)
    assert all(type(chars[k]) is int for k in ("min", "p50", "p90", "p99", "max"))
    line = next(line for line in render(report).splitlines() if line.startswith("length in chars"))
    assert line.split(None, 3)[3] == "min 0, p50 9, p90 12, p99 14, max 14"


def test_imbalance_warning_and_normalisation(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": "a" if i < 8 else "b"}) + "\n" for i in range(10)))
    report = inspect_file(path)
    assert report["imbalance"] == 4.0 and any("imbalanced labels: 'a' has 4.0x" in w for w in report["warnings"])
    assert normalise("  Ｆｕｌｌ   WIDTH ") == "full width"


def test_command_prints_a_table_or_json_and_names_missing_columns(messy, capsys):
    assert main(["data", "inspect", str(messy)]) == 0
    out = capsys.readouterr().out
    assert "exact duplicates" in out and "warning: 1 line(s) are not UTF-8, first at line 9" in out
    assert main(["data", "inspect", str(messy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 12
    assert main(["data", "inspect", str(messy), "--text-column", "review"]) == 2
    assert "no column 'review'; columns are: text, label" in capsys.readouterr().err
