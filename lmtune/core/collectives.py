"""Every exchange between the processes of a run goes through these functions.

A collective on tensors runs on the run's device: NCCL (GPUs) takes only CUDA tensors and gloo
(CPUs) only CPU ones, so each tensor here is made on `accelerator.device`, never where
`torch.tensor` would put it by default. Objects (evaluation outputs, a decision) travel through
accelerate's object collectives, which choose the device for the backend themselves. With one
process, nothing is exchanged.
"""

from __future__ import annotations

from typing import Any

import torch


def mean(accelerator: Any, value: float) -> float:
    """The mean of `value` over the processes (the logged training loss)."""
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean"))


def main_decides(accelerator: Any, flag: bool) -> bool:
    """The first process's `flag`, for every process: a decision that must be the same everywhere
    (stop the run early, resume it) is taken once, where the callbacks and the run folder live."""
    if accelerator.num_processes == 1:
        return flag
    mine = torch.tensor(int(flag and accelerator.is_main_process), device=accelerator.device)
    return bool(accelerator.reduce(mine, "sum").item())


def gather_objects(accelerator: Any, item: Any) -> list[Any]:
    """Every process's `item`, in process order, on every process."""
    if accelerator.num_processes == 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])
