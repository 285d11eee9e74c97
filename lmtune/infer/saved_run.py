"""What a finished run (or a saved model) is on disk, read in one place: `read_run(target)` for a run
folder, a model folder, a GGUF file or a bundled model name; `load_model(saved, task)` for the
model, a full transformers model or a PEFT adapter on its base, with the run's attention kernel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core import models
from ..core.config import RunConfig
from ..core.errors import LmtuneError, option
from ..tasks import DEFAULT_TASK, get_task
from ..tasks.registry import all_tasks
from ..tasks.run_config import saved_config


@dataclass(frozen=True)
class SavedRun:
    model_dir: Path  # the model folder (a run's model/, or the folder given)
    cfg: RunConfig | None  # the run's resolved config; None for a bare model folder or a model name
    task: str
    labels: list[str] | None  # from model/lmtune.json; None where the model's config must say
    attention: str | None  # the attention kernel the run trained and evaluated with (None: transformers' default)

    @property
    def folder(self) -> Path:
        """The run folder, else the model folder."""
        return self.model_dir.parent if self.cfg is not None else self.model_dir

    @property
    def name(self) -> str:
        """What the model is called: the run folder's name, else the model folder's."""
        return self.folder.name


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _info(model_dir: Path) -> dict[str, Any]:
    """model/lmtune.json: the task, labels and attention kernel of a run's model."""
    info = model_dir / "lmtune.json"
    return json.loads(info.read_text()) if info.is_file() else {}


def _task_of(model_dir: Path, info: dict[str, Any]) -> str:
    """The task of a model folder without a run config: what lmtune.json or the architecture
    (or an adapter's task type: a causal LM's is generative) says, else the default task."""
    if info.get("task"):
        return info["task"]
    adapter = model_dir / "adapter_config.json"
    if adapter.is_file() and json.loads(adapter.read_text()).get("task_type") == "CAUSAL_LM":
        return next(t.name for t in all_tasks() if t.GENERATIVE)
    config = model_dir / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    for task in all_tasks():
        if any(a.endswith(task.head_suffix()) for a in architectures):
            return task.name
    return DEFAULT_TASK


def did_you_mean(path: Path, *, folders: bool = True) -> str:
    """'; did you mean runs/b?': the folder (or file) beside a missing `path` whose name is
    closest to its name, if one is close."""
    import difflib

    parent = path.parent
    siblings = sorted(p.name for p in parent.iterdir() if p.is_dir() == folders) if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f"; did you mean {parent / close[0]}?" if close else ""


def read_run(target: str | Path) -> SavedRun:
    """A run folder (with config.yaml and model/), a model folder, a .gguf file or a bundled model
    name. Raises LmtuneError for an unfinished run or something that is none of these."""
    path = Path(target)
    if _is_model_dir(path / "model"):
        cfg = None
        if (path / "config.yaml").is_file():
            cfg = saved_config(yaml.safe_load((path / "config.yaml").read_text()))
        model_dir = path / "model"
    elif _is_model_dir(path):
        cfg, model_dir = None, path
    elif (path / "config.yaml").is_file():
        how = option("lmtune train --resume", "lmtune.train(config, resume=True)")
        raise LmtuneError(f"{path}: the run has no model/ yet (unfinished? resume it with {how})")
    elif str(target) in models.BUNDLED or (path.is_file() and path.suffix == ".gguf"):
        cfg, model_dir = None, models.resolve(str(target))  # a base model (a GGUF file converted once)
    elif path.exists():
        raise LmtuneError(f"{path}: not a run folder or model folder (no model/config.json)")
    else:
        raise LmtuneError(f"{target}: not a run folder, a model folder or a model name: it does not exist "
                          f"(bundled models: {', '.join(models.BUNDLED)}){did_you_mean(path)}")
    info = _info(model_dir)
    task = cfg.task if cfg is not None else _task_of(model_dir, info)
    return SavedRun(model_dir, cfg, task, info.get("labels"), info.get("attention"))


def read_for_inference(target: str | Path) -> SavedRun:
    """read_run, for a model to predict with: a bundled encoder (no task head yet) is refused."""
    saved = read_run(target)
    if not get_task(saved.task).GENERATIVE and saved.cfg is None and str(target) in models.BUNDLED:
        raise LmtuneError(f"{target}: a bundled encoder has no task head yet; fine-tune it first (lmtune train)")
    return saved


def adapter_base(saved: SavedRun, adapter: Path) -> Path:
    """The folder of an adapter's base model. adapter_config.json names the base as the run's config
    did (a bundled name, a folder or a .gguf file; runs of earlier versions: a folder of the machine
    that trained them), resolved on this machine; where that fails, the run config's model is."""
    base = json.loads(adapter.read_text()).get("base_model_name_or_path") or ""
    names = dict.fromkeys(n for n in (base, saved.cfg.model if saved.cfg is not None else "") if n)
    problems = []
    for name in names:
        try:
            return models.resolve(name)
        except LmtuneError as e:
            problems += e.problems
    raise LmtuneError(f"{adapter}: the base model {base!r} is not here: "
                      + (problems[0] if problems else "base_model_name_or_path is empty"))


def load_model(saved: SavedRun, task: Any) -> Any:
    """The model of a saved run: a full transformers model, or a PEFT adapter on its base model."""
    adapter = saved.model_dir / "adapter_config.json"
    if not adapter.is_file():
        return models.load_pretrained(task.AUTO_MODEL, saved.model_dir, attn_implementation=saved.attention)
    from peft import PeftModel

    base = adapter_base(saved, adapter)
    if saved.cfg is not None:
        body = task.build_model(base, saved.cfg, saved.labels or [], attn_implementation=saved.attention)
        with models.wrapping_adapters():
            return PeftModel.from_pretrained(body, saved.model_dir)
    # a bare adapter folder: its base as it is, which suits an adapter without a task head of its own
    try:
        body = models.load_pretrained(task.AUTO_MODEL, base, attn_implementation=saved.attention)
        with models.wrapping_adapters():
            return PeftModel.from_pretrained(body, saved.model_dir)
    except (RuntimeError, ValueError, KeyError) as e:
        raise LmtuneError(f"{saved.model_dir}: an adapter with a task head needs the run folder around it "
                          f"(with config.yaml): {str(e).splitlines()[0]}") from None
