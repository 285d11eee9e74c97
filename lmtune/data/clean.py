"""Cleaning a table of texts: normalise, then drop what should not be trained on, saying why.

Text changes (in order): mojibake repaired with ftfy (optional: UTF-8 that was read as
Latin-1/CP-1252, "cafÃ©" back to "café"), HTML tags stripped and entities unescaped (optional),
Unicode NFKC, lower case (optional), whitespace collapsed. Then rows are dropped, each with its reason: an empty
text (`empty`), a text outside the length range (`too_short`, `too_long`), a text whose copies
carry different labels (`conflicting_labels` when conflicts are dropped; `minority_label` for the
copies outvoted under `majority`, all copies on a tie), and repeated texts after the first
(`duplicate`, exact or normalised). The input file is never changed.
"""

from __future__ import annotations

import html
import re
import unicodedata
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ftfy
import numpy as np

from ..core.errors import LmtuneError
from ..core.rundir import check_output
from .keys import digest, normalise, votes
from .readers import RowReader
from .writers import RowWriter

TAG = re.compile(r"<[^>]+>")
REASONS = ("", "empty", "too_short", "too_long", "conflicting_labels", "minority_label", "duplicate")
KEEP, EMPTY, TOO_SHORT, TOO_LONG, CONFLICTING, MINORITY, DUPLICATE = range(len(REASONS))


@dataclass
class CleanOptions:
    nfkc: bool = True
    collapse_whitespace: bool = True
    fix_mojibake: bool = False
    strip_html: bool = False
    lowercase: bool = False
    drop_empty: bool = True
    min_chars: int | None = None
    max_chars: int | None = None
    dedupe: Literal["none", "exact", "normalised"] = "exact"
    conflicts: Literal["keep", "drop", "majority"] = "drop"


@dataclass
class Cleaned:
    rows: list[dict[str, Any]]
    lines: list[int]
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {line, reason, row}
    changed: int = 0  # kept rows whose text was changed
    repaired: int = 0  # kept rows whose mojibake was repaired (counted in `changed` too)

    def summary(self) -> dict[str, Any]:
        return summary(len(self.rows), Counter(d["reason"] for d in self.dropped), self.changed, self.repaired)


def summary(kept: int, reasons: Counter, changed: int, repaired: int = 0) -> dict[str, Any]:
    return {"kept": kept, "dropped": sum(reasons.values()), "texts_changed": changed, "mojibake_repaired": repaired,
            "dropped_by_reason": dict(sorted(reasons.items()))}


def clean_text(text: str, o: CleanOptions) -> str:
    return tidy(repair(text, o), o)


def repair(text: str, o: CleanOptions) -> str:
    """The text with its mojibake repaired, when asked (ftfy's encoding fixes only: quotes,
    ligatures and the like are left to NFKC)."""
    return ftfy.fix_encoding(text) if o.fix_mojibake else text


def tidy(text: str, o: CleanOptions) -> str:
    """The text changes after the repair."""
    if o.strip_html:
        text = html.unescape(TAG.sub(" ", text))
    if o.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if o.lowercase:
        text = text.lower()
    if o.collapse_whitespace:
        text = " ".join(text.split())
    return text


def first_verdict(text: str, o: CleanOptions) -> int:
    """What a cleaned text alone decides: KEEP, EMPTY, TOO_SHORT or TOO_LONG."""
    if o.drop_empty and not text.strip():
        return EMPTY
    if o.min_chars is not None and len(text) < o.min_chars:
        return TOO_SHORT
    if o.max_chars is not None and len(text) > o.max_chars:
        return TOO_LONG
    return KEEP


