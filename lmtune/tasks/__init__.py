"""One module per task. Each says how to read and tokenize its data, which head to build, how to
compute its metrics, and at inference how to read inputs, predict and write result rows; neither the
training loop nor the inference path knows any of it. A task module defines `TASK`, a
`contract.Task`; `registry.py` lists them; `run_config.py` reads a run's config with its task's
own sections."""

from __future__ import annotations

from .registry import DEFAULT_TASK, TASK_ALIASES, TASKS, get_task

__all__ = ["DEFAULT_TASK", "TASK_ALIASES", "TASKS", "get_task"]
