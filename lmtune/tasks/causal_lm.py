"""Causal language modelling for decoder models: continued pretraining on plain text, instruction
tuning (Alpaca-style rows, or any columns through a prompt template) and chat tuning (OpenAI
`messages` or ShareGPT `conversations`), rendered with the tokenizer's own chat template.

Only response (assistant) tokens are trained unless `data.train_on_prompt`. With `data.packing`,
examples are packed into full rows; position ids restart at every example, and transformers then
keeps each example's attention inside the example (no cross-example attention).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from ..data.readers import Table, read_table
from ..data.split import grouped_holdout, random_holdout
from ..errors import LmtuneError
from .common import TaskData

METRICS = ("loss", "perplexity")
GREATER_IS_BETTER = {"loss": False, "perplexity": False}
AUTO_MODEL = "AutoModelForCausalLM"
# on CPU, eager attention while 90% of the training inputs are at most this long (see choose_attention)
EAGER_MAX_LENGTH = 384  # eager ahead at ~300 tokens, SDPA at 512 (SmolLM2)
IGNORE = -100
ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


# ---------------------------------------------------------------- reading


def read_texts(path: str, fmt: str) -> Table:
    """A .txt file is a list of documents separated by blank lines."""
    from pathlib import Path

    if fmt == "txt" or (fmt == "auto" and str(path).lower().endswith(".txt")):
        from ..data.readers import _text

        text = _text(Path(path))
        docs, lines, current, start = [], [], [], 1
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                if not current:
                    start = n
                current.append(line)
            elif current:
                docs.append("\n".join(current))
                lines.append(start)
                current = []
        if current:
            docs.append("\n".join(current))
            lines.append(start)
        if not docs:
            raise LmtuneError(f"{path}: no text in the file")
        return Table(Path(path), ["text"], [{"text": d} for d in docs], lines)
    return read_table(path, fmt)


def detect_shape(table: Table, cfg: Any) -> str:
    d = cfg.data
    if d.shape != "auto":
        return d.shape
    if d.messages_column in table.columns or "conversations" in table.columns:
        return "chat"
    if d.prompt_template is not None or d.instruction_column in table.columns:
        return "instruction"
    if d.text_column in table.columns:
        return "text"
    raise LmtuneError(
        f"{table.path}: cannot tell the data shape: no {d.messages_column!r}, {d.instruction_column!r} or "
        f"{d.text_column!r} column (columns are: {', '.join(table.columns)}); set data.shape and the column names"
    )


def _template_fields(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def messages_of(row: dict[str, Any], where: str, cfg: Any, *, need_answer: bool = True) -> list[dict[str, str]]:
    """The conversation of a chat row, checked: known roles, text contents, an assistant turn."""
    d = cfg.data
    raw = row.get(d.messages_column, row.get("conversations"))
    if not isinstance(raw, list) or not raw:
        raise LmtuneError(f"{where}: {d.messages_column!r} must be a non-empty list of messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise LmtuneError(f"{where}: message {i + 1} is not an object")
        if "from" in m and "role" not in m:  # ShareGPT
            role = SHAREGPT_ROLES.get(str(m.get("from")))
            content = m.get("value")
            if role is None:
                raise LmtuneError(f"{where}: message {i + 1} has unknown role {m.get('from')!r}; expected human, gpt or system")
        else:
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise LmtuneError(f"{where}: message {i + 1} has unknown role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise LmtuneError(f"{where}: message {i + 1} has no text content")
        messages.append({"role": role, "content": content})
    if need_answer and not any(m["role"] == "assistant" for m in messages):
        raise LmtuneError(f"{where}: the chat has no assistant turn to learn from")
    return messages


def prompt_of(row: dict[str, Any], where: str, cfg: Any) -> str:
    d = cfg.data
    if d.prompt_template is not None:
        missing = [f for f in _template_fields(d.prompt_template) if f not in row]
        if missing:
            raise LmtuneError(f"{where}: data.prompt_template names column {missing[0]!r}, which the row does not have")
        return d.prompt_template.format(**{k: "" if v is None else v for k, v in row.items()})
    instruction = row.get(d.instruction_column)
    if not isinstance(instruction, str) or not instruction.strip():
        raise LmtuneError(f"{where}: no instruction in column {d.instruction_column!r}")
    extra = row.get(d.input_column)
    return instruction + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")


def conversation(row: dict[str, Any], where: str, shape: str, cfg: Any) -> list[dict[str, str]]:
    """Every instruction or chat row as a list of messages."""
    if shape == "chat":
        return messages_of(row, where, cfg)
    response = row.get(cfg.data.response_column)
    if not isinstance(response, str) or not response.strip():
        raise LmtuneError(f"{where}: no response in column {cfg.data.response_column!r}")
    return [{"role": "user", "content": prompt_of(row, where, cfg)}, {"role": "assistant", "content": response}]


def _check_table(table: Table, shape: str, cfg: Any) -> None:
    d = cfg.data
    if shape == "text":
        table.require_columns(d.text_column)
        for i, row in enumerate(table.rows):
            if not isinstance(row.get(d.text_column), str):
                raise LmtuneError(f"{table.where(i)}: column {d.text_column!r} must hold text")
        return
    if shape == "instruction" and d.prompt_template is None:
        table.require_columns(d.instruction_column, d.response_column)
    elif shape == "instruction":
        missing = [f for f in _template_fields(d.prompt_template) if f not in table.columns]
        if missing:
            raise LmtuneError(
                f"data.prompt_template names column {missing[0]!r}, which {table.path} does not have; "
                f"columns are: {', '.join(table.columns)}"
            )
        table.require_columns(d.response_column)
    for i, row in enumerate(table.rows):
        conversation(row, table.where(i), shape, cfg)


def load_data(cfg: Any) -> TaskData:
    d = cfg.data
    train = read_texts(d.train, d.format)
    shape = detect_shape(train, cfg)
    _check_table(train, shape, cfg)
    notes = [f"data shape: {shape}"]
    if d.validation:
        validation = read_texts(d.validation, d.format)
        _check_table(validation, shape, cfg)
    else:
        if d.group_column:  # the rows of a conversation, a document, ... stay on one side
            kept, held = grouped_holdout(train, d.group_column, d.validation_size, cfg.train.seed)
        else:
            kept, held = random_holdout(len(train), d.validation_size, cfg.train.seed, source=str(d.train), unit="examples")
        train, validation = train.subset(kept), train.subset(held)
        notes.append(
            f"no validation file: held out {len(held)} of {len(held) + len(kept)} training examples "
            + (f"(each {d.group_column!r} value on one side, " if d.group_column else "(") + f"seed {cfg.train.seed})"
        )
    test = None
    if d.test:
        test = read_texts(d.test, d.format)
        _check_table(test, shape, cfg)
    data = TaskData(train, validation, test, [], notes)
    data.shape = shape  # type: ignore[attr-defined]
    return data


# ---------------------------------------------------------------- rendering and masking


def render_chat(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, with the character spans of the assistant turns (to train on).
    With a chat template, each assistant turn is the text that its message adds after the
    generation prompt; without one, a plain User/Assistant layout is used."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise LmtuneError("the tokenizer's chat template does not render a conversation turn by turn")
            spans.append((len(prefix), len(upto)))
        return full, spans
    eos = tokenizer.eos_token or ""
    text, spans = "", []
    for m in messages:
        head = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}[m["role"]]
        text += head
        start = len(text)
        text += m["content"] + (eos if m["role"] == "assistant" else "") + "\n\n"
        if m["role"] == "assistant":
            spans.append((start, len(text) - 2))
    return text, spans


def prompt_text(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The text that asks the model for the next assistant turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, _ = render_chat(messages, tokenizer)
    return text + "### Assistant:\n"


def encode_chat(messages: list[dict[str, str]], tokenizer: Any, train_on_prompt: bool) -> tuple[list[int], list[int]]:
    text, spans = render_chat(messages, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if train_on_prompt:
        return ids, list(ids)
    labels = [
        tok if any(a <= start < b for a, b in spans) else IGNORE
        for tok, (start, _) in zip(ids, enc["offset_mapping"])
    ]
    return ids, labels


def _pack(features: list[dict[str, Any]], max_length: int, seed: int) -> list[dict[str, Any]]:
    """Greedily fill rows of up to max_length tokens with whole examples, in a seeded random order.
    Position ids restart at 0 for each example, and the first label of each example is ignored,
    so no example learns from or attends to another."""
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    rows, current = [], {"input_ids": [], "labels": [], "position_ids": []}
    for i in order:
        f = features[i]
        if current["input_ids"] and len(current["input_ids"]) + len(f["input_ids"]) > max_length:
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += f["input_ids"]
        current["labels"] += [IGNORE] + f["labels"][1:]
        current["position_ids"] += list(range(len(f["input_ids"])))
    if current["input_ids"]:
        rows.append(current)
    return rows


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str], shape: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Token ids and labels (IGNORE where not trained), truncated to max_length (counted); text
    data is cut into blocks of max_length instead. Returns (features, truncated count)."""
    d = cfg.data
    shape = shape or detect_shape(table, cfg)
    max_length = d.max_length
    features: list[dict[str, Any]] = []
    truncated = 0
    if shape == "text":
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream: list[int] = []
        for ids in tokenizer([r[d.text_column] for r in table.rows], add_special_tokens=False)["input_ids"]:
            stream += ids + eos
        for start in range(0, len(stream), max_length):
            block = stream[start : start + max_length]
            if len(block) > 1:
                features.append({"input_ids": block, "labels": list(block)})
    else:
        empty = 0
        for i, row in enumerate(table.rows):
            ids, lab = encode_chat(conversation(row, table.where(i), shape, cfg), tokenizer, d.train_on_prompt)
            if len(ids) > max_length:
                truncated += 1
                ids, lab = ids[:max_length], lab[:max_length]
            if all(x == IGNORE for x in lab[1:]):
                empty += 1
                continue
            features.append({"input_ids": ids, "labels": lab})
        if empty:
            from ..training import log

            log(f"{table.path}: {empty} examples have no response tokens left within data.max_length={max_length}; skipped")
        if not features:
            raise LmtuneError(f"{table.path}: no example keeps a response within data.max_length={max_length}")
    if d.packing:
        features = _pack(features, max_length, cfg.train.seed)
    return features, truncated


