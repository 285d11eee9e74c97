"""`lmtune report`: a self-contained HTML report of a run, or a comparison of several.

The page opens offline on its own (figures embedded as base64 PNG, styles inline); the same PNGs
are written beside it, in the folder `<output stem>_files/` (report.html -> report_files/), for use
elsewhere. One run: config and run numbers, the diagnosis, final metrics, the history's curves
(loss, validation metrics, training sample vs validation, learning rate per parameter group,
throughput, forgetting, perplexity) and the task's own sections from validation_samples.jsonl
(confusion matrix and most confident errors, entity-marked sentences, answers, generations).
Several runs (or a search or compare folder, expanded into its runs): their curves overlaid and
one table of their final numbers. Reading the folders is light; matplotlib is imported only to draw.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import LmtuneError
from ..core.rundir import check_output
from ..core.runtime import first_process, log
from .page import write
from .read import expand

REPORT_NAME = "report.html"


def write_report(run_dirs: list[Path], output: Path, *, overwrite: bool = False) -> Path:
    """Write the report of `run_dirs` (run, search or compare folders) to `output` (HTML) and its
    figures to `<output stem>_files/` beside it; returns `output`. Every folder is read and checked
    before anything is written. An existing `output` is replaced only with `overwrite`."""
    output = Path(output)
    runs = expand([Path(p) for p in run_dirs])
    check_output(output, overwrite)
    if output.is_dir():
        raise LmtuneError(f"{output}: a folder; the report is a file (e.g. {output / REPORT_NAME})")
    return write(runs, output)


def write_run_report(run_dir: Path) -> Path:
    """The run's own report, `run_dir/report.html` (with report_files/), replaced if there is one:
    written at the end of every run (report_run)."""
    return write_report([Path(run_dir)], Path(run_dir) / REPORT_NAME, overwrite=True)


def report_run(run_dir: Path, enabled: bool) -> None:
    """report.html into a finished run's folder, written by whoever ran it (lmtune.train, lmtune
    train, a search's trials, a comparison's runs) when `enabled` (train.report), from the run's
    first process only. A report that cannot be built is a warning, never a failed run."""
    if not enabled or not first_process():
        return
    try:
        log(f"report: {write_run_report(run_dir)}")
    except Exception as exc:  # noqa: BLE001 (the run itself has succeeded: say why, go on)
        log(f"warning: report.html was not written: {type(exc).__name__}: {exc}")
