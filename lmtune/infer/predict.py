"""Inference on a finished run (`Predictor`, from lmtune.infer.predictor) and `lmtune export`."""

from __future__ import annotations

from pathlib import Path

from ..core import models
from ..core.errors import LmtuneError, option
from ..core.rundir import replace_dir_atomic
from .predictor import Predictor

__all__ = ["Predictor", "export"]


def export(run_dir: str | Path, out: str | Path, *, merge: bool, overwrite: bool = False) -> Path:
    """Write the run's model as a plain transformers folder (adapters merged into the weights)."""
    import shutil

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LmtuneError(f"{out} exists; use {option('--overwrite', 'overwrite=True')} to replace it")
    predictor = Predictor.from_run(run_dir)
    model = predictor.accelerator.unwrap_model(predictor.model)
    if models.is_adapter(model):
        if not merge:
            raise LmtuneError(f"{run_dir}: the model is a LoRA adapter; pass {option('--merge', 'merge=True')} "
                              "to fold it into the base weights")
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    predictor.tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_dir_atomic(tmp, out)
    return out
