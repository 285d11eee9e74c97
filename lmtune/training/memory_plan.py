"""The memory plan of a run, made before anything trains: the estimate of a step's peak by part, the
micro-batch, the evaluation batch and gradient checkpointing that fit train.memory_limit, the memory
the machine has free, a verdict, and where the run does not fit, the changes that would make it fit,
each with its estimate. `lmtune plan` prints it; every `lmtune train` logs it and refuses a run that
cannot fit before it starts (core/memory.py holds the arithmetic)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core import memory, models

LORA_RANK = 8  # the LoRA row of the plan (a full run's alternative): the default rank


@dataclass
class MemoryPlan:
    """What a run's steps and evaluations will hold, and whether that fits."""

    parameters: int
    trainable: int
    batch_size: int
    micro_batch: int
    length: int
    checkpointing: bool
    estimate: memory.Estimate
    budget: int
    budget_rule: str
    free: int | None  # the memory the run may take now (what it holds already counted), None where unknown
    eval_batch: int
    eval_estimate: memory.Estimate
    generation_bytes: int = 0  # the KV cache of the generations scored at each evaluation (causal_lm)
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)
    alternatives: dict[str, memory.Estimate] = field(default_factory=dict)  # a row of the plan each
    estimate_for: Callable[[int, bool], memory.Estimate] | None = None  # (micro-batch, checkpointing) -> estimate
    eval_estimate_for: Callable[[int], memory.Estimate] | None = None  # (evaluation batch) -> estimate
    fixes: list[str] = field(default_factory=list)  # where it does not fit: what would, smallest first

    @property
    def peak(self) -> int:
        """The larger of a training step's and an evaluation's peak."""
        return max(self.estimate.total, self.eval_estimate.total + self.generation_bytes)

    @property
    def fits(self) -> bool:
        return self.free is None or self.peak <= self.free

    def record(self) -> dict[str, Any]:
        """For metrics.json (train)."""
        return {"micro_batch_size": self.micro_batch, "estimated_peak_mb": round(self.estimate.total / 2**20, 1),
                "gradient_checkpointing": self.checkpointing, "eval_batch_size": self.eval_batch}

    def details(self) -> dict[str, Any]:
        """All of it, for `lmtune plan --json`."""
        mb = lambda n: round(n / 2**20, 1)  # noqa: E731
        return {
            **self.record(),
            "batch_size": self.batch_size,
            "max_length": self.length,
            "parameters": self.parameters,
            "trainable": self.trainable,
            "parts_mb": {name: mb(getattr(self.estimate, name)) for name in memory.PARTS},
            "eval_peak_mb": mb(self.eval_estimate.total),
            "generation_mb": mb(self.generation_bytes),
            "alternatives_mb": {name: mb(e.total) for name, e in self.alternatives.items()},
            "budget_mb": mb(self.budget),
            "budget_rule": self.budget_rule,
            "free_mb": None if self.free is None else mb(self.free),
            "fits": self.fits,
            "fixes": self.fixes,
        }

    def lines(self) -> list[str]:
        """The plan in a few lines, for the log and `lmtune plan`."""
        e, gib = self.estimate, memory.gib
        parts = self.batch_size // self.micro_batch + (self.batch_size % self.micro_batch > 0)
        batch = f"batch {self.batch_size}" + (f" in {parts} micro-batches of {self.micro_batch}" if parts > 1 else "")
        out = [
            f"plan: {self.parameters / 1e6:.1f}M parameters, {self.trainable / 1e6:.2f}M of them trained; {self.precision}; "
            f"{batch}, inputs up to {self.length} tokens; gradient checkpointing {'on' if self.checkpointing else 'off'}",
            f"plan: a step's peak about {gib(e.total)} GiB: " + ", ".join(f"{name} {gib(getattr(e, name))}" for name in memory.PARTS),
        ]
        if self.alternatives:
            out.append("plan: instead, " + "; ".join(f"{name}: {gib(a.total)} GiB" for name, a in self.alternatives.items()))
        generation = f"; with the KV cache of its generations {gib(self.generation_bytes)} GiB more" if self.generation_bytes else ""
        out.append(f"plan: an evaluation in batches of {self.eval_batch}: about {gib(self.eval_estimate.total)} GiB{generation}")
        free = "the free memory cannot be read here" if self.free is None else f"{gib(self.free)} GiB free to the run"
        verdict = "fits" if self.fits else "does NOT fit"
        out.append(f"plan: {free}; planned within {gib(self.budget)} GiB ({self.budget_rule}); {verdict}")
        if self.fixes:
            out.append("plan: would fit with " + "; or ".join(self.fixes))
        return out


