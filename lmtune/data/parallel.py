"""Parallel text for translation: two line-aligned files (Moses format, as Multi30k, WMT and OPUS
ship them: line n of train.de translates line n of train.en), or two columns of a CSV/TSV/JSONL
file. Either way the pairs become a Table with the columns `source` and `target`.

A pair with an empty side is left out, counted and named (file:line); files of different lengths
are an error naming both files, both counts and the first line where one side is empty or missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import LmtuneError
from .readers import read_table
from .table import Table, text_lines

# ISO 639-1 codes of common languages, for the prompt (an unknown code is used as given)
LANGUAGES = {
    "ar": "Arabic", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nb": "Norwegian",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "th": "Thai", "tr": "Turkish",
    "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}
NOT_LANGUAGES = {"txt", "csv", "tsv", "jsonl", "json", "text", "raw", "tok", "gz"}  # extensions that name no language
SHOWN = 5  # dropped pairs named in the log


def language_name(code: str) -> str:
    """English for en, German for de; anything else as given."""
    return LANGUAGES.get(code.strip().lower(), code.strip())


def language_code(name: str) -> str | None:
    """The language a file or column name says: the extension of train.en, or a column named de."""
    suffix = Path(name).suffix.lstrip(".") if "." in name else name
    return suffix if suffix and suffix.lower() not in NOT_LANGUAGES and len(suffix) <= 3 else None


def _lines(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise LmtuneError(f"data.{key}: file not found: {path}")
    return [line.rstrip("\r\n") for line in text_lines(path)]


def _trim_end(longer: list[str], length: int) -> None:
    """Blank lines at the end of the longer file, down to the other's length: no pairs, no mismatch."""
    while len(longer) > length and not longer[-1].strip():
        longer.pop()


def _first_gap(sources: list[str], targets: list[str]) -> tuple[int, str]:
    """The first line (1-based) where one side is empty or missing, and which side."""
    for n in range(1, max(len(sources), len(targets)) + 1):
        for name, side in (("source", sources), ("target", targets)):
            if n > len(side):
                return n, f"missing from the {name} file"
            if not side[n - 1].strip():
                return n, f"empty in the {name} file"
    return 0, ""


def read_parallel(source: str | Path, target: str | Path, key: str) -> tuple[Table, list[dict[str, Any]]]:
    """The pairs of two line-aligned files (`key`: data.train, ... for the messages), and the
    pairs left out for an empty side, each {file, line, reason, row}."""
    src, tgt = Path(source), Path(target)
    sources, targets = _lines(src, f"{key}.source"), _lines(tgt, f"{key}.target")
    _trim_end(sources, len(targets))
    _trim_end(targets, len(sources))
    if len(sources) != len(targets):
        n, where = _first_gap(sources, targets)
        raise LmtuneError(f"data.{key}: {src} has {len(sources)} lines and {tgt} has {len(targets)}; they must be "
                          f"line-aligned (the first line where one side is empty or missing: {n}, {where})")
    rows, lines, dropped = [], [], []
    for n, (s, t) in enumerate(zip(sources, targets), start=1):
        if s.strip() and t.strip():
            rows.append({"source": s.strip(), "target": t.strip()})
            lines.append(n)
            continue
        empty = src if not s.strip() else tgt
        dropped.append({"file": str(empty), "line": n, "reason": "empty line",
                        "row": {"source": s, "target": t}})
    if not rows:
        raise LmtuneError(f"data.{key}: no pair of non-empty lines in {src} and {tgt}")
    return Table(src, ["source", "target"], rows, lines), dropped


def read_columns(path: str | Path, fmt: str, source_column: str, target_column: str,
                 key: str) -> tuple[Table, list[dict[str, Any]]]:
    """The pairs in two columns of a CSV, TSV, JSONL or JSON file, and the rows left out for an empty side."""
    table = read_table(path, fmt)
    table.require_columns(source_column, target_column, keys=("source_column", "target_column"))
    rows, lines, dropped = [], [], []
    for i, row in enumerate(table.rows):
        s, t = row.get(source_column), row.get(target_column)
        if isinstance(s, str) and s.strip() and isinstance(t, str) and t.strip():
            rows.append({"source": s.strip(), "target": t.strip()})
            lines.append(table.lines[i])
        else:
            side = source_column if not (isinstance(s, str) and s.strip()) else target_column
            dropped.append({"file": str(table.path), "line": table.lines[i], "reason": f"empty {side}", "row": row})
    if not rows:
        raise LmtuneError(f"data.{key}: {table.path}: no row with both {source_column!r} and {target_column!r}")
    return Table(table.path, ["source", "target"], rows, lines), dropped


def dropped_note(dropped: list[dict[str, Any]]) -> str:
    """'dropped 2 pairs with an empty side (train.de:5, train.en:9; each in dropped.jsonl)'."""
    shown = ", ".join(f"{d['file']}:{d['line']}" for d in dropped[:SHOWN])
    more = f" and {len(dropped) - SHOWN} more" if len(dropped) > SHOWN else ""
    return f"dropped {len(dropped)} pair{'' if len(dropped) == 1 else 's'} with an empty side ({shown}{more}; each in dropped.jsonl)"
