"""What a report is made of, read from disk: a run folder into a `Run`, and the paths given into run
folders (a search folder into its trials, a compare folder into its runs).

Everything but config.yaml and one of history.jsonl / metrics.json is optional: an older run, an
unfinished one or one trained without evaluation simply has less to show.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import LmtuneError
from ..infer.saved_run import did_you_mean
from ..tasks import DEFAULT_TASK, get_task

EXPECTED = ("a run folder (config.yaml with history.jsonl or metrics.json), a search folder (search.yaml, "
            "trials/) or a compare folder (compare.json)")


@dataclass
class Run:
    path: Path
    name: str  # how the report calls it: the folder's name, "trial 0007" for a search's trial
    config: dict[str, Any]  # config.yaml as written (read as a mapping, not validated: old runs read too)
    steps: list[dict[str, Any]] = field(default_factory=list)  # history step records: step, epoch, loss, lr, lrs, ...
    evals: list[dict[str, Any]] = field(default_factory=list)  # history evaluation records: step, epoch, eval, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json ({} while the run has not finished)
    samples: list[dict[str, Any]] = field(default_factory=list)  # validation_samples.jsonl
    labels: list[str] = field(default_factory=list)  # the run's labels (model/lmtune.json, else data.json)
    state: str | None = None  # a search trial's state (complete, pruned, fail) from trials.csv

    @property
    def task(self) -> str:
        return str(self.config.get("task") or DEFAULT_TASK)

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    @property
    def metric(self) -> str:
        """The metric the run was tuned for (train.metric, else the task's first)."""
        chosen = (self.config.get("train") or {}).get("metric")
        if chosen:
            return str(chosen)
        metrics = task_metrics(self.task)
        return metrics[0] if metrics else "loss"

    @property
    def greater(self) -> bool:
        """Whether a larger value of `metric` is better."""
        return greater_is_better(self.task, self.metric)


def task_metrics(task: str) -> tuple[str, ...]:
    """The metric names a task reports, in its order (() for a task this version does not know)."""
    try:
        return tuple(get_task(task).METRICS)
    except LmtuneError:
        return ()


def greater_is_better(task: str, metric: str) -> bool:
    try:
        return bool(get_task(task).GREATER_IS_BETTER.get(metric, metric not in ("loss", "perplexity")))
    except LmtuneError:
        return metric not in ("loss", "perplexity")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON records, one a line; a last line cut short (a run still writing) is left out."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not text.endswith("\n"):
                break
            raise LmtuneError(f"{path}:{n}: not a JSON record: {line[:80]}") from None
        if not isinstance(record, dict):
            raise LmtuneError(f"{path}:{n}: expected a JSON object, found {line[:80]}")
        records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmtuneError(f"{path}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise LmtuneError(f"{path}: expected a JSON object")
    return obj


def is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "history.jsonl").is_file() or (path / "metrics.json").is_file())


def read_run(path: Path, name: str | None = None, state: str | None = None) -> Run:
    """The run in folder `path`; LmtuneError (naming the file) for a folder that is not one or a
    file that does not parse."""
    if not is_run_folder(path):
        if (path / "config.yaml").is_file():
            raise LmtuneError(f"{path}: the run has logged nothing yet (no history.jsonl or metrics.json)")
        raise LmtuneError(f"{path}: not {EXPECTED}")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LmtuneError(f"{path / 'config.yaml'}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise LmtuneError(f"{path / 'config.yaml'}: expected a mapping of config sections")
    history = read_jsonl(path / "history.jsonl")
    info = _read_json(path / "model" / "lmtune.json")
    labels = info.get("labels") or _read_json(path / "data.json").get("labels") or []
    return Run(
        path=path,
        name=name or path.resolve().name,
        config=config,
        steps=[r for r in history if "loss" in r and "eval" not in r],
        evals=[r for r in history if isinstance(r.get("eval"), dict)],
        metrics=_read_json(path / "metrics.json"),
        samples=read_jsonl(path / "validation_samples.jsonl"),
        labels=[str(label) for label in labels] if isinstance(labels, list) else [],
        state=state,
    )


def _trial_states(folder: Path) -> dict[str, str]:
    """trials.csv's state of each trial, by its folder name (0007)."""
    path = folder / "trials.csv"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as f:
        return {f"{int(r['trial']):04d}": r.get("state", "") for r in csv.DictReader(f) if str(r.get("trial", "")).isdigit()}


def _search_runs(folder: Path) -> list[tuple[Path, str, str | None]]:
    states = _trial_states(folder)
    trials = folder / "trials"
    found = sorted(p for p in trials.iterdir() if is_run_folder(p)) if trials.is_dir() else []
    if not found:
        raise LmtuneError(f"{folder}: a search folder with no trial that has logged anything yet (in {trials})")
    return [(p, f"trial {p.name}", states.get(p.name)) for p in found]


def _compare_runs(folder: Path) -> list[tuple[Path, str, str | None]]:
    """The compare's runs in its own order (compare.json), else its subfolders that hold runs."""
    names = [Path(str(r.get("output_dir", ""))).name for r in _read_json(folder / "compare.json").get("runs", [])
             if isinstance(r, dict)]
    found = [folder / n for n in dict.fromkeys(names) if n and is_run_folder(folder / n)]
    found += [p for p in sorted(folder.iterdir()) if p.is_dir() and is_run_folder(p) and p not in found]
    if not found:
        raise LmtuneError(f"{folder}: a compare folder with no run that has logged anything yet")
    return [(p, p.name, None) for p in found]


def expand(paths: list[Path]) -> list[Run]:
    """The runs of the paths given, in order: a run folder is itself, a search folder its trials,
    a compare folder its runs. Run names are made unique (prefixed with their folder's name)."""
    if not paths:
        raise LmtuneError(f"no folder given; expected {EXPECTED}")
    found: list[tuple[Path, str, str | None, Path]] = []
    for path in map(Path, paths):
        if not path.exists():
            raise LmtuneError(f"{path}: no such folder{did_you_mean(path)}; expected {EXPECTED}")
        if not path.is_dir():
            raise LmtuneError(f"{path}: a file, not a folder; expected {EXPECTED}")
        if (path / "search.yaml").is_file() and not is_run_folder(path):
            found += [(p, n, s, path) for p, n, s in _search_runs(path)]
        elif (path / "compare.json").is_file() and not is_run_folder(path):
            found += [(p, n, s, path) for p, n, s in _compare_runs(path)]
        else:
            if not is_run_folder(path):
                read_run(path)  # raises, naming the path and what was expected
            found.append((path, path.resolve().name, None, path))
    several_inputs = len({str(c.resolve()) for *_, c in found}) > 1
    names = [f"{c.resolve().name}/{n}" if several_inputs and c != p else n for p, n, _, c in found]
    for i, name in enumerate(names):  # the same name twice: the folders' paths tell them apart
        if names.count(name) > 1:
            names[i] = str(found[i][0])
    return [read_run(p, n, s) for (p, _, s, _), n in zip(found, names)]


def per_class_title(task: str) -> str:
    """The title of the report's per-label table ("Per class"; a task may name its labels otherwise)."""
    try:
        return get_task(task).per_class_title
    except LmtuneError:
        return "Per class"
