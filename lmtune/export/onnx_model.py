"""`lmtune export --format onnx`: an encoder task's model (classification, token classification,
question answering) as one ONNX file for ONNX Runtime, with dynamic batch and sequence axes.

The folder is self-describing: model.onnx, the tokenizer's files, the model's config.json (its
id2label) and lmtune.json (task, labels, max_length, the graph's input and output names, and a
fingerprint of the weights it was exported from, so that `--backend onnx` can tell that a run's
export/onnx is its own). The exported file is run once with ONNX Runtime on a batch of another size
and length than the traced one, and the largest difference from torch is logged."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import LmtuneError
from ..infer.saved_run import SavedRun
from ..tasks import get_task

MISSING = "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'lmtune[onnx]'"
OPSET = 18
MODEL_FILE = "model.onnx"
INFO_FILE = "lmtune.json"
# the inputs a tokenizer may produce that an encoder's forward takes, in the graph's order
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# texts the graph is traced on (a batch of 2 with padding) and checked on (3 of another length)
TRACE_TEXTS = (["lmtune exports this model", "a"], ["to onnx", "b"])
CHECK_TEXTS = (["one", "a longer text than the traced ones, with more words in it than those", "c d e"],
               ["x", "y z", "a second text of some length"])


def require(*, runtime_only: bool = False) -> None:
    """The one line a missing ONNX package gives (runtime_only: running an export needs onnxruntime alone)."""
    try:
        import onnxruntime  # noqa: F401

        if not runtime_only:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
    except ImportError:
        raise LmtuneError(MISSING) from None


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 of the model folder's weight files (names and contents): what an export came from."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_names(model: Any, tokenizer: Any) -> list[str]:
    """What the tokenizer produces that the model's forward takes (input_ids, attention_mask and,
    for BERT-style models, token_type_ids)."""
    accepted = inspect.signature(model.forward).parameters
    produced = set(tokenizer.model_input_names) | {"input_ids"}
    return [name for name in KNOWN_INPUTS if name in produced and name in accepted]


class _Heads(torch.nn.Module):
    """The model's forward on named tensors, returning the task's outputs (a tuple, in order)."""

    def __init__(self, model: Any, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        extra = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, **{k: v for k, v in extra.items() if v is not None})
        return tuple(getattr(out, name) for name in self.outputs)


def _batch(tokenizer: Any, texts: tuple[list[str], list[str]], names: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: enc[name] for name in names}


def _trace(heads: _Heads, dummy: dict[str, torch.Tensor], outputs: tuple[str, ...], path: Path) -> None:
    """torch.onnx.export with the dynamo exporter (torch.export, then onnxscript). The legacy
    TorchScript exporter (dynamo=False) traces transformers 5's attention-mask code with the traced
    batch's padding as constants: a BERT exported that way disagrees with torch by about 1e-2 on a
    batch of another shape. torch.export keeps batch and sequence symbolic (and checks that the
    graph holds for every size). Its progress lines go to stdout, which `lmtune predict` writes
    predictions to: they are kept out."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in dummy}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # (torchvision's ops)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(heads, (), str(path), kwargs=dummy, dynamic_shapes=shapes, input_names=list(dummy),
                          output_names=list(outputs), opset_version=OPSET, dynamo=True, external_data=False,
                          verbose=False)


def check_with_runtime(heads: _Heads, path: Path, batch: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between ONNX Runtime's outputs and torch's on `batch`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(list(heads.outputs), {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        ours = heads(**batch)
    return max(float(np.abs(t - o.numpy()).max()) for t, o in zip(theirs, ours))


def max_length_of(saved: SavedRun, model: Any) -> int:
    """The run's data.max_length; for a model folder 512, within the model's positions."""
    if saved.cfg is not None:
        return int(saved.cfg.data.max_length)
    return min(512, getattr(model.config, "max_position_embeddings", 512) or 512)


def write_onnx(model: Any, tokenizer: Any, saved: SavedRun, folder: Path, *, log: Callable[[str], Any] = print) -> None:
    """Write model.onnx, the tokenizer, config.json and lmtune.json into `folder`."""
    require()
    task = get_task(saved.task)
    names = input_names(model, tokenizer)
    heads = _Heads(model, tuple(task.onnx_outputs)).eval()
    max_length = max_length_of(saved, model)
    path = folder / MODEL_FILE
    _trace(heads, _batch(tokenizer, TRACE_TEXTS, names, max_length), heads.outputs, path)
    check = _batch(tokenizer, CHECK_TEXTS, names, max_length)
    diff = check_with_runtime(heads, path, check)
    log(f"checked {MODEL_FILE} with ONNX Runtime on a batch of {check['input_ids'].shape[0]} x "
        f"{check['input_ids'].shape[1]} tokens: largest difference from torch {diff:.1e}")
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    labels = saved.labels if saved.labels is not None else task.bare_labels(model)
    info = {"format": "onnx", "task": saved.task, "labels": labels, "max_length": max_length, "inputs": names,
            "outputs": list(heads.outputs), "opset": OPSET, "source": saved.name,
            "weights_sha256": weights_fingerprint(saved.model_dir)}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
