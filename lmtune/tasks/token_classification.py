"""Token classification (named entities, or any IOB-style tags): one tag per word of a sentence.

Data: CoNLL column files (token first, tag in `data.tag_column_index`, blank line between
sentences) or JSON rows with a list of tokens and a list of tags. A fast tokenizer splits the words
into subwords (`is_split_into_words`); the first subword of each word carries the word's tag, the
others -100 (with `data.label_all_subwords`, the others carry it too, B-/E-/S- continued as I-, as
in transformers' run_ner). A sentence longer than `data.max_length` is cut into windows that
overlap by `data.doc_stride` tokens; each word is labelled in exactly one window, the first that
holds all of its subwords. Predictions are read from the first subword of each word.

Metrics: entity-level precision, recall and F1 (seqeval; strict for IOB2 and BIOES, conlleval
rules for IOB1), overall (micro) and per entity type, plus token accuracy and the mean token loss.
The windows of a long sentence are merged back into the sentence before seqeval (each word's tag
from the window that labels it), so an entity across a window boundary is scored once, whole.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from ..core import models
from ..core.config import DataConfig, EvalConfig, RunConfig
from ..core.errors import LmtuneError
from ..core.runtime import log
from ..data.conll import ConllTable, read_conll
from ..data.readers import Table, read_table
from .common import LengthChoice, TaskData, labelled_tokens, load_labelled_model, per_class_row, percentile_length
from .contract import Task
from .inputs import column_names, no_template, read_texts
from .sections import Augmented, Windows


class TokenClassificationData(Windows, Augmented, DataConfig):
    """data: keys of token_classification runs."""

    tag_column_index: int = Field(
        -1, description="CoNLL files: the column with the tag (0 is the token; -1: the last, as in CoNLL-2003)"
    )
    tokens_column: str = Field("tokens", description="token_classification JSON rows: the list of tokens")
    tags_column: str = Field("tags", description="token_classification JSON rows: the list of tags, one per token")
    tag_scheme: Literal["IOB1", "IOB2", "BIOES"] = Field(
        "IOB2", description="tag scheme for entity metrics (seqeval; strict for IOB2 and BIOES) and entity spans"
    )
    label_all_subwords: bool = Field(
        False, description="train on every subword of a word (continuations as I-), not only the first"
    )

    def problems(self, check_files: bool = True) -> list[str]:
        wrong = self.tag_column_index == 0
        return super().problems(check_files) + (
            ["data.tag_column_index: 0 is the token column; the tag is in another column (-1: the last)"] if wrong else [])


class TokenClassificationConfig(RunConfig):
    task: Literal["token_classification"] = "token_classification"
    data: TokenClassificationData
    eval: EvalConfig = Field(default_factory=EvalConfig)

METRICS = ("f1", "precision", "recall", "accuracy", "loss")
GREATER_IS_BETTER = {m: m != "loss" for m in METRICS}
AUTO_MODEL = "AutoModelForTokenClassification"
# on CPU, eager attention while 90% of the training inputs are at most this long (see choose_attention)
EAGER_MAX_LENGTH = 160
IGNORE = -100
SCHEME_PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")


def scheme_of(labels: Sequence[str], cfg: Any = None) -> str:
    """The run's tag scheme, or a guess from the tags for a bare model folder."""
    if cfg is not None:
        return cfg.data.tag_scheme
    return "BIOES" if any(t[:2] in ("E-", "S-") for t in labels) else "IOB2"


# ---------------------------------------------------------------- reading


def _where(table: Table, i: int, j: int | None = None) -> str:
    if isinstance(table, ConllTable) and j is not None:
        return table.where_token(i, j)
    return table.where(i)


def is_conll(path: str | Path, fmt: str) -> bool:
    return fmt == "conll" or (fmt == "auto" and Path(path).suffix.lower() in CONLL_SUFFIXES)


