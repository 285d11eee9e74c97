"""`lmtune export`: what is asked is checked first (a finished run, a format its task has, an output
that does not exist unless replaced), then the model is loaded in fp32 with LoRA adapters merged, and
the format's writer fills a temporary folder that is renamed into place whole."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..core import models
from ..core.errors import LmtuneError, option
from ..core.rundir import replace_dir_atomic
from ..infer.saved_run import SavedRun, load_model, read_run
from ..tasks import get_task

FORMATS = ("hf", "gguf", "onnx")
GGUF_TYPES = ("f32", "f16", "q8_0")
DEFAULT_GGUF_TYPE = "f16"


def default_output(run_dir: str | Path, format: str, type: str | None) -> Path:
    """Where an export goes when no -o is given: `RUN/export/<format>[-<type>]`."""
    name = format if format != "gguf" else f"gguf-{type or DEFAULT_GGUF_TYPE}"
    return Path(run_dir) / "export" / name


def check(run_dir: str | Path, out: Path, *, format: str, type: str | None, overwrite: bool) -> SavedRun:
    """The request's problems, each one line, before anything is loaded."""
    if format not in FORMATS:
        raise LmtuneError(f"--format: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise LmtuneError(f"{out} exists; use {option('--overwrite', 'overwrite=True')} to replace it")
    saved = read_run(run_dir)
    task = get_task(saved.task)
    if type is not None and format != "gguf":
        raise LmtuneError(f"--type {type}: only GGUF exports have a type ({', '.join(GGUF_TYPES)})")
    if format == "gguf":
        if type is not None and type not in GGUF_TYPES:
            raise LmtuneError(f"--type: unknown GGUF type {type!r}; expected one of {', '.join(GGUF_TYPES)}")
        if not task.GENERATIVE:
            raise LmtuneError(f"{run_dir}: a {saved.task} model cannot be exported to GGUF (llama.cpp runs causal "
                              "language models); use --format onnx or hf")
    if format == "onnx" and not task.onnx_outputs:
        able = "an encoder task's" if task.GENERATIVE else "classification, token classification or QA"
        raise LmtuneError(f"{run_dir}: a {saved.task} model cannot be exported to ONNX (lmtune exports "
                          f"{able} models); use --format {'gguf' if task.GENERATIVE else 'hf'}")
    return saved


def check_onnx_backend(saved: SavedRun) -> None:
    """`--backend onnx` runs a run's ONNX export: one line where its task has none."""
    if not get_task(saved.task).onnx_outputs:
        raise LmtuneError(f"--backend onnx: {saved.folder} is a {saved.task} model, which has no ONNX export "
                          "(classification, token classification and QA models have); use --backend torch")


def merged_model(saved: SavedRun, *, merge: bool = True) -> Any:
    """The run's model in fp32 on the CPU, in eval mode, LoRA adapters folded into the weights."""
    model = load_model(saved, get_task(saved.task))
    if models.is_adapter(model):
        if not merge:
            raise LmtuneError(f"{saved.folder}: the model is a LoRA adapter; pass {option('--merge', 'merge=True')} "
                              "to fold it into the base weights")
        model = model.merge_and_unload()
    return model.float().eval()


def export(run_dir: str | Path, out: str | Path | None = None, *, format: str = "hf", type: str | None = None,
           merge: bool = False, overwrite: bool = False, log=print) -> Path:
    """Write the run's model in `format` to the folder `out` (default: RUN/export/...); return it."""
    out = Path(out) if out is not None else default_output(run_dir, format, type)
    saved = check(run_dir, out, format=format, type=type, overwrite=overwrite)
    tokenizer = models.load_tokenizer(saved.model_dir)
    model = merged_model(saved, merge=merge or format != "hf")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if format == "hf":
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        elif format == "gguf":
            from .gguf_model import write_gguf

            write_gguf(model, tokenizer, saved, tmp, type=type or DEFAULT_GGUF_TYPE, log=log)
        else:
            from .onnx_model import write_onnx

            write_onnx(model, tokenizer, saved, tmp, log=log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir_atomic(tmp, out)
    return out
