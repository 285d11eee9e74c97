"""Memory: a run's measured peak (the most GPU memory torch allocated, or on CPU the largest resident set
of the process while the run trained, sampled so that runs in one process each get their own peak);
the estimate of a training step's peak, which picks the micro-batch and refuses a run that cannot fit;
and the memory the machine has free."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# (no torch at import: the config reads train.memory_limit with parse_limit before torch is loaded)


def resident_bytes() -> int | None:
    """The process's resident set now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.megabytes` (None where it is not known)."""

    def __init__(self, device: Any, interval: float = 0.2) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            rss = resident_bytes()
            if rss is not None:
                self.peak = max(self.peak or 0, rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif resident_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, name="lmtune-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def megabytes(self) -> float | None:
        return None if self.peak is None else round(self.peak / 2**20, 1)


# ---------------------------------------------------------------- the estimate of a training step

GIB = 2**30
# train.memory_limit: auto. The budget is a share of the memory free when the run starts (what the
# process holds already, the model, counted as free: it is the run's). The estimate is within about
# 15% of measured peaks (docs/memory.md), so a run planned to 70% of the free memory peaks below
# about 80% of it, and the rest stays for the page cache, the tokenizer's buffers and the machine's
# other processes: a CPU run is kept out of swap. A GPU holds nothing else, but torch's caching
# allocator loses some of it to fragmentation: 85%.
CPU_SHARE = 0.70
GPU_SHARE = 0.85
# On CPU, auto plans for no more than this either: a larger micro-batch trains no faster there (two
# SmolLM2 LoRA steps took 46 s in micro-batches of 8 against 70 s in micro-batches of 16), so memory
# past it is better left to the machine. Also the budget where the free memory cannot be read.
CPU_CAP = 10 * GIB
RUNTIME = GIB // 2  # the process itself: Python, torch, transformers, the tokenizer, the data
# The measured peak of a step's activations over the sum of the saved tensors counted below
# (SmolLM2-135M, LoRA and full, fp32, micro-batches of 8 and 16 on CPU): the backward pass holds
# gradients of activations beside them, and the heap keeps what it freed.
PEAK_FACTOR = 1.5
HALF_FACTOR = 0.8  # bf16 autocast: matrix products save half-width outputs, but norms, softmax and the fp32 copies stay
# Gradient checkpointing keeps each layer's input, but the peak holds far more: measured on SmolLM2-135M
# (32 x 256 tokens, fp32), 0.31 (LoRA) and 0.19 (full) of the activations without it.
CHECKPOINT_FACTOR = 0.35


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a transformer (read from its Hugging Face config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_hidden: int  # the width of keys and values (smaller than hidden with grouped-query attention)

    @classmethod
    def of(cls, config: Any) -> "Shape":
        config = getattr(config, "text_config", None) or config

        def first(*names: str, default: int | None = None) -> int:
            for name in names:
                value = getattr(config, name, None)
                if isinstance(value, int) and value > 0:
                    return value
            if default is None:
                raise ValueError(f"model config has none of {names}")
            return default

        hidden = first("hidden_size", "n_embd", "d_model", "dim")
        heads = first("num_attention_heads", "n_head", "encoder_attention_heads", default=max(1, hidden // 64))
        kv_heads = first("num_key_value_heads", default=heads)
        return cls(
            layers=first("num_hidden_layers", "n_layer", "num_layers", "encoder_layers"),
            hidden=hidden,
            intermediate=first("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", default=4 * hidden),
            heads=heads,
            kv_hidden=hidden // heads * kv_heads,
        )


def activation_bytes(shape: Shape, tokens: int, length: int, *, adapters: bool, checkpointing: bool,
                     eager: bool, half: bool) -> int:
    """The activations a forward pass of `tokens` tokens (inputs of `length`) keeps for the backward
    pass, at their peak. Per token and layer, the tensors a transformer block saves: about twelve
    of its width (norms, projections, rotary copies, attention output, residuals), two of the key
    and value width, four of the feed-forward width, and with eager attention the probabilities
    (one per head and position); LoRA adds its dropped-out inputs of each adapted projection."""
    h, i = shape.hidden, shape.intermediate
    per_layer = 12 * h + 2 * shape.kv_hidden + 4 * i + (shape.heads * length if eager else 0)
    if adapters:
        per_layer += 6 * h + i
    factor = PEAK_FACTOR * (HALF_FACTOR if half else 1.0) * (CHECKPOINT_FACTOR if checkpointing else 1.0)
    return int(tokens * shape.layers * per_layer * 4 * factor)


PARTS = ("weights", "gradients", "optimizer", "activations", "runtime")


@dataclass(frozen=True)
class Estimate:
    """A training step's peak memory, in bytes, by part."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int = RUNTIME

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(getattr(self, name))}" for name in PARTS)
        return f"about {gib(self.total)} GiB at the peak ({parts})"


def gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def training_estimate(shape: Shape, weights: int, trainable: int, micro_batch: int, length: int, **flags: bool) -> Estimate:
    """`weights`: the bytes of all parameters; `trainable`: how many parameters train (fp32
    gradients and AdamW's two states each)."""
    return Estimate(weights=weights, gradients=4 * trainable, optimizer=8 * trainable,
                    activations=activation_bytes(shape, micro_batch * length, length, **flags))


def micro_batch_for(budget: int, batch_size: int, estimate: Callable[[int], Estimate]) -> int:
    """The largest micro-batch of the form batch_size / 2**k (rounded up) whose estimate fits
    `budget`; 1 when none does."""
    micro = batch_size
    while micro > 1 and estimate(micro).total > budget:
        micro = -(-micro // 2)
    return micro


def available_bytes() -> int | None:
    """The memory this process can still take: the kernel's MemAvailable, or a container's limit
    less its usage where that is lower; None where neither can be read."""
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = int(limit) - used
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


# ---------------------------------------------------------------- evaluation, generation, the limit

# A forward pass without gradients keeps no activations for a backward pass: its peak is about one
# layer's working tensors (the residual stream, the attention and feed-forward outputs, the attention
# probabilities where eager), and the output head's logits with their float copy for the loss.
EVAL_PER_TOKEN_WIDTHS = 8  # of the hidden width, plus two of the feed-forward width


def evaluation_bytes(shape: Shape, rows: int, length: int, outputs: int, *, eager: bool, half: bool) -> int:
    """The activations of an evaluation batch of `rows` inputs of `length` tokens whose head gives
    `outputs` values per token (the vocabulary for a language model; a few labels otherwise)."""
    tokens = rows * length
    layer = (EVAL_PER_TOKEN_WIDTHS * shape.hidden + 2 * shape.intermediate + (shape.heads * length if eager else 0)) * 4
    head = outputs * ((2 if half else 4) + 4)  # the logits, and their float copy for the softmax
    return int(tokens * (layer + head) * (HALF_FACTOR if half else 1.0))


def kv_cache_bytes(shape: Shape, rows: int, tokens: int, *, half: bool) -> int:
    """Keys and values of every layer for `rows` sequences of `tokens` tokens (greedy generation)."""
    return 2 * shape.layers * shape.kv_hidden * tokens * rows * (2 if half else 4)


@dataclass(frozen=True)
class Limit:
    """train.memory_limit as written: auto, a size, or a share of the free memory."""

    setting: str
    size: int | None = None  # bytes
    share: float | None = None  # of the free memory


LIMIT_FORMS = "auto, a size such as 12GiB, 12 GB or 800MiB, or a share of the free memory such as 60%"
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_limit(value: Any) -> Limit:
    """A Limit from `auto`, `12GiB`, `12 GB`, `800MiB`, `60%`; ValueError (naming the accepted forms)
    for anything else."""
    import re

    text = str(value).strip()
    if text.lower() == "auto":
        return Limit("auto")
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(%|[a-zA-Z]+)", text)
    if match:
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "%" and 0 < number <= 100:
            return Limit(text, share=number / 100)
        if unit in _UNITS and number * _UNITS[unit] >= 2**20:
            return Limit(text, size=int(number * _UNITS[unit]))
    raise ValueError(f"{text!r} is not a memory limit; expected {LIMIT_FORMS}")


def budget(limit: Limit, free: int | None, *, gpu: bool) -> tuple[int, str]:
    """The bytes a run may plan for under `limit`, given the memory free to it (None: unknown), and
    how they were reached (for the log)."""
    if limit.size is not None:
        return limit.size, f"train.memory_limit: {limit.setting}"
    share = limit.share if limit.share is not None else (GPU_SHARE if gpu else CPU_SHARE)
    if free is None:
        return CPU_CAP, f"train.memory_limit: {limit.setting}: {gib(CPU_CAP)} GiB, the free memory cannot be read here"
    rule = f"train.memory_limit: {limit.setting}, {share:.0%} of the {'GPU memory' if gpu else 'memory'} free"
    if limit.share is None and not gpu and share * free > CPU_CAP:
        return CPU_CAP, f"train.memory_limit: auto, at most {gib(CPU_CAP)} GiB on CPU"
    return int(share * free), rule
