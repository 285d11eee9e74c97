"""Batch order: every example once per epoch, reproducible, fresh per epoch, grouped by length."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lmtune.data.batching import EpochBatchSampler


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=500),
    batch_size=st.integers(1, 40),
    grouped=st.booleans(),
    epoch=st.integers(0, 5),
)
def test_each_example_once_per_epoch(lengths, batch_size, grouped, epoch):
    s = EpochBatchSampler(lengths, batch_size, seed=3, group_by_length=grouped, window=4)
    s.use_epoch(epoch)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert len(batches) == len(s)
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_order_depends_only_on_seed_and_epoch():
    lengths = [random.Random(0).randint(1, 100) for _ in range(1000)]
    a = EpochBatchSampler(lengths, 16, seed=1)
    b = EpochBatchSampler(lengths, 16, seed=1)
    a.use_epoch(2)
    b.use_epoch(2)
    assert list(a) == list(b)
    b.use_epoch(3)
    assert list(a) != list(b)
    assert list(EpochBatchSampler(lengths, 16, seed=2)) != list(EpochBatchSampler(lengths, 16, seed=1))


def test_grouping_cuts_padding_but_keeps_batches_mixed():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(4096)]
    labels = [rng.randint(0, 1) for _ in lengths]

    def padded(sampler):
        return sum(max(lengths[i] for i in b) * len(b) for b in sampler)

    grouped = EpochBatchSampler(lengths, 32, seed=0, group_by_length=True)
    plain = EpochBatchSampler(lengths, 32, seed=0, group_by_length=False)
    assert padded(grouped) < 0.6 * padded(plain)
    # batches are not ordered by length across the epoch (the first is not always the longest)
    firsts = [max(lengths[i] for i in list(EpochBatchSampler(lengths, 32, seed=s))[0]) for s in range(8)]
    assert len(set(firsts)) > 1
    # labels within batches stay mixed: the mean share of the majority label is far from 1
    shares = [max(sum(labels[i] for i in b), len(b) - sum(labels[i] for i in b)) / len(b) for b in grouped]
    assert sum(shares) / len(shares) < 0.7


def test_evaluation_order_is_longest_first_and_complete():
    lengths = [5, 50, 20, 1, 30]
    s = EpochBatchSampler(lengths, 2, seed=0, shuffle=False)
    assert list(s) == [[1, 4], [2, 0], [3]]
