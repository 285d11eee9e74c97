"""Extractive question answering: the answer is a span of the context (SQuAD v1.1 / v2.0).

Data: SQuAD JSON (`data[].paragraphs[].qas[]`) or flat rows (JSONL, JSON list, CSV) with a
question, a context and `answers: {text: [...], answer_start: [...]}` (a list of
`{text, answer_start}` objects is accepted too). A question with no answer (SQuAD v2.0
`is_impossible`, or an empty answer list) makes the run a v2.0 one: the model may then answer
nothing, and its labels are ["no_answer"] (v1.1 runs have no labels).

Question and context are tokenized as a pair; a context too long for `data.max_length` is cut into
windows that overlap by `data.doc_stride` tokens. A window that holds the whole (first) answer is
trained on its start and end tokens, the others on [CLS] (no answer here). Evaluation takes, for
each question, the best span over all its windows (start logit + end logit, both inside the
context, at most `data.max_answer_length` tokens); with v2.0 data, no answer wins when the [CLS]
score of every window is higher. Metrics are those of the official SQuAD scripts: exact match and
token F1 after normalisation (lower case, no punctuation, no articles, single spaces), the maximum
over the gold answers, as shares (0-1; the scripts print them x100).

An `answer_start` that does not point at its answer text in the context is dropped and counted;
more than `data.max_broken_answers` of them in a file is an error.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from ..core.config import DataConfig, EvalConfig, RunConfig
from ..core.errors import LmtuneError
from ..core.models import load_pretrained
from ..data.readers import Table, read_table
from .common import LengthChoice, TaskData, examples_in, percentile_length
from .contract import Task
from .inputs import column_names, no_template
from .sections import Windows


class QuestionAnsweringData(Windows, DataConfig):
    """data: keys of question_answering runs."""

    question_column: str = Field("question", description="question_answering rows: the question")
    context_column: str = Field("context", description="question_answering rows: the text that holds the answer")
    answers_column: str = Field(
        "answers", description="question_answering rows: {text: [...], answer_start: [...]} (SQuAD JSON is read as it is)"
    )
    max_answer_length: int = Field(30, ge=1, description="question_answering: longest answer span predicted, in tokens")
    max_broken_answers: float = Field(
        0.05, ge=0, le=1,
        description="question_answering: share of answers whose answer_start misses their text that may be dropped (more is an error)",
    )


class QuestionAnsweringConfig(RunConfig):
    task: Literal["question_answering"] = "question_answering"
    data: QuestionAnsweringData
    eval: EvalConfig = Field(default_factory=EvalConfig)

METRICS = ("f1", "exact_match", "loss")
GREATER_IS_BETTER = {"f1": True, "exact_match": True, "loss": False}
AUTO_MODEL = "AutoModelForQuestionAnswering"
# on CPU, eager attention while 90% of the training inputs are at most this long (see choose_attention)
EAGER_MAX_LENGTH = 160
NO_ANSWER = "no_answer"
N_BEST = 20  # start and end candidates per window
MASKED = -1e4  # logit of positions past the end of a window


class QuestionTable(Table):
    """Questions as rows {id, question, context, answers: [{text, start}], group}; `places` says
    where each came from (a line, or a position in a SQuAD file)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], places: list[str]) -> None:
        super().__init__(path, ["id", "question", "context", "answers", "group"], rows, list(range(1, len(rows) + 1)))
        self.places = places

    def where(self, i: int) -> str:
        return self.places[i]

    def subset(self, indices: list[int]) -> "QuestionTable":
        return QuestionTable(self.path, [self.rows[i] for i in indices], [self.places[i] for i in indices])


# ---------------------------------------------------------------- reading


