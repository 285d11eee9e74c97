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

import torch


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
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif resident_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, name="lmtune-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
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
# On CPU a step's micro-batch is chosen so that the whole estimate stays within this: a 16 GB
# machine runs a default run, a 24 GB one keeps more than half of itself free. The same on every CPU machine
# (a run's arithmetic does not depend on the free memory of the moment).
CPU_BUDGET = 10 * GIB
GPU_BUDGET_SHARE = 0.8  # on a GPU, of its whole memory
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
        parts = ", ".join(f"{name} {gib(getattr(self, name))}" for name in ("weights", "gradients", "optimizer", "activations", "runtime"))
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
