"""Pieces that several tasks share: the data bundle and tokenization with truncation counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.readers import Table


@dataclass
class TaskData:
    train: Table
    validation: Table
    test: Table | None
    labels: list[str]
    notes: list[str] = field(default_factory=list)  # what was done to the data, for the log and run folder
    prep: dict[str, Any] = field(default_factory=dict)  # summaries of the data steps (cleaning), for data.json
    dropped: list[dict[str, Any]] = field(default_factory=list)  # rows left out, each with line and reason


def tokenize_texts(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int
) -> tuple[dict[str, list[list[int]]], int]:
    """Tokenize without padding; truncate to max_length and return how many inputs were cut."""
    full = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)
    truncated = sum(len(ids) > max_length for ids in full["input_ids"])
    if truncated:
        full = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return dict(full), truncated