def _answers(value: Any, where: str, column: str) -> list[dict[str, Any]]:
    """{text: [...], answer_start: [...]} or [{text, answer_start}, ...] as [{text, start}]."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise LmtuneError(f"{where}: {column!r} must have lists 'text' and 'answer_start' of the same length")
        value = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(value, list):
        raise LmtuneError(f"{where}: {column!r} must be {{text: [...], answer_start: [...]}} or a list of them, found {str(value)[:80]}")
    out = []
    for a in value:
        if not isinstance(a, dict) or not isinstance(a.get("text"), str) or isinstance(a.get("answer_start"), bool) \
                or not isinstance(a.get("answer_start"), int):
            raise LmtuneError(f"{where}: each answer needs a text and an integer answer_start, found {str(a)[:80]}")
        out.append({"text": a["text"], "start": a["answer_start"]})
    return out


def _squad_rows(path: Path, data: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    rows, places = [], []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(qa, dict):
                    raise LmtuneError(f"{where}: expected an object with a question and answers")
                answers = [] if qa.get("is_impossible") else _answers(qa.get("answers", []), where, "answers")
                rows.append({"id": str(qa.get("id", len(rows))), "question": qa.get("question"), "context": context,
                             "answers": answers, "group": f"{a}/{p}"})
                places.append(where)
    return rows, places


def read_questions(path: str | Path, d: Any, *, answers: bool = True) -> QuestionTable:
    """Questions from a SQuAD JSON file or flat rows, checked: a question and a context that are
    non-empty text; answers as lists (optional with answers=False: questions to answer)."""
    path = Path(path)
    squad = None
    if path.suffix.lower() == ".json" and d.format in ("auto", "json"):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            obj = None  # read_table says what is wrong, with the line
        if isinstance(obj, dict) and isinstance(obj.get("data"), list) and obj["data"] and "paragraphs" in obj["data"][0]:
            squad = obj["data"]
    if squad is not None:
        rows, places = _squad_rows(path, squad)
        if not rows:
            raise LmtuneError(f"{path}: no questions in the SQuAD file")
    else:
        table = read_table(path, d.format)
        table.require_columns(d.question_column, d.context_column, d.answers_column if answers else None)
        rows, places = [], []
        for i, r in enumerate(table.rows):
            where = table.where(i)
            value = r.get(d.answers_column, [])
            if isinstance(value, str):  # a CSV cell holding JSON
                try:
                    value = json.loads(value) if value.strip() else []
                except json.JSONDecodeError:
                    raise LmtuneError(f"{where}: {d.answers_column!r} is not JSON: {value[:80]}") from None
            rows.append({"id": str(r.get("id", i + 1)), "question": r[d.question_column], "context": r[d.context_column],
                         "answers": _answers(value, where, d.answers_column), "group": r[d.context_column]})
            places.append(where)
    for row, where in zip(rows, places):
        for key in ("question", "context"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise LmtuneError(f"{where}: empty or missing {key}")
    return QuestionTable(path, rows, places)


def drop_broken_answers(table: QuestionTable, max_share: float) -> tuple[QuestionTable, str | None]:
    """Answers whose answer_start does not point at their text in the context are dropped; a
    question left without answers is dropped. More than `max_share` broken answers is an error."""
    rows, places, broken, lost, total, first = [], [], 0, 0, 0, None
    for row, where in zip(table.rows, table.places):
        good = [a for a in row["answers"] if row["context"][a["start"] : a["start"] + len(a["text"])] == a["text"] and a["text"]]
        total += len(row["answers"])
        if len(good) < len(row["answers"]):
            broken += len(row["answers"]) - len(good)
            first = first or where
        if row["answers"] and not good:
            lost += 1
            continue
        rows.append({**row, "answers": good})
        places.append(where)
    if not broken:
        return table, None
    message = (f"{table.path}: {broken} of {total} answers do not match the context at their answer_start "
               f"(first at {first})")
    if broken > max_share * total:
        raise LmtuneError(f"{message}; more than data.max_broken_answers={max_share} of them")
    if not rows:
        raise LmtuneError(f"{message}; no question is left")
    return QuestionTable(table.path, rows, places), f"{message}: dropped them, and {lost} question(s) left without an answer"


def split_by_context(table: QuestionTable, size: float, seed: int) -> tuple[QuestionTable, QuestionTable]:
    """Hold out whole contexts (paragraphs), about `size` of the questions, so that no context is
    in both parts."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(table.rows):
        groups.setdefault(row["group"], []).append(i)
    if len(groups) < 2:
        raise LmtuneError(f"{table.path}: all questions share one context; give data.validation to evaluate on other text")
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    held: list[int] = []
    for key in keys[:-1]:  # at least one context stays for training
        if held and len(held) + len(groups[key]) / 2 > size * len(table):
            break
        held += groups[key]
    kept = sorted(set(range(len(table))) - set(held))
    return table.subset(kept), table.subset(sorted(held))


