"""The sections of a report on several runs (given one by one, or a search's trials, or a compare's
runs): their curves overlaid and their final numbers in one table, with the settings that differ."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.rundir import flatten
from .read import Run
from .sections import metric_columns
from .tables import Figures, Section, esc, number, scalars, table

MAX_SETTINGS = 8  # differing config keys shown as columns


def _flat(run: Run) -> dict[str, Any]:
    return {k: v for k, v in flatten(run.config).items() if k != "output_dir"}


def differing(runs: list[Run]) -> list[str]:
    """The config keys whose values are not the same in every run (in config order)."""
    flats = [_flat(r) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1][:MAX_SETTINGS]


def validation_of(run: Run) -> dict[str, Any]:
    """The final validation metrics, or (an unfinished run) those of its last evaluation."""
    if isinstance(run.metrics.get("validation"), dict):
        return scalars(run.metrics["validation"])
    return scalars(run.evals[-1]["eval"]) if run.evals else {}


def _link(run: Run, output: Path) -> str:
    own = run.path / "report.html"
    if not own.is_file() or own.resolve() == output.resolve():
        return ""
    href = os.path.relpath(own.resolve(), output.resolve().parent)
    return f'<a href="{esc(Path(href).as_posix())}">report</a>'


def comparison_table(runs: list[Run], output: Path) -> Section:
    settings = differing(runs)
    flats = [_flat(r) for r in runs]
    metrics = metric_columns(runs[0].task, [validation_of(r) for r in runs])
    shared = len({(r.metric, r.greater) for r in runs}) == 1
    best = None
    if shared and runs[0].metric in metrics:
        values = [validation_of(r).get(runs[0].metric) for r in runs]
        found = [v for v in values if v is not None]
        best = (max if runs[0].greater else min)(found) if found else None
    states = any(r.state for r in runs)
    headers = ["run", *(["state"] if states else []), *settings, *(f"validation {m}" for m in metrics),
               "finished", "steps", "seconds", "samples/s", "trainable parameters", "verdict", ""]
    rows = []
    for r, flat in zip(runs, flats):
        v, t = validation_of(r), r.metrics.get("train") or {}
        cells = [esc(r.name), *([esc(r.state or "")] if states else []), *(esc(number(flat.get(k))) for k in settings)]
        for m in metrics:
            shown = esc(number(v.get(m)))
            cells.append(f"<b>{shown}</b>" if best is not None and m == runs[0].metric and v.get(m) == best else shown)
        last_step = t.get("steps", r.steps[-1]["step"] if r.steps else None)
        cells += [esc(number(r.finished)), esc(number(last_step)), esc(number(t.get("seconds"))),
                  esc(number(t.get("samples_per_second"))), esc(number(t.get("trainable_parameters"))),
                  esc((r.metrics.get("diagnosis") or {}).get("verdict", "") if isinstance(r.metrics.get("diagnosis"), dict) else ""),
                  _link(r, output)]
        rows.append(cells)
    note = (f"<p>{len(runs)} runs. Validation metrics are final (an unfinished run: its last evaluation); "
            + (f"the best {esc(runs[0].metric)} in bold. " if best is not None else "")
            + (f"Columns {', '.join(esc(k) for k in settings)}: the settings that differ." if settings else "")
            + "</p>")
    return Section("Comparison", note + table(headers, rows, raw=range(len(headers)), css="comparison"), "comparison")


def overlays(runs: list[Run], figs: Figures) -> list[Section]:
    """Validation metric, validation loss and training loss of every run against the epoch."""
    from . import plots

    shared = len({r.metric for r in runs}) == 1
    metric_label = f"validation {runs[0].metric}" if shared else "validation metric (each run's own)"

    def evals_of(key: Any) -> Any:
        return lambda r: plots.series(r.evals, "eval", key(r), x="epoch")

    out = []
    for name, pick, label in (
        ("overlay_metric", evals_of(lambda r: r.metric), metric_label),
        ("overlay_validation_loss", evals_of(lambda r: "loss"), "validation loss"),
        ("overlay_training_loss", lambda r: plots.series(r.steps, "loss", x="epoch"), "training loss"),
    ):
        if name == "overlay_validation_loss" and shared and runs[0].metric == "loss":
            continue  # the same curves as the metric's
        html = figs.add(name, plots.overlay(runs, pick, label), label.capitalize() + " of every run")
        if html:
            out.append(Section(label.capitalize(), html, name))
    return out
