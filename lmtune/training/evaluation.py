"""Evaluation: the one batched forward (`forward_batches`) and what training evaluates with it.

`forward_batches` runs a step over batches of examples on a device and hands back each batch's
outputs as arrays with the indices of its examples. Everything that scores a model in batches goes
through it: the training loop's evaluations (`evaluate`: each process its part of every batch,
gathered back in data order), the forgetting check's perplexity, and on the inference side
`Predictor.run_batches` (lmtune eval, lmtune predict, lmtune.load().predict, the server's predict
route) and explain's target scores.

Beside it, what the loop evaluates with: `Evaluation` (validation, the training sample and the
general text at each evaluation), `is_better` (which evaluation is the best), `brief`, and
`general_text_features` (eval.forgetting's text as the task's evaluation blocks).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable

import numpy as np
import torch

from ..core import collectives
from ..core.config import RunConfig
from ..data.readers import Table
from . import forgetting

# step(model, batch) -> named outputs, each with one row per example of the batch
Step = Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]]
# (the indices of a batch's examples, the step's outputs for them as arrays)
Part = tuple[list[int], dict[str, np.ndarray]]


def forward_batches(model: Any, batches: Iterable[tuple[list[int], dict[str, Any]]], step: Step, *, device: Any,
                    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                    gather: Callable[[list[Part]], list[list[Part]]] | None = None,
                    progress: Callable[[int], Any] | None = None, inference: bool = True) -> list[Part]:
    """`step(model, batch)` over `batches` ((example indices, collated batch) pairs), each batch
    moved to `device` and run under `autocast()`; the outputs as arrays (floating point ones as
    float32) with their examples' indices, one part per batch, in the order run. `gather`: called
    with this process's parts, returns every process's (each process's part of the data set); the
    result is then all of them, process after process. `progress`: called with the number of
    examples after each batch. `inference`: under torch.inference_mode(); False, torch.no_grad()
    (a model that trains on afterwards: tensors that a forward caches in inference mode could not
    be saved for a backward later)."""
    from accelerate.utils import send_to_device

    parts: list[Part] = []
    with torch.inference_mode() if inference else torch.no_grad():
        for ids, batch in batches:
            batch = send_to_device(dict(batch), device)
            with autocast():
                out = step(model, batch)
            parts.append((list(ids), {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in out.items()}))
            if progress is not None:
                progress(len(ids))
    if gather is not None:
        parts = [part for theirs in gather(parts) for part in theirs]
    return parts


def in_data_order(parts: list[Part]) -> dict[str, np.ndarray]:
    """The parts' outputs concatenated (every batch of the same width) and put in the order of
    their indices; an example that occurs twice (a process without examples of its own repeats
    some, FSDP) counts once."""
    parts = [p for p in parts if p[0]]
    if not parts:
        return {}
    indices = [i for ids, _ in parts for i in ids]
    outputs = {key: np.concatenate([out[key] for _, out in parts]) for key in parts[0][1]}
    _, first = np.unique(indices, return_index=True)
    return {key: value[first] for key, value in outputs.items()}


def by_example(parts: list[Part], n: int) -> list[dict[str, np.ndarray]]:
    """For each of `n` examples, in index order, its rows of the outputs (padded to its batch's width)."""
    out: list[dict[str, np.ndarray]] = [{}] * n
    for ids, arrays in parts:
        for j, i in enumerate(ids):
            out[i] = {k: a[j] for k, a in arrays.items()}
    return out


# ---------------------------------------------------------------- the training side


def evaluate(task: Any, model: Any, loader: torch.utils.data.DataLoader, accelerator: Any, cfg: RunConfig) -> dict[str, np.ndarray]:
    """The task's per-example eval outputs over a whole data set, in data order. Each process
    evaluates its part of every batch (the sampler's split: no example twice, none left out); the
    parts are gathered with their example indices and put back in order."""
    # the bare model: processes may hold different numbers of batches, and a DDP forward would
    # wait for the others
    bare = accelerator.unwrap_model(model)
    bare.eval()
    indices = [list(part) for part in loader.batch_sampler]

    def step(model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch.pop("num_tokens", None)
        return task.eval_step(model, batch, cfg)

    gather = (lambda parts: collectives.gather_objects(accelerator, parts)) if accelerator.num_processes > 1 else None
    parts = forward_batches(bare, zip(indices, loader), step, device=accelerator.device, autocast=accelerator.autocast,
                            gather=gather, inference=False)
    bare.train()
    return in_data_order(parts)


def eval_metrics(task: Any, model: Any, loader: Any, accelerator: Any, labels: list[str], cfg: RunConfig) -> dict[str, Any]:
    # the features (the loader's data set, in data order) let a task map its outputs back to the
    # examples (question answering: windows -> questions and their contexts)
    return task.compute_metrics(evaluate(task, model, loader, accelerator, cfg), labels, cfg, loader.dataset)


def is_better(value: float, loss: float | None, best: float | None, best_loss: float | None, greater: bool) -> bool:
    """Whether an evaluation beats the best so far: a better metric, or the same metric with a lower
    validation loss (a metric that saturates, f1 1.0 at every evaluation, still picks the model
    that fits best). Early stopping counts the same improvements."""
    if best is None:
        return True
    if value != best:
        return value > best if greater else value < best
    return loss is not None and best_loss is not None and loss < best_loss


@dataclass
class Evaluation:
    """What every evaluation runs: validation (it picks the best model; early stopping watches it)
    and beside it a sample of the training split (the train-validation gap shows overfitting) and
    general text (its perplexity against the base model's shows forgetting)."""

    validation: Any
    train_sample: Any = None
    general_text: Any = None
    # the latest evaluation's per-example outputs by split, and its step: when that step's model is
    # the final one, the final evaluation reuses them instead of running the same forwards again
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    outputs_step: int | None = None
    general_result: dict[str, float] | None = None  # (the latest evaluation's forgetting figures)

    def run(self, task: Any, model: Any, accelerator: Any, labels: list[str], cfg: RunConfig,
            state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the validation metrics, the evaluation record's other parts: train_eval, forgetting).
        `state`: the loop's state (its step and the base model's perplexity)."""
        self.outputs, self.outputs_step = {}, state.step
        metrics = self.scores("validation", task, model, accelerator, labels, cfg)
        more: dict[str, Any] = {}
        if self.train_sample is not None:
            more["train_eval"] = brief(self.scores("train_sample", task, model, accelerator, labels, cfg))
        if self.general_text is not None and state.base_perplexity is not None:
            more["forgetting"] = self.general_result = self.forgetting(task, model, accelerator, cfg, state.base_perplexity)
        return metrics, more

    def scores(self, name: str, task: Any, model: Any, accelerator: Any, labels: list[str], cfg: RunConfig) -> dict[str, Any]:
        loader = getattr(self, name)
        self.outputs[name] = evaluate(task, model, loader, accelerator, cfg)
        return task.compute_metrics(self.outputs[name], labels, cfg, loader.dataset)

    def perplexity(self, task: Any, model: Any, accelerator: Any, cfg: RunConfig) -> float:
        return float(eval_metrics(task, model, self.general_text, accelerator, [], cfg)["perplexity"])

    def forgetting(self, task: Any, model: Any, accelerator: Any, cfg: RunConfig, base: float) -> dict[str, float]:
        now = self.perplexity(task, model, accelerator, cfg)
        return {"perplexity": round(now, 4), "base_perplexity": round(base, 4),
                "change": round(forgetting.change(base, now), 4)}


def brief(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as a history record holds them (without the per-class table)."""
    return {k: v for k, v in metrics.items() if k != "per_class"}


def general_text_features(task: Any, tokenizer: Any, cfg: RunConfig) -> list[dict[str, Any]] | None:
    """eval.forgetting: the general text as the task's own evaluation blocks (plain text, cut into
    blocks of data.max_length; a masked LM's masked once with train.seed), or None when unset."""
    path = forgetting.text_path(getattr(cfg.eval, "forgetting", False))  # (the tasks that have eval.forgetting)
    if path is None:
        return None
    column = cfg.data.text_column
    passages = forgetting.read_passages(path)
    table = Table(path, [column], [{column: p} for p in passages], list(range(1, len(passages) + 1)))
    table.mask_once = True  # type: ignore[attr-defined]
    # (plain blocks for every task: no sentence pairs of a masked LM with data.nsp either)
    as_text = cfg.model_copy(update={"data": cfg.data.model_copy(update={"shape": "text", "packing": False, "nsp": False})})
    return task.prepare(table, tokenizer, as_text, [])[0]
