"""`lmtune plan CONFIG`: what a run will need before it runs. The config read and resolved as `lmtune
train` resolves it, the data tokenized, the model built with its strategy, the memory plan
(memory_plan.py: the estimate by part, the micro-batch, the evaluation batch, the verdict and what
would fit), and a time estimate from a short probe of real training steps and one evaluation batch:
seconds per padded token of a training pass and of an evaluation, times the padded tokens the run
will pass (its batches are known before it starts), plus the start-up it measured itself. Nothing is
written."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import models
from ..core.runtime import cpu_threads, make_accelerator
from ..data.batching import EpochBatchSampler
from ..tasks import get_task
from ..tasks.common import PLANNING
from ..tasks.run_config import RunConfig, as_config
from . import memory_plan, strategies
from .cpu import speed_ups
from .loop import (MicroBatches, choose_attention, compile_blocks, compiles, enable_checkpointing,
                   resolve_defaults, weigh_parts)


# what a run does that the plan does not: its folder's records (config, data.json, run.json), the
# tracker, the model folder put in place, the process's exit (measured: about a second more than the
# plan's own start-up, on MiniLM and SmolLM2 runs alike)
RUN_EXTRA_SECONDS = 1.0
REPORT_SECONDS = 1.5  # report.html at the end (measured: about a second for a short run)
SAVE_BYTES_PER_SECOND = 400e6  # writing a checkpoint and the model folder (safetensors) at each evaluation


def process_seconds() -> float | None:
    """How long this process has run (Linux /proc): a command's start-up before the plan began
    (Python, torch and transformers imported) counts in the run's wall time too."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class TimeEstimate:
    """A run's duration, by part, in seconds (from measured seconds per padded token)."""

    setup: float  # reading, tokenizing, loading the model (measured), and scoring before training
    train: float  # every training step
    evaluation: float  # one evaluation (validation and the training sample) and its checkpoint
    evaluations: int
    final: float  # the final evaluation (test) and report.html
    compile: float = 0.0  # the first step's extra (compiling the blocks, warming up)
    steps: int = 0
    step_seconds: float = 0.0  # a step of average length
    probe_steps: int = 0

    @property
    def total(self) -> float:
        return self.setup + self.compile + self.train + self.evaluation * self.evaluations + self.final

    def record(self) -> dict[str, Any]:
        return {"total_s": round(self.total, 1), "setup_s": round(self.setup, 1), "compile_s": round(self.compile, 1),
                "train_s": round(self.train, 1), "evaluation_s": round(self.evaluation, 1), "evaluations": self.evaluations,
                "final_s": round(self.final, 1), "steps": self.steps, "step_s": round(self.step_seconds, 3),
                "probe_steps": self.probe_steps}

    def lines(self) -> list[str]:
        return [f"time: about {duration(self.total)} in all: start-up {duration(self.setup + self.compile)}, "
                f"{self.steps} steps of about {self.step_seconds:.1f} s ({duration(self.train)}), {self.evaluations} "
                f"evaluation{'s' if self.evaluations != 1 else ''} of about {duration(self.evaluation)} with its checkpoint, "
                f"the end {duration(self.final)} (measured on {self.probe_steps} steps)"]


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class RunPlan:
    cfg: RunConfig
    memory: memory_plan.MemoryPlan
    time: TimeEstimate | None
    notes: list[str] = field(default_factory=list)  # what auto resolved to

    def lines(self) -> list[str]:
        return [*self.notes, *self.memory.lines(), *(self.time.lines() if self.time else [])]

    def record(self) -> dict[str, Any]:
        return {"memory": self.memory.details(), "time": self.time.record() if self.time else None, "notes": self.notes}


def padded_tokens(lengths: list[int], batches: list[list[int]], micro: int, sequences: int) -> int:
    """The positions a run passes through the model: each batch as micro-batches of at most `micro`
    examples, the longest first, each padded to its longest (MicroBatches)."""
    total = 0
    for batch in batches:
        ordered = sorted((lengths[i] for i in batch), reverse=True)
        total += sum(len(ordered[k:k + micro]) * ordered[k] for k in range(0, len(ordered), micro))
    return total * sequences


