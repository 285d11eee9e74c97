"""What every layer uses at run time: progress messages, the precision rule, CPU load and threads,
and the Accelerator of a run.

torch and accelerate are imported where they are used, so that importing this module stays light.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

from .errors import LmtuneError


def first_process() -> bool:
    """Whether this is the first process of a run on many (torchrun and accelerate launch set RANK),
    or the only one: the process that speaks for the run and writes what is the run's alone."""
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str) -> None:
    """Progress messages go to stderr (above the progress bar); stdout is kept for results."""
    from tqdm.auto import tqdm

    if first_process():  # one voice for a run on many processes
        tqdm.write(message, file=sys.stderr)


def bf16_available() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()))


def mixed_precision(setting: str) -> str:
    if setting == "bf16" and not bf16_available():
        raise LmtuneError("train.precision: bf16 is not supported on this hardware; use auto or fp32")
    if setting == "auto":
        return "bf16" if bf16_available() else "no"
    return "bf16" if setting == "bf16" else "no"


def fp32_reason() -> str:
    """Why train.precision: auto chose fp32 here (bf16 is only fast with hardware support)."""
    import torch

    if torch.cuda.is_available():
        return "this GPU has no bf16"
    return "this CPU has no fast bf16 (no AMX, no AVX-512 BF16)"


def other_cpu_load(samples: int = 5) -> float:
    """How many other threads want a core now: on Linux the runnable count of /proc/loadavg less
    this one, the median of a few readings 10 ms apart (the 1-minute load average would count this
    process's own loading and tokenizing, and the trials before it in a search); elsewhere the
    1-minute load average."""
    try:
        readings = []
        for i in range(samples):
            if i:
                time.sleep(0.01)
            with open("/proc/loadavg", encoding="ascii") as f:
                readings.append(int(f.read().split()[3].split("/")[0]) - 1)
        return float(sorted(readings)[samples // 2])
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def busy_cpu_note(load: float, cores: int, threads: int) -> str | None:
    """A warning when other processes already keep the cores busy (`load`: other runnable threads,
    about 0 on an idle machine; `threads`: this run's): training would share them."""
    if load < 1.0 or load < 0.5 * cores:
        return None
    return (f"warning: other processes are keeping the CPU busy (load {load:.1f} on {cores} cores): this run "
            f"shares the cores with them and trains slower; train.threads (now {threads}) sets its threads")


@contextlib.contextmanager
def cpu_threads(setting: int | str) -> Iterator[None]:
    """train.threads: torch's CPU threads for the run, as they were afterwards (auto: left as they are)."""
    if setting == "auto":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(setting))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_accelerator(precision: str, **options: Any) -> Any:
    """An Accelerator for one run. accelerate keeps its settings in a process-wide singleton, so a
    second run in the same process (a search, a test, a notebook) with another precision would be
    refused: reset those settings, but keep the process group of a distributed launch. `options`:
    more Accelerator arguments (the trackers of lmtune.core.tracking)."""
    import logging

    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate warns at every checkpoint of a model with tied weights (an LM head that shares the
    # embedding matrix) that it saved the shared tensor once: expected, and restored on load.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # under torchrun without GPUs, accelerate only forms a (gloo) process group when told to use the CPU
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision(precision), cpu=cpu, **options)