# ---------------------------------------------------------------- model, batches, metrics


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    from ..models import load_pretrained

    from ..lm_loss import use_chunked_loss

    model = load_pretrained(AUTO_MODEL, path, dropout=cfg.train.dropout, attn_implementation=attn_implementation)
    # No KV cache while training: packed rows are recognised only without one.
    model.config.use_cache = False
    use_chunked_loss(model)  # the LM head and loss chunk by chunk: about 1 GB less on SmolLM2-135M
    return model


class Collator:
    """Pads input ids with the pad token and labels with IGNORE. Packed rows carry position ids
    and no attention mask (transformers derives the per-example mask from the position ids).

    With `trained_logits_only`, the batch also says which positions predict a trained token
    (`logits_to_keep`, a boolean mask) and their targets (`shift_labels`): the model then runs its
    LM head (vocabulary-sized, the largest matrix product of a small model) and the loss only
    there, not on prompt and padding positions. The loss is the same mean over trained tokens.

    With `no_cache`, the batch turns the model's KV cache off: a forward pass that is not
    generating has no use for one, and building it every step costs time (and makes compiled
    blocks recompile)."""

    def __init__(self, pad_id: int, trained_logits_only: bool = False, no_cache: bool = False) -> None:
        self.pad_id = pad_id
        self.trained_logits_only = trained_logits_only
        self.no_cache = no_cache

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        labels = torch.tensor([f["labels"] + [IGNORE] * (width - len(f["labels"])) for f in features])
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([f["input_ids"] + [self.pad_id] * (width - len(f["input_ids"])) for f in features]),
            "labels": labels,
            "num_tokens": torch.tensor(sum(len(f["input_ids"]) for f in features)),
        }
        if "position_ids" in features[0]:
            batch["position_ids"] = torch.tensor(
                [f["position_ids"] + list(range(width - len(f["position_ids"]))) for f in features]
            )
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
            )
        if self.trained_logits_only:
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != IGNORE
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = labels[:, 1:][keep[:, :-1]]
        if self.no_cache:
            batch["use_cache"] = False
        return batch


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Collator:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supported = base is not None and "logits_to_keep" in inspect.signature(base.forward).parameters
    no_cache = base is not None and "use_cache" in inspect.signature(type(base).forward).parameters
    return Collator(tokenizer.pad_token_id, trained_logits_only=supported, no_cache=no_cache)


