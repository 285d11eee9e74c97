"""Write rows to CSV, TSV or JSON lines one at a time, atomically: the file appears whole, under
its name, only when every row is written (a failure leaves no half file behind)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable


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
        if self.format in ("csv", "tsv"):
            tsv = self.format == "tsv"
            self.csv = csv.writer(self.file, delimiter="\t" if tsv else ",", lineterminator="\n",
                                  quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, escapechar="\\" if tsv else None)
            self.csv.writerow(self.columns)
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self.format in ("csv", "tsv"):
            self.csv.writerow(["" if row.get(c) is None else row[c] for c in self.columns])
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
