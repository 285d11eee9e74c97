"""A file's rows as a Table (each with the line it came from) and the plain reading of a UTF-8 text
file, line by line: what the readers of every format share (readers.py, conll.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import LmtuneError


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]  # the (first) line of each row in the file, 1-based
    header: str | None = None  # a CSV or TSV file's first line (each field shortened), when it gave the column names

    def __len__(self) -> int:
        return len(self.rows)

    def require_columns(self, *names: str | None, keys: tuple[str | None, ...] | None = None) -> None:
        """Each of `names` (None: not needed) is a column. `keys`, beside them: the data.* key that
        chose each (text_column, ...), named in the error; by default the key whose default it is."""
        keys = keys or tuple(DEFAULT_KEYS.get(n) if n is not None else None for n in names)
        missing = [(n, k) for n, k in zip(names, keys) if n is not None and n not in self.columns]
        if missing:
            hint = ""
            chosen = list(dict.fromkeys(k for _, k in missing if k))
            if self.header is not None and _looks_like_data(self.columns):
                # a file without a header has a row of data read as one
                hint = (f" (the first line was read as a header: {_brief(self.header, 120)}; a file without a header "
                        f"needs its column names in data.columns, or --columns on the command line, e.g. text,label)")
            elif chosen:
                hint = "; choose " + ("the column" if len(chosen) == 1 else "the columns") + " with " + ", ".join(
                    f"data.{k}" + (f" (--{k.replace('_', '-')})" if k in FLAGGED else "") for k in chosen)
            elif self.columns:
                hint = "; choose the column with its data.*_column key (--text-column on the command line)"
            raise LmtuneError(
                f"{self.path}: no column {', '.join(repr(m) for m, _ in missing)}; "
                f"columns are: {', '.join(_brief(c, 30, quote=False) for c in self.columns) or '(none)'}{hint}"
            )

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}"

    def subset(self, indices: list[int]) -> "Table":
        """The rows at `indices`, with their lines, in a table of the same kind."""
        return dataclasses.replace(self, rows=[self.rows[i] for i in indices], lines=[self.lines[i] for i in indices])


# The data.* key whose default is the column name (what a message names when the column is missing).
DEFAULT_KEYS = {
    "text": "text_column", "label": "label_column", "question": "question_column", "context": "context_column",
    "answers": "answers_column", "tokens": "tokens_column", "tags": "tags_column", "instruction": "instruction_column",
    "input": "input_column", "output": "response_column", "messages": "messages_column",
}


FLAGGED = ("text_column", "label_column", "group_column")  # the keys that data commands and predict take as flags


def _looks_like_data(fields: list[str]) -> bool:
    """Whether a first line read as a header looks like a row of data: a number, or a field that
    reads as a sentence (column names are short words)."""
    for f in fields:
        f = f.strip()
        try:
            float(f)
            return True
        except ValueError:
            pass
        if len(f) > 40 or len(f.split()) >= 4:
            return True
    return False


def _brief(text: str, limit: int = 60, *, quote: bool = True) -> str:
    """A short, one-line quotation of a piece of a file."""
    text = text.replace("\t", "\\t").replace("\r", "").replace("\n", " ")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f'"{text}"' if quote else text


def text_lines(path: Path, *, bad_lines: list[int] | None = None) -> Iterator[str]:
    """The lines of a UTF-8 file, one at a time, with their line ends (a byte-order mark dropped).
    Bytes that are not UTF-8 are an error naming the line, or, with a `bad_lines` list, read as
    replacement characters and the line numbers put in the list."""
    if not path.is_file():
        raise LmtuneError(f"{path}: file not found")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if bad_lines is None:
                    raise LmtuneError(
                        f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8"
                    ) from None
                bad_lines.append(n)
                line = raw.decode("utf-8", errors="replace")
            yield line.removeprefix("\ufeff") if n == 1 else line


def _text(path: Path) -> str:
    return "".join(text_lines(path))
