"""Read CoNLL column files (CoNLL-2003 NER and the like) into sentences.

One token per line, the token in the first column and its tag in another (the last by default),
a blank line between sentences. `-DOCSTART-` lines (document boundaries) end a sentence and are
skipped; a byte-order mark at the start of the file or of a line (files concatenated with `cat`)
is dropped. Columns are separated by tabs when a line has any, else by runs of spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import LmtuneError
from .table import Table, _text


@dataclass
class ConllTable(Table):
    """A Table of sentences, rows {"tokens": [...], "tags": [...]}, `lines` the first line of each
    sentence. Token j of sentence i is on line lines[i] + j."""

    def where_token(self, i: int, j: int) -> str:
        return f"{self.path}:{self.lines[i] + j}"


def _columns(line: str) -> list[str]:
    if "\t" in line:
        return [c.strip() for c in line.split("\t")]
    return line.split()


def read_conll(path: str | Path, tag_column_index: int = -1, *, tags: bool = True) -> ConllTable:
    """Sentences of a CoNLL file. With tags=False (text to tag) only the token column is read and
    the tags are None. Raises LmtuneError naming file and line for a line without a tag column."""
    path = Path(path)
    if tags and tag_column_index == 0:
        raise LmtuneError(f"{path}: data.tag_column_index is 0, the token column; the tag column is another one (-1: the last)")
    text = _text(path)
    need = tag_column_index + 1 if tag_column_index >= 0 else 1 - tag_column_index
    rows: list[dict[str, list[str] | None]] = []
    lines: list[int] = []
    tokens: list[str] = []
    labels: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal tokens, labels
        if tokens:
            rows.append({"tokens": tokens, "tags": labels if tags else None})
            lines.append(start)
        tokens, labels = [], []

    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip("\ufeff").strip()
        if not line:
            flush()
            continue
        fields = _columns(line)
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if tags and len(fields) < need:
            which = "the last column" if tag_column_index == -1 else f"column {tag_column_index}"
            raise LmtuneError(
                f"{path}:{n}: expected at least {need} columns (the token, and the tag in {which}; "
                f"data.tag_column_index), found {len(fields)}: {line!r}"
            )
        if not tokens:
            start = n
        tokens.append(fields[0])
        if tags:
            labels.append(fields[tag_column_index])
    flush()
    if not rows:
        raise LmtuneError(f"{path}: no sentences in the file")
    return ConllTable(path, ["tokens", "tags"] if tags else ["tokens"], rows, lines)
