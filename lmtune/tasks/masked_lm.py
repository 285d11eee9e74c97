"""Masked language modelling for encoder models (BERT-style): continued pretraining on domain text
before fine-tuning a classifier or tagger on the adapted body.

Plain text (.txt: documents separated by blank lines) or a text column is tokenized, the documents
are concatenated with [SEP] between them and cut into blocks that fill data.max_length with the
tokenizer's special tokens ([CLS] ... [SEP]). Training batches are masked afresh every time
(data.mlm_probability of the tokens, of which 80% become [MASK], 10% a random token, 10% stay);
with data.whole_word_mask all subwords of a chosen word are masked together. The validation and
test sets are masked once, with train.seed, so their loss is comparable from one evaluation to the
next. The saved model keeps the base weights under the usual names, so a classification or
token_classification run can start from <run>/model (the MLM head is dropped there).

With data.nsp: true the inputs are sentence pairs instead of blocks (tasks/sentence_pairs.py) and the
model has transformers' pretraining heads (BertForPreTraining: the MLM head and a next-sentence
classifier); the training loss is the MLM loss plus the NSP loss, and every evaluation reports
nsp_accuracy and nsp_loss beside the MLM loss and perplexity.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..core.config import DataConfig, EvalConfig, RunConfig
from ..core.errors import LmtuneError
from ..core.models import load_pretrained
from ..core.runtime import log
from ..data.readers import Table
from ..data.split import random_holdout
from .causal_lm import read_texts
from .common import AUTO_BLOCK, LengthChoice, TaskData, fixed_length, labelled_tokens, tokenize_texts
from .contract import Task
from .inputs import check_texts, column_names, no_template, text_chunks
from .inputs import read_texts as read_input_texts
from .sections import Forgetting, TextColumn
from .sentence_pairs import documents_per_line, nsp_model_class, pair_features, table_pairs


class MaskedLMData(TextColumn, DataConfig):
    """data: keys of masked_lm runs."""

    mlm_probability: float = Field(
        0.15, gt=0, lt=1, description="masked_lm: share of tokens masked (80% [MASK], 10% random, 10% unchanged)"
    )
    whole_word_mask: bool = Field(False, description="masked_lm: mask all subwords of a chosen word together")
    nsp: bool = Field(
        False, description="masked_lm: next-sentence prediction beside masked LM (BERT's two objectives): the inputs "
        "are sentence pairs of the documents, half true next sentences, half random ones of another document"
    )


class MaskedLMEval(Forgetting, EvalConfig):
    """eval: keys of masked_lm runs."""


class MaskedLMConfig(RunConfig):
    task: Literal["masked_lm"] = "masked_lm"
    data: MaskedLMData
    eval: MaskedLMEval = Field(default_factory=MaskedLMEval)

METRICS = ("loss", "perplexity", "nsp_accuracy", "nsp_loss")  # nsp_*: with data.nsp only
GREATER_IS_BETTER = {"loss": False, "perplexity": False, "nsp_accuracy": True, "nsp_loss": False}
AUTO_MODEL = "AutoModelForMaskedLM"
NSP_MODEL = "AutoModelForPreTraining"  # data.nsp: the MLM head and the next-sentence classifier
NSP_BLOCK = 128  # data.max_length: auto with data.nsp: each sentence pair is cut to this many tokens
# on CPU, eager attention while 90% of the training inputs are at most this long (see choose_attention)
EAGER_MAX_LENGTH = 160
IGNORE = -100


# ---------------------------------------------------------------- reading


def _check(table: Table, cfg: Any) -> None:
    col = cfg.data.text_column
    table.require_columns(col)
    for i, row in enumerate(table.rows):
        if not isinstance(row.get(col), str):
            raise LmtuneError(f"{table.where(i)}: column {col!r} must hold text")


def _read(path: str, cfg: Any, *, mask_once: bool) -> Table:
    table = read_texts(path, cfg.data.format)
    _check(table, cfg)
    if getattr(cfg.data, "nsp", False):
        table = documents_per_line(table)
    table.mask_once = mask_once  # type: ignore[attr-defined]
    return table


def read_table_to_mask(path: str | Path, data: Any) -> Table:
    """A text file to evaluate on (`lmtune eval`): masked once, like a validation set."""
    from types import SimpleNamespace

    fmt = "auto" if Path(path).suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl", ".json") else data.format
    return _read(str(path), SimpleNamespace(data=data.model_copy(update={"format": fmt})), mask_once=True)


def _check_nsp(cfg: Any) -> None:
    if cfg.data.nsp:
        nsp_model_class(cfg.model)
    elif cfg.train.metric in ("nsp_accuracy", "nsp_loss"):
        raise LmtuneError(f"train.metric: {cfg.train.metric} is reported with data.nsp: true only")


def _pairs(table: Table, cfg: Any) -> list[tuple[str, str, int]]:
    d = cfg.data
    held_out = getattr(table, "mask_once", False) and d.validation is None and str(table.path) == str(d.train)
    return table_pairs(table, d.text_column, cfg.train.seed, held_out=held_out)


def load_data(cfg: Any) -> TaskData:
    d = cfg.data
    _check_nsp(cfg)
    train = _read(d.train, cfg, mask_once=False)
    if d.nsp:  # the whole file's documents and sentences, before any is held out
        table_pairs(train, d.text_column, cfg.train.seed)
    notes = []
    if d.validation:
        validation = _read(d.validation, cfg, mask_once=True)
    else:
        kept, held = random_holdout(len(train), d.validation_size, cfg.train.seed, source=str(d.train), unit="documents")
        train, validation = train.subset(kept), train.subset(held)
        train.mask_once, validation.mask_once = False, True  # type: ignore[attr-defined]
        notes.append(f"no validation file: held out {len(held)} of {len(held) + len(kept)} documents (seed {cfg.train.seed})")
    test = _read(d.test, cfg, mask_once=True) if d.test else None
    notes.append(
        f"masking {d.mlm_probability:.0%} of tokens{' (whole words)' if d.whole_word_mask else ''}; "
        "validation masked once (seed train.seed)"
    )
    if d.nsp:  # each split's pairs can be made (checked before anything is written)
        for table in (train, validation, test):
            if table is not None:
                _pairs(table, cfg)
        notes.append("next-sentence prediction: sentence pairs, half true next sentences, half random ones of "
                     "another document (seed train.seed)")
    return TaskData(train, validation, test, [], notes)


# ---------------------------------------------------------------- blocks and masking


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] and [SEP] for BERT)."""
    probe = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for k in range(len(full) - len(probe) + 1):
        if full[k : k + len(probe)] == probe:
            return full[:k], full[k + len(probe) :]
    raise LmtuneError("the tokenizer adds special tokens in a way masked_lm cannot follow")


