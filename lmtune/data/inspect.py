"""`lmtune data inspect`: what is in a data file before training on it.

Counts rows, empty texts, exact and normalised duplicates (NFKC, case-folded, whitespace
collapsed), texts that carry conflicting labels, the label distribution (with a warning when the
largest class is more than `IMBALANCE` times the smallest), lengths in characters and, with a
tokenizer, in tokens (percentiles, and how many exceed max_length), and encoding problems: lines
that are not UTF-8 (read with replacement characters so the rest can be inspected), control
characters and mojibake (UTF-8 read as Latin-1/CP-1252, such as "Ã©" or "â€™").
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import LmtuneError
from .keys import digest, normalise, votes
from .readers import RowReader

__all__ = ["inspect_file", "normalise", "render"]

IMBALANCE = 3.0  # largest / smallest class above this: a warning
MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]|â€[\u0080-\u00bf™œž˜šŸ“”•–—]")
PERCENTILES = (50, 90, 99)
TOKENIZE_CHUNK = 1000


def _control_characters(text: str) -> int:
    return sum(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text)


def _spread(values: Any) -> dict[str, float]:
    """min, mean, percentiles and max of lengths; a length is a whole number of characters or tokens, so
    the percentiles are rounded (half up) to one."""
    a = np.asarray(values)
    if not a.size:
        return {}
    out: dict[str, float] = {"min": int(a.min()), "mean": round(float(a.mean()), 1)}
    out.update({f"p{p}": int(np.floor(np.percentile(a, p) + 0.5)) for p in PERCENTILES})
    out["max"] = int(a.max())
    return out


class _Found:
    """How many rows have something, and the first line with it."""

    def __init__(self) -> None:
        self.count, self.first = 0, 0

    def add(self, line: int) -> None:
        self.count += 1
        self.first = self.first or line


class _Tally:
    """What inspect_file keeps of the rows it has read: per row, hashes of its text (exact and
    normalised), its label, its length in characters (and tokens), and the lines of the first row
    with an empty text, control characters or mojibake."""

    def __init__(self, text_column: str, label_key: str, tokenizer: Any) -> None:
        self.text_column, self.label_key, self.tokenizer = text_column, label_key, tokenizer
        self.exact, self.norm, self.chars, self.labels_of_texts = array("Q"), array("Q"), array("i"), array("i")
        self.labels: array = array("i")
        self.label_ids: dict[str, int] = {}
        self.tokens: array = array("i")
        self.pending: list[str] = []
        self.empty, self.control, self.mojibake = _Found(), _Found(), _Found()
        self.rows = 0

    def add(self, line: int, row: dict[str, Any]) -> None:
        self.rows += 1
        t = row.get(self.text_column)
        t = "" if t is None else str(t)
        label = self.label_ids.setdefault(str(row.get(self.label_key)), len(self.label_ids))
        self.labels.append(label)
        self.chars.append(len(t))
        if t.strip():
            self.exact.append(digest(t))
            self.norm.append(digest(normalise(t)))
            self.labels_of_texts.append(label)
        else:
            self.empty.add(line)
        if _control_characters(t):
            self.control.add(line)
        if MOJIBAKE.search(t):
            self.mojibake.add(line)
        if self.tokenizer is not None:
            self.pending.append(t)
            if len(self.pending) >= TOKENIZE_CHUNK:
                self.tokenize()

    def tokenize(self) -> None:
        """The lengths in tokens of the texts read since the last call."""
        if self.pending:
            self.tokens.extend(len(ids) for ids in self.tokenizer(self.pending, truncation=False, verbose=False)["input_ids"])
            self.pending.clear()


def inspect_file(
    path: str | Path, *, text_column: str = "text", label_column: str | None = None, tokenizer: Any = None,
    max_length: int | None = None, fmt: str = "auto", columns: list[str] | None = None,
) -> dict[str, Any]:
    """The report as a dict (what `lmtune data inspect --json` prints). The file is read one row at
    a time (a JSON list whole); per row only its keys and lengths are kept. `columns`: the column
    names of a CSV or TSV file without a header."""
    reader = RowReader(path, fmt, replace_bad_bytes=True, columns=columns)
    if reader.columns:  # CSV, TSV: the header says at once
        reader.require_columns(text_column, label_column, keys=("text_column", "label_column"))
    label_key = label_column or "label"
    tally = _Tally(text_column, label_key, tokenizer)
    for line, row in reader:
        tally.add(line, row)
    if tokenizer is not None:
        tally.tokenize()
    if not tally.rows:
        raise LmtuneError(f"{reader.path}: no examples in the file")
    if label_column is None and label_key in reader.columns:
        label_column = label_key
    reader.require_columns(text_column, label_column, keys=("text_column", "label_column"))

    exact_keys, norm_keys = np.frombuffer(tally.exact, np.uint64), np.frombuffer(tally.norm, np.uint64)
    empty = tally.empty
    report: dict[str, Any] = {
        "file": str(path),
        "rows": tally.rows,
        "columns": reader.columns,
        "text_column": text_column,
        "empty_texts": empty.count,
        "exact_duplicates": int(exact_keys.size - np.unique(exact_keys).size),
        "normalised_duplicates": int(norm_keys.size - np.unique(norm_keys).size),
    }
    warnings = []
    if empty.count:
        warnings.append(f"{empty.count} empty text(s), first at line {empty.first}")
    if label_column is not None:
        _report_labels(report, warnings, tally, label_column, norm_keys)
    report["chars"] = _spread(np.frombuffer(tally.chars, np.int32))
    if tokenizer is not None:
        _report_tokens(report, warnings, tally, max_length)
    _report_encoding(report, warnings, tally, reader.bad_lines)
    report["warnings"] = warnings
    return report


def _report_labels(report: dict[str, Any], warnings: list[str], tally: _Tally, label_column: str,
                   norm_keys: np.ndarray) -> None:
    """The labels' counts and imbalance, and the texts that appear with different labels."""
    names = list(tally.label_ids)
    v = votes(norm_keys, np.frombuffer(tally.labels_of_texts, np.int32))
    counts = np.bincount(np.frombuffer(tally.labels, np.int32), minlength=len(names))
    by_name = {names[i]: int(c) for i, c in enumerate(counts) if c}
    report["label_column"] = label_column
    report["conflicting_texts"] = int((v.labels_per_key > 1).sum())
    report["conflicting_rows"] = int((v.labels_per_key[v.group] > 1).sum())
    report["labels"] = dict(sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0])))
    ratio = max(by_name.values()) / min(by_name.values())
    report["imbalance"] = round(ratio, 2)
    if ratio > IMBALANCE:
        big, small = max(by_name, key=by_name.get), min(by_name, key=by_name.get)
        warnings.append(f"imbalanced labels: {big!r} has {ratio:.1f}x the examples of {small!r}")
    if report["conflicting_texts"]:
        warnings.append(f"{report['conflicting_texts']} text(s) appear with different labels")


