"""Text classification (sentiment, topic, NLI with text pairs): one label per text or text pair."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..core import models
from ..core.config import CleanConfig, DataConfig, EvalConfig, RunConfig
from ..core.errors import LmtuneError
from ..data.readers import Table, read_table
from ..data.split import grouped_split
from .common import LengthChoice, TaskData, examples_in, load_labelled_model, per_class_row, percentile_length, tokenize_texts
from .contract import Task
from .inputs import check_texts, no_template, read_texts, text_chunks
from .sections import Augmented, GroupColumn, TextColumn


class ClassificationData(Augmented, GroupColumn, TextColumn, DataConfig):
    """data: keys of classification runs."""

    columns: list[str] | None = Field(
        None, min_length=1, description="column names of CSV/TSV files without a header (the first line is then "
        "data), e.g. [text, label] for AG News; null: the first line is the header",
    )
    text_pair_column: str | None = Field(None, description="second text column for pair tasks (NLI, similarity)")
    label_column: str = Field("label", description="column with the label (string or integer)")
    clean: CleanConfig | None = Field(
        None, description="classification: clean the training file before the split (see data.clean.*); null: as it is"
    )


class ClassificationConfig(RunConfig):
    task: Literal["classification"] = "classification"
    data: ClassificationData
    eval: EvalConfig = Field(default_factory=EvalConfig)

METRICS = (
    "accuracy",
    "f1_macro",
    "f1_micro",
    "precision_macro",
    "recall_macro",
    "precision_micro",
    "recall_micro",
    "loss",
)
GREATER_IS_BETTER = {m: m != "loss" for m in METRICS}
AUTO_MODEL = "AutoModelForSequenceClassification"
# on CPU, eager attention while 90% of the training inputs are at most this long (see choose_attention)
EAGER_MAX_LENGTH = 160


def _label_order(values: list[str]) -> list[str]:
    unique = set(values)
    try:
        return sorted(unique, key=lambda v: int(v))
    except ValueError:
        return sorted(unique)


def _check_rows(table: Table, cfg: Any, *, need_label: bool) -> None:
    d = cfg.data
    table.require_columns(d.text_column, d.text_pair_column, d.label_column if need_label else None)
    for i, row in enumerate(table.rows):
        for col in (d.text_column, d.text_pair_column):
            if col is not None and not isinstance(row.get(col), str):
                raise LmtuneError(f"{table.where(i)}: column {col!r} must hold text, found {row.get(col)!r}")
        if need_label:
            label = row.get(d.label_column)
            if label is None or label == "" or isinstance(label, (list, dict)):
                raise LmtuneError(f"{table.where(i)}: no label in column {d.label_column!r}")
            row[d.label_column] = str(label)


def check_labels(table: Table, label_column: str, labels: list[str], *, where: str) -> None:
    known = set(labels)
    for i, row in enumerate(table.rows):
        if row[label_column] not in known:
            raise LmtuneError(
                f"{table.where(i)}: label {row[label_column]!r} never appears in {where}; "
                f"known labels: {', '.join(labels)}"
            )


def load_data(cfg: Any) -> TaskData:
    d = cfg.data
    train = read_table(d.train, d.format, columns=d.columns)
    _check_rows(train, cfg, need_label=True)
    notes = []
    prep: dict[str, Any] = {}
    dropped: list[dict[str, Any]] = []
    if d.clean is not None:  # read -> clean -> split
        from ..data.clean import CleanOptions, clean_rows

        cleaned = clean_rows(train.rows, train.lines, d.text_column, d.label_column, CleanOptions(**d.clean.model_dump()))
        train = Table(train.path, train.columns, cleaned.rows, cleaned.lines)
        prep["clean"], dropped = cleaned.summary(), cleaned.dropped
        if not train.rows:
            raise LmtuneError(f"{d.train}: data.clean dropped every row ({prep['clean']['dropped_by_reason']})")
        reasons = ", ".join(f"{k} {v}" for k, v in prep["clean"]["dropped_by_reason"].items()) or "nothing"
        notes.append(f"clean: kept {len(train)} of {len(train) + len(dropped)} training rows; dropped {reasons}"
                     + (" (each in dropped.jsonl)" if dropped else "") + f"; {prep['clean']['texts_changed']} texts changed")
    if d.validation:
        validation = read_table(d.validation, d.format, columns=d.columns)
        _check_rows(validation, cfg, need_label=True)
    else:
        from ..data.keys import normalise

        values = [r[d.label_column] for r in train.rows]
        # grouped: copies of one (normalised) text, or rows of one data.group_column value, never land on both sides
        if d.group_column:
            train.require_columns(d.group_column)
            groups = [str(r[d.group_column]) for r in train.rows]
        else:
            texts = [r[d.text_column] + (f"\t{r[d.text_pair_column]}" if d.text_pair_column else "") for r in train.rows]
            groups = [normalise(t) for t in texts]
        tr, va = grouped_split(values, groups, (1 - d.validation_size, d.validation_size), cfg.train.seed, source=str(d.train))
        train, validation = train.subset(tr), train.subset(va)
        notes.append(
            f"no validation file: held out {len(va)} of {len(tr) + len(va)} training examples "
            f"(stratified, {'each ' + repr(d.group_column) + ' value' if d.group_column else 'duplicates'} "
            f"kept on one side, seed {cfg.train.seed})"
        )
    if d.augment is not None:  # ... -> split -> augment the training part only
        train, note, prep["augment"] = _augment(train, cfg)
        notes.append(note)
    labels = _label_order([r[d.label_column] for r in train.rows])
    if len(labels) < 2:
        raise LmtuneError(f"{d.train}: only one label ({labels[0]!r}); classification needs at least two")
    check_labels(validation, d.label_column, labels, where="the training data")
    test = None
    if d.test:
        test = read_table(d.test, d.format, columns=d.columns)
        _check_rows(test, cfg, need_label=True)
        check_labels(test, d.label_column, labels, where="the training data")
    counts = Counter(r[d.label_column] for r in train.rows)
    notes.append("train labels: " + ", ".join(f"{label} {counts[label]}" for label in labels))
    return TaskData(train, validation, test, labels, notes, prep, dropped)


def _augment(train: Table, cfg: Any) -> tuple[Table, str, dict[str, Any]]:
    from ..data.augment import AugmentOptions, Skipped, augment_rows, gather_synonyms

    d, a = cfg.data, cfg.data.augment
    words = {w.lower() for r in train.rows for w in str(r[d.text_column]).split()}
    synonyms = gather_synonyms(a.synonyms, models.resolve(cfg.model) if a.embedding_synonyms else None, words)
    options = AugmentOptions.from_section(a)
    skipped = Skipped()
    new = augment_rows(train.rows, train.lines, d.text_column, options, synonyms, cfg.train.seed, skipped)
    table = Table(train.path, train.columns, train.rows + new, train.lines + [r["augmented_from"] for r in new])
    summary = {"original": len(train), "augmented": len(new), "skipped": skipped.total,
               "skipped_by_reason": skipped.by_reason(), "synonym_words": len(synonyms)}
    why = skipped.describe(len(train) * options.n_per_example)
    return table, f"augment: {len(new)} augmented copies of {len(train)} training examples" + (f"; {why}" if why else ""), summary


def texts_of(table: Table, cfg: Any) -> tuple[list[str], list[str] | None]:
    d = cfg.data
    texts = [r[d.text_column] for r in table.rows]
    pairs = [r[d.text_pair_column] for r in table.rows] if d.text_pair_column else None
    return texts, pairs


def choose_max_length(table: Table, tokenizer: Any, cfg: Any, cap: tuple[int, str]) -> LengthChoice:
    """data.max_length: auto: the 99th percentile of the training inputs' token lengths."""
    texts, pairs = texts_of(table, cfg)
    enc = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)
    return percentile_length([len(ids) for ids in enc["input_ids"]], cap)


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Tokenized features, one dict per example, and how many inputs were truncated."""
    texts, pairs = texts_of(table, cfg)
    enc, cut = tokenize_texts(tokenizer, texts, pairs, cfg.data.max_length)
    label_ids = {label: i for i, label in enumerate(labels)}
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = []
    for i, row in enumerate(table.rows):
        f = {k: enc[k][i] for k in keys}
        label = row.get(cfg.data.label_column)
        if label is not None:
            f["labels"] = label_ids[label]
        features.append(f)
    return features, sum(cut)


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    return load_labelled_model(AUTO_MODEL, path, cfg, labels, attn_implementation)


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Any:
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


loss_items = examples_in  # the loss is the mean over examples

def eval_step(model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    import torch.nn.functional as F

    logits = model(**batch).logits.float()
    return {
        "logits": logits,
        "references": batch["labels"],
        "loss": F.cross_entropy(logits, batch["labels"], reduction="none"),
    }


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Any = None,
                  progress: bool = False) -> dict[str, Any]:
    return {}


def compute_metrics(
    outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None, features: Any = None
) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, classification_report, precision_recall_fscore_support

    logits, references = outputs["logits"], outputs["references"]
    predictions = logits.argmax(-1)
    ids = list(range(len(labels)))
    out: dict[str, Any] = {"accuracy": float(accuracy_score(references, predictions))}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(
            references, predictions, labels=ids, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    report = classification_report(
        references, predictions, labels=ids, target_names=labels, output_dict=True, zero_division=0
    )
    out["per_class"] = {label: per_class_row(report[label]) for label in labels}
    if "loss" in outputs:
        out["loss"] = float(np.mean(outputs["loss"]))
    return out


def decode(logits: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    shifted = logits - logits.max(-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    return [
        {
            "label": labels[int(p.argmax())],
            "score": round(float(p.max()), 6),
            "probabilities": {label: round(float(x), 6) for label, x in zip(labels, p)},
        }
        for p in probs
    ]


def validation_samples(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                       table: Table) -> list[dict[str, Any]]:
    """One row per validation example, in data order: its text (and second text), gold label,
    predicted label and the predicted label's probability (for the report's confusion matrix and
    its most confident errors)."""
    logits, references = outputs["logits"], outputs["references"]
    if len(logits) != len(table):
        raise LmtuneError(f"{table.path}: {len(table)} validation rows but {len(logits)} evaluated outputs")
    texts, pairs = texts_of(table, cfg)
    rows = []
    for i, pred in enumerate(decode(logits, labels)):
        rows.append({"text": texts[i], **({"text_pair": pairs[i]} if pairs else {}), "label": labels[int(references[i])],
                     "predicted": pred["label"], "confidence": pred["score"]})
    return rows


# ------------------------------------------------------------ inference (see tasks/contract.py)

GENERATIVE = False
onnx_outputs = ("logits",)  # lmtune export --format onnx


def bare_labels(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def bare_data(labels: list[str]) -> dict[str, Any]:
    return {}


def read_inputs(session: Any, path: Any, columns: list[str] | None, template: str | None) -> tuple[Table, list[Any], list[str] | None]:
    no_template(session, template)
    return read_texts(session, path, columns)


def input_chunks(session: Any, path: Any, columns: list[str] | None, template: str | None, rows: int) -> Any:
    no_template(session, template)
    return text_chunks(session, path, columns, rows)


def _split_pairs(inputs: list[Any], pairs: list[str] | None) -> tuple[list[str], list[str | None] | None]:
    """Texts and second texts from Python inputs: texts (with `pairs`), [text, text_pair] or
    {text, text_pair}, mixed as they come. A single text among pairs has a second text of None."""
    if pairs is not None or all(isinstance(x, str) for x in inputs):
        if pairs is not None and len(pairs) != len(inputs):
            raise LmtuneError(f"{len(inputs)} texts but {len(pairs)} second texts")
        return check_texts(inputs), pairs
    texts: list[str] = []
    seconds: list[str | None] = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            texts.append(x)
            seconds.append(None)
        elif isinstance(x, dict) and isinstance(x.get("text"), str) and isinstance(x.get("text_pair"), str):
            texts.append(x["text"])
            seconds.append(x["text_pair"])
        elif isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(t, str) for t in x):
            texts.append(x[0])
            seconds.append(x[1])
        else:
            raise LmtuneError(f"inputs[{i}]: expected a text, [text, text_pair] or {{text, text_pair}}, got {str(x)[:80]}")
    return texts, seconds


def logits(session: Any, texts: list[str], pairs: list[str | None] | None) -> tuple[np.ndarray, list[bool]]:
    """The model's logits [inputs, labels] in input order, and which inputs were cut to the
    model's max_length."""
    tokenizer = session.tokenizer
    enc, cut = tokenize_texts(tokenizer, texts, pairs, session.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    rows = session.run_batches(features, lambda model, batch: {"logits": model(**batch).logits}, collator(tokenizer))
    return np.stack([r["logits"] for r in rows]).astype(np.float32), cut


def predict(session: Any, inputs: list[Any], pairs: list[str] | None) -> list[dict[str, Any]]:
    texts, pairs = _split_pairs(inputs, pairs)
    return decode(logits(session, texts, pairs)[0], session.labels)


def predict_rows(session: Any, inputs: list[Any], pairs: list[str] | None) -> list[dict[str, Any]]:
    texts, pairs = _split_pairs(inputs, pairs)
    scores, cut = logits(session, texts, pairs)
    rows = []
    for i, pred in enumerate(decode(scores, session.labels)):
        row = {"text": texts[i], **({"text_pair": pairs[i]} if pairs and pairs[i] is not None else {}), **pred}
        if cut[i]:
            row["truncated"] = True
        rows.append(row)
    return rows


def read_labelled(session: Any, path: Any, columns: list[str] | None) -> tuple[list[str], list[str] | None, list[int]]:
    """The texts, second texts and label ids of a labelled file (labels the model knows)."""
    table, texts, pairs = read_inputs(session, path, columns, None)
    label_column = session.data.label_column
    table.require_columns(label_column)
    label_ids = {label: i for i, label in enumerate(session.labels)}
    refs = []
    for i, row in enumerate(table.rows):
        label = str(row[label_column])
        if label not in label_ids:
            raise LmtuneError(f"{table.where(i)}: label {label!r} is not one the model knows ({', '.join(session.labels)})")
        refs.append(label_ids[label])
    return texts, pairs, refs


def evaluate_labelled(session: Any, labelled: tuple[list[str], list[str] | None, list[int]]) -> dict[str, Any]:
    import torch

    texts, pairs, refs = labelled
    scores, _ = logits(session, texts, pairs)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(scores), torch.tensor(refs), reduction="none")
    metrics = compute_metrics({"logits": scores, "references": np.array(refs), "loss": loss.numpy()}, session.labels)
    metrics["examples"] = len(refs)
    return metrics


TASK = Task.of(sys.modules[__name__], name="classification", config=ClassificationConfig, explain="label")
