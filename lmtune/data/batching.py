"""Batch order: seeded, reproducible per epoch, and optionally grouped by length.

Length grouping shuffles all examples, cuts the order into windows of `window` batches, sorts each
window by length, cuts it into batches and shuffles the batches. Batches then hold examples of
similar length (little padding) while every epoch still sees a fresh random order and the label
mix of a random sample.

With several processes (`num_replicas`), the batches are global batches of batch_size x
num_replicas examples, the same list on every process, and each process takes its contiguous part
of each one: every example is seen once an epoch, by one process, and every process takes the same
number of steps. A short global batch is split as evenly as it goes; a process whose part would be
empty (fewer examples left than processes) repeats one example when training (`pad_empty`), and
takes no batch when evaluating.

A run resumed in the middle of an epoch with another number of processes cannot continue the same
global batches: `skip` leaves out the examples the earlier processes already trained on in that
epoch (`examples_seen` rebuilds them from the checkpoint's position), and the rest of the epoch
is batched afresh, so every example is still seen once.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields lists of indices. The order depends only on (seed, epoch), so a resumed run can
    skip the batches it has already seen and continue with exactly the same data."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        group_by_length: bool = True,
        window: int = 64,
        num_replicas: int = 1,
        rank: int = 0,
        pad_empty: bool = True,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size * num_replicas  # global batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad_empty = pad_empty
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.window = window
        self.epoch = 0
        self.skipped: tuple[int, frozenset[int]] = (-1, frozenset())  # (epoch, examples left out of it)

    def use_epoch(self, epoch: int) -> None:
        """Select the epoch's order. (Not named set_epoch on purpose: accelerate calls set_epoch on
        batch samplers with its own per-loader counter, which restarts at 0 in a resumed run.)"""
        self.epoch = epoch

    def skip(self, epoch: int, examples: set[int] | frozenset[int]) -> None:
        """Leave `examples` out of epoch `epoch` (they were trained on before a resume)."""
        self.skipped = (epoch, frozenset(examples))

    def _left_out(self) -> frozenset[int]:
        return self.skipped[1] if self.skipped[0] == self.epoch else frozenset()

    def __len__(self) -> int:
        n = len(self.lengths) - len(self._left_out())
        return (n + self.batch_size - 1) // self.batch_size

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = list(range(n))
            if self.group_by_length:  # evaluation: longest first, so memory peaks at once
                order.sort(key=lambda i: -self.lengths[i])
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(n, generator=g).tolist()
        left_out = self._left_out()
        if left_out:
            order = [i for i in order if i not in left_out]
            n = len(order)
        if not self.group_by_length:
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        span = self.batch_size * self.window
        batches = []
        for start in range(0, n, span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in perm]

    def part(self, batch: list[int]) -> list[int]:
        """This process's contiguous part of a global batch."""
        if self.num_replicas == 1:
            return batch
        size, extra = divmod(len(batch), self.num_replicas)
        start = self.rank * size + min(self.rank, extra)
        mine = batch[start : start + size + (self.rank < extra)]
        return mine if mine or not self.pad_empty else [batch[self.rank % len(batch)]]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            mine = self.part(batch)
            if mine:
                yield mine


def examples_seen(
    lengths: Sequence[int], batch_size: int, *, seed: int, group_by_length: bool, epoch: int,
    segments: Sequence[Sequence[int]],
) -> set[int]:
    """The training examples of `epoch` already trained on, from the (processes, global batches)
    segments the run went through in that epoch, oldest first."""
    seen: set[int] = set()
    for processes, done in segments:
        sampler = EpochBatchSampler(lengths, batch_size, seed=seed, group_by_length=group_by_length, num_replicas=processes)
        sampler.use_epoch(epoch)
        sampler.skip(epoch, seen)
        for batch in sampler.batches()[:done]:
            seen.update(batch)
    return seen