def _report_tokens(report: dict[str, Any], warnings: list[str], tally: _Tally, max_length: int | None) -> None:
    """The spread of the lengths in tokens, and how many are over max_length."""
    lengths = np.frombuffer(tally.tokens, np.int32)
    report["tokens"] = _spread(lengths)
    if max_length:
        report["max_length"] = max_length
        report["over_max_length"] = int((lengths > max_length).sum())
        if report["over_max_length"]:
            warnings.append(f"{report['over_max_length']} text(s) longer than max_length={max_length} tokens")


def _report_encoding(report: dict[str, Any], warnings: list[str], tally: _Tally, bad: list[int]) -> None:
    """Lines that are not UTF-8, rows with control characters or mojibake."""
    control, mojibake = tally.control, tally.mojibake
    report["encoding"] = {"non_utf8_lines": len(bad), "control_character_rows": control.count,
                          "mojibake_rows": mojibake.count}
    for name, count, first in (("line(s) are not UTF-8", len(bad), bad[0] if bad else 0),
                               ("row(s) hold control characters", control.count, control.first),
                               ("row(s) look like mojibake (UTF-8 read as Latin-1)", mojibake.count, mojibake.first)):
        if count:
            warnings.append(f"{count} {name}, first at line {first}")


def render(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    rows = [("file", report["file"]), ("rows", report["rows"]), ("empty texts", report["empty_texts"]),
            ("exact duplicates", report["exact_duplicates"]),
            ("normalised duplicates", report["normalised_duplicates"])]
    if "labels" in report:
        rows.append(("texts with conflicting labels", f"{report['conflicting_texts']} ({report['conflicting_rows']} rows)"))
        total = report["rows"]
        rows += [(f"  label {k}", f"{v} ({v / total:.1%})") for k, v in report["labels"].items()]
    for unit in ("chars", "tokens"):
        if report.get(unit):
            s = report[unit]
            rows.append((f"length in {unit}", f"min {s['min']}, p50 {s['p50']}, p90 {s['p90']}, p99 {s['p99']}, max {s['max']}"))
    if "over_max_length" in report:
        rows.append((f"longer than {report['max_length']} tokens", report["over_max_length"]))
    e = report["encoding"]
    rows.append(("encoding", f"{e['non_utf8_lines']} non-UTF-8 lines, {e['control_character_rows']} rows with control "
                             f"characters, {e['mojibake_rows']} with mojibake"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