def make_blocks(texts: list[str], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """The texts as one token stream ([SEP] between documents) cut into blocks of max_length with
    the tokenizer's special tokens. Each block has input_ids, special_tokens_mask and word_ids
    (a word number per token, the same for all subwords of a word; -1 on special tokens)."""
    prefix, suffix = _special_frame(tokenizer)
    width = max_length - len(prefix) - len(suffix)
    if width < 1:
        raise LmtuneError(f"data.max_length={max_length} leaves no room for text besides the special tokens")
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    enc = tokenizer(texts, add_special_tokens=False)
    stream: list[int] = []
    words: list[int] = []
    word = 0
    for i, ids in enumerate(enc["input_ids"]):
        if i and sep is not None:
            stream.append(sep)
            words.append(-1)
        wids = enc.word_ids(i) if getattr(tokenizer, "is_fast", False) else list(range(len(ids)))
        prev = None
        for w in wids:
            if w is None or w != prev:
                word += 1
            words.append(word)
            prev = w
        stream += ids
    blocks = []
    for start in range(0, len(stream), width):
        chunk, wchunk = stream[start : start + width], words[start : start + width]
        ids = prefix + chunk + suffix
        # the [SEP] between documents is a special token too: never masked
        special = [1] * len(prefix) + [1 if t == sep else 0 for t in chunk] + [1] * len(suffix)
        word_ids = [-1] * len(prefix) + [-1 if t == sep else w for t, w in zip(chunk, wchunk)] + [-1] * len(suffix)
        blocks.append({"input_ids": ids, "special_tokens_mask": special, "word_ids": word_ids})
    return blocks


def _replace(inputs: Any, masked: Any, mask_id: int, vocab_size: int, generator: Any) -> Any:
    """80% of the masked positions become [MASK], 10% a random token, 10% stay."""
    import torch

    replaced = torch.bernoulli(torch.full(inputs.shape, 0.8), generator=generator).bool() & masked
    inputs[replaced] = mask_id
    randomised = torch.bernoulli(torch.full(inputs.shape, 0.5), generator=generator).bool() & masked & ~replaced
    random_words = torch.randint(vocab_size, inputs.shape, dtype=torch.long, generator=generator)
    inputs[randomised] = random_words[randomised]
    return inputs


def whole_word_mask(inputs: Any, word_ids: Any, probability: float, mask_id: int, vocab_size: int,
                    generator: Any = None) -> tuple[Any, Any]:
    """Mask whole words: each word (a run of tokens with the same word id >= 0) is chosen with
    `probability`; all its tokens are then masked (80/10/10 per token). Returns (inputs, labels)."""
    import torch

    labels = inputs.clone()
    inputs = inputs.clone()
    top = int(word_ids.max()) + 1 if word_ids.numel() else 0
    chosen = torch.bernoulli(torch.full((max(top, 1),), probability), generator=generator).bool()
    masked = (word_ids >= 0) & chosen[word_ids.clamp(min=0)]
    labels[~masked] = IGNORE
    return _replace(inputs, masked, mask_id, vocab_size, generator), labels


class Collator:
    """Pads input ids, attention mask and labels (and a sentence pair's token_type_ids, with its
    next_sentence_label). Features that carry labels (validation, masked once) are only padded; the
    others are masked here, afresh for every batch."""

    def __init__(self, tokenizer: Any, probability: float, whole_word: bool, seed: int | None = None) -> None:
        import torch
        from transformers import DataCollatorForLanguageModeling

        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.probability = probability
        self.whole_word = whole_word
        self.mlm = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=probability)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.mlm.generator = self.generator

    def mask(self, input_ids: Any, special: Any, word_ids: Any) -> tuple[Any, Any]:
        if self.whole_word:
            return whole_word_mask(input_ids, word_ids, self.probability, self.tokenizer.mask_token_id,
                                   len(self.tokenizer), self.generator)
        return self.mlm.torch_mask_tokens(input_ids.clone(), special.bool())

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        pad = lambda xs, v: xs + [v] * (width - len(xs))  # noqa: E731
        input_ids = torch.tensor([pad(f["input_ids"], self.pad_id) for f in features])
        attention = torch.tensor([pad([1] * len(f["input_ids"]), 0) for f in features])
        if all("labels" in f for f in features):
            labels = torch.tensor([pad(f["labels"], IGNORE) for f in features])
        else:
            special = torch.tensor([pad(f["special_tokens_mask"], 1) for f in features])
            word_ids = torch.tensor([pad(f["word_ids"], -1) for f in features])
            input_ids, labels = self.mask(input_ids, special, word_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = torch.tensor([pad(f["token_type_ids"], 0) for f in features])
            batch["next_sentence_label"] = torch.tensor([f["next_sentence_label"] for f in features])
        return batch


def choose_max_length(table: Table, tokenizer: Any, cfg: Any, cap: tuple[int, str]) -> LengthChoice:
    """data.max_length: auto: blocks of AUTO_BLOCK tokens (the documents are joined and cut into
    full blocks, so no length of theirs is a fit); with data.nsp, sentence pairs cut to NSP_BLOCK tokens."""
    if getattr(cfg.data, "nsp", False):
        return fixed_length(NSP_BLOCK, cap, "sentence pairs")
    return fixed_length(AUTO_BLOCK, cap, "blocks")


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Blocks of max_length tokens (nothing is truncated), or with data.nsp sentence pairs cut to
    max_length. Tables marked `mask_once` (validation, test) are masked here with train.seed: their
    features carry input ids and labels."""
    d = cfg.data
    if tokenizer.mask_token_id is None:
        raise LmtuneError("masked_lm needs a tokenizer with a mask token (an encoder such as BERT or MiniLM)")
    if getattr(d, "nsp", False):
        blocks = pair_features(_pairs(table, cfg), tokenizer, d.max_length)
    else:
        blocks = make_blocks([r[d.text_column] for r in table.rows], tokenizer, d.max_length)
    if not blocks:
        raise LmtuneError(f"{table.path}: no text to train on")
    if not getattr(table, "mask_once", False):
        return blocks, 0
    return mask_once(blocks, tokenizer, cfg), 0


def mask_once(blocks: list[dict[str, Any]], tokenizer: Any, cfg: Any) -> list[dict[str, Any]]:
    """The blocks masked with a fixed seed (train.seed): the same masks at every evaluation."""
    import torch

    collate = Collator(tokenizer, cfg.data.mlm_probability, cfg.data.whole_word_mask, seed=cfg.train.seed)
    out = []
    for b in blocks:
        ids, lab = collate.mask(torch.tensor([b["input_ids"]]), torch.tensor([b["special_tokens_mask"]]),
                                torch.tensor([b["word_ids"]]))
        pair = {k: b[k] for k in ("token_type_ids", "next_sentence_label") if k in b}
        out.append({"input_ids": ids[0].tolist(), "labels": lab[0].tolist(), **pair})
    return out


# ---------------------------------------------------------------- model, batches, metrics


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    if not getattr(cfg.data, "nsp", False):
        return load_pretrained(AUTO_MODEL, path, dropout=cfg.train.dropout, attn_implementation=attn_implementation)
    nsp_model_class(path)
    missing: list[str] = []
    model = load_pretrained(NSP_MODEL, path, dropout=cfg.train.dropout, attn_implementation=attn_implementation,
                            missing=missing)
    new = [k for k in missing if "seq_relationship" in k]
    if new:
        log(f"data.nsp: {cfg.model} has no next-sentence classifier; a new one ({', '.join(new)}) starts at random")
    return model


def mlm_logits(outputs: Any) -> Any:
    """The MLM head's logits of a masked LM's outputs or of a pretraining model's (data.nsp)."""
    logits = getattr(outputs, "prediction_logits", None)
    return outputs.logits if logits is None else logits


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Collator:
    probability = cfg.data.mlm_probability if cfg is not None else 0.15
    whole_word = cfg.data.whole_word_mask if cfg is not None else False
    return Collator(tokenizer, probability, whole_word)


loss_items = labelled_tokens  # the loss is the mean over masked tokens

def eval_step(model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """Summed loss over the masked tokens and their count, per block; for sentence pairs scored by a
    model with a next-sentence classifier also the NSP loss and whether it was right, per pair."""
    import torch
    import torch.nn.functional as F

    labels, is_next = batch["labels"], batch.get("next_sentence_label")
    outputs = model(**{k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")})
    logits = mlm_logits(outputs)
    sums = [F.cross_entropy(logits[i].float(), labels[i], ignore_index=IGNORE, reduction="sum")
            for i in range(logits.shape[0])]
    out = {"loss_sum": torch.stack(sums), "tokens": (labels != IGNORE).sum(1)}
    nsp = getattr(outputs, "seq_relationship_logits", None)
    if is_next is not None and nsp is not None:
        out["nsp_loss"] = F.cross_entropy(nsp.float(), is_next, reduction="none")
        out["nsp_correct"] = (nsp.argmax(-1) == is_next).long()
    return out


def compute_metrics(
    outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None, features: Any = None
) -> dict[str, Any]:
    tokens = float(outputs["tokens"].sum())
    loss = float(outputs["loss_sum"].sum()) / max(tokens, 1.0)
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "masked_tokens": int(tokens)}
    if "nsp_correct" in outputs:
        metrics.update(nsp_accuracy=float(outputs["nsp_correct"].mean()), nsp_loss=float(outputs["nsp_loss"].mean()),
                       nsp_pairs=int(outputs["nsp_correct"].size))
    return metrics


def validation_samples(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                       table: Table) -> list[dict[str, Any]]:
    """None: blocks of masked tokens are not examples worth reading (the report shows perplexity)."""
    return []


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Any = None,
                  progress: bool = False) -> dict[str, Any]:
    return {}


def decode(logits: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    raise LmtuneError("masked_lm predictions fill in mask tokens: see Predictor.predict")


# ------------------------------------------------------------ inference (see tasks/contract.py)

GENERATIVE = False
TOP_K = 5  # candidates shown per mask token


def bare_labels(model: Any) -> list[str]:
    return []


def bare_data(labels: list[str]) -> dict[str, Any]:
    return {}


def read_inputs(session: Any, path: Any, columns: list[str] | None, template: str | None) -> tuple[Table, list[Any], None]:
    no_template(session, template)
    table, texts, _ = read_input_texts(session, path, columns)
    return table, texts, None


def input_chunks(session: Any, path: Any, columns: list[str] | None, template: str | None, rows: int) -> Any:
    no_template(session, template)
    for table, texts, _ in text_chunks(session, path, columns, rows):
        yield table, texts, None


def _fill(session: Any, texts: list[str]) -> tuple[list[list[list[dict[str, Any]]]], list[bool]]:
    """Per text, per mask token, the TOP_K likeliest tokens {token, score}; and which texts were cut
    to the model's max_length (a mask token past the cut is not filled in)."""
    import torch
    from transformers import DataCollatorWithPadding

    tokenizer = session.tokenizer
    mask = tokenizer.mask_token
    check_texts(texts)
    if any(mask not in t for t in texts):
        raise LmtuneError(f"inputs[{next(i for i, t in enumerate(texts) if mask not in t)}]: no {mask} token to fill in")
    enc, cut = tokenize_texts(tokenizer, texts, None, session.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    def step(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        probs, ids = torch.softmax(mlm_logits(model(**batch)).float(), -1).topk(TOP_K, dim=-1)
        return {"probs": probs, "ids": ids}

    out = []
    for feature, row in zip(features, session.run_batches(features, step, DataCollatorWithPadding(tokenizer))):
        n, width = len(feature["input_ids"]), row["ids"].shape[0]
        offset = width - n if tokenizer.padding_side == "left" else 0
        where = [offset + j for j, t in enumerate(feature["input_ids"]) if t == tokenizer.mask_token_id]
        out.append([
            [{"token": tokenizer.decode([int(i)]).strip(), "score": round(float(p), 6)} for p, i in zip(row["probs"][j], row["ids"][j])]
            for j in where
        ])
    return out, cut


def predict(session: Any, inputs: list[Any], pairs: Any) -> list[list[list[dict[str, Any]]]]:
    return _fill(session, inputs)[0]


def predict_rows(session: Any, inputs: list[Any], pairs: Any) -> list[dict[str, Any]]:
    masks, cut = _fill(session, inputs)
    return [{"text": t, "masks": m, **({"truncated": True} if c else {})} for t, m, c in zip(inputs, masks, cut)]


def read_labelled(session: Any, path: Any, columns: list[str] | None) -> Table:
    """Masked once with the run's seed, like its validation set."""
    column_names(session, path, columns, named=False)
    return read_table_to_mask(path, session.data)


def evaluate_labelled(session: Any, labelled: Table) -> dict[str, Any]:
    return session.evaluate_table(labelled)


TASK = Task.of(sys.modules[__name__], name="masked_lm", config=MaskedLMConfig)
