"""The data commands read a file one row at a time: their memory grows by a few bytes per row,
not by the file's size."""

from __future__ import annotations

import csv
import random
import tracemalloc

import pytest

from lmtune.cli import main
from lmtune.data.clean import CleanOptions, clean_file
from lmtune.data.inspect import inspect_file
from lmtune.data.readers import RowReader, read_table
from lmtune.data.split import split_file


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """4,000 rows of about 2,600 characters: a 10 MB file."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    rng = random.Random(0)
    words = [f"word{i}" for i in range(5000)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(4_000):
            w.writerow([" ".join(rng.choice(words) for _ in range(300)), "pos" if i % 3 else "neg"])
        w.writerow(["word1 " * 120, "pos"])  # one duplicate, so the decisions have something to do
    return path


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_clean_split_inspect_and_augment_hold_keys_not_rows(big_csv, tmp_path):
    small = tmp_path / "small.csv"  # a first run on a small file, so that imports are not counted
    small.write_text("text,label\na b,pos\nc d,neg\ne f,pos\ng h,neg\n")
    clean_file(small, tmp_path / "c0.csv", tmp_path / "d0.jsonl", "text", None, CleanOptions())
    split_file(small, tmp_path / "s0", (0.5, 0.5))
    inspect_file(small)
    main(["data", "augment", str(small), "-o", str(tmp_path / "a0.csv")])
    size = big_csv.stat().st_size
    assert size > 10e6
    (summary, rows), peak = _peak(lambda: clean_file(big_csv, tmp_path / "c.csv", tmp_path / "d.jsonl", "text", None,
                                                     CleanOptions()))
    assert rows == 4_001 and summary["kept"] == rows - summary["dropped"]
    assert peak < size / 5, f"clean: {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
    report, peak = _peak(lambda: split_file(big_csv, tmp_path / "s", (0.9, 0.1)))
    assert report["train"]["rows"] + report["validation"]["rows"] == 4_001
    assert peak < size / 5, f"split: {peak / 1e6:.1f} MB"
    report, peak = _peak(lambda: inspect_file(big_csv))
    assert report["rows"] == 4_001 and report["labels"] == {"pos": 2_667, "neg": 1_334}
    assert peak < size / 5, f"inspect: {peak / 1e6:.1f} MB"
    code, peak = _peak(lambda: main(["data", "augment", str(big_csv), "-o", str(tmp_path / "a.csv"), "--p-delete", "0.2"]))
    assert code == 0 and peak < size / 5, f"augment: {peak / 1e6:.1f} MB"
    _, peak = _peak(lambda: read_table(big_csv))  # what training does: every row in memory
    assert peak > size / 2  # (the measure above can see a whole file)


def test_the_row_reader_gives_the_rows_and_lines_of_the_whole_file_reader(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes('\ufefftext,label\n"two\nlines",a\n\nplain,b\r\n"say ""hi""",a\n'.encode())
    reader = RowReader(path)
    assert reader.columns == ["text", "label"]  # known before any row is read
    rows = list(reader)
    assert rows == [(2, {"text": "two\nlines", "label": "a"}), (5, {"text": "plain", "label": "b"}),
                    (6, {"text": 'say "hi"', "label": "a"})]
    assert list(reader) == rows  # a second pass reads the file again
    table = read_table(path)
    assert table.lines == [2, 5, 6] and table.rows == [r for _, r in rows]
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    reader = RowReader(bad, replace_bad_bytes=True)
    assert [r["text"] for _, r in reader] == ["ok", "caf\ufffd"] and reader.bad_lines == [2]
