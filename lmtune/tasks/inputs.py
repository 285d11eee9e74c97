"""Reading inference inputs from files, shared by the tasks whose inputs are texts: a .txt file (one
text per line) or a table (CSV/TSV/JSONL/JSON) read by the run's text columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..core.errors import LmtuneError, option
from ..data.readers import RowReader, Table, read_table, text_lines
from ..data.table import _text


def column_names(session: Any, path: Path, columns: list[str] | None, *, named: bool) -> list[str] | None:
    """The column names to read `path` with: those given (--columns), else, for a CSV or TSV file,
    the run's data.columns. `named`: whether this file is read by named columns at all."""
    if not named:
        if columns is not None:
            raise LmtuneError(f"{option('--columns', 'columns')}: {path} is read by a {session.task_name} model as it is "
                              f"({path.suffix or 'no extension'}), not by named CSV/TSV columns")
        return None
    if columns is not None:
        return columns
    run = getattr(session.cfg.data, "columns", None) if session.cfg is not None else None  # (classification has it)
    return run if run and path.suffix.lower() in (".csv", ".tsv") else None


def no_template(session: Any, template: str | None) -> None:
    if template is not None:
        raise LmtuneError(f"{option('--prompt-template', 'template')}: a {session.task_name} model does not generate; "
                          "the template is for generative runs")


def read_lines(path: Path) -> Table:
    """A .txt file: one text per non-empty line (the line numbers kept for messages)."""
    rows = [(n, line) for n, line in enumerate(_text(path).splitlines(), start=1) if line.strip()]
    if not rows:
        raise LmtuneError(f"{path}: no examples in the file")
    return Table(path, ["text"], [{"text": t} for _, t in rows], [n for n, _ in rows])


def read_texts(session: Any, path: Path, columns: list[str] | None) -> tuple[Table, list[Any], list[str] | None]:
    """The texts of a file, and the second texts of pairs where the run has data.text_pair_column."""
    if path.suffix.lower() == ".txt":
        column_names(session, path, columns, named=False)
        table = read_lines(path)
        return table, [r["text"] for r in table.rows], None
    d = session.data
    table = read_table(path, columns=column_names(session, path, columns, named=True))
    table.require_columns(d.text_column, d.text_pair_column, keys=("text_column", "text_pair_column"))
    texts = [str(r[d.text_column]) for r in table.rows]
    pairs = [str(r[d.text_pair_column]) for r in table.rows] if d.text_pair_column else None
    return table, texts, pairs


def check_texts(inputs: list[Any]) -> list[str]:
    for i, x in enumerate(inputs):
        if not isinstance(x, str):
            raise LmtuneError(f"inputs[{i}]: expected a text, got {str(x)[:80]}")
    return inputs


# Rows read, predicted and written at a time by `lmtune predict` on a file that can be read line by
# line (.txt, .csv, .tsv, .jsonl): a file larger than memory streams through.
CHUNK_ROWS = 4096


def streamable(path: Path) -> bool:
    return path.suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl")


def table_chunks(path: Path, columns: list[str] | None, rows: int = CHUNK_ROWS) -> Iterator[Table]:
    """A .csv, .tsv or .jsonl file (or a .txt file, one text per line, as a "text" column) as tables
    of at most `rows` rows, read one line at a time."""
    reader = None if path.suffix.lower() == ".txt" else RowReader(path, columns=columns)
    if reader is None:
        numbered: Iterator[tuple[int, dict[str, Any]]] = (
            (n, {"text": line.rstrip("\r\n")}) for n, line in enumerate(text_lines(path), start=1) if line.strip())
    else:
        numbered = iter(reader)

    def table(rows_: list[dict[str, Any]], lines_: list[int]) -> Table:
        if reader is None:
            return Table(path, ["text"], rows_, lines_)
        return Table(path, list(reader.columns), rows_, lines_, header=reader.header)

    batch: list[dict[str, Any]] = []
    lines: list[int] = []
    seen = False
    for n, row in numbered:
        batch.append(row)
        lines.append(n)
        if len(batch) == rows:
            yield table(batch, lines)
            batch, lines, seen = [], [], True
    if batch:
        yield table(batch, lines)
    elif not seen:
        raise LmtuneError(f"{path}: no examples in the file")


def text_chunks(session: Any, path: Path, columns: list[str] | None, rows: int = CHUNK_ROWS) -> Iterator[tuple[Table, list[Any], list[str] | None]]:
    """read_texts, a chunk of rows at a time (the whole file at once for a format that cannot be
    read line by line)."""
    if not streamable(path):
        yield read_texts(session, path, columns)
        return
    if path.suffix.lower() == ".txt":
        column_names(session, path, columns, named=False)
        names = None
    else:
        names = column_names(session, path, columns, named=True)
    d = session.data
    for table in table_chunks(path, names, rows):
        text_column = "text" if path.suffix.lower() == ".txt" else d.text_column
        pair_column = None if path.suffix.lower() == ".txt" else d.text_pair_column
        table.require_columns(text_column, pair_column, keys=("text_column", "text_pair_column"))
        texts = [str(r[text_column]) for r in table.rows]
        pairs = [str(r[pair_column]) for r in table.rows] if pair_column else None
        yield table, texts, pairs