def eval_step(model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """Summed token loss and trained-token count per row (the loss is token-weighted over a set)."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}
    if "logits_to_keep" not in inputs:  # one row at a time: a float copy of all logits is large
        logits = model(**inputs).logits
        sums = [F.cross_entropy(logits[i, :-1].float(), labels[i, 1:], ignore_index=IGNORE, reduction="sum")
                for i in range(logits.shape[0])]
        return {"loss_sum": torch.stack(sums), "tokens": (labels[:, 1:] != IGNORE).sum(1)}
    from ..lm_loss import has_chunked_loss

    keep = inputs["logits_to_keep"]
    targets = batch["shift_labels"]
    if has_chunked_loss(model):  # the model's LM head runs chunk by chunk and returns each position's loss
        losses = model(**inputs, shift_labels=targets).loss
    else:
        logits = model(**inputs).logits  # (trained positions, vocabulary)
        # in chunks: a float copy of all logits at once can take more memory than training itself
        losses = torch.cat([
            F.cross_entropy(logits[i : i + 1024].float(), targets[i : i + 1024], reduction="none")
            for i in range(0, logits.shape[0], 1024)
        ])
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(keep.shape[0], dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
    return {"loss_sum": sums, "tokens": keep.sum(1)}


def compute_metrics(
    outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None, features: Any = None
) -> dict[str, Any]:
    tokens = float(outputs["tokens"].sum())
    loss = float(outputs["loss_sum"].sum()) / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens)}


def generate_text(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                  top_p: float = 1.0, streamer: Any = None) -> str:
    import torch

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, use_cache=True,
            streamer=streamer, **sampling,
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (rouge-score, stemmed) and corpus BLEU and chrF (sacrebleu), all 0-100."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    out = {k: 100 * float(np.mean([s[k].fmeasure for s in scores])) for k in ("rouge1", "rouge2", "rougeL")}
    out["bleu"] = float(sacrebleu.corpus_bleu(predictions, [references]).score)
    out["chrf"] = float(sacrebleu.corpus_chrf(predictions, [references]).score)
    return out


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any) -> dict[str, Any]:
    """Generation metrics on the first `eval.generate_rows` validation rows that have references."""
    shape = getattr(data, "shape", "text")
    n = cfg.eval.generate_rows
    if shape == "text" or n == 0:
        return {}
    was_training = model.training
    model.eval()
    predictions, references = [], []
    for i, row in enumerate(data.validation.rows[:n]):
        messages = conversation(row, data.validation.where(i), shape, cfg)
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        prompt = prompt_text(messages[:last], tokenizer)
        predictions.append(generate_text(model, tokenizer, prompt, max_new_tokens=cfg.eval.max_new_tokens))
        references.append(messages[last]["content"])
    model.train(was_training)
    return {**text_scores(predictions, references), "generated_rows": len(predictions)}


def decode(logits: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    raise LmtuneError("causal_lm models generate text: use lmtune generate or lmtune predict")


def show_mask(feature: dict[str, Any], tokenizer: Any, *, color: bool) -> str:
    """The example's text with the trained tokens marked: green in a terminal, [[...]] otherwise."""
    ids, labels = feature["input_ids"], feature["labels"]
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            text = tokenizer.decode(ids[start:i])
            if labels[start] != IGNORE:
                text = f"\033[1;32m{text}\033[0m" if color else f"[[{text}]]"
            out.append(text)
            start = i
    return "".join(out)