def free_bytes(device: Any) -> int | None:
    """The memory a run may take now: on a GPU its free memory and what torch holds of it already; on
    CPU the machine's available memory and this process's resident set (the model loaded: the run's
    own), shared between the processes of this machine."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_allocated(device)
    free = memory.available_bytes()
    if free is None:
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return (free + (memory.resident_bytes() or 0) * local) // local


def lora_trainable(model: Any, rank: int = LORA_RANK) -> int:
    """The parameters LoRA of `rank` would train: r x (inputs + outputs) of each linear layer of the
    blocks (lmtune's default targets), and a task head that is not the language-model head."""
    from .strategies import find_blocks

    _, blocks = find_blocks(model)
    count = sum(rank * (m.in_features + m.out_features) for block in blocks for m in block.modules()
                if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:  # a classifier head trains in full
        count += sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in ("classifier", "qa_outputs", "score"))
    return count


def plan_memory(cfg: Any, model: Any, accelerator: Any, attention: str, length: int, sequences: int = 1,
                free: int | None = -1) -> MemoryPlan:
    """The plan for `model` as it will train (strategy applied): train.micro_batch_size (auto: the
    largest of the batch, its half, quarter, ... whose estimate fits the budget), train.eval_batch_size
    (auto: 2 x batch, halved the same way), train.gradient_checkpointing (auto: on only where a
    micro-batch of one does not fit without it). The estimate counts the parameters' bytes, fp32
    gradients and AdamW's two states of the trainable ones (over the processes with FSDP), and the
    activations of a micro-batch of inputs `length` tokens long (`sequences` of them per example: a
    preference pair is two). `free`: the memory free to the run (-1: read it now)."""
    t = cfg.train
    shape = memory.Shape.of(model.config)
    params = list(model.parameters())
    share = accelerator.num_processes if t.distributed == "fsdp" else 1
    weights = sum(p.numel() * p.element_size() for p in params) // share
    parameters = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad) // share
    half = accelerator.mixed_precision != "no"
    adapters = models.is_adapter(model)
    flags = {"eager": attention == "eager", "half": half}
    gpu = accelerator.device.type == "cuda"
    free = free_bytes(accelerator.device) if free == -1 else free
    limit = memory.parse_limit(t.memory_limit)
    budget, rule = memory.budget(limit, free, gpu=gpu)
    notes: list[str] = []

    # (on a GPU the process itself is host memory: torch's allocations are the peak that counts)
    runtime = 0 if gpu else memory.RUNTIME

    def estimate_for(micro: int, checkpointing: bool, *, lora: bool = adapters, trained: int = trainable,
                     tokens: int = length) -> memory.Estimate:
        e = memory.training_estimate(shape, weights, trained, micro * sequences, tokens, checkpointing=checkpointing,
                                     adapters=lora, **flags)
        return dataclasses.replace(e, runtime=runtime)

    checkpointing = t.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = estimate_for(1, False).total > budget and estimate_for(1, True).total <= budget
        if checkpointing:
            notes.append(f"train.gradient_checkpointing: auto -> on: a micro-batch of one needs about "
                         f"{memory.gib(estimate_for(1, False).total)} GiB without it, over the budget of {memory.gib(budget)} GiB")
    checkpointing = bool(checkpointing)
    if t.micro_batch_size == "auto":
        micro = memory.micro_batch_for(budget, t.batch_size, lambda m: estimate_for(m, checkpointing))
        if micro < t.batch_size:
            parts = -(-t.batch_size // micro)
            notes.append(f"train.micro_batch_size: auto -> {micro}: each batch of {t.batch_size} in {parts} micro-batches; "
                         f"a whole batch of inputs up to {length} tokens would need about "
                         f"{memory.gib(estimate_for(t.batch_size, checkpointing).total)} GiB, over the budget of {memory.gib(budget)} GiB")
    else:
        micro = t.micro_batch_size
    estimate = estimate_for(micro, checkpointing)

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    outputs = getattr(head, "out_features", 0) or 0
    generation = 0
    rows = getattr(cfg.eval, "generate_rows", 0) or 0
    if rows:
        generation = memory.kv_cache_bytes(shape, rows, length + cfg.eval.max_new_tokens, half=half)

    def eval_estimate(batch: int) -> memory.Estimate:
        acts = memory.evaluation_bytes(shape, batch * sequences, length, outputs, **flags)
        return memory.Estimate(weights=weights, gradients=0, optimizer=0, activations=acts, runtime=runtime)

    eval_batch = choose_eval_batch(t, budget, eval_estimate, length, notes)
    alternatives = {f"gradient checkpointing {'off' if checkpointing else 'on'}": estimate_for(micro, not checkpointing)}
    if not adapters:
        alternatives[f"LoRA (r {LORA_RANK})"] = estimate_for(micro, checkpointing, lora=True, trained=lora_trainable(model))
    plan = MemoryPlan(parameters, trainable, t.batch_size, micro, length, checkpointing, estimate, budget, rule, free,
                      eval_batch, eval_estimate(eval_batch), generation, "bf16 autocast" if half else "fp32", notes,
                      alternatives, estimate_for, eval_estimate)
    if not plan.fits or (limit.size is not None and estimate_for(1, checkpointing).total > budget):
        plan.fixes = fixes(plan, model, adapters, estimate_for, target=budget if limit.size is not None else free)
    return plan


def choose_eval_batch(t: Any, budget: int, estimate: Callable[[int], memory.Estimate], length: int,
                      notes: list[str]) -> int:
    """train.eval_batch_size (auto: twice the training batch, halved until its estimate fits)."""
    if t.eval_batch_size != "auto":
        return t.eval_batch_size
    batch = 2 * t.batch_size
    while batch > 1 and estimate(batch).total > budget:
        batch = -(-batch // 2)
    if batch < 2 * t.batch_size:
        notes.append(f"train.eval_batch_size: auto -> {batch}: an evaluation batch of {2 * t.batch_size} inputs up to "
                     f"{length} tokens would need about {memory.gib(estimate(2 * t.batch_size).total)} GiB")
    return batch


def length_within_memory(cfg: Any, task: Any, cap: tuple[int, str]) -> tuple[int, str]:
    """data.max_length: auto's cap lowered, where needed, to the longest length (a multiple of 8) at
    which a micro-batch of one fits train.memory_limit, with gradient checkpointing unless it is
    off (the model read from its config and the size of its weight files, before it is loaded; a
    full run's gradients and AdamW states counted, LoRA's left out). Beside it the length rule
    (tasks/common.py) bounds the time of a batch, which on CPU binds first."""
    from transformers import AutoConfig

    t = cfg.train
    try:
        folder = Path(models.resolve(cfg.model))
        shape = memory.Shape.of(AutoConfig.from_pretrained(folder))
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) or sum(f.stat().st_size for f in folder.glob("*.bin"))
    except Exception:  # (transformers raises many types) a model not read so: the plan still checks the run
        return cap
    gpu = torch.cuda.is_available()
    free = free_bytes(torch.device("cuda", 0) if gpu else torch.device("cpu"))
    budget, _ = memory.budget(memory.parse_limit(t.memory_limit), free, gpu=gpu)
    lora = cfg.strategy.name == "lora"
    fixed = weights + (0 if lora else 3 * weights) + (0 if gpu else memory.RUNTIME)

    def fits(length: int) -> bool:
        acts = memory.activation_bytes(shape, length * task.sequences_per_example, length, adapters=lora,
                                       checkpointing=t.gradient_checkpointing is not False, eager=False, half=False)
        return fixed + acts <= budget

    if fits(cap[0]):
        return cap
    low, high = 1, cap[0] // 8  # in steps of 8 tokens: the longest that fits (8 where none does)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(8 * mid) else (low, mid - 1)
    return 8 * low, f"a micro-batch of one within {memory.gib(budget)} GiB (train.memory_limit)"


def fixes(plan: MemoryPlan, model: Any, adapters: bool, estimate_for: Callable[..., memory.Estimate],
          target: int | None) -> list[str]:
    """The changes that bring a step within `target` bytes, each with its estimate, the smallest
    change first: fewer examples per pass (the same training), gradient checkpointing (slower, the
    same training), LoRA (another method), a shorter max_length (less text)."""
    if target is None:
        return []
    out, gib = [], memory.gib
    on = plan.checkpointing
    micro = plan.micro_batch
    while micro > 1:
        micro = -(-micro // 2)
        if estimate_for(micro, on).total <= target:
            out.append(f"train.micro_batch_size: {micro} (about {gib(estimate_for(micro, on).total)} GiB)")
            break
    if not on:
        for m in (plan.micro_batch, 1):
            if estimate_for(m, True).total <= target:
                extra = f", train.micro_batch_size: {m}" if m != plan.micro_batch else ""
                out.append(f"train.gradient_checkpointing: true{extra} (about {gib(estimate_for(m, True).total)} GiB)")
                break
    if not adapters:
        lora = estimate_for(1, on, lora=True, trained=lora_trainable(model))
        if lora.total <= target:
            out.append(f"strategy.name: lora, train.micro_batch_size: 1 (about {gib(lora.total)} GiB)")
    length = plan.length
    while length > 8:
        length = max(8, length // 2 // 8 * 8)
        if estimate_for(1, True, tokens=length).total <= target:
            out.append(f"data.max_length: {length}, train.micro_batch_size: 1, train.gradient_checkpointing: true "
                       f"(about {gib(estimate_for(1, True, tokens=length).total)} GiB)")
            break
    return out


def memory_problem(plan: MemoryPlan, t: Any) -> str | None:
    """Why the run cannot fit (with what would), or None: a memory limit that the run's smallest step
    exceeds, or (any limit) more than the memory free now. One line, with the plan's breakdown."""
    limit = memory.parse_limit(t.memory_limit)
    smallest = plan.estimate_for(1, plan.checkpointing).total
    change = f"; the smallest change that fits: {plan.fixes[0]}" if plan.fixes else "; nothing lmtune can change fits it"
    if limit.size is not None and smallest > plan.budget:
        return (f"train.memory_limit: {limit.setting} is less than the smallest step of this run: a micro-batch of one needs "
                f"{plan.estimate_for(1, plan.checkpointing).describe()}{change}")
    if plan.fits:
        return None
    return (f"memory: the run needs {plan.estimate.describe()}, and this machine has {memory.gib(plan.free or 0)} GiB free"
            f"{change} (train.memory_guard: false trains anyway)")

