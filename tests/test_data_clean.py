"""Each cleaning rule on a small hand-made table, and `lmtune data clean` leaving its input alone."""

from __future__ import annotations

import json

from lmtune.cli import main
from lmtune.data.clean import CleanOptions, clean_rows, clean_text


def _clean(texts, labels=None, **options):
    rows = [{"text": t, **({"label": labels[i]} if labels else {})} for i, t in enumerate(texts)]
    return clean_rows(rows, list(range(2, len(rows) + 2)), "text", "label" if labels else None, CleanOptions(**options))


def test_text_rules():
    assert clean_text("ﬁne\u00a0 \t film", CleanOptions()) == "fine film"  # NFKC ligature and no-break space
    assert clean_text("<p>Tom &amp; Jerry</p>", CleanOptions(strip_html=True)) == "Tom & Jerry"
    assert clean_text("<p>x</p>", CleanOptions()) == "<p>x</p>"  # HTML only when asked
    assert clean_text("Loud TEXT", CleanOptions(lowercase=True)) == "loud text"


def test_empty_and_length_range():
    out = _clean(["", "   ", "ab", "abcd", "abcdefgh"], min_chars=3, max_chars=6)
    assert [r["text"] for r in out.rows] == ["abcd"]
    assert [(d["line"], d["reason"]) for d in out.dropped] == [(2, "empty"), (3, "empty"), (4, "too_short"), (6, "too_long")]


def test_exact_and_normalised_duplicates_keep_the_first():
    texts = ["Good film", "Good film", "good   FILM", "other"]
    assert [r["text"] for r in _clean(texts).rows] == ["Good film", "good FILM", "other"]
    assert [r["text"] for r in _clean(texts, dedupe="normalised").rows] == ["Good film", "other"]
    assert len(_clean(texts, dedupe="none").rows) == 4


def test_conflicting_labels_dropped_or_resolved_by_majority():
    texts = ["a b", "A  b", "a b", "c", "d", "D"]
    labels = ["pos", "neg", "pos", "neg", "pos", "neg"]
    dropped = _clean(texts, labels, dedupe="none")
    assert [r["text"] for r in dropped.rows] == ["c"]
    assert dropped.summary()["dropped_by_reason"] == {"conflicting_labels": 5}
    majority = _clean(texts, labels, conflicts="majority", dedupe="none")
    # "a b": pos 2 vs neg 1 -> the neg copy goes; "d": a tie -> both go
    assert [(r["text"], r["label"]) for r in majority.rows] == [("a b", "pos"), ("a b", "pos"), ("c", "neg")]
    assert majority.summary()["dropped_by_reason"] == {"minority_label": 3}
    assert len(_clean(texts, labels, conflicts="keep", dedupe="none").rows) == 6


def test_command_writes_the_cleaned_file_and_dropped_rows_with_reasons(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [{"text": " x  y ", "label": "a"}, {"text": "", "label": "a"}, {"text": "x y", "label": "a"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = src.read_bytes()
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "out" / "clean.jsonl")]) == 0
    assert src.read_bytes() == before
    kept = [json.loads(line) for line in (tmp_path / "out" / "clean.jsonl").read_text().splitlines()]
    assert kept == [{"text": "x y", "label": "a"}]
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["line"], d["reason"]) for d in dropped] == [(2, "empty"), (3, "duplicate")]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dropped_by_reason"] == {"duplicate": 1, "empty": 1}
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "out" / "clean.jsonl")]) == 2  # no silent overwrite


def test_training_run_cleans_before_the_split_and_records_what_it_dropped(tiny_bert, tmp_path):
    import csv

    import lmtune

    from .conftest import write_sentiment

    src = write_sentiment(tmp_path / "raw.csv", 60, seed=4)
    with open(src, "a", newline="") as f:  # an empty text, a duplicate, and a text with both labels
        w = csv.writer(f)
        w.writerows([["", "positive"], ["good film", "positive"], ["good film", "positive"],
                     ["odd one", "positive"], ["Odd  one", "negative"]])
    before = src.read_bytes()
    result = lmtune.train({
        "model": str(tiny_bert), "output_dir": str(tmp_path / "run"),
        "data": {"train": str(src), "max_length": 32, "clean": {"dedupe": "normalised"}},
        "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
    }, progress=False)
    assert src.read_bytes() == before
    record = json.loads((result.output_dir / "data.json").read_text())
    reasons = record["prep"]["clean"]["dropped_by_reason"]
    assert reasons["empty"] == 1 and reasons["conflicting_labels"] == 2 and reasons["duplicate"] >= 1
    dropped = [json.loads(line) for line in (result.output_dir / "dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == record["prep"]["clean"]["dropped"] and all({"line", "reason", "row"} <= set(d) for d in dropped)
    assert record["examples"]["train"] + record["examples"]["validation"] == 65 - len(dropped)
