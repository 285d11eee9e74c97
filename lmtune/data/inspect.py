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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LmtuneError
from .readers import Table, _read_delimited, _read_json, _read_jsonl, detect_format

IMBALANCE = 3.0  # largest / smallest class above this: a warning
MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]|â€[\u0080-\u00bf™œž˜šŸ“”•–—]")
PERCENTILES = (50, 90, 99)


def normalise(text: str) -> str:
    """The form under which two texts count as the same: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _control_characters(text: str) -> int:
    return sum(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text)


def read_for_inspection(path: str | Path, fmt: str = "auto") -> tuple[Table, list[int]]:
    """The table, reading bytes that are not UTF-8 as replacement characters, and the lines
    (1-based) that held such bytes."""
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(f"{path}: file not found")
    data = path.read_bytes()
    bad_lines = []
    for n, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.append(n)
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    kind = detect_format(path, fmt)
    readers = {"csv": lambda: _read_delimited(path, text, ","), "tsv": lambda: _read_delimited(path, text, "\t"),
               "jsonl": lambda: _read_jsonl(path, text), "json": lambda: _read_json(path, text)}
    if kind not in readers:
        raise LmtuneError(f"{path}: data inspect reads CSV, TSV, JSONL and JSON files, not {kind}")
    table = readers[kind]()
    if not table.rows:
        raise LmtuneError(f"{path}: no examples in the file")
    return table, bad_lines


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    out = {"min": int(a.min()), "mean": round(float(a.mean()), 1)}
    out.update({f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES})
    out["max"] = int(a.max())
    return out


def inspect_file(
    path: str | Path, *, text_column: str = "text", label_column: str | None = None, tokenizer: Any = None,
    max_length: int | None = None, fmt: str = "auto",
) -> dict[str, Any]:
    """The report as a dict (what `lmtune data inspect --json` prints)."""
    table, bad_lines = read_for_inspection(path, fmt)
    if label_column is None and "label" in table.columns:
        label_column = "label"
    table.require_columns(text_column, label_column)
    texts = [r.get(text_column) for r in table.rows]
    texts = ["" if t is None else str(t) for t in texts]
    labels = [str(r.get(label_column)) for r in table.rows] if label_column else None

    empty = [table.lines[i] for i, t in enumerate(texts) if not t.strip()]
    exact = Counter(t for t in texts if t.strip())
    norm = Counter(normalise(t) for t in texts if t.strip())
    report: dict[str, Any] = {
        "file": str(path),
        "rows": len(table),
        "columns": table.columns,
        "text_column": text_column,
        "empty_texts": len(empty),
        "exact_duplicates": sum(c - 1 for c in exact.values()),
        "normalised_duplicates": sum(c - 1 for c in norm.values()),
    }
    warnings = []
    if empty:
        warnings.append(f"{len(empty)} empty text(s), first at line {empty[0]}")
    if labels is not None:
        by_text: dict[str, set[str]] = defaultdict(set)
        for t, label in zip(texts, labels):
            if t.strip():
                by_text[normalise(t)].add(label)
        conflicts = [k for k, v in by_text.items() if len(v) > 1]
        counts = Counter(labels)
        report["label_column"] = label_column
        report["conflicting_texts"] = len(conflicts)
        report["conflicting_rows"] = sum(1 for t in texts if t.strip() and normalise(t) in set(conflicts))
        report["labels"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        ratio = max(counts.values()) / min(counts.values())
        report["imbalance"] = round(ratio, 2)
        if ratio > IMBALANCE:
            big, small = max(counts, key=counts.get), min(counts, key=counts.get)
            warnings.append(f"imbalanced labels: {big!r} has {ratio:.1f}x the examples of {small!r}")
        if conflicts:
            warnings.append(f"{len(conflicts)} text(s) appear with different labels")
    report["chars"] = _spread([len(t) for t in texts])
    if tokenizer is not None:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        report["tokens"] = _spread(lengths)
        if max_length:
            report["max_length"] = max_length
            report["over_max_length"] = sum(n > max_length for n in lengths)
            if report["over_max_length"]:
                warnings.append(f"{report['over_max_length']} text(s) longer than max_length={max_length} tokens")
    control = [table.lines[i] for i, t in enumerate(texts) if _control_characters(t)]
    mojibake = [table.lines[i] for i, t in enumerate(texts) if MOJIBAKE.search(t)]
    report["encoding"] = {"non_utf8_lines": len(bad_lines), "control_character_rows": len(control),
                          "mojibake_rows": len(mojibake)}
    for name, lines in (("line(s) are not UTF-8", bad_lines), ("row(s) hold control characters", control),
                        ("row(s) look like mojibake (UTF-8 read as Latin-1)", mojibake)):
        if lines:
            warnings.append(f"{len(lines)} {name}, first at line {lines[0]}")
    report["warnings"] = warnings
    return report


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
            rows.append((f"length in {unit}", f"min {s['min']}, p50 {s['p50']:g}, p90 {s['p90']:g}, p99 {s['p99']:g}, max {s['max']}"))
    if "over_max_length" in report:
        rows.append((f"longer than {report['max_length']} tokens", report["over_max_length"]))
    e = report["encoding"]
    rows.append(("encoding", f"{e['non_utf8_lines']} non-UTF-8 lines, {e['control_character_rows']} rows with control "
                             f"characters, {e['mojibake_rows']} with mojibake"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
