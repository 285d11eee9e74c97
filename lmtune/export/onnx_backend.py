"""ONNX Runtime as an inference backend (`lmtune predict --backend onnx`, `lmtune serve --backend
onnx`): a run's ONNX export in the place of its torch model, so that the tasks' predict and
eval_step code runs unchanged.

`onnx_predictor(saved)` uses RUN/export/onnx when it is the run's own (its lmtune.json names the
same weights), else exports there first. The session runs on the CPU, in fp32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import LmtuneError
from ..infer.predictor import Predictor
from ..infer.saved_run import SavedRun
from .onnx_model import INFO_FILE, MODEL_FILE, require, weights_fingerprint
from .run import check_onnx_backend, default_output, export


class OnnxOutputs(dict):
    """A model's outputs by name, also as attributes (out.logits, out.start_logits)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OnnxModel:
    """An onnxruntime.InferenceSession that is called like the model: with the batch's tensors as
    keyword arguments (those the graph does not take, such as labels, are left out; token_type_ids
    where a batch has none are zeros), returning the graph's outputs as torch tensors on the
    inputs' device. `config`: the exported model's transformers config (its id2label)."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime
        from transformers import AutoConfig

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.config = AutoConfig.from_pretrained(folder)

    def __call__(self, **batch: torch.Tensor) -> OnnxOutputs:
        ids = batch["input_ids"]
        feed = {}
        for name in self.inputs:
            value = batch.get(name)
            feed[name] = np.zeros(tuple(ids.shape), np.int64) if value is None else value.cpu().numpy().astype(np.int64)
        values = self.session.run(self.outputs, feed)
        return OnnxOutputs({name: torch.from_numpy(v).to(ids.device) for name, v in zip(self.outputs, values)})


def own_export(saved: SavedRun, folder: Path) -> bool:
    """Whether `folder` holds an ONNX export of the run's weights (False: there is none; an
    export of other weights, or a folder that is not an export, is an error)."""
    if not folder.exists():
        return False
    info_path = folder / INFO_FILE
    if not (folder / MODEL_FILE).is_file() or not info_path.is_file():
        raise LmtuneError(f"{folder}: not an ONNX export of lmtune (no {MODEL_FILE} and {INFO_FILE}); move it away "
                          f"or export again with lmtune export {saved.folder} --format onnx --overwrite")
    info = json.loads(info_path.read_text())
    if info.get("weights_sha256") != weights_fingerprint(saved.model_dir):
        raise LmtuneError(f"{folder}: exported from other weights than {saved.model_dir}'s (the run was trained "
                          f"again?); export again with lmtune export {saved.folder} --format onnx --overwrite")
    return True


def onnx_predictor(saved: SavedRun, *, threads: int | None = None, log: Callable[[str], Any] = print) -> Predictor:
    """A Predictor of the run whose model is its ONNX export, run by ONNX Runtime."""
    check_onnx_backend(saved)
    require(runtime_only=True)
    folder = default_output(saved.folder, "onnx", None)
    if not own_export(saved, folder):
        log(f"exporting {saved.name} to ONNX in {folder} (once: later runs use it)")
        export(saved.folder, folder, format="onnx", log=log)
    return Predictor(saved, model=OnnxModel(folder, threads))
