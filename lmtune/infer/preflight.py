"""What `lmtune predict` and `lmtune eval` check before a model is loaded, so that a wrong argument is
said at once rather than after the seconds of importing torch and reading weights: the output file,
the run folder, the column options, and the input file, read by the task's own readers (predict: its
first rows; eval: the whole labelled file, which is then scored as it was read here).

Nothing here imports torch or transformers (a tokenizer is loaded only for rows that need a chat
template to become prompts)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ..core import models
from ..core.config import DataConfig
from ..core.errors import LmtuneError
from ..tasks import get_task
from ..tasks.run_config import key_tasks
from .saved_run import SavedRun, did_you_mean, read_for_inference

PEEK_ROWS = 256  # rows of an input file that predict reads (and checks) before the model is loaded


@dataclass
class Reading:
    """What a task's readers ask of a session (lmtune.infer.predictor.Predictor), without the model: the
    run's data settings and labels. The tokenizer is loaded when first asked for."""

    saved: SavedRun
    data: DataConfig
    labels: list[str]
    progress: bool = False

    @property
    def cfg(self) -> Any:
        return self.saved.cfg

    @property
    def task_name(self) -> str:
        return self.saved.task

    @cached_property
    def tokenizer(self) -> Any:
        return models.load_tokenizer(self.saved.model_dir)


@dataclass(frozen=True)
class Checked:
    """A run and an input file checked: the run with the file's column names (`saved`, `data`) and,
    for eval, the labelled file as the task read it."""

    saved: SavedRun
    data: DataConfig
    labelled: Any = None


def check_readable(path: str | Path) -> Path:
    """`path` if it is a file that can be opened."""
    path = Path(path)
    if not path.exists():
        raise LmtuneError(f"{path}: file not found{did_you_mean(path, folders=False)}")
    if not path.is_file():
        raise LmtuneError(f"{path}: a folder, not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise LmtuneError(f"{path}: cannot be read ({e.strerror})") from None
    return path


def _labels(saved: SavedRun) -> list[str]:
    """The run's labels, or those of a model folder's config (id2label; without one, transformers
    gives a model two: LABEL_0 and LABEL_1)."""
    if saved.labels is not None:
        return saved.labels
    config = saved.model_dir / "config.json"
    id2label = json.loads(config.read_text()).get("id2label") if config.is_file() else None
    if not id2label:
        return ["LABEL_0", "LABEL_1"]
    return [id2label[k] for k in sorted(id2label, key=int)]


def with_columns(saved: SavedRun, data: DataConfig, columns: dict[str, tuple[str, str | None]]) -> tuple[SavedRun, DataConfig]:
    """The run reading a file by the file's column names: `columns` maps a data key (text_column)
    to (its command-line flag, the file's name for that column or None)."""
    update = {}
    for key, (flag, name) in columns.items():
        if name is None:
            continue
        tasks = key_tasks("data", key)
        if not get_task(saved.task).reads("data", key):
            raise LmtuneError(f"{flag}: a {saved.task} model does not read data.{key} (only {', '.join(tasks)} do)")
        update[key] = name
    if not update:
        return saved, data
    data = data.model_copy(update=update)
    if saved.cfg is not None:
        saved = replace(saved, cfg=saved.cfg.model_copy(update={"data": data}))
    return saved, data


def check_run_and_file(target: str, path: str, *, columns: list[str] | None,
                       renamed: dict[str, tuple[str, str | None]], template: str | None = None,
                       labelled: bool = False) -> Checked:
    """The run or model `target` and an input file (`labelled`: a file to evaluate on), checked as
    the task will read them. `renamed`: see with_columns."""
    saved = read_for_inference(target)
    task = get_task(saved.task)
    labels = _labels(saved)
    data = saved.cfg.data if saved.cfg is not None else task.data_section(train="", max_length=256, **task.bare_data(labels))
    saved, data = with_columns(saved, data, renamed)
    file = check_readable(path)
    reading = Reading(saved, data, labels)
    if labelled:
        return Checked(saved, data, task.read_labelled(reading, file, columns))
    chunks = task.input_chunks(reading, file, columns, template, PEEK_ROWS)
    try:
        next(chunks, None)
    finally:
        chunks.close()
    return Checked(saved, data)