def plan(config: RunConfig | str | dict[str, Any], *, probe_steps: int = 3, data: Any = None,
         started: float | None = None) -> RunPlan:
    """The plan of a run of `config` (memory always; time when probe_steps > 0 and the run fits).
    `started`: the time.perf_counter() at which the command started, whose start-up (reading the data
    before the call) counts; by default now."""
    cfg = as_config(config)
    with cpu_threads(cfg.train.threads):
        return _plan(cfg, probe_steps, data, time.perf_counter() if started is None else started)


def _plan(cfg: RunConfig, probe_steps: int, data: Any, started: float) -> RunPlan:
    task = get_task(cfg.task)
    data = task.load_data(cfg) if data is None else data
    model_path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(model_path)
    cfg, _, notes = resolve_defaults(cfg, task, data, tokenizer)
    t = cfg.train
    accelerator = make_accelerator(t.precision)
    splits = {"train": data.train, "validation": data.validation, **({"test": data.test} if data.test is not None else {})}
    token = PLANNING.set(True)  # (a task that scores its examples before training leaves that to the run)
    try:
        features = {name: task.prepare(table, tokenizer, cfg, data.labels)[0] for name, table in splits.items()}
    finally:
        PLANNING.reset(token)
    lengths = {name: [len(f["input_ids"]) for f in feats] for name, feats in features.items()}
    attention = choose_attention(t.attention, accelerator.device.type, lengths["train"], task.EAGER_MAX_LENGTH)
    model = task.build_model(model_path, cfg, data.labels, attn_implementation=attention)
    if t.gradient_checkpointing is True:
        enable_checkpointing(model)
    strategy = strategies.apply(model, cfg.strategy, t.lr, t.weight_decay)
    model = strategy.model.to(accelerator.device)
    mem = memory_plan.plan_memory(cfg, model, accelerator, attention, max(lengths["train"]), task.sequences_per_example)
    setup = time.perf_counter() - started
    result = RunPlan(cfg, mem, None, notes + mem.notes)
    if probe_steps <= 0 or memory_plan.memory_problem(mem, t) is not None:
        return result
    if mem.checkpointing and t.gradient_checkpointing == "auto":
        enable_checkpointing(model)
    result.time = probe(cfg, task, model, strategy, accelerator, tokenizer, features, lengths, mem, probe_steps, setup)
    return result


