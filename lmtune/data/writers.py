"""Write rows to CSV, TSV or JSON lines one at a time, atomically: the file appears whole, under
its name, only when every row is written (a failure leaves no half file behind)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import LmtuneError


class RowWriter:
    """`with RowWriter(path, columns, fmt) as w: w.write(row)`; fmt csv, tsv or jsonl (columns
    are the header of a CSV or TSV file)."""

    def __init__(self, path: str | Path, columns: list[str], fmt: str) -> None:
        self.path, self.columns, self.format = Path(path), columns, fmt
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.rows = 0

    def __enter__(self) -> "RowWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "w", encoding="utf-8", newline="")
        if self.format == "tsv":
            # as the reader reads TSV: no quoting and no escapes, so that quotes and backslashes in a
            # text come back as they were (a tab or a line break inside a value cannot be written)
            self.csv = csv.writer(self.file, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE,
                                  quotechar=None, escapechar=None)
        elif self.format == "csv":
            self.csv = csv.writer(self.file, lineterminator="\n")
        if self.format in ("csv", "tsv"):
            self.write_fields(self.columns)
        return self

    def write_fields(self, fields: list[Any]) -> None:
        try:
            self.csv.writerow(fields)
        except csv.Error:
            bad = next(str(f) for f in fields if any(c in str(f) for c in "\t\n\r"))
            raise LmtuneError(f"{self.path}: a TSV value cannot hold a tab or a line break: {bad[:60]!r}") from None

    def write(self, row: dict[str, Any]) -> None:
        if self.format in ("csv", "tsv"):
            self.write_fields(["" if row.get(c) is None else row[c] for c in self.columns])
        else:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self.file.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_rows(path: str | Path, columns: list[str], rows: Iterable[dict[str, Any]], fmt: str) -> int:
    """Write all `rows`; returns how many."""
    with RowWriter(path, columns, fmt) as w:
        for row in rows:
            w.write(row)
    return w.rows
