"""Read CSV, TSV, JSONL and JSON (a list of objects) into rows, with the line each row came from
(CoNLL column files: see conll.py).

Every problem names the file and line: a row with the wrong number of fields, bytes that are not
UTF-8, a JSON line that does not parse, a file with no rows.

A CSV or TSV file's first line is its header, unless the column names are given (`data.columns`,
`--columns`): the first line is then data, row 1 on line 1 (AG News as distributed: text<TAB>label).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import LmtuneError
from .conll import read_conll
from .table import Table, _brief, text_lines

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "tsv", ".conll": "conll"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def check_column_names(columns: list[str] | None, path: Path | str) -> list[str] | None:
    """Column names given for a file without a header: non-empty and different."""
    if columns is None:
        return None
    names = [c.strip() for c in columns]
    if not names or any(not c for c in names):
        raise LmtuneError(f"{path}: data.columns (--columns) needs a name for every column, got {columns!r}")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise LmtuneError(f"{path}: data.columns (--columns) names {', '.join(map(repr, twice))} twice")
    return names


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in FORMATS:
        raise LmtuneError(f"{path}: cannot tell the format from the extension; set data.format (csv, tsv, jsonl, json)")
    return FORMATS[path.suffix.lower()]


class RowReader:
    """The rows of a CSV, TSV or JSONL file, read one line at a time, so that a file of any size can
    be cleaned, split or augmented without holding it in memory (a JSON list is read whole).
    Iterating yields (line, row); iterating again reads the file again. `columns`: the header of a
    CSV or TSV file (or the names given for one without a header); for JSON, the keys seen so far."""

    def __init__(
        self, path: str | Path, fmt: str = "auto", *, replace_bad_bytes: bool = False, columns: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.format = detect_format(self.path, fmt)
        if self.format not in ("csv", "tsv", "jsonl", "json"):
            raise LmtuneError(f"{self.path}: expected a CSV, TSV, JSONL or JSON file, not {self.format}")
        self.given = check_column_names(columns, self.path)
        if self.given is not None and self.format not in ("csv", "tsv"):
            raise LmtuneError(
                f"{self.path}: data.columns (--columns) names the columns of a CSV or TSV file without a header; "
                f"this is a {self.format.upper()} file, whose rows name their fields"
            )
        self.replace_bad_bytes = replace_bad_bytes
        self.bad_lines: list[int] = []  # lines with bytes that are not UTF-8 (with replace_bad_bytes)
        self.columns: list[str] = list(self.given or [])
        self.header: str | None = None  # the first line, when it was read as the header
        if self.format in ("csv", "tsv"):
            for _ in self._delimited(header_only=True):
                pass

    def _lines(self) -> Iterator[str]:
        self.bad_lines.clear()
        return text_lines(self.path, bad_lines=self.bad_lines if self.replace_bad_bytes else None)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.format in ("csv", "tsv"):
            yield from self._delimited()
        elif self.format == "jsonl":
            yield from self._jsonl()
        else:
            table = _read_json(self.path, "".join(self._lines()))
            self.columns = table.columns
            yield from zip(table.lines, table.rows)

    def _delimited(self, header_only: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        # TSV files (SST-2, GLUE) use bare quotes inside text: only CSV gets quote handling.
        delimiter = "," if self.format == "csv" else "\t"
        quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        reader = csv.reader(self._lines(), delimiter=delimiter, quoting=quoting, strict=True)
        kind = "CSV" if delimiter == "," else "TSV"
        if self.given is None:
            try:
                fields = next(reader)
            except StopIteration:
                raise LmtuneError(f"{self.path}: the file is empty") from None
            except csv.Error as e:
                raise LmtuneError(f"{self.path}:{reader.line_num}: malformed {kind}: {e}") from None
            self.header = delimiter.join(_brief(f, 30, quote=False) for f in fields)
            self.columns = header = [h.strip() for h in fields]
        else:
            header = self.given
            if not self.path.is_file():
                raise LmtuneError(f"{self.path}: file not found")
        if header_only:
            return
        start = reader.line_num
        try:
            for fields in reader:
                line = start + 1
                start = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != len(header):
                    raise LmtuneError(
                        f"{self.path}:{line}: expected {len(header)} fields ({', '.join(header)}), found {len(fields)}"
                    )
                if line == 1 and self.given is not None and [f.strip() for f in fields] == header:
                    # a header after all: it would become a row whose label is the column's name
                    raise LmtuneError(
                        f"{self.path}:1: the first line is a header ({', '.join(header)}), but data.columns "
                        f"(--columns) says the file has none; leave the column names out for this file"
                    )
                yield line, dict(zip(header, fields))
        except csv.Error as e:
            raise LmtuneError(f"{self.path}:{reader.line_num}: malformed {kind}: {e}") from None

    def _jsonl(self) -> Iterator[tuple[int, dict[str, Any]]]:
        columns: dict[str, None] = dict.fromkeys(self.columns)
        for n, line in enumerate(self._lines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmtuneError(f"{self.path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise LmtuneError(f"{self.path}:{n}: expected a JSON object, found {type(obj).__name__}")
            if obj.keys() - columns.keys():
                columns.update(dict.fromkeys(obj))
                self.columns = list(columns)
            yield n, obj

    def require_columns(self, *names: str | None, keys: tuple[str | None, ...] | None = None) -> None:
        """For CSV and TSV, at once; for JSON, against the keys seen so far (call it after a pass)."""
        Table(self.path, self.columns, [], [], self.header).require_columns(*names, keys=keys)


def _read_json(path: Path, text: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmtuneError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise LmtuneError(f"{path}: expected a JSON list of objects")
    # Line numbers of objects in a JSON list are not kept by json; report the row index instead.
    columns: dict[str, None] = {}
    for r in data:
        columns.update(dict.fromkeys(r))
    return Table(path, list(columns), data, list(range(1, len(data) + 1)))


def read_table(path: str | Path, fmt: str = "auto", *, columns: list[str] | None = None) -> Table:
    """Read a whole file of examples. Raises LmtuneError naming file and line for bad input.
    `columns`: the column names of a CSV or TSV file without a header."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    if fmt == "conll":
        if columns is not None:
            raise LmtuneError(f"{path}: data.columns (--columns) is for CSV and TSV files; this is a CoNLL file")
        table: Table = read_conll(path)
    elif fmt in ("csv", "tsv", "jsonl", "json"):
        reader = RowReader(path, fmt, columns=columns)
        rows, lines = [], []
        for line, row in reader:
            lines.append(line)
            rows.append(row)
        table = Table(path, reader.columns, rows, lines, reader.header)
    else:
        raise LmtuneError(f"{path}: unknown format {fmt!r}")
    if not table.rows:
        raise LmtuneError(f"{path}: no examples in the file")
    return table
