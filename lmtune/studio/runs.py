"""The runs folder as the studio shows it: each run (search, compare) folder's status and summary,
and a run's details, read from its files (docs/run-folder.md).

Status, by the first that applies: finished (metrics.json), running (process.json naming a live
process on this host), stopped (stopped.json), failed (failed.json), interrupted (checkpoints/last
but no process), starting (config.yaml only). A folder whose files do not parse is `unreadable`,
with the reason, and never stops the listing.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import LmtuneError
from ..core.rundir import RunDir
from ..report.read import Run, _compare_runs, _read_json, _search_runs, greater_is_better, read_jsonl, read_run
from ..report.samples import confusion_counts
from ..tasks import DEFAULT_TASK, get_task

STUDIO = ".studio"  # RUNS/.studio: the studio's own files (jobs.json, configs/, logs/)
SAMPLES = 20  # validation samples in a run's details
LOG_TAIL = 8000  # characters of a child's log in a run's details
ORDER = ("running", "starting", "stopped", "failed", "interrupted", "unknown", "finished", "unreadable")


class NoSuchRun(LmtuneError):
    """A run name that is not a folder of the runs folder (the API answers 404)."""


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_process(folder: Path) -> dict[str, Any] | None:
    """process.json when it names a live process on this host (a kill -9 leaves the file behind)."""
    info = _read_json(folder / "process.json")
    if info and info.get("host", socket.gethostname()) == socket.gethostname() and pid_alive(info.get("pid")):
        return info
    return None


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LmtuneError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise LmtuneError(f"{path}: not text ({e})") from None
    if not isinstance(config, dict):
        raise LmtuneError(f"{path}: expected a mapping of config sections")
    return config


def run_status(folder: Path) -> tuple[str, bool, str | None]:
    """(status, resumable, error) of a run folder; LmtuneError for a file that does not parse."""
    rundir = RunDir(folder)
    if rundir.finished:
        _read_json(rundir.metrics)
        return "finished", False, None
    if live_process(folder) is not None:
        return "running", False, None
    has_last = rundir.last_checkpoint() is not None
    if (folder / "stopped.json").is_file():
        _read_json(folder / "stopped.json")
        return "stopped", True, None
    if (folder / "failed.json").is_file():
        return "failed", has_last, str(_read_json(folder / "failed.json").get("error") or "failed")
    if has_last:
        return "interrupted", True, None
    return ("starting" if (folder / "config.yaml").is_file() else "unknown"), False, None


def kind_of(folder: Path) -> str | None:
    if (folder / "config.yaml").is_file():
        return "run"
    if (folder / "search.yaml").is_file():
        return "search"
    if (folder / "compare.json").is_file() or _compare_in_progress(folder):
        return "compare"
    return None


def _compare_in_progress(folder: Path) -> bool:
    """A compare before its compare.json: a folder of runs each named as `lmtune compare` names them
    (the strategy, or STRATEGY-seedN) and nothing else of lmtune's."""
    runs = [p for p in folder.iterdir() if (p / "config.yaml").is_file()] if folder.is_dir() else []
    for run in runs:
        try:
            config = read_config(run)
        except (LmtuneError, OSError):
            return False
        strategy, train = config.get("strategy"), config.get("train")
        name = strategy.get("name") if isinstance(strategy, dict) else None
        seed = train.get("seed") if isinstance(train, dict) else None
        if not name or run.name not in (name, f"{name}-seed{seed}"):
            return False
    return bool(runs)


def change_mark(folder: Path) -> tuple[Any, ...]:
    """What changes when a folder's summary or details may: its entries, its history's length, a live
    process; for a search or compare also trials.csv and each of its runs'. Cheap to read twice a second."""
    def mark(path: Path) -> tuple[Any, ...]:
        history = path / "history.jsonl"
        return (path.name, path.stat().st_mtime_ns, history.stat().st_size if history.is_file() else -1,
                live_process(path) is not None)

    if (folder / "config.yaml").is_file():
        return mark(folder)
    trials = folder / "trials.csv"
    members = [p for p in (*sorted((folder / "trials").glob("*")), *sorted(folder.iterdir())) if p.is_dir()]
    return (mark(folder), (trials.stat().st_size, trials.stat().st_mtime_ns) if trials.is_file() else None,
            *(mark(p) for p in members if (p / "config.yaml").is_file()))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _started(folder: Path) -> str | None:
    info = _read_json(folder / "process.json") if (folder / "process.json").is_file() else {}
    if isinstance(info.get("started"), str):
        return info["started"]
    for name in ("config.yaml", "search.yaml", "compare.json"):
        if (folder / name).is_file():
            return _iso((folder / name).stat().st_mtime)
    return None


def _metric(run: Run) -> dict[str, Any] | None:
    value = (run.metrics.get("validation") or {}).get(run.metric)
    if value is None and run.evals:
        value = run.evals[-1]["eval"].get(run.metric)
    if not isinstance(value, (int, float)):
        return None
    return {"name": run.metric, "value": value, "greater_is_better": run.greater}


