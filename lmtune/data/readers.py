"""Read CSV, TSV, JSONL and JSON (a list of objects) into rows, with the line each row came from
(CoNLL column files: see conll.py).

Every problem names the file and line: a row with the wrong number of fields, bytes that are not
UTF-8, a JSON line that does not parse, a file with no rows.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LmtuneError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "tsv", ".conll": "conll"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]  # the (first) line of each row in the file, 1-based

    def __len__(self) -> int:
        return len(self.rows)

    def require_columns(self, *names: str | None) -> None:
        missing = [n for n in names if n is not None and n not in self.columns]
        if missing:
            raise LmtuneError(
                f"{self.path}: no column {', '.join(repr(m) for m in missing)}; "
                f"columns are: {', '.join(self.columns) or '(none)'}"
            )

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}"

    def subset(self, indices: list[int]) -> "Table":
        """The rows at `indices`, with their lines, in a table of the same kind."""
        return type(self)(self.path, self.columns, [self.rows[i] for i in indices], [self.lines[i] for i in indices])


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in FORMATS:
        raise LmtuneError(f"{path}: cannot tell the format from the extension; set data.format (csv, tsv, jsonl, json)")
    return FORMATS[path.suffix.lower()]


def _text(path: Path) -> str:
    if not path.is_file():
        raise LmtuneError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LmtuneError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); re-save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    # TSV files (SST-2, GLUE) use bare quotes inside text: only CSV gets quote handling.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise LmtuneError(f"{path}: the file is empty") from None
    header = [h.strip() for h in header]
    rows, lines = [], []
    start = reader.line_num
    try:
        for fields in reader:
            line = start + 1
            start = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise LmtuneError(
                    f"{path}:{line}: expected {len(header)} fields ({', '.join(header)}), found {len(fields)}"
                )
            rows.append(dict(zip(header, fields)))
            lines.append(line)
    except csv.Error as e:
        raise LmtuneError(f"{path}:{reader.line_num}: malformed {'CSV' if delimiter == ',' else 'TSV'}: {e}") from None
    return Table(path, header, rows, lines)


def _read_jsonl(path: Path, text: str) -> Table:
    rows, lines, columns = [], [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmtuneError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise LmtuneError(f"{path}:{n}: expected a JSON object, found {type(obj).__name__}")
        rows.append(obj)
        lines.append(n)
        columns.update(dict.fromkeys(obj))
    return Table(path, list(columns), rows, lines)


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


def read_table(path: str | Path, fmt: str = "auto") -> Table:
    """Read a whole file of examples. Raises LmtuneError naming file and line for bad input."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    text = _text(path)
    if fmt == "csv":
        table = _read_delimited(path, text, ",")
    elif fmt == "tsv":
        table = _read_delimited(path, text, "\t")
    elif fmt == "jsonl":
        table = _read_jsonl(path, text)
    elif fmt == "json":
        table = _read_json(path, text)
    elif fmt == "conll":
        from .conll import read_conll

        table = read_conll(path)
    else:
        raise LmtuneError(f"{path}: unknown format {fmt!r}")
    if not table.rows:
        raise LmtuneError(f"{path}: no examples in the file")
    return table
