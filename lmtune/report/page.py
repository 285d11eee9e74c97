"""The report page: its sections for one run or several, laid out as one self-contained HTML file
(styles inline, figures embedded), written with its figures' PNG folder atomically."""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

from ..core.rundir import replace_dir_atomic, write_text_atomic
from . import samples, sections
from .comparison import comparison_table, overlays
from .read import Run
from .tables import Figures, Section, esc

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin: 1em 0 0.4em; font-size: 1em; }
nav { font-size: 0.9em; } nav a { margin-right: 0.9em; white-space: nowrap; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: #fafafa; font-weight: 600; }
.pair { display: flex; gap: 2.5em; flex-wrap: wrap; }
figure { margin: 0.8em 0; } img { max-width: 100%; } figcaption { color: #666; font-size: 0.85em; }
.path, .generated { color: #666; font-size: 0.85em; }
.verdict { font-size: 1.25em; font-weight: 600; }
.ent { padding: 0 0.2em; border-radius: 3px; } .ent sub { font-size: 0.7em; margin-left: 0.15em; }
.ent.ok { background: #c9f0c9; } .ent.missed { background: #ffe08a; } .ent.wrong { background: #f7b6b6; }
mark { background: #ffe08a; }
table.generations td { max-width: 360px; } pre { white-space: pre-wrap; margin: 0; max-height: 14em; overflow: auto; }
table.answers td { max-width: 420px; }
"""


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>\n{s.body}</section>' for s in sections)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>{esc(title)}</h1><p class=\"generated\">{esc(subtitle)}; written {esc(stamp)} by lmtune report</p>\n"
            f"<nav>{nav}</nav>\n{body}\n</body></html>\n")


def one_run(run: Run, figs: Figures) -> list[Section]:
    found = [sections.summary(run), sections.diagnosis(run), sections.final_metrics(run)]
    out = [s for s in found if s is not None]
    return out + sections.curves(run, figs) + samples.sections(run, figs)


def several_runs(runs: list[Run], figs: Figures, output: Path) -> list[Section]:
    return [comparison_table(runs, output), *overlays(runs, figs)]


def files_dir(output: Path) -> Path:
    """Where the figures of the report `output` go: <stem>_files/ beside it."""
    return output.with_name(f"{output.stem}_files")


def write(runs: list[Run], output: Path) -> Path:
    """Draw the figures into a fresh folder, build the page, then put both in place (the folder
    replaced whole, the page atomically)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}_files.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        figs = Figures(tmp)
        if len(runs) == 1:
            title, subtitle = f"lmtune run: {runs[0].name}", f"{runs[0].task}, {runs[0].config.get('model', '')}"
            found = one_run(runs[0], figs)
        else:
            title = f"lmtune: {len(runs)} runs"
            subtitle = ", ".join(dict.fromkeys(r.task for r in runs))
            found = several_runs(runs, figs, output)
        page = render(title, subtitle, found)
        replace_dir_atomic(tmp, files_dir(output))
        write_text_atomic(output, page)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