def read_sentences(path: str | Path, d: Any, *, tags: bool = True) -> Table:
    """Sentences as rows {"tokens": [...], "tags": [...]} (tags None with tags=False), from a CoNLL
    file or JSON rows (columns data.tokens_column and data.tags_column)."""
    if is_conll(path, d.format):
        return read_conll(path, d.tag_column_index, tags=tags)
    suffix = Path(path).suffix.lower()
    if d.format not in ("auto", "jsonl", "json") or (d.format == "auto" and suffix not in (".jsonl", ".json")):
        raise LmtuneError(
            f"{path}: token_classification reads CoNLL column files (.conll, .txt, or data.format: conll) "
            f"or JSON lines with {d.tokens_column!r} and {d.tags_column!r} lists"
        )
    table = read_table(path, d.format)
    table.require_columns(d.tokens_column, d.tags_column if tags else None)
    rows = []
    for i, row in enumerate(table.rows):
        tokens = row.get(d.tokens_column)
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise LmtuneError(f"{table.where(i)}: {d.tokens_column!r} must be a non-empty list of strings, found {str(tokens)[:80]}")
        tag_list = None
        if tags:
            tag_list = row.get(d.tags_column)
            if not isinstance(tag_list, list) or not all(isinstance(t, str) for t in tag_list):
                raise LmtuneError(
                    f"{table.where(i)}: {d.tags_column!r} must be a list of tag names such as B-PER, found {str(tag_list)[:80]}"
                )
            if len(tag_list) != len(tokens):
                raise LmtuneError(
                    f"{table.where(i)}: {len(tokens)} tokens in {d.tokens_column!r} but {len(tag_list)} tags in {d.tags_column!r}"
                )
        rows.append({"tokens": tokens, "tags": tag_list})
    return Table(table.path, ["tokens", "tags"] if tags else ["tokens"], rows, table.lines)


def check_tags(table: Table, scheme: str, known: Sequence[str] | None = None, *, where: str = "the training data") -> None:
    """Every tag is O or PREFIX-TYPE with a prefix of the scheme; with `known`, also one of those."""
    prefixes = SCHEME_PREFIXES[scheme]
    allowed = set(known) if known is not None else None
    for i, row in enumerate(table.rows):
        for j, tag in enumerate(row["tags"]):
            if allowed is not None:
                if tag not in allowed:
                    raise LmtuneError(
                        f"{_where(table, i, j)}: tag {tag!r} never appears in {where}; known tags: {', '.join(known)}"
                    )
                continue
            if tag == "O":
                continue
            prefix, sep, kind = tag.partition("-")
            if not sep or not kind or prefix not in prefixes:
                hint = " (set data.tag_scheme: BIOES)" if sep and kind and prefix in ("E", "S") else ""
                raise LmtuneError(
                    f"{_where(table, i, j)}: tag {tag!r} is neither O nor {'/'.join(prefixes)}-TYPE "
                    f"(data.tag_scheme {scheme}){hint}"
                )


def tag_order(tags: Any) -> list[str]:
    """The sorted tag set, O first."""
    return sorted(set(tags), key=lambda t: (t != "O", t))


def spans(tags: Sequence[str | None]) -> list[tuple[str, int, int]]:
    """Entities (type, first word, last word) from per-word tags. B- and S- start an entity, I- and
    E- continue one of the same type (and start one otherwise, as conlleval does), E- and S- end
    it; O (or None: a word without a prediction) ends it."""
    out: list[list[Any]] = []
    current: list[Any] | None = None
    for i, tag in enumerate(tags):
        if tag is None or tag == "O":
            current = None
            continue
        prefix, sep, kind = tag.partition("-")
        if not sep:
            prefix, kind = "I", tag
        if current is not None and prefix in ("I", "E") and kind == current[0]:
            current[2] = i
        else:
            current = [kind, i, i]
            out.append(current)
        if prefix in ("E", "S"):
            current = None
    return [(k, a, b) for k, a, b in out]


def _split(n: int, size: float, seed: int, source: str) -> tuple[list[int], list[int]]:
    held = max(1, round(size * n))
    if n - held < 1:
        raise LmtuneError(f"{source}: {n} sentences are too few to hold out a validation set; give data.validation")
    chosen = set(random.Random(seed).sample(range(n), held))
    return [i for i in range(n) if i not in chosen], sorted(chosen)