def load_data(cfg: Any) -> TaskData:
    d = cfg.data
    notes: list[str] = []

    def read(path: str) -> QuestionTable:
        table, note = drop_broken_answers(read_questions(path, d), d.max_broken_answers)
        if note:
            notes.append(note)
        return table

    train = read(d.train)
    if d.validation:
        validation = read(d.validation)
    else:
        train, validation = split_by_context(train, d.validation_size, cfg.train.seed)
        notes.append(
            f"no validation file: held out {len(validation)} of {len(train) + len(validation)} questions, "
            f"whole contexts (seed {cfg.train.seed})"
        )
    test = read(d.test) if d.test else None
    unanswerable = sum(not r["answers"] for r in train.rows)
    labels = [NO_ANSWER] if unanswerable else []
    notes.append(
        f"train: {len(train)} questions on {len({r['group'] for r in train.rows})} contexts"
        + (f"; {unanswerable} without an answer (SQuAD v2.0: the model may answer nothing)" if unanswerable else "")
    )
    return TaskData(train, validation, test, labels, notes)


# ---------------------------------------------------------------- windows


def _shorten_questions(tokenizer: Any, questions: list[str], limit: int) -> tuple[list[str], int]:
    """Questions cut to `limit` tokens (at a token boundary), and how many were cut."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, cut = [], 0
    for q, ids, offsets in zip(questions, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) > limit:
            q, cut = q[: offsets[limit - 1][1]], cut + 1
        out.append(q)
    return out, cut


def windows(
    tokenizer: Any, questions: list[str], contexts: list[str], max_length: int, stride: int
) -> tuple[list[dict[str, Any]], int]:
    """(question, context) pairs as model inputs of at most max_length tokens, long contexts as
    overlapping windows. Each window carries `_example` (its pair) and `_offsets`: the character
    span in the context of each token (None for question, special and padding tokens). Returns the
    windows and how many questions had to be shortened (to half of max_length)."""
    if not getattr(tokenizer, "is_fast", False):
        raise LmtuneError(f"question_answering needs a fast (Rust) tokenizer for character offsets; {type(tokenizer).__name__} is not one")
    if tokenizer.padding_side != "right":
        raise LmtuneError("question_answering expects a tokenizer that puts the question before the context (padding side right)")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    questions, cut = _shorten_questions(tokenizer, questions, max(1, max_length // 2))
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = max_length - specials - longest
    if room < 2:
        raise LmtuneError(f"data.max_length={max_length} leaves no room for the context next to the question")
    enc = tokenizer(
        questions, contexts, truncation="only_second", max_length=max_length, stride=min(stride, room // 2),
        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = []
    for k, example in enumerate(enc["overflow_to_sample_mapping"]):
        sequence = enc.sequence_ids(k)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][k], sequence)]
        out.append({**{key: list(enc[key][k]) for key in keys}, "_example": int(example), "_offsets": offsets})
    return out, cut


def answer_positions(window: dict[str, Any], answer: dict[str, Any] | None, cls_index: int) -> tuple[int, int]:
    """The first and last token of the answer in the window, or [CLS] twice when the window does
    not hold the whole answer (or there is none)."""
    if answer is None:
        return cls_index, cls_index
    start_char, end_char = answer["start"], answer["start"] + len(answer["text"])
    inside = [i for i, o in enumerate(window["_offsets"]) if o is not None]
    if window["_offsets"][inside[0]][0] > start_char or window["_offsets"][inside[-1]][1] < end_char:
        return cls_index, cls_index
    start = next(i for i in inside if window["_offsets"][i][1] > start_char)
    end = next(i for i in reversed(inside) if window["_offsets"][i][0] < end_char)
    return start, end


AUTO_WINDOW = 384  # data.max_length: auto at most: the usual SQuAD window; longer contexts become windows


def choose_max_length(table: Table, tokenizer: Any, cfg: Any, cap: tuple[int, str]) -> LengthChoice:
    """data.max_length: auto: the 99th percentile of the training (question, context) pairs' token
    lengths, at most AUTO_WINDOW (a longer context is cut into overlapping windows, never lost)."""
    rows = table.rows
    enc = tokenizer([r["question"] for r in rows], [r["context"] for r in rows], truncation=False, padding=False, verbose=False)
    return percentile_length([len(ids) for ids in enc["input_ids"]], cap, "training question-context pairs", most=AUTO_WINDOW)


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Windows with their start/end positions and, for evaluation, the context and gold answers.
    The count returned is of questions cut to half of max_length (contexts are windowed, not cut)."""
    d = cfg.data
    rows = table.rows
    wins, cut = windows(tokenizer, [r["question"] for r in rows], [r["context"] for r in rows], d.max_length, d.doc_stride)
    for w in wins:
        row = rows[w["_example"]]
        cls_index = w["input_ids"].index(tokenizer.cls_token_id) if tokenizer.cls_token_id in w["input_ids"] else 0
        w["start_positions"], w["end_positions"] = answer_positions(w, row["answers"][0] if row["answers"] else None, cls_index)
        w["_cls"] = cls_index
        w["_context"] = row["context"]
        w["_answers"] = [a["text"] for a in row["answers"]]
    return wins, cut