def _base(name: str, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    strategy = config.get("strategy")
    return {"name": name, "kind": kind, "task": str(config.get("task") or DEFAULT_TASK),
            "model": config.get("model"), "strategy": strategy.get("name") if isinstance(strategy, dict) else None,
            "status": "unknown", "metric": None, "verdict": None, "seconds": None, "started": None,
            "resumable": False, "error": None}


def run_summary(folder: Path, name: str) -> dict[str, Any]:
    """The RunSummary of one run folder (see docs/studio.md)."""
    config = read_config(folder)
    summary = _base(name, "run", config)
    status, resumable, error = run_status(folder)
    summary.update(status=status, resumable=resumable, error=error, started=_started(folder))
    if (folder / "history.jsonl").is_file() or (folder / "metrics.json").is_file():
        run = read_run(folder, name)
        summary["metric"] = _metric(run)
        diagnosis = run.metrics.get("diagnosis")
        summary["verdict"] = diagnosis.get("verdict") if isinstance(diagnosis, dict) else None
        seconds = (run.metrics.get("train") or {}).get("seconds")
        summary["seconds"] = seconds if isinstance(seconds, (int, float)) else None
    return summary


def _members(folder: Path, kind: str) -> list[tuple[Path, str, str | None]]:
    try:
        return _search_runs(folder) if kind == "search" else _compare_runs(folder)
    except (LmtuneError, OSError):
        return []


def group_summary(folder: Path, name: str, kind: str) -> dict[str, Any]:
    """A search or compare folder: its best member's metric; running while one of its runs is."""
    members = [run_summary(path, label) for path, label, _ in _members(folder, kind)]
    if kind == "search":
        config = _yaml_mapping(folder / "search.yaml")
    else:
        _read_json(folder / "compare.json")  # (unreadable when it does not parse; {} while it is not written)
        config = {"task": members[0]["task"], "model": members[0]["model"]} if members else {}
    summary = _base(name, kind, {k: v for k, v in config.items() if k != "strategy"})
    summary["started"] = _started(folder)
    statuses = {m["status"] for m in members}
    summary["status"] = ("running" if "running" in statuses or live_process(folder) else
                         "finished" if statuses == {"finished"} else
                         next((s for s in ORDER if s in statuses), "starting"))
    if kind == "compare" and not (folder / "compare.json").is_file():
        # (its runs so far: one trains, or has only its config.yaml yet, else the compare ended without its table)
        started = [run_status(p)[0] for p in folder.iterdir() if (p / "config.yaml").is_file()]
        summary["status"] = next((s for s in ("running", "starting") if s in started), "interrupted")
    scored = [m["metric"] for m in members if m["metric"] is not None]
    if scored:
        greater = scored[0]["greater_is_better"]
        summary["metric"] = (max if greater else min)(scored, key=lambda m: m["value"])
    return summary


def _yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LmtuneError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise LmtuneError(f"{path}: expected a mapping")
    return obj


def summary(folder: Path, name: str) -> dict[str, Any] | None:
    """The summary of a folder of the runs folder; None for a folder that holds nothing of lmtune's;
    an unreadable one says why."""
    kind = kind_of(folder)
    if kind is None:
        return None
    try:
        return run_summary(folder, name) if kind == "run" else group_summary(folder, name, kind)
    except (LmtuneError, OSError, ValueError) as e:
        reason = "; ".join(e.problems) if isinstance(e, LmtuneError) else f"{type(e).__name__}: {e}"
        out = _base(name, kind, {})
        out.update(status="unreadable", error=reason, task=None)
        return out


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run, search and compare folder directly under the runs folder, newest first."""
    found = []
    for folder in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):
            s = summary(folder, folder.name)
            if s is not None:
                found.append(s)
    return sorted(found, key=lambda s: s["started"] or "", reverse=True)


def folder_of(runs_dir: Path, name: str) -> Path:
    """The folder of a run by name; LmtuneError for a name that is not one folder of the runs folder."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..",):
        raise NoSuchRun(f"{name!r}: not a run name")
    folder = runs_dir / name
    if not folder.is_dir() or kind_of(folder) is None:
        raise NoSuchRun(f"{name}: no such run in {runs_dir}")
    return folder


def log_path(runs_dir: Path, name: str) -> Path:
    return runs_dir / STUDIO / "logs" / f"{name}.log"


def log_tail(runs_dir: Path, name: str, chars: int = LOG_TAIL) -> str | None:
    path = log_path(runs_dir, name)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - chars))
        return f.read().decode("utf-8", errors="replace")


