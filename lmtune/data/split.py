"""Seeded, stratified splitting of a labelled set into train and validation."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from ..errors import LmtuneError


def stratified_split(
    labels: Sequence[object], size: float, seed: int, *, source: str = "the data"
) -> tuple[list[int], list[int]]:
    """Indices (train, held_out) with `size` of each class held out, at least one per class."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    too_small = [f"{label!r} ({n})" for label, n in counts.items() if n < 2]
    if too_small:
        classes = f"class {too_small[0]} has" if len(too_small) == 1 else f"classes {', '.join(too_small)} have"
        raise LmtuneError(
            f"{source}: cannot make a stratified validation split: {classes} fewer than 2 "
            "examples; give data.validation or more examples"
        )
    n_held = max(round(size * len(labels)), len(counts))
    if len(labels) - n_held < len(counts):
        raise LmtuneError(
            f"{source}: cannot make a stratified validation split of {len(labels)} examples with "
            f"{len(counts)} classes; give data.validation or more examples"
        )
    indices = list(range(len(labels)))
    train, held = train_test_split(indices, test_size=n_held, stratify=list(labels), random_state=seed)
    return sorted(train), sorted(held)
