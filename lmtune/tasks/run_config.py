"""A run's config, read and checked: the shared sections (lmtune/core/config.py) with the run's task's
own data and eval sections (its `Task.config`). Every problem is listed at once, each with its key
path: a misspelled key (with the closest valid one suggested), a wrong type, an impossible value, a
key of another task, a missing file, an unknown model, a strategy that does not fit the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import (
    RunConfig,
    apply_overrides,
    config_rows,
    read_yaml,
    schema_problems,
    shared_problems,
)
from ..core.errors import LmtuneError
from .registry import DEFAULT_TASK, TASKS, all_tasks, canonical, get_task, task_aliases_text

SECTIONS = ("data", "eval")  # the sections whose keys differ between tasks


def resolve_task(raw: dict[str, Any]) -> dict[str, Any]:
    """Replace an alias in raw["task"] (ner, qa, sft, ...) by the task's name, in place."""
    task = raw.get("task")
    if isinstance(task, str):
        raw["task"] = canonical(task)
    return raw


def key_tasks(section: str, key: str) -> list[str]:
    """The tasks whose runs have the key `section.key`, in registry order."""
    return [t.name for t in all_tasks() if t.reads(section, key)]


def _tasks_text(tasks: list[str]) -> str:
    return "task " + tasks[0] if len(tasks) == 1 else "tasks " + ", ".join(tasks[:-1]) + " and " + tasks[-1]


def inapplicable_keys(raw: dict[str, Any], task: str) -> tuple[dict[str, Any], list[str]]:
    """The raw mapping without the keys that only other tasks have, and a line for each (they would be
    ignored, so they are errors, reported beside any other problem)."""
    mine, problems = get_task(task), []
    kept = dict(raw)
    for name in raw:  # a section of other tasks only (preference: ...)
        others = [t.name for t in all_tasks() if name in t.config.model_fields]
        if others and name not in mine.config.model_fields:
            problems.append(f"{name} applies to {_tasks_text(others)} only, not to this run's task {task}")
            kept.pop(name)
    for section in SECTIONS:
        given = raw.get(section)
        if not isinstance(given, dict):
            continue
        for name in list(given):
            others = key_tasks(section, name)
            if others and not mine.reads(section, name):
                problems.append(f"{section}.{name} applies to {_tasks_text(others)} only, not to this run's task {task}")
                kept[section] = {k: v for k, v in kept[section].items() if k != name}
    return kept, problems


def validate(raw: dict[str, Any], *, check_files: bool = True) -> RunConfig:
    """Validate a raw mapping into the run config of its task; raise LmtuneError listing every problem."""
    resolve_task(raw)
    raw.setdefault("task", DEFAULT_TASK)
    name = raw["task"]
    if not isinstance(name, str) or name not in TASKS:
        raise LmtuneError(f"task: unknown task {name!r}; expected one of {', '.join(TASKS)} "
                          f"(also read: {task_aliases_text()})")
    task = get_task(name)
    checked, misplaced = inapplicable_keys(raw, name)
    cfg, problems = schema_problems(task.config, checked)
    if cfg is None:
        raise LmtuneError(*problems, *misplaced)
    problems = misplaced + shared_problems(cfg, check_files=check_files)
    if cfg.train.metric is None:
        cfg.train.metric = task.METRICS[0]
    if cfg.train.metric not in task.METRICS:
        problems.append(f"train.metric: {cfg.train.metric!r} is not reported by task {name}; "
                        f"choose one of {', '.join(task.METRICS)}")
    if problems:
        raise LmtuneError(*problems)
    return cfg


def saved_config(raw: dict[str, Any]) -> RunConfig:
    """The config.yaml of a finished run, as it was written (its files need not exist any more; keys of
    other tasks, which older versions wrote, are left out)."""
    resolve_task(raw)
    raw.setdefault("task", DEFAULT_TASK)
    kept, _ = inapplicable_keys(raw, raw["task"])
    return get_task(raw["task"]).config.model_validate(kept)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply overrides, fill the default output_dir, and validate it. Without a
    path, the overrides are the whole config (`model=minilm-l6 data.train=reviews.csv`)."""
    raw = apply_overrides(read_yaml(path) if path is not None else {}, overrides or [])
    raw["output_dir"] = output_dir_of(path, raw)
    return validate(raw)


def output_dir_of(path: str | Path | None, raw: dict[str, Any]) -> str:
    """The run folder of a config (read from `path`, overrides applied): its output_dir, by default
    runs/<config file name> (runs/<task> for a config of overrides only)."""
    if raw.get("output_dir") is not None:
        return raw["output_dir"]
    resolve_task(raw)
    name = Path(path).stem if path is not None else str(raw.get("task") or DEFAULT_TASK)
    return str(Path("runs") / name)


def as_config(config: RunConfig | str | Path | dict[str, Any]) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        raw = dict(config)
        raw.setdefault("output_dir", "runs/run")
        return validate(raw)
    return load_config(config)


def reference(task: str | None = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every config key, strategies included; with `task`,
    only the keys of that task's runs (without, every task's: the data and eval keys of each task after
    those of the tasks before it, each key once, then the sections of a task's own, such as preference)."""
    first, *others = [get_task(task)] if task is not None else all_tasks()
    by_section: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in config_rows(first.config):
        if row[0] == "task":  # (each task's config has its own name: the key takes every task's)
            description = RunConfig.model_fields["task"].description
            row = ("task", "str", repr(DEFAULT_TASK), f"{description}: {', '.join(TASKS)}; also read: {task_aliases_text()}")
        by_section.setdefault(row[0].split(".")[0], []).append(row)
    shared = set(by_section) - set(SECTIONS)  # every run's sections; a task's own (preference) come whole
    for other in others:
        for row in config_rows(other.config):
            section = row[0].split(".")[0]
            rows = by_section.setdefault(section, []) if section not in shared else []
            if row[0] not in {r[0] for r in rows}:
                rows.append(row)
    return [row for rows in by_section.values() for row in rows]