def probe(cfg: RunConfig, task: Any, model: Any, strategy: Any, accelerator: Any, tokenizer: Any,
          features: dict[str, list[dict[str, Any]]], lengths: dict[str, list[int]], mem: memory_plan.MemoryPlan,
          steps: int, setup: float) -> TimeEstimate:
    """Time `steps` real training steps (after one that warms up and compiles) and an evaluation batch
    (after one that warms up); scale by the run's padded tokens."""
    t, seq = cfg.train, task.sequences_per_example
    sampler = EpochBatchSampler(lengths["train"], t.batch_size, seed=t.seed, group_by_length=t.group_by_length)
    batches = sampler.batches()
    steps_per_epoch = math.ceil(len(batches) / t.gradient_accumulation_steps)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    if compiles(t, task, total_steps, mem.micro_batch):
        compile_blocks(model)
    collate = task.collator(tokenizer, cfg, model)
    split = MicroBatches(collate, mem.micro_batch)
    optimizer = torch.optim.AdamW(strategy.groups, lr=t.lr, **({"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}))
    speed = speed_ups(model, accelerator)
    clip = speed.gradient_clipping(optimizer)
    autocast = accelerator.autocast if accelerator.mixed_precision != "no" else contextlib.nullcontext
    device = accelerator.device

    def train_batch(indices: list[int]) -> float:
        began = time.perf_counter()
        parts, weights, _, _ = weigh_parts(task, [{k: v.to(device) if torch.is_tensor(v) else v for k, v in p.items()}
                                                  for p in split([features["train"][i] for i in indices])])
        for part, weight in zip(parts, weights):
            with autocast():
                loss = task.training_loss(model, part, cfg) if task.training_loss else model(**part).loss
            (loss * weight).backward()
        if t.max_grad_norm:
            clip(t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    # the probe's batches: the first of the epoch warms up; then `steps` spread over the epoch's
    # batches (length-grouped batches differ in length: a spread sees short and long ones)
    chosen = [batches[round(k * (len(batches) - 1) / max(1, steps))] for k in range(steps + 1)] if len(batches) > 1 else batches * (steps + 1)
    model.train()
    with speed.heap():
        first = train_batch(chosen[0])
        timed = [train_batch(b) for b in chosen[1:]]
        probe_tokens = padded_tokens(lengths["train"], chosen[1:], mem.micro_batch, seq)
        per_token = sum(timed) / max(1, probe_tokens)
        epoch_tokens = padded_tokens(lengths["train"], batches, mem.micro_batch, seq)
        train_seconds = per_token * epoch_tokens * total_steps / steps_per_epoch
        compile_extra = max(0.0, first - per_token * padded_tokens(lengths["train"], chosen[:1], mem.micro_batch, seq))
        eval_per_token = eval_seconds_per_token(task, model, cfg, collate, features["validation"], lengths["validation"],
                                                mem.eval_batch, autocast, device)
    optimizer.zero_grad(set_to_none=True)

    def eval_tokens(name: str) -> int:
        if name not in lengths:
            return 0
        s = EpochBatchSampler(lengths[name], mem.eval_batch, seed=t.seed, shuffle=False)
        return padded_tokens(lengths[name], s.batches(), mem.eval_batch, seq)

    sample = min(getattr(cfg.eval, "train_sample", 0), len(lengths["validation"]))
    sample_tokens = eval_tokens("validation") * sample / max(1, len(lengths["validation"]))
    one_eval = eval_per_token * (eval_tokens("validation") + sample_tokens)
    evaluations = (math.ceil(total_steps / t.eval_steps) if t.eval_steps
                   else min(t.epochs, math.ceil(total_steps / steps_per_epoch)))
    scoring = 0.0
    if task.scores_before_training(cfg):  # one forward pass of every example before training
        scoring = eval_per_token * sum(eval_tokens(name) for name in ("train", "validation", "test"))
    # each evaluation also writes the checkpoint (what trains, and AdamW's two fp32 states of it) and,
    # where it improved, the model folder (the whole model; of LoRA, its adapter)
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    whole = sum(p.numel() * p.element_size() for p in model.parameters()) if not models.is_adapter(model) else trained
    one_eval += (trained + 8 * mem.trainable + whole) / SAVE_BYTES_PER_SECOND
    # the final evaluation: the test split (validation's outputs are the best evaluation's, kept
    # where it was the last, as it mostly is)
    final = eval_per_token * eval_tokens("test") + (REPORT_SECONDS if t.report else 0.0)
    return TimeEstimate(setup=setup + RUN_EXTRA_SECONDS + scoring, train=train_seconds, evaluation=one_eval, evaluations=evaluations,
                        final=final, compile=compile_extra, steps=total_steps,
                        step_seconds=train_seconds / max(1, total_steps), probe_steps=steps)


def eval_seconds_per_token(task: Any, model: Any, cfg: RunConfig, collate: Any, features: list[dict[str, Any]],
                           lengths: list[int], batch: int, autocast: Any, device: Any) -> float:
    """Seconds per padded position of the task's evaluation step, on the validation batch of median
    length (after one that warms up)."""
    order = sorted(range(len(features)), key=lambda i: -lengths[i])
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    pick = batches[len(batches) // 2]
    model.eval()
    seconds = 0.0
    with torch.no_grad():
        for attempt in range(2):
            part = collate([features[i] for i in pick])
            part.pop("num_tokens", None)
            part = {k: v.to(device) if torch.is_tensor(v) else v for k, v in part.items()}
            began = time.perf_counter()
            with autocast():
                task.eval_step(model, part, cfg)
            seconds = time.perf_counter() - began
    model.train()
    return seconds / max(1, len(pick) * max(lengths[i] for i in pick) * task.sequences_per_example)