class Ledger:
    """Per row, what the cleaning needs to decide about it across the file, in a few bytes: its
    verdict so far, the keys of its cleaned text, its label."""

    def __init__(self) -> None:
        self.verdicts, self.exact, self.norm, self.labels = array("b"), array("Q"), array("Q"), array("i")
        self.label_ids: dict[str, int] = {}

    def add(self, text: str, label: Any, o: CleanOptions) -> None:
        self.verdicts.append(first_verdict(text, o))
        self.exact.append(digest(text))
        self.norm.append(digest(normalise(text)))
        self.labels.append(self.label_ids.setdefault(str(label), len(self.label_ids)))

    def decide(self, o: CleanOptions, *, labelled: bool) -> np.ndarray:
        """The verdict of every row: conflicting labels among the rows still kept (by normalised
        text), then repeats of a kept text after its first row."""
        verdicts = np.frombuffer(self.verdicts, np.int8).copy()
        norm = np.frombuffer(self.norm, np.uint64)
        if labelled and o.conflicts != "keep":
            live = np.flatnonzero(verdicts == KEEP)
            v = votes(norm[live], np.frombuffer(self.labels, np.int32)[live])
            conflict = v.labels_per_key[v.group] > 1
            if o.conflicts == "drop":
                verdicts[live[conflict]] = CONFLICTING
            else:  # outvoted, or all copies on a tie
                outvoted = conflict & ((v.tied[v.group] > 1) | (v.count < v.top[v.group]))
                verdicts[live[outvoted]] = MINORITY
        if o.dedupe != "none":
            live = np.flatnonzero(verdicts == KEEP)
            keys = (np.frombuffer(self.exact, np.uint64) if o.dedupe == "exact" else norm)[live]
            repeat = np.ones(len(live), bool)
            repeat[np.unique(keys, return_index=True)[1]] = False  # the first row of each text stays
            verdicts[live[repeat]] = DUPLICATE
        return verdicts


def _raw(row: dict[str, Any], text_column: str) -> str:
    return "" if row.get(text_column) is None else str(row[text_column])


def clean_rows(
    rows: list[dict[str, Any]], lines: list[int], text_column: str, label_column: str | None, o: CleanOptions
) -> Cleaned:
    ledger = Ledger()
    texts, repaired = [], []
    for row in rows:
        raw = _raw(row, text_column)
        fixed = repair(raw, o)
        texts.append(tidy(fixed, o))
        repaired.append(fixed != raw)
        ledger.add(texts[-1], row.get(label_column) if label_column else None, o)
    verdicts = ledger.decide(o, labelled=label_column is not None)
    out = Cleaned([], [])
    for row, line, text, was_repaired, verdict in zip(rows, lines, texts, repaired, verdicts.tolist()):
        if verdict != KEEP:
            out.dropped.append({"line": line, "reason": REASONS[verdict], "row": row})
            continue
        out.repaired += was_repaired
        out.changed += text != _raw(row, text_column)
        out.rows.append({**row, text_column: text})
        out.lines.append(line)
    return out


def dropped_path(out: str | Path) -> Path:
    """The file of a cleaned file's dropped rows: `c2.csv` -> `c2.dropped.jsonl`, beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.dropped.jsonl")


def clean_file(
    src: str | Path, out: str | Path, dropped_file: str | Path, text_column: str, label_column: str | None,
    o: CleanOptions, *, fmt: str = "auto", columns: list[str] | None = None, overwrite: bool = True,
) -> tuple[dict[str, Any], int]:
    """Clean a CSV, TSV or JSONL file into `out` (a JSON list becomes JSON lines), each dropped
    row to `dropped_file` with its line and reason, reading the file twice and never holding it:
    once to learn each row's keys, once to write. Returns the summary and the number of rows.
    `columns`: the column names of a CSV or TSV file without a header (`out` gets them as its header).
    The input is read and checked before the outputs: an output that exists is an error after every
    problem of the input, and only without `overwrite`."""
    reader = RowReader(src, fmt, columns=columns)
    if reader.columns:
        reader.require_columns(text_column, label_column, keys=("text_column", "label_column"))
    label_key = label_column or "label"
    ledger = Ledger()
    for _, row in reader:
        ledger.add(clean_text(_raw(row, text_column), o), row.get(label_key), o)
    if not len(ledger.verdicts):
        raise LmtuneError(f"{src}: no examples in the file")
    if label_column is None and label_key in reader.columns:
        label_column = label_key
    reader.require_columns(text_column, label_column, keys=("text_column", "label_column"))
    verdicts = ledger.decide(o, labelled=label_column is not None)
    for target in (out, dropped_file):
        check_output(target, overwrite)
    reasons: Counter = Counter()
    kept = changed = repaired = 0
    fmt = "jsonl" if reader.format == "json" else reader.format
    with RowWriter(out, reader.columns, fmt) as w, RowWriter(dropped_file, [], "jsonl") as d:
        for (line, row), verdict in zip(reader, verdicts):
            if verdict != KEEP:
                reasons[REASONS[verdict]] += 1
                d.write({"line": line, "reason": REASONS[verdict], "row": row})
                continue
            raw = _raw(row, text_column)
            fixed = repair(raw, o)
            text = tidy(fixed, o)
            repaired += fixed != raw
            changed += text != raw
            kept += 1
            w.write({**row, text_column: text})
    return summary(kept, reasons, changed, repaired), len(verdicts)
