"""Pieces that several tasks share: the data bundle, tokenization with truncation counts, a model with a label head."""

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


def load_labelled_model(auto_model: str, path: Any, cfg: Any, labels: list[str], attn_implementation: str | None) -> Any:
    """A pretrained model with a fresh head of one output per label, the labels named in its config."""
    from ..models import load_pretrained

    return load_pretrained(
        auto_model,
        path,
        dropout=cfg.train.dropout,
        attn_implementation=attn_implementation,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