# ---------------------------------------------------------------- model, batches


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    return load_pretrained(AUTO_MODEL, path, dropout=cfg.train.dropout, attn_implementation=attn_implementation)


class Collator:
    """Pads the model inputs; keys starting with '_' (offsets, context, answers) stay behind."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        return self.pad([{k: v for k, v in f.items() if not k.startswith("_")} for f in features])


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Collator:
    return Collator(tokenizer)


loss_items = examples_in  # the loss is the mean over windows

def eval_step(model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """Per window: start and end logits padded to data.max_length columns (so that batches and
    processes can be joined), and the span loss (mean of the start and end cross-entropies)."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")}
    out = model(**inputs)
    mask = batch["attention_mask"] == 0
    start, end = out.start_logits.float().masked_fill(mask, MASKED), out.end_logits.float().masked_fill(mask, MASKED)
    result: dict[str, Any] = {}
    if "start_positions" in batch:
        result["loss"] = (F.cross_entropy(start, batch["start_positions"], reduction="none")
                          + F.cross_entropy(end, batch["end_positions"], reduction="none")) / 2
    width = max(cfg.data.max_length, start.shape[1]) if cfg is not None else start.shape[1]
    result["start_logits"] = F.pad(start, (0, width - start.shape[1]), value=MASKED)
    result["end_logits"] = F.pad(end, (0, width - end.shape[1]), value=MASKED)
    return result


