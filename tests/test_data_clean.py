"""Each cleaning rule on a small hand-made table, and `lmtune data clean` leaving its input alone."""

from __future__ import annotations

import json

import pytest

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
    dropped = [json.loads(line) for line in (tmp_path / "out" / "clean.dropped.jsonl").read_text().splitlines()]
    assert [(d["line"], d["reason"]) for d in dropped] == [(2, "empty"), (3, "duplicate")]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dropped_by_reason"] == {"duplicate": 1, "empty": 1}
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "out" / "clean.jsonl")]) == 2  # no silent overwrite


def test_two_files_cleaned_into_one_folder_keep_their_own_dropped_rows(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("text,label\nx,p\n,p\n")
    b.write_text("text,label\ny,n\ny,n\n")
    assert main(["data", "clean", str(a), "-o", str(tmp_path / "c1.csv")]) == 0
    assert main(["data", "clean", str(b), "-o", str(tmp_path / "c2.csv")]) == 0
    capsys.readouterr()
    assert [json.loads(x)["reason"] for x in (tmp_path / "c1.dropped.jsonl").read_text().splitlines()] == ["empty"]
    assert [json.loads(x)["reason"] for x in (tmp_path / "c2.dropped.jsonl").read_text().splitlines()] == ["duplicate"]
    assert not (tmp_path / "dropped.jsonl").exists()


@pytest.mark.parametrize("content, expected", [
    ("review,label\nx,p\n", "'text'"),       # a missing column
    ("", "the file is empty"),                   # an empty file
    ("text,label\n", "no examples"),            # a header alone
    (b"text,label\ncaf\xe9,p\n", "UTF-8"),    # bad encoding
])
def test_input_problems_come_before_an_output_that_exists(tmp_path, capsys, content, expected):
    src = tmp_path / "in.csv"
    (src.write_bytes if isinstance(content, bytes) else src.write_text)(content)
    out = tmp_path / "c.csv"
    out.write_text("old\n")
    (tmp_path / "c.dropped.jsonl").write_text("old\n")
    assert main(["data", "clean", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "exists" not in err, err
    assert len(err.splitlines()) == 1
    assert out.read_text() == "old\n" and (tmp_path / "c.dropped.jsonl").read_text() == "old\n"
    # with --overwrite the input problem is still what is reported, and nothing is replaced
    assert main(["data", "clean", str(src), "-o", str(out), "--overwrite"]) == 2
    assert expected in capsys.readouterr().err
    assert out.read_text() == "old\n"


def test_an_existing_dropped_file_is_an_error_after_the_input_is_checked(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("text,label\nx,p\n")
    (tmp_path / "c.dropped.jsonl").write_text("old\n")
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("c.dropped.jsonl exists; use --overwrite to replace it") and len(err.splitlines()) == 1
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "c.csv"), "--overwrite"]) == 0
    assert (tmp_path / "c.dropped.jsonl").read_text() == ""


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


def test_mojibake_is_repaired_only_when_asked_and_counted():
    texts = ["CafÃ© au lait", "donâ€™t stop", "plain text"]
    out = _clean(texts, fix_mojibake=True)
    assert [r["text"] for r in out.rows] == ["Café au lait", "don’t stop", "plain text"]
    assert out.summary()["mojibake_repaired"] == 2 and out.summary()["texts_changed"] == 2
    plain = _clean(texts)  # (NFKC alone would turn "â€™" into "â€TM", beyond repair: the repair comes first)
    assert plain.rows[0]["text"] == "CafÃ© au lait" and plain.summary()["mojibake_repaired"] == 0
    # repaired first: a mojibake copy of a text is then its duplicate
    assert [r["text"] for r in _clean(["café", "cafÃ©"], fix_mojibake=True).rows] == ["café"]


def test_clean_command_repairs_mojibake_and_its_help_states_the_defaults(tmp_path, capsys):
    import pytest

    src = tmp_path / "in.csv"
    src.write_text("text,label\nCafÃ© au lait,a\nplain,b\n", encoding="utf-8")
    out = tmp_path / "clean.csv"
    assert main(["data", "clean", str(src), "-o", str(out), "--fix-mojibake"]) == 0
    captured = capsys.readouterr()
    assert out.read_text(encoding="utf-8").splitlines() == ["text,label", "Café au lait,a", "plain,b"]
    assert json.loads(captured.out.strip().splitlines()[-1])["mojibake_repaired"] == 1
    assert "(1 with mojibake repaired)" in captured.err
    with pytest.raises(SystemExit):
        main(["data", "clean", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "By default: Unicode NFKC, whitespace collapsed, empty texts dropped" in text
    assert "exact (the default)" in text and "drop every copy (the default)" in text and "--fix-mojibake" in text


def test_fix_mojibake_is_a_data_clean_key(capsys):
    from lmtune.core.config import CleanConfig

    assert CleanOptions(**CleanConfig().model_dump()) == CleanOptions()  # the config and the options agree
    assert main(["keys"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data.clean.fix_mojibake "))
    assert line.split()[1] == "False"