def load_data(cfg: Any) -> TaskData:
    d = cfg.data
    train = read_sentences(d.train, d)
    check_tags(train, d.tag_scheme)
    labels = tag_order(t for r in train.rows for t in r["tags"])
    if len(labels) < 2:
        raise LmtuneError(f"{d.train}: every tag is {labels[0]!r}; token_classification needs entity tags besides O")
    notes = []
    if d.validation:
        validation = read_sentences(d.validation, d)
        check_tags(validation, d.tag_scheme, labels)
    else:
        # the tags come from the whole file, so a rare tag that lands in the held-out part is known
        tr, va = _split(len(train), d.validation_size, cfg.train.seed, str(d.train))
        train, validation = train.subset(tr), train.subset(va)
        notes.append(
            f"no validation file: held out {len(va)} of {len(tr) + len(va)} training sentences (seed {cfg.train.seed})"
        )
    prep: dict[str, Any] = {}
    if d.augment is not None:  # ... -> split -> augment the training part only
        train, note, prep["augment"] = _augment(train, cfg)
        notes.append(note)
    test = None
    if d.test:
        test = read_sentences(d.test, d)
        check_tags(test, d.tag_scheme, labels)
    counts = Counter(kind for r in train.rows for kind, _, _ in spans(r["tags"]))
    tokens = sum(len(r["tokens"]) for r in train.rows)
    notes.append(
        f"train: {len(train)} sentences, {tokens} tokens; entities: "
        + (", ".join(f"{k} {counts[k]}" for k in sorted(counts)) or "none")
    )
    return TaskData(train, validation, test, labels, notes, prep)


def _augment(train: Table, cfg: Any) -> tuple[Table, str, dict[str, Any]]:
    """EDA copies of the training sentences with their tags kept aligned (see data/augment.py)."""
    from ..data.augment import AugmentOptions, Skipped, augment_sentences, gather_synonyms

    a = cfg.data.augment
    words = {t.lower() for r in train.rows for t, tag in zip(r["tokens"], r["tags"]) if tag == "O"}
    synonyms = gather_synonyms(a.synonyms, models.resolve(cfg.model) if a.embedding_synonyms else None, words)
    skipped = Skipped()
    new = augment_sentences(train.rows, train.lines, spans, AugmentOptions.from_section(a), synonyms,
                            cfg.train.seed, cfg.data.tag_scheme, skipped)
    table = type(train)(train.path, train.columns, train.rows + new, train.lines + [r["augmented_from"] for r in new])
    summary = {"original": len(train), "augmented": len(new), "skipped": skipped.total,
               "skipped_by_reason": skipped.by_reason(), "synonym_words": len(synonyms)}
    why = skipped.describe(len(train) * a.n_per_example)
    return table, (f"augment: {len(new)} augmented copies of {len(train)} training sentences (tags aligned)"
                   + (f"; {why}" if why else "")), summary


# ---------------------------------------------------------------- tokenizing


@dataclass
class Window:
    """One model input: a whole sentence (or text), or a window of a long one."""

    sample: int  # the sentence or text it comes from
    features: dict[str, list[int]]  # input_ids, attention_mask (token_type_ids)
    words: list[tuple[int, int, bool]]  # (position, word, first subword?) of the words this window labels


