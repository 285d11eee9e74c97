"""Experiment tracking: the history records and the run's config, sent to accelerate's trackers.

train.report_to names them: tensorboard (the default; its package is one of lmtune's own), mlflow
and wandb (installed by the user when wanted). history.jsonl stays the run's own record; a tracker
gets the same numbers as scalars, to compare runs side by side in the tracker's own viewer.

TensorBoard writes its event files into `<run>/tensorboard/`, so that `tensorboard --logdir runs`
lists every run under its folder name, with its hyperparameters beside its scalars: the HParams tab
then holds one row per run, its config and its last metrics side by side.

MLflow and Weights & Biases go where the user's environment sends them (MLFLOW_TRACKING_URI,
WANDB_MODE=offline, WANDB_PROJECT ...); lmtune only names the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import yaml
from accelerate.tracking import TensorBoardTracker, on_main_process

from .errors import LmtuneError

# the package each tracker imports
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# the run folder's subfolder that holds TensorBoard's event files
FOLDER = "tensorboard"
# wandb's project and mlflow's experiment, where WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME name none
PROJECT = "lmtune"


def check_installed(report_to: list[str]) -> None:
    """Raise, before any work starts, for a tracker whose package is not installed (mlflow and wandb
    are not lmtune's dependencies; accelerate would leave such a tracker out without a word)."""
    missing = [name for name in report_to if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise LmtuneError(*(f"train.report_to: {name} needs the {PACKAGES[name]} package, which is not installed: "
                            f"pip install {PACKAGES[name]} (or leave {name} out of train.report_to)" for name in missing))


def accelerator_options(report_to: list[str], run_path: Path) -> dict[str, Any]:
    """Keyword arguments for Accelerator(...) that set up the trackers of train.report_to; {} for none.

    accelerate names TensorBoard's folder `<logging_dir>/<project name>`, and the project name is also
    wandb's project and mlflow's experiment: so TensorBoard comes as a tracker made here, whose folder
    is `<run>/tensorboard` whatever the project is called. Nothing is written before `start`."""
    if not report_to:
        return {}
    log_with = [TensorBoard(FOLDER, str(run_path)) if name == "tensorboard" else name for name in report_to]
    # (project_dir: the folder accelerate gives a tracker that asks for one; checkpoints name their own)
    return {"log_with": log_with, "project_dir": str(run_path)}


class TensorBoard(TensorBoardTracker):
    """accelerate's TensorBoard tracker, with the hyperparameters written into the run's own event
    files. accelerate's add_hparams puts them into a subfolder of their own, a run of its own for
    TensorBoard, declared with no metrics: the HParams tab would list configs without results.
    Written beside the scalars and with no experiment summary, TensorBoard pairs each run's config
    with its scalars and offers every scalar tag as a metric column."""

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        _experiment, session_start, _session_end = hparams(values, {})
        self.writer.file_writer.add_summary(session_start)
        self.writer.flush()


def hyperparameters(cfg: Any) -> dict[str, bool | int | float | str]:
    """The resolved config (as config.yaml holds it) as flat `train.lr` keys with scalar values:
    a list or null becomes its JSON text, which TensorBoard's HParams and mlflow's params accept."""
    out: dict[str, bool | int | float | str] = {}

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                put(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = json.dumps(value, ensure_ascii=False)

    put("", yaml.safe_load(cfg.to_yaml()))
    return out


def start(accelerator: Any, cfg: Any, run_name: str, resumed_at: int | None = None) -> None:
    """Start the trackers with the run's hyperparameters. wandb and mlflow name the run `run_name`
    (the run folder's name); where they send it is theirs to decide (WANDB_MODE, MLFLOW_TRACKING_URI).

    A run resumed from its checkpoint at step `resumed_at` logs the steps after it again: TensorBoard
    is told to drop what its event files hold from the step after the checkpoint on (a purge step),
    so that each step appears once, with the resumed run's values."""
    if not accelerator.log_with:
        return
    if resumed_at is not None:
        for tracker in accelerator.log_with:
            if isinstance(tracker, TensorBoardTracker):
                tracker.init_kwargs["purge_step"] = resumed_at + 1
    project = os.environ.get("WANDB_PROJECT") or PROJECT
    accelerator.init_trackers(project, config=hyperparameters(cfg),
                              init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracker scalars of one history record (a step record or an evaluation record); values
    that are not numbers are left out."""
    tagged: dict[str, Any] = {
        "train/loss": record.get("loss"),
        "train/lr": record.get("lr"),
        **{f"train/lr/{group}": lr for group, lr in (record.get("lrs") or {}).items()},
        "train/samples_per_second": record.get("samples_per_second"),
        "train/tokens_per_second": record.get("tokens_per_second"),
        **{f"eval/{name}": value for name, value in (record.get("eval") or {}).items()},
        **{f"train_sample/{name}": value for name, value in (record.get("train_eval") or {}).items()},
        **{f"forgetting/{name}": (record.get("forgetting") or {}).get(name) for name in ("perplexity", "change")},
    }
    return {tag: float(value) for tag, value in tagged.items() if _number(value)}


def log(accelerator: Any, record: dict[str, Any]) -> None:
    """Send one history record to the trackers, at its step."""
    values = scalars(record)
    if values and accelerator.trackers:
        accelerator.log(values, step=int(record["step"]))


def end(accelerator: Any) -> None:
    """Close the trackers (TensorBoard flushes its files, wandb and mlflow end the run).

    Not accelerator.end_training(): that also destroys the process group, which a distributed run
    still needs after this (and a second run in the same launch, such as a search, too)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
