"""Collectives run on the run's device: NCCL takes only CUDA tensors, so a tensor made where
`torch.tensor` puts it by default (the CPU) fails there. A stand-in accelerator of two processes
rejects any tensor that is not on its device; the functions run with the default device set to
another one, so a tensor made without `device=` is caught on this CPU-only machine too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lmtune.core import collectives


class TwoProcesses:
    """Process 0 or 1 of two; the other process holds `peer` in every collective."""

    num_processes = 2

    def __init__(self, rank: int, peer: float) -> None:
        self.device = torch.device("cpu")
        self.is_main_process = rank == 0
        self.peer = peer
        self.calls = 0

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        if tensor.device != self.device:
            raise RuntimeError(f"a collective got a tensor on {tensor.device}, the run is on {self.device}")
        self.calls += 1
        total = tensor + torch.tensor(self.peer, dtype=tensor.dtype, device=self.device)
        return total / 2 if reduction == "mean" else total


@pytest.fixture
def elsewhere():
    """Tensors made without an explicit device land on the meta device meanwhile."""
    with torch.device("meta"):
        yield


def test_the_mean_over_processes_is_computed_on_the_run_device(elsewhere):
    acc = TwoProcesses(rank=0, peer=3.0)
    assert collectives.mean(acc, 1.0) == pytest.approx(2.0)
    assert acc.calls == 1


@pytest.mark.parametrize("rank, flag, peer_flag, expected", [
    (0, True, 0, True),   # the first process stops: everyone stops
    (0, False, 0, False),
    (1, False, 1, True),  # the second process learns the first one's decision
    (1, True, 0, False),  # the second process's own wish does not count
])
def test_the_first_process_decides_for_everyone(elsewhere, rank, flag, peer_flag, expected):
    # the peer's contribution to the sum: the first process's flag when the peer is the first process
    acc = TwoProcesses(rank=rank, peer=float(peer_flag))
    assert collectives.main_decides(acc, flag) is expected
    assert acc.calls == 1


def test_one_process_exchanges_nothing():
    class One:
        num_processes = 1

        def reduce(self, *a, **k):  # pragma: no cover - must not be called
            raise AssertionError("no collective with one process")

    assert collectives.mean(One(), 0.25) == 0.25
    assert collectives.main_decides(One(), True) is True
    assert collectives.gather_objects(One(), {"a": 1}) == [{"a": 1}]


def test_every_collective_in_lmtune_goes_through_the_collectives_module():
    """The guarded functions above are the only call sites: none elsewhere in the package."""
    package = Path(collectives.__file__).parents[1]
    pattern = re.compile(
        r"\.reduce\(|\.gather\(|(?<!collectives\.)gather_object|gather_for_metrics|broadcast|all_reduce|all_gather|reduce_scatter"
    )
    found = []
    for path in package.rglob("*.py"):
        if path.name == "collectives.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                found.append(f"{path.relative_to(package.parent)}:{number}: {line.strip()}")
    assert not found, "collectives outside lmtune/core/collectives.py:\n" + "\n".join(found)
