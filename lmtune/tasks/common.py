"""Pieces that several tasks share: the data bundle, the choice of data.max_length: auto, tokenization with
truncation counts, a model with a label head."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import LmtuneError
from ..core.models import load_pretrained
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


# Set while `lmtune plan` tokenizes: a task that scores its examples with the model before training
# (preference's reference) leaves that to the run, and fills in placeholders of the same shape.
PLANNING: contextvars.ContextVar[bool] = contextvars.ContextVar("planning", default=False)


# data.max_length: auto. The length rule: a training batch of train.batch_size inputs of the chosen
# length holds at most this many tokens (the batch of 32 x 256 that was the default before auto).
AUTO_BATCH_TOKENS = 8192
AUTO_PERCENTILE = 99
AUTO_BLOCK = 256  # blocks (masked_lm, causal_lm text) are always full: their length is a cost, not a fit


@dataclass
class LengthChoice:
    """The value data.max_length: auto resolved to, and why (for the log and data.json)."""

    value: int
    rule: str
    longer: int | None = None  # training inputs longer than value (None for blocks: nothing is cut)
    examples: int = 0

    def record(self) -> dict[str, Any]:
        return {"value": self.value, "rule": self.rule, "longer": self.longer, "examples": self.examples}


def _round_up(n: float, step: int = 8) -> int:
    return int(-(-int(np.ceil(n)) // step) * step)


def length_cap(max_positions: int | None, batch_size: int) -> tuple[int, str]:
    """The most that auto may choose: the model's positions and the length rule, whichever is lower
    (a multiple of 8, at least 8)."""
    by_memory = max(8, AUTO_BATCH_TOKENS // batch_size // 8 * 8)
    if max_positions and max_positions // 8 * 8 < by_memory:
        return max(8, max_positions // 8 * 8), f"the model's {max_positions} positions"
    return by_memory, f"{AUTO_BATCH_TOKENS} tokens per batch of {batch_size}; a smaller train.batch_size allows longer"


def percentile_length(lengths: list[int], cap: tuple[int, str], what: str = "training inputs", most: int | None = None) -> LengthChoice:
    """The 99th percentile of the lengths rounded up to a multiple of 8, capped (and at most `most`)."""
    if not lengths:
        raise LmtuneError("data.max_length: auto needs training examples to measure")
    p = float(np.percentile(lengths, AUTO_PERCENTILE))
    value, limit = _round_up(p), cap[0]
    rule = f"the {AUTO_PERCENTILE}th percentile of {len(lengths)} {what} ({int(np.ceil(p))} tokens), rounded up to a multiple of 8"
    if most is not None and most < limit:
        limit, cap = most, (most, f"{most} at most")
    if value > limit:
        value = limit
        rule += f", capped at {limit} ({cap[1]})"
    value = max(8, value)
    return LengthChoice(value, rule, sum(n > value for n in lengths), len(lengths))


def fixed_length(size: int, cap: tuple[int, str], what: str) -> LengthChoice:
    value = max(8, min(size, cap[0]))
    rule = f"{what} of {size} tokens" + (f", capped at {value} ({cap[1]})" if value < size else "")
    return LengthChoice(value, rule)


def tokenize_texts(
    tokenizer: Any, texts: list[str], pairs: list[str | None] | None, max_length: int
) -> tuple[dict[str, list[list[int]]], list[bool]]:
    """Tokenize without padding, each input cut to max_length; and which inputs were cut. Only the
    inputs that are too long are tokenized a second time, with truncation. A second text of None
    leaves its input a single text: single texts and text pairs are tokenized apart and their
    features put back in input order."""
    if pairs is not None and any(p is None for p in pairs):
        singles = [i for i, p in enumerate(pairs) if p is None]
        paired = [i for i, p in enumerate(pairs) if p is not None]
        enc: dict[str, list[list[int]]] = {}
        cut = [False] * len(texts)
        for group, seconds in ((singles, None), (paired, [pairs[i] for i in paired])):
            if not group:
                continue
            part, part_cut = tokenize_texts(tokenizer, [texts[i] for i in group], seconds, max_length)
            for key, rows in part.items():
                column = enc.setdefault(key, [[] for _ in texts])
                for j, i in enumerate(group):
                    column[i] = rows[j]
            for j, i in enumerate(group):
                cut[i] = part_cut[j]
        return enc, cut
    enc = dict(tokenizer(texts, pairs, truncation=False, padding=False, verbose=False))
    cut = [len(ids) > max_length for ids in enc["input_ids"]]
    long = [i for i, c in enumerate(cut) if c]
    if long:
        short = tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs else None,
                          truncation=True, max_length=max_length, padding=False)
        for key, rows in enc.items():
            for j, i in enumerate(long):
                rows[i] = short[key][j]
    return enc, cut


def load_labelled_model(auto_model: str, path: Any, cfg: Any, labels: list[str], attn_implementation: str | None) -> Any:
    """A pretrained model with a fresh head of one output per label, the labels named in its config."""
    return load_pretrained(
        auto_model,
        path,
        dropout=cfg.train.dropout,
        attn_implementation=attn_implementation,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


# loss_items(batch): how many items a batch's training loss is the mean of, so that the micro-batches
# of one batch weigh in by their share (their gradients then add up to the whole batch's)
def examples_in(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].shape[0])


def labelled_tokens(batch: dict[str, Any]) -> int:
    return int((batch["labels"] != -100).sum())


def per_class_row(row: dict[str, Any]) -> dict[str, Any]:
    """One class's row of an sklearn or seqeval classification_report, under the names of the metrics
    themselves (precision, recall, f1, support; the report's own key is "f1-score")."""
    return {"precision": round(float(row["precision"]), 4), "recall": round(float(row["recall"]), 4),
            "f1": round(float(row["f1-score"]), 4), "support": int(row["support"])}