def _csv_rows(path: Path) -> list[dict[str, Any]] | None:
    import csv

    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _run_details(folder: Path, name: str) -> dict[str, Any]:
    config_yaml = (folder / "config.yaml").read_text(encoding="utf-8")
    logged = (folder / "history.jsonl").is_file() or (folder / "metrics.json").is_file()
    run = read_run(folder, name) if logged else None
    metrics = run.metrics if run is not None and run.metrics else None
    found = confusion_counts(run) if run is not None else None
    task = str(read_config(folder).get("task") or DEFAULT_TASK)
    try:
        generative = get_task(task).GENERATIVE
    except LmtuneError:
        generative = False
    return {
        "config": read_config(folder), "config_yaml": config_yaml,
        "history": read_jsonl(folder / "history.jsonl"), "metrics": metrics,
        "diagnosis": (metrics or {}).get("diagnosis") if isinstance((metrics or {}).get("diagnosis"), dict) else None,
        "confusion": {"labels": found[0], "matrix": found[1]} if found else None,
        "samples": run.samples[:SAMPLES] if run is not None and run.samples else None,
        "trials": None, "search": None, "comparison": None,
        "chat": bool(generative and metrics is not None and (folder / "model").is_dir()),
    }


def _search_goal(config: dict[str, Any]) -> tuple[str, bool]:
    """The metric a search's trials are scored by and whether greater is better, as `lmtune search`
    reads them from its config (search.metric, search.direction)."""
    search = config.get("search") if isinstance(config.get("search"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    task = str(config.get("task") or DEFAULT_TASK)
    try:
        default = get_task(task).METRICS[0]
    except LmtuneError:
        default = "loss"
    metric = str(search.get("metric") or train.get("metric") or default)
    direction = search.get("direction")
    greater = direction == "maximize" if direction in ("maximize", "minimize") else greater_is_better(task, metric)
    return metric, greater


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # (not NaN)


def search_points(config: dict[str, Any], rows: list[dict[str, Any]] | None,
                  members: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Each trial's number, state and value for the search's chart: from trials.csv once written, else
    from the trials' folders (complete: a finished run with the metric)."""
    metric, greater = _search_goal(config)
    points = []
    for row in rows or []:
        if str(row.get("trial", "")).isdigit():
            value = row.get(metric, row.get("value"))
            points.append({"trial": int(row["trial"]), "state": row.get("state") or "", "value": _number(value)})
    if rows is None:
        for path, run in members:
            value = (run["metric"] or {}).get("value") if (run["metric"] or {}).get("name") == metric else None
            complete = run["status"] == "finished" and value is not None
            points.append({"trial": int(path.name) if path.name.isdigit() else len(points),
                           "state": "complete" if complete else run["status"], "value": value})
    return {"metric": metric, "greater_is_better": greater, "source": "trials.csv" if rows is not None else "trials",
            "points": sorted(points, key=lambda p: p["trial"])}


def _group_details(folder: Path, name: str, kind: str) -> dict[str, Any]:
    config_file = folder / ("search.yaml" if kind == "search" else "compare.json")
    config = _yaml_mapping(config_file) if config_file.is_file() else {}  # (JSON is YAML)
    found = [(path, run_summary(path, label)) for path, label, _ in _members(folder, kind)]
    members = [run for _, run in found]
    rows = _csv_rows(folder / "trials.csv") if kind == "search" else None
    return {
        "config": config, "config_yaml": config_file.read_text(encoding="utf-8") if config_file.is_file() else None,
        "history": [], "metrics": None, "diagnosis": None, "confusion": None, "samples": None,
        "trials": (rows or members) if kind == "search" else None,
        "search": search_points(config, rows, found) if kind == "search" else None,
        "comparison": members if kind == "compare" else None, "chat": False,
    }


def run_details(runs_dir: Path, name: str) -> dict[str, Any]:
    """RunSummary and the details of a run by name (docs/studio.md); LmtuneError for an unknown name."""
    folder = folder_of(runs_dir, name)
    out = summary(folder, name) or {}
    if out.get("status") == "unreadable":
        out.update(config={}, config_yaml=None, history=[], metrics=None, diagnosis=None, confusion=None,
                   samples=None, trials=None, search=None, comparison=None, chat=False)
    else:
        try:
            out.update(_run_details(folder, name) if out["kind"] == "run" else _group_details(folder, name, out["kind"]))
        except (LmtuneError, OSError, ValueError) as e:
            out.update(status="unreadable", error="; ".join(e.problems) if isinstance(e, LmtuneError) else str(e))
    out["log_tail"] = log_tail(runs_dir, name)
    return out


def history_from(folder: Path, start: int) -> tuple[list[dict[str, Any]], int]:
    """The whole history records from line `start` (0-based) on, and the next line to read; a last
    line still being written waits for the next call."""
    path = folder / "history.jsonl"
    if not path.is_file():
        return [], start
    lines = path.read_text(encoding="utf-8").split("\n")
    complete = lines[:-1]  # (the text after the last newline is a line still being written)
    records = []
    for line in complete[start:]:
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
    return records, max(start, len(complete))
