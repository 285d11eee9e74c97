"""Cleaning a table of texts: normalise, then drop what should not be trained on, saying why.

Text changes (in order): HTML tags stripped and entities unescaped (optional), Unicode NFKC,
lower case (optional), whitespace collapsed. Then rows are dropped, each with its reason: an empty
text (`empty`), a text outside the length range (`too_short`, `too_long`), a text whose copies
carry different labels (`conflicting_labels` when conflicts are dropped; `minority_label` for the
copies outvoted under `majority`, all copies on a tie), and repeated texts after the first
(`duplicate`, exact or normalised). The input file is never changed.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from .inspect import normalise

TAG = re.compile(r"<[^>]+>")


@dataclass
class CleanOptions:
    nfkc: bool = True
    collapse_whitespace: bool = True
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

    def summary(self) -> dict[str, Any]:
        return {"kept": len(self.rows), "dropped": len(self.dropped), "texts_changed": self.changed,
                "dropped_by_reason": dict(sorted(Counter(d["reason"] for d in self.dropped).items()))}


def clean_text(text: str, o: CleanOptions) -> str:
    if o.strip_html:
        text = html.unescape(TAG.sub(" ", text))
    if o.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if o.lowercase:
        text = text.lower()
    if o.collapse_whitespace:
        text = " ".join(text.split())
    return text


def clean_rows(
    rows: list[dict[str, Any]], lines: list[int], text_column: str, label_column: str | None, o: CleanOptions
) -> Cleaned:
    out = Cleaned([], [])
    drop: dict[int, str] = {}
    texts = []
    for i, row in enumerate(rows):
        raw = "" if row.get(text_column) is None else str(row[text_column])
        text = clean_text(raw, o)
        texts.append(text)
        if o.drop_empty and not text.strip():
            drop[i] = "empty"
        elif o.min_chars is not None and len(text) < o.min_chars:
            drop[i] = "too_short"
        elif o.max_chars is not None and len(text) > o.max_chars:
            drop[i] = "too_long"
    if label_column and o.conflicts != "keep":
        by_text: dict[str, list[int]] = defaultdict(list)
        for i, text in enumerate(texts):
            if i not in drop:
                by_text[normalise(text)].append(i)
        for members in by_text.values():
            votes = Counter(str(rows[i][label_column]) for i in members)
            if len(votes) < 2:
                continue
            (top, n), (_, second) = votes.most_common(2)
            for i in members:
                if o.conflicts == "drop":
                    drop[i] = "conflicting_labels"
                elif n == second or str(rows[i][label_column]) != top:
                    drop[i] = "minority_label"
    if o.dedupe != "none":
        seen: set[str] = set()
        for i, text in enumerate(texts):
            if i in drop:
                continue
            key = text if o.dedupe == "exact" else normalise(text)
            if key in seen:
                drop[i] = "duplicate"
            seen.add(key)
    for i, row in enumerate(rows):
        if i in drop:
            out.dropped.append({"line": lines[i], "reason": drop[i], "row": row})
            continue
        out.changed += texts[i] != ("" if row.get(text_column) is None else str(row[text_column]))
        out.rows.append({**row, text_column: texts[i]})
        out.lines.append(lines[i])
    return out
