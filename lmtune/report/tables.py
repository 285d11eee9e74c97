"""HTML pieces: escaped text, numbers as people read them, tables, embedded images. Every string
that comes from a run (texts, labels, names, config values) goes through `esc`."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Section:
    title: str
    body: str  # HTML
    anchor: str  # the id the page's contents link to


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A value for a table cell: ints with thousands separators, floats to `digits` significant
    figures (no exponent for ordinary sizes), yes/no, '' for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def cell(value: Any) -> str:
    """An escaped table cell; numbers right-aligned."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{esc(number(value))}</td>'
    return f"<td>{esc(number(value))}</td>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, raw: Sequence[int] = (), css: str = "") -> str:
    """An HTML table; columns whose index is in `raw` hold HTML made here (already escaped)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{v}</td>" if i in raw else cell(v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<table class="{esc(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of names and values (the values left out where None)."""
    rows = "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in pairs if v is not None)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def bullets(items: Sequence[Any]) -> str:
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>" if items else ""


def image(path: Path, alt: str) -> str:
    """The PNG at `path` embedded in the page (the page opens offline, without its folder)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(alt)} ({esc(path.name)})</figcaption></figure>")


class Figures:
    """Saves the report's figures as PNG files in one folder and gives their embedded HTML."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[Path] = []

    def add(self, name: str, fig: Any, caption: str) -> str:
        """`fig` saved as NAME.png; '' when there is no figure (nothing to draw)."""
        if fig is None:
            return ""
        from .plots import save

        path = save(fig, self.folder / f"{name}.png")
        self.written.append(path)
        return image(path, caption)


def scalars(metrics: Any) -> dict[str, float | int]:
    """The numeric entries of a metrics mapping (per-class tables, samples and flags left out)."""
    if not isinstance(metrics, dict):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
