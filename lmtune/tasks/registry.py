"""The tasks lmtune knows: one line each, its name and its module (imported the first time the task
is asked for, so that naming the tasks, as the command line's help does, loads none of them).
Adding a task is a module that defines `TASK` (lmtune/tasks/contract.py) and a line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..core.errors import LmtuneError

if TYPE_CHECKING:  # (naming the tasks loads no task, nor the config schema)
    from .contract import Task

MODULES = {
    "classification": "lmtune.tasks.classification",
    "causal_lm": "lmtune.tasks.causal_lm",
    "token_classification": "lmtune.tasks.token_classification",
    "masked_lm": "lmtune.tasks.masked_lm",
    "question_answering": "lmtune.tasks.question_answering",
    "preference": "lmtune.tasks.preference",
}
TASKS = tuple(MODULES)
DEFAULT_TASK = TASKS[0]  # a config without `task`

# The names users type for a task, read as the task's own name (the run's config.yaml holds the real one).
TASK_ALIASES: dict[str, str] = {
    "ner": "token_classification",
    "qa": "question_answering",
    "sentiment": "classification",
    "sft": "causal_lm",
    "chat": "causal_lm",
    "instruct": "causal_lm",
    "generation": "causal_lm",
    "mlm": "masked_lm",
    "dpo": "preference",
}


def get_task(name: str) -> Task:
    if name not in MODULES:
        raise LmtuneError(f"task: unknown task {name!r}; expected one of {', '.join(TASKS)}")
    task: Task = importlib.import_module(MODULES[name]).TASK
    return task


def all_tasks() -> list[Task]:
    return [get_task(name) for name in TASKS]


def canonical(name: str) -> str:
    """The task's own name for a name a user typed (an alias, any case); other names as they are."""
    return TASK_ALIASES.get(name.strip().lower(), name)


def task_aliases_text() -> str:
    """`ner = token_classification, ...`, for help texts."""
    return ", ".join(f"{alias} = {task}" for alias, task in TASK_ALIASES.items())
