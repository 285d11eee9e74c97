"""When two texts count as the same, and how the labels of rows that share a key vote.

Keys are 64-bit digests (BLAKE2b) of the text, kept in numpy arrays, so that the duplicates and
conflicting labels of a file of millions of rows are found in a few bytes per row. (Two different
texts share a digest with a chance of about n^2 / 2^65: one in 10^6 for 6 million rows.)
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

import numpy as np


def normalise(text: str) -> str:
    """The form under which two texts count as the same: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def digest(text: str) -> int:
    """A 64-bit key of a text."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass
class Votes:
    """Rows grouped by key, and the labels within each group."""

    group: np.ndarray  # per row: the index of its key
    labels_per_key: np.ndarray  # per key: how many different labels its rows carry
    count: np.ndarray  # per row: how many rows of its key carry its label
    top: np.ndarray  # per key: the count of its most common label
    tied: np.ndarray  # per key: how many labels have that count
    top_label: np.ndarray  # per key: its most common label (the smallest on a tie)


def votes(keys: np.ndarray, labels: np.ndarray) -> Votes:
    """Group rows by `keys` (integers) and count their `labels` (integers) within each group.
    (32-bit counts and indices, and intermediates freed early: a few tens of bytes per row.)"""
    keys, labels = np.asarray(keys), np.asarray(labels)
    n = len(keys)
    index = np.int32 if n < 2**31 - 1 else np.int64
    order = np.lexsort((labels, keys))
    ks, ls = keys[order], labels[order]
    new_key = np.ones(n, bool)
    new_key[1:] = ks[1:] != ks[:-1]
    del ks
    new_pair = new_key.copy()
    new_pair[1:] |= ls[1:] != ls[:-1]
    key_sorted = np.cumsum(new_key, dtype=index) - 1
    pair_id = np.cumsum(new_pair, dtype=index) - 1
    pair_count = np.bincount(pair_id).astype(index)
    pair_key, pair_label = key_sorted[new_pair], ls[new_pair]
    del ls, new_pair
    n_keys = int(new_key.sum())
    del new_key
    top = np.zeros(n_keys, index)
    np.maximum.at(top, pair_key, pair_count)
    at_top = pair_count == top[pair_key]
    tied = np.bincount(pair_key, weights=at_top, minlength=n_keys).astype(index)
    top_label = np.zeros(n_keys, labels.dtype if n else np.int64)
    first_at_top = np.flatnonzero(at_top)[::-1]  # assigned last to first: the smallest label wins
    top_label[pair_key[first_at_top]] = pair_label[first_at_top]
    group = np.empty(n, index)
    group[order] = key_sorted
    del key_sorted
    count = np.empty(n, index)
    count[order] = pair_count[pair_id]
    return Votes(group, np.bincount(pair_key, minlength=n_keys).astype(index), count, top, tied, top_label)