def windows(
    tokenizer: Any, inputs: list[Any], max_length: int, stride: int, *, split_into_words: bool
) -> tuple[list[Window], int, Any, int]:
    """Tokenize sentences (lists of words) or raw texts (words as the tokenizer's pre-tokenizer
    splits them) into windows of at most max_length tokens. Each word is given to the first window
    that holds all of its subwords. Returns (windows, inputs that needed more than one window, the
    untruncated encoding (with character offsets for raw texts), words no window could hold).
    A window that would label no word is left out: with a loss over no tokens, a batch of only such
    windows would make the training loss NaN."""
    if not getattr(tokenizer, "is_fast", False):
        raise LmtuneError(
            f"token_classification needs a fast (Rust) tokenizer to map subwords to words; "
            f"{type(tokenizer).__name__} is not one"
        )
    kwargs: dict[str, Any] = {"is_split_into_words": split_into_words, "padding": False}
    full = tokenizer(inputs, truncation=False, verbose=False, return_offsets_mapping=not split_into_words, **kwargs)
    totals = [Counter(w for w in full.word_ids(i) if w is not None) for i in range(len(inputs))]
    windowed = sum(len(ids) > max_length for ids in full["input_ids"])
    enc, mapping = full, list(range(len(inputs)))
    if windowed:
        capacity = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if capacity < 2:
            raise LmtuneError(f"data.max_length={max_length} leaves no room for words next to the special tokens")
        # overlap at most half a window, so every window moves on
        enc = tokenizer(
            inputs, truncation=True, max_length=max_length, stride=min(stride, capacity // 2),
            return_overflowing_tokens=True, **kwargs,
        )
        mapping = [int(s) for s in enc["overflow_to_sample_mapping"]]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    done: list[set[int]] = [set() for _ in inputs]
    out = []
    for k, s in enumerate(mapping):
        word_ids = enc.word_ids(k)
        counts = Counter(w for w in word_ids if w is not None)
        mine = {w for w, c in counts.items() if w not in done[s] and c == totals[s][w]}
        done[s] |= mine
        words, prev = [], None
        for pos, w in enumerate(word_ids):
            if w in mine:
                words.append((pos, w, w != prev))
            prev = w
        if words:  # a window that labels no word (only seen in a long word's middle) would train on nothing
            out.append(Window(s, {key: list(enc[key][k]) for key in keys}, words))
    lost = sum(len(t) - len(d) for t, d in zip(totals, done))
    return out, windowed, full, lost


def continuation(tag: str, known: dict[str, int]) -> str:
    """The tag of a word's later subwords (data.label_all_subwords): the word's entity continued."""
    prefix, sep, kind = tag.partition("-")
    return f"I-{kind}" if sep and f"I-{kind}" in known else tag


def choose_max_length(table: Table, tokenizer: Any, cfg: Any, cap: tuple[int, str]) -> LengthChoice:
    """data.max_length: auto: the 99th percentile of the training sentences' subword counts (the
    longer ones are windowed, not cut)."""
    enc = tokenizer([r["tokens"] for r in table.rows], is_split_into_words=True, truncation=False, padding=False, verbose=False)
    return percentile_length([len(ids) for ids in enc["input_ids"]], cap, "training sentences")


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Features, one per window, and how many sentences were longer than max_length (windowed)."""
    d = cfg.data
    label_ids = {t: i for i, t in enumerate(labels)}
    wins, windowed, _, lost = windows(
        tokenizer, [r["tokens"] for r in table.rows], d.max_length, d.doc_stride, split_into_words=True
    )
    features = []
    for win in wins:
        f: dict[str, Any] = dict(win.features)
        # for the metrics: the sentence, and the (position, word) of each word's first subword
        f["_sentence"] = win.sample
        f["_words"] = [(pos, w) for pos, w, first in win.words if first]
        tags = table.rows[win.sample].get("tags")
        if tags is not None:
            ids = [IGNORE] * len(f["input_ids"])
            for pos, w, first in win.words:
                if first:
                    ids[pos] = label_ids[tags[w]]
                elif d.label_all_subwords:
                    ids[pos] = label_ids[continuation(tags[w], label_ids)]
            f["labels"] = ids
        features.append(f)
    if lost:
        log(
            f"{table.path}: {lost} word(s) have no label: no subwords (an empty or ignored token), or more "
            f"subwords than a window of data.max_length={d.max_length} with data.doc_stride={d.doc_stride} holds"
        )
    return features, windowed


# ---------------------------------------------------------------- model, batches, metrics


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    return load_labelled_model(AUTO_MODEL, path, cfg, labels, attn_implementation)


class Collator:
    """Pads inputs and labels; keys starting with '_' (the window's sentence and words) stay behind."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForTokenClassification

        self.pad = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        return self.pad([{k: v for k, v in f.items() if not k.startswith("_")} for f in features])


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Collator:
    return Collator(tokenizer)


loss_items = labelled_tokens  # the loss is the mean over labelled tokens

def eval_step(model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """Per window: predicted and reference label ids at the labelled positions (-100 elsewhere),
    padded to data.max_length columns, and the summed token loss with the count of its tokens."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    mask = labels != IGNORE
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    predictions = logits.argmax(-1).masked_fill(~mask, IGNORE)
    # the same width in every batch and process, so that the outputs can be gathered and joined
    width = max(cfg.data.max_length, labels.shape[1]) if cfg is not None else labels.shape[1]
    pad = width - labels.shape[1]
    return {
        "predictions": F.pad(predictions, (0, pad), value=IGNORE).to(torch.int32),
        "references": F.pad(labels, (0, pad), value=IGNORE).to(torch.int32),
        "loss_sum": loss.sum(1),
        "tokens": mask.sum(1),
    }


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Any = None,
                  progress: bool = False) -> dict[str, Any]:
    return {}


def entity_scores(y_true: list[list[str]], y_pred: list[list[str]], scheme: str) -> dict[str, Any]:
    """seqeval precision, recall, F1 overall (micro) and per entity type."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2, IOBES

    out: dict[str, Any] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_class": {}}
    if not any(t != "O" for seq in y_true + y_pred for t in seq):
        return out  # no entity on either side: nothing to score
    kwargs: dict[str, Any] = {}
    if scheme != "IOB1":
        kwargs = {"mode": "strict", "scheme": IOB2 if scheme == "IOB2" else IOBES}
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)
    micro = report.get("micro avg", {})
    out["precision"] = float(micro.get("precision", 0.0))
    out["recall"] = float(micro.get("recall", 0.0))
    out["f1"] = float(micro.get("f1-score", 0.0))
    out["per_class"] = {kind: per_class_row(row) for kind, row in sorted(report.items()) if not kind.endswith(" avg")}
    return out


def word_labels(
    outputs: dict[str, np.ndarray], features: Sequence[dict[str, Any]] | None
) -> dict[int, dict[int, tuple[int, int]]]:
    """sentence -> word -> (reference, prediction) label ids, from the windows that label the words
    (their `_sentence` and `_words`)."""
    references, predictions = outputs["references"], outputs["predictions"]
    if not features or "_sentence" not in features[0] or len(features) != len(references):
        raise LmtuneError("token_classification metrics need the evaluated windows (features), one per output row")
    words: dict[int, dict[int, tuple[int, int]]] = {}
    for f, ref, pred in zip(features, references, predictions):
        mine = words.setdefault(f["_sentence"], {})
        for pos, w in f["_words"]:
            if ref[pos] != IGNORE:
                mine[w] = (int(ref[pos]), int(pred[pos]))
    return words


def sentence_tags(
    outputs: dict[str, np.ndarray], labels: Sequence[str], features: Sequence[dict[str, Any]] | None
) -> tuple[list[list[str]], list[list[str]]]:
    """Reference and predicted tags per sentence, its windows merged back: each word's tags from the
    window that labels it, in word order. Without the features (their `_sentence` and `_words`),
    each output row counts as a sentence of its labelled positions."""
    references, predictions = outputs["references"], outputs["predictions"]
    names = np.array(list(labels), dtype=object)
    if not features or "_sentence" not in features[0]:
        mask = references != IGNORE
        rows = [(names[r[m]].tolist(), names[p[m]].tolist()) for r, p, m in zip(references, predictions, mask) if m.any()]
        return [t for t, _ in rows], [p for _, p in rows]
    words = word_labels(outputs, features)
    y_true, y_pred = [], []
    for s in sorted(words):
        if words[s]:
            pairs = [words[s][w] for w in sorted(words[s])]
            y_true.append([labels[r] for r, _ in pairs])
            y_pred.append([labels[p] for _, p in pairs])
    return y_true, y_pred


def compute_metrics(
    outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None, features: Any = None
) -> dict[str, Any]:
    references, predictions = outputs["references"], outputs["predictions"]
    mask = references != IGNORE
    y_true, y_pred = sentence_tags(outputs, labels, features)
    out = entity_scores(y_true, y_pred, scheme_of(labels, cfg))
    n = int(mask.sum())
    out["accuracy"] = float((references[mask] == predictions[mask]).mean()) if n else 0.0
    if "loss_sum" in outputs:
        out["loss"] = float(outputs["loss_sum"].sum()) / max(float(outputs["tokens"].sum()), 1.0)
    out["tokens"] = n
    per_class = out.pop("per_class")
    out["per_class"] = per_class  # last, as in the other tasks
    return out


def validation_samples(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                       table: Table) -> list[dict[str, Any]]:
    """One row per validation sentence, in data order: its words and, per word, the gold and the
    predicted tag as the metrics read them (windows merged back); None for a word no window labels."""
    words = word_labels(outputs, features)
    rows = []
    for s, row in enumerate(table.rows):
        mine = words.get(s, {})
        n = len(row["tokens"])
        gold = [labels[mine[w][0]] if w in mine else row["tags"][w] for w in range(n)]
        rows.append({"tokens": list(row["tokens"]), "gold": gold,
                     "predicted": [labels[mine[w][1]] if w in mine else None for w in range(n)]})
    return rows


# ---------------------------------------------------------------- predictions


def word_tags(
    wins: list[Window], probs: list[np.ndarray], labels: Sequence[str], n_words: list[int]
) -> list[tuple[list[str | None], list[float | None]]]:
    """Per input: the predicted tag of each word (from its first subword, in the window that labels
    it) and its probability; None for a word no window holds."""
    out: list[tuple[list[str | None], list[float | None]]] = [([None] * n, [None] * n) for n in n_words]
    for win, p in zip(wins, probs):
        tags, scores = out[win.sample]
        for pos, w, first in win.words:
            if first:
                best = int(p[pos].argmax())
                tags[w], scores[w] = labels[best], float(p[pos, best])
    return out


def word_char_spans(encoding: Any, i: int) -> dict[int, tuple[int, int]]:
    """Character span of each word of raw text i, from the tokenizer's offsets."""
    found: dict[int, tuple[int, int]] = {}
    for w, (start, end) in zip(encoding.word_ids(i), encoding["offset_mapping"][i]):
        if w is None:
            continue
        a, b = found.get(w, (start, end))
        found[w] = (min(a, start), max(b, end))
    return found


def entities(text: str, tags: list[str | None], scores: list[float | None], chars: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
    out = []
    for kind, a, b in spans(tags):
        start, end = chars[a][0], chars[b][1]
        span_scores = [s for s in scores[a : b + 1] if s is not None]
        out.append({
            "text": text[start:end],
            "type": kind,
            "start": start,
            "end": end,
            "score": round(float(np.mean(span_scores)), 6),
        })
    return out


def decode(
    probs: list[np.ndarray], labels: Sequence[str], wins: list[Window], inputs: list[Any], encoding: Any
) -> list[Any]:
    """User-facing predictions from per-window tag probabilities: for a raw text, its entities
    {text, type, start, end, score} with character offsets into the text; for a list of tokens,
    one tag per token (O for a token no window holds)."""
    n_words = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            ids = [w for w in encoding.word_ids(i) if w is not None]
            n_words.append(max(ids) + 1 if ids else 0)
        else:
            n_words.append(len(x))
    out: list[Any] = []
    for i, (tags, scores) in enumerate(word_tags(wins, probs, labels, n_words)):
        if isinstance(inputs[i], str):
            out.append(entities(inputs[i], tags, scores, word_char_spans(encoding, i)))
        else:
            out.append([t if t is not None else "O" for t in tags])
    return out


# ------------------------------------------------------------ inference (see tasks/contract.py)

GENERATIVE = False
onnx_outputs = ("logits",)  # lmtune export --format onnx


def bare_labels(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def bare_data(labels: list[str]) -> dict[str, Any]:
    return {"tag_scheme": scheme_of(labels)}


def read_inputs(session: Any, path: Path, columns: list[str] | None, template: str | None) -> tuple[Table, list[Any], None]:
    """CoNLL (tags, if any, ignored), rows with a list of tokens or a text column, or a .txt file of
    texts."""
    no_template(session, template)
    d = session.data
    if path.suffix.lower() == ".txt":
        table, texts, _ = read_texts(session, path, columns)
        return table, texts, None
    if is_conll(path, "auto"):
        column_names(session, path, columns, named=False)
        table = read_sentences(path, d, tags=False)
        return table, [r["tokens"] for r in table.rows], None
    table = read_table(path, columns=column_names(session, path, columns, named=True))
    if d.tokens_column in table.columns:
        table = read_sentences(path, d.model_copy(update={"format": "auto"}), tags=False)
        return table, [r["tokens"] for r in table.rows], None
    table.require_columns(d.text_column)
    return table, [str(r[d.text_column]) for r in table.rows], None


def _window_probabilities(session: Any, features: list[dict[str, Any]]) -> list[np.ndarray]:
    """Tag probabilities [tokens, tags] of each window, unpadded."""
    import torch

    rows = session.run_batches(features, lambda model, batch: {"probs": torch.softmax(model(**batch).logits.float(), -1)},
                               collator(session.tokenizer))
    out = []
    for feature, row in zip(features, rows):
        n, probs = len(feature["input_ids"]), row["probs"]
        out.append(probs[:n] if session.tokenizer.padding_side == "right" else probs[probs.shape[0] - n :])
    return out


def input_chunks(session: Any, path: Path, columns: list[str] | None, template: str | None, rows: int) -> Any:
    """The whole file at once (its reader checks it as a whole)."""
    yield read_inputs(session, path, columns, template)


def predict(session: Any, inputs: list[Any], pairs: Any) -> list[Any]:
    for i, x in enumerate(inputs):
        if not isinstance(x, str) and not (isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x)):
            raise LmtuneError(f"inputs[{i}]: expected a text or a list of tokens (strings), got {str(x)[:80]}")
    out: list[Any] = [[] if isinstance(x, (list, tuple)) and not x else None for x in inputs]
    for split in (False, True):
        which = [i for i, x in enumerate(inputs) if isinstance(x, str) != split and out[i] is None]
        if not which:
            continue
        group = [list(inputs[i]) if split else inputs[i] for i in which]
        wins, _, encoding, _ = windows(session.tokenizer, group, session.data.max_length, session.data.doc_stride,
                                       split_into_words=split)
        probs = _window_probabilities(session, [w.features for w in wins])
        for i, pred in zip(which, decode(probs, session.labels, wins, group, encoding)):
            out[i] = pred
    return out


def predict_rows(session: Any, inputs: list[Any], pairs: Any) -> list[dict[str, Any]]:
    """A raw text's entities, or a tag per token of a list of tokens (long inputs are read in
    overlapping windows, never cut)."""
    return [{"tokens": list(x), "tags": pred} if isinstance(x, (list, tuple)) else {"text": x, "entities": pred}
            for x, pred in zip(inputs, predict(session, inputs, pairs))]


def read_labelled(session: Any, path: Path, columns: list[str] | None) -> Table:
    """Tagged sentences whose tags the model knows."""
    column_names(session, path, columns, named=False)
    known = path.suffix.lower() in (*CONLL_SUFFIXES, ".jsonl", ".json")
    table = read_sentences(path, session.data.model_copy(update={"format": "auto"}) if known else session.data)
    check_tags(table, session.data.tag_scheme, session.labels, where="the model's tags")
    return table


def evaluate_labelled(session: Any, labelled: Table) -> dict[str, Any]:
    return session.evaluate_table(labelled)


TASK = Task.of(sys.modules[__name__], name="token_classification", config=TokenClassificationConfig, explain="words", per_class_title="Per entity type")