# ---------------------------------------------------------------- answers and metrics


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def best_answers(
    start_logits: np.ndarray, end_logits: np.ndarray, wins: Sequence[dict[str, Any]], n_examples: int,
    contexts: Sequence[str], max_answer_length: int, allow_none: bool,
) -> list[dict[str, Any]]:
    """For each example, the best span over its windows: {answer, score, start, end} with character
    offsets into the context and score the span's probability (start x end softmax in its window).
    With `allow_none`, an empty answer (start = end = -1) when [CLS] scores higher in every window."""
    best: list[tuple[float, dict[str, Any]] | None] = [None] * n_examples
    null: list[tuple[float, float] | None] = [None] * n_examples
    for s_all, e_all, w in zip(start_logits, end_logits, wins):
        ex, offsets = w["_example"], w["_offsets"]
        s, e = s_all[: len(offsets)], e_all[: len(offsets)]
        log_s, log_e = _log_softmax(s), _log_softmax(e)
        cls = w.get("_cls", 0)
        null_score = float(s[cls] + e[cls])
        if null[ex] is None or null_score < null[ex][0]:
            null[ex] = (null_score, float(np.exp(log_s[cls] + log_e[cls])))
        starts = [i for i in np.argsort(s)[::-1][:N_BEST] if offsets[i] is not None]
        ends = [j for j in np.argsort(e)[::-1][:N_BEST] if offsets[j] is not None]
        for i in starts:
            for j in ends:
                if j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(s[i] + e[j])
                if best[ex] is None or score > best[ex][0]:
                    a, b = offsets[i][0], offsets[j][1]
                    best[ex] = (score, {"answer": contexts[ex][a:b], "score": float(np.exp(log_s[i] + log_e[j])),
                                        "start": int(a), "end": int(b)})
    out = []
    for ex in range(n_examples):
        none = {"answer": "", "score": null[ex][1] if null[ex] else 1.0, "start": -1, "end": -1}
        if best[ex] is None or (allow_none and null[ex] is not None and null[ex][0] > best[ex][0]):
            out.append(none)
        else:
            out.append(best[ex][1])
    return out


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official SQuAD normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised texts; an empty side scores 1 only against empty (v2.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Exact match and F1, each the maximum over the gold answers, averaged over questions; a
    question without gold answers expects the empty answer. With such questions, also the scores
    of the answerable (has_answer_) and unanswerable (no_answer_) ones."""
    em, f1 = [], []
    for pred, gold in zip(predictions, golds):
        gold = list(gold) or [""]
        em.append(max(exact_match(pred, g) for g in gold))
        f1.append(max(token_f1(pred, g) for g in gold))
    out: dict[str, Any] = {"exact_match": float(np.mean(em)) if em else 0.0, "f1": float(np.mean(f1)) if f1 else 0.0}
    has = [bool(g) for g in golds]
    if not all(has):
        for name, keep in (("has_answer", True), ("no_answer", False)):
            idx = [i for i, h in enumerate(has) if h == keep]
            out[f"{name}_exact_match"] = float(np.mean([em[i] for i in idx])) if idx else 0.0
            out[f"{name}_f1"] = float(np.mean([f1[i] for i in idx])) if idx else 0.0
    return out


def evaluated_answers(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any,
                      features: Sequence[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Per question of the evaluated windows: the best answer (see best_answers) and the gold answers."""
    if features is None or len(features) != len(outputs["start_logits"]):
        raise LmtuneError("question_answering metrics need the evaluated windows (features), one per output row")
    n = max(f["_example"] for f in features) + 1
    contexts, golds = [""] * n, [[] for _ in range(n)]
    for f in features:
        contexts[f["_example"]], golds[f["_example"]] = f["_context"], f["_answers"]
    max_answer_length = cfg.data.max_answer_length if cfg is not None else 30
    answers = best_answers(outputs["start_logits"], outputs["end_logits"], features, n, contexts,
                           max_answer_length, NO_ANSWER in labels)
    return answers, golds


def compute_metrics(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None,
                    features: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    answers, golds = evaluated_answers(outputs, labels, cfg, features)
    n = len(answers)
    out = squad_scores([a["answer"] for a in answers], golds)
    if "loss" in outputs:
        out["loss"] = float(np.mean(outputs["loss"]))
    out["examples"] = n
    return out


SAMPLE_CONTEXT_CHARS = 300  # the context shown with a validation sample: this much around its answer


def context_excerpt(context: str, start: int, end: int, width: int = SAMPLE_CONTEXT_CHARS) -> str:
    """About `width` characters of the context centred on [start, end) ("..." where it is cut)."""
    if len(context) <= width:
        return context
    middle = (start + end) // 2 if start >= 0 else 0
    a = max(0, min(middle - width // 2, len(context) - width))
    b = a + width
    return ("..." if a > 0 else "") + context[a:b] + ("..." if b < len(context) else "")


def validation_samples(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                       table: Table) -> list[dict[str, Any]]:
    """One row per validation question, in data order: the question, its context cut to about
    SAMPLE_CONTEXT_CHARS around the (first gold, else predicted) answer, the gold answers, the
    predicted answer ("" for none) and its F1 against the gold (the best over them)."""
    answers, golds = evaluated_answers(outputs, labels, cfg, features)
    if len(answers) != len(table):
        raise LmtuneError(f"{table.path}: {len(table)} validation questions but {len(answers)} evaluated ones")
    rows = []
    for i, (pred, gold) in enumerate(zip(answers, golds)):
        row = table.rows[i]
        first = row["answers"][0] if row["answers"] else None
        start, end = (first["start"], first["start"] + len(first["text"])) if first else (pred["start"], pred["end"])
        rows.append({"question": row["question"], "context": context_excerpt(row["context"], start, end),
                     "answers": list(gold), "predicted": pred["answer"],
                     "f1": round(max(token_f1(pred["answer"], g) for g in (gold or [""])), 4)})
    return rows


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Any = None,
                  progress: bool = False) -> dict[str, Any]:
    return {}


# ------------------------------------------------------------ inference (see tasks/contract.py)

GENERATIVE = False
onnx_outputs = ("start_logits", "end_logits")  # lmtune export --format onnx


def bare_labels(model: Any) -> list[str]:
    return []  # a bare model folder: SQuAD v1.1, always an answer


def bare_data(labels: list[str]) -> dict[str, Any]:
    return {}


def read_inputs(session: Any, path: Path, columns: list[str] | None, template: str | None) -> tuple[Table, list[str], list[str]]:
    """Questions and their contexts (SQuAD JSON, or rows with question and context columns)."""
    no_template(session, template)
    column_names(session, path, columns, named=False)
    table = read_questions(path, session.data.model_copy(update={"format": "auto"}), answers=False)
    return table, [r["question"] for r in table.rows], [r["context"] for r in table.rows]


def input_chunks(session: Any, path: Path, columns: list[str] | None, template: str | None, rows: int) -> Any:
    """The whole file at once (its reader checks it as a whole)."""
    yield read_inputs(session, path, columns, template)


def predict(session: Any, questions: list[Any], contexts: list[str] | None) -> list[dict[str, Any]]:
    """For each question, {answer, score, start, end} with character offsets into its context (an
    empty answer at -1 when a SQuAD v2.0 model finds none). Questions are texts with `contexts`,
    or {question, context} objects."""
    from types import SimpleNamespace

    if contexts is None:
        if not all(isinstance(q, dict) and "question" in q and "context" in q for q in questions):
            raise LmtuneError("question answering needs contexts: predict(questions, contexts) or [{question, context}, ...]")
        questions, contexts = [q["question"] for q in questions], [q["context"] for q in questions]
    if len(questions) != len(contexts):
        raise LmtuneError(f"{len(questions)} questions but {len(contexts)} contexts")
    for i, (q, c) in enumerate(zip(questions, contexts)):
        if not isinstance(q, str) or not q.strip() or not isinstance(c, str) or not c.strip():
            raise LmtuneError(f"inputs[{i}]: the question and the context must be non-empty texts")
    d = session.data
    wins, _ = windows(session.tokenizer, questions, contexts, d.max_length, d.doc_stride)
    cfg = SimpleNamespace(data=d)  # eval_step pads every window's logits to data.max_length
    rows = session.run_batches(wins, lambda model, batch: eval_step(model, batch, cfg), collator(session.tokenizer))
    start = np.stack([r["start_logits"] for r in rows])
    end = np.stack([r["end_logits"] for r in rows])
    return best_answers(start, end, wins, len(questions), contexts, d.max_answer_length, NO_ANSWER in session.labels)


def predict_rows(session: Any, inputs: list[Any], pairs: list[str] | None) -> list[dict[str, Any]]:
    """A question's answer in its context (long contexts are read in overlapping windows, never cut)."""
    questions = [q["question"] if isinstance(q, dict) and "question" in q else q for q in inputs]
    return [{"question": q, **pred} for q, pred in zip(questions, predict(session, inputs, pairs))]


def read_labelled(session: Any, path: Path, columns: list[str] | None) -> Table:
    """Questions with their answers (a few whose answer_start misses their text dropped, and said)."""
    import sys

    column_names(session, path, columns, named=False)
    table = read_questions(path, session.data.model_copy(update={"format": "auto"}))
    table, note = drop_broken_answers(table, session.data.max_broken_answers)
    if note:
        print(f"lmtune: {note}", file=sys.stderr)
    return table


def evaluate_labelled(session: Any, labelled: Table) -> dict[str, Any]:
    return session.evaluate_table(labelled)


TASK = Task.of(sys.modules[__name__], name="question_answering", config=QuestionAnsweringConfig)
