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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field

from ..core.config import DataConfig, EvalConfig, ParallelFiles, RunConfig
from ..core.errors import LmtuneError, option
from ..core.models import load_pretrained
from ..core.runtime import log
from ..data.parallel import dropped_note, language_code, language_name, read_columns, read_parallel
from ..data.readers import Table, read_table
from ..data.split import grouped_holdout, random_holdout
from ..data.table import _text
from .chat import prompt_text, render_chat
from .common import AUTO_BLOCK, LengthChoice, TaskData, fixed_length, percentile_length
from .contract import Task
from .decoding import GenerationSettings, generate, turn_end_ids
from .inputs import table_chunks
from .sections import Forgetting, GroupColumn, TextColumn


class CausalLMData(GroupColumn, TextColumn, DataConfig):
    """data: keys of causal_lm runs."""

    train: str | ParallelFiles = Field(
        description="training file (.csv, .tsv, .jsonl, .json list of objects; .txt for text), or translation "
        "pairs as two line-aligned files: {source: train.en, target: train.de}"
    )
    validation: str | ParallelFiles | None = Field(
        None, description="validation file (or {source, target} files); when omitted, a seeded split of train"
    )
    test: str | ParallelFiles | None = Field(
        None, description="optional test file (or {source, target} files), evaluated once with the best model"
    )
    source_column: str | None = Field(
        None, description="translation pairs in one CSV/TSV/JSONL file: the source text's column (with data.target_column)"
    )
    target_column: str | None = Field(None, description="translation pairs in one file: the target text's column")
    source_lang: str | None = Field(
        None, description="translation: the source language for the prompt, a name or an ISO 639-1 code (en: "
        "English); default: the source file's extension (train.en) or column name"
    )
    target_lang: str | None = Field(
        None, description="translation: the target language, as data.source_lang (default: from train.de, or the column)"
    )

    shape: Literal["auto", "text", "instruction", "chat"] = Field(
        "auto", description="causal_lm data: plain text, instruction rows or chats; auto looks at the columns"
    )
    instruction_column: str = Field("instruction", description="instruction rows: the instruction")
    input_column: str = Field("input", description="instruction rows: optional extra input")
    response_column: str = Field("output", description="instruction rows: the response to learn")
    messages_column: str = Field("messages", description="chat rows: list of {role, content} (or ShareGPT conversations)")
    prompt_template: str | None = Field(
        None, description="instruction prompt from columns, e.g. 'Summarize:\\n{dialogue}' (default: instruction + input)"
    )
    train_on_prompt: bool = Field(False, description="also train on prompt tokens (default: responses only)")
    packing: bool = Field(False, description="pack examples into full rows without cross-attention")

    def is_translation(self) -> bool:
        """Translation pairs: {source, target} files, or the source and target columns of one file."""
        return isinstance(self.train, ParallelFiles) or self.source_column is not None

    def problems(self, check_files: bool = True) -> list[str]:
        problems = super().problems(check_files)
        if (self.source_column is None) != (self.target_column is None):
            given, other = ("source_column", "target_column") if self.target_column is None else ("target_column", "source_column")
            problems.append(f"data.{other}: needed with data.{given} (the two columns of translation pairs)")
        for key in ("validation", "test"):
            value = getattr(self, key)
            if isinstance(value, ParallelFiles) and not self.is_translation():
                problems.append(f"data.{key}: {{source, target}} files need translation pairs in data.train too "
                                f"({{source, target}} files, or data.source_column and data.target_column)")
            if isinstance(value, str) and isinstance(self.train, ParallelFiles) and self.source_column is None:
                problems.append(f"data.{key}: {value} is one file, and data.train is {{source, target}} files: give "
                                f"{key} as {{source: FILE, target: FILE}} too (or a file's two columns with "
                                f"data.source_column and data.target_column)")
        if self.is_translation() and self.shape not in ("auto", "instruction"):
            problems.append(f"data.shape: translation pairs are instruction rows, not {self.shape}; leave it at auto")
        return problems


class CausalLMEval(Forgetting, EvalConfig):
    """eval: keys of causal_lm runs."""

    generate_rows: int = Field(16, ge=0, description="validation rows to generate for (ROUGE, BLEU, chrF); 0: none")
    max_new_tokens: int = Field(64, ge=1, description="new tokens per generation")


class CausalLMConfig(RunConfig):
    task: Literal["causal_lm"] = "causal_lm"
    data: CausalLMData
    eval: CausalLMEval = Field(default_factory=CausalLMEval)

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


def _fill_template(template: str, row: dict[str, Any]) -> tuple[str, tuple[int, int]]:
    """The template filled from the row, with the character span of its longest filled-in value."""
    import string

    f = string.Formatter()
    text, span = "", (0, 0)
    for literal, name, spec, conversion in f.parse(template):
        text += literal
        if name is None:
            continue
        value = row.get(name)
        value = f.format_field(f.convert_field("" if value is None else value, conversion), spec or "")
        if len(value) > span[1] - span[0]:
            span = (len(text), len(text) + len(value))
        text += value
    return text, span


def prompt_and_input(row: dict[str, Any], where: str, cfg: Any) -> tuple[str, tuple[int, int]]:
    """The prompt of an instruction row and the character span of its input (what is cut first
    when the example is too long): the longest value a template fills in; the input column; or,
    without one, the instruction."""
    d = cfg.data
    if d.prompt_template is not None:
        missing = [f for f in _template_fields(d.prompt_template) if f not in row]
        if missing:
            raise LmtuneError(f"{where}: data.prompt_template names column {missing[0]!r}, which the row does not have")
        return _fill_template(d.prompt_template, row)
    instruction = row.get(d.instruction_column)
    if not isinstance(instruction, str) or not instruction.strip():
        raise LmtuneError(f"{where}: no instruction in column {d.instruction_column!r}")
    extra = row.get(d.input_column)
    if isinstance(extra, str) and extra.strip():
        text = f"{instruction}\n\n{extra}"
        return text, (len(text) - len(extra), len(text))
    return instruction, (0, len(instruction))


# Where the input of a conversation lies: from (message, character) to (message, character) of the
# messages' contents; and from which side it is cut when too long.
InputSpan = tuple[tuple[int, int], tuple[int, int], str]


def conversation_and_input(row: dict[str, Any], where: str, shape: str, cfg: Any) -> tuple[list[dict[str, str]], InputSpan]:
    """Every instruction or chat row as a list of messages, with the span of its input: for an
    instruction, the input inside the user message (cut in its middle, so that the template's
    head and the input's end stay); for a chat, every turn from the first after the system prompt
    to the last user turn before the final answer (cut from the start: the oldest turns go first)."""
    if shape == "chat":
        messages = messages_of(row, where, cfg)
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        first = next((j for j, m in enumerate(messages) if m["role"] != "system"), last)
        end = max((j for j in range(last) if messages[j]["role"] != "system"), default=first)
        end_char = len(messages[end]["content"]) if end < last else 0
        return messages, ((first, 0), (end, end_char), "start")
    response = row.get(cfg.data.response_column)
    if not isinstance(response, str) or not response.strip():
        raise LmtuneError(f"{where}: no response in column {cfg.data.response_column!r}")
    prompt, (a, b) = prompt_and_input(row, where, cfg)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return messages, ((0, a), (0, b), "middle")


def conversation(row: dict[str, Any], where: str, shape: str, cfg: Any) -> list[dict[str, str]]:
    """Every instruction or chat row as a list of messages."""
    return conversation_and_input(row, where, shape, cfg)[0]


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


TRANSLATION_TEMPLATE = "Translate {source_lang} to {target_lang}:\n{source}"


def _language(given: str | None, named: str | None) -> str | None:
    """A language's name for the prompt: data.<side>_lang, else the code a file or column name carries."""
    if given is not None:
        return language_name(given)
    code = language_code(named) if named else None
    return language_name(code) if code else None


def translation_setup(cfg: Any) -> str:
    """Translation pairs are instruction rows {source, target}: data.prompt_template gets the languages'
    names filled in (default TRANSLATION_TEMPLATE) and data.response_column becomes target, so that
    config.yaml holds the prompt the model learnt. Returns the note for the log."""
    d = cfg.data
    pair = d.train if isinstance(d.train, ParallelFiles) else None
    langs = {"source_lang": _language(d.source_lang, pair.source if pair else d.source_column),
             "target_lang": _language(d.target_lang, pair.target if pair else d.target_column)}
    template = d.prompt_template
    if template is None:
        template = TRANSLATION_TEMPLATE if all(langs.values()) else (
            "Translate to {target_lang}:\n{source}" if langs["target_lang"] else "Translate:\n{source}")
    for field, name in langs.items():
        if "{" + field + "}" in template:
            if name is None:
                named = (pair.source if field == "source_lang" else pair.target) if pair else "the column's name"
                raise LmtuneError(f"data.{field}: data.prompt_template names {{{field}}}, and {named} says no "
                                  f"language (no code such as .en); set data.{field} (a name, or a code such as en)")
            template = template.replace("{" + field + "}", name)
    d.prompt_template, d.response_column = template, "target"
    d.source_lang, d.target_lang = langs["source_lang"], langs["target_lang"]
    return f"translation pairs: {langs['source_lang'] or '?'} -> {langs['target_lang'] or '?'}; prompt {template!r}"


def _read_split(value: Any, key: str, cfg: Any) -> tuple[Table, list[dict[str, Any]]]:
    """A split's examples and (translation pairs) the pairs left out for an empty side."""
    d = cfg.data
    if isinstance(value, ParallelFiles):
        return read_parallel(value.source, value.target, key)
    if d.source_column is not None:
        return read_columns(value, d.format, d.source_column, d.target_column, key)
    return read_texts(value, d.format), []


def load_data(cfg: Any) -> TaskData:
    d = cfg.data
    notes = [translation_setup(cfg)] if d.is_translation() else []
    train, dropped = _read_split(d.train, "train", cfg)
    shape = detect_shape(train, cfg)
    _check_table(train, shape, cfg)
    notes.append(f"data shape: {shape}")
    if d.validation:
        validation, more = _read_split(d.validation, "validation", cfg)
        dropped += more
        _check_table(validation, shape, cfg)
    else:
        if d.group_column:  # the rows of a conversation, a document, ... stay on one side
            kept, held = grouped_holdout(train, d.group_column, d.validation_size, cfg.train.seed)
        else:
            kept, held = random_holdout(len(train), d.validation_size, cfg.train.seed, source=str(train.path), unit="examples")
        train, validation = train.subset(kept), train.subset(held)
        notes.append(
            f"no validation file: held out {len(held)} of {len(held) + len(kept)} training examples "
            + (f"(each {d.group_column!r} value on one side, " if d.group_column else "(") + f"seed {cfg.train.seed})"
        )
    test = None
    if d.test:
        test, more = _read_split(d.test, "test", cfg)
        dropped += more
        _check_table(test, shape, cfg)
    if dropped:
        notes.append(dropped_note(dropped))
    data = TaskData(train, validation, test, [], notes, {}, dropped)
    data.shape = shape  # type: ignore[attr-defined]
    return data


# ---------------------------------------------------------------- rendering and masking


@dataclass
class Encoded:
    """An instruction or chat example as tokens, with what truncation needs to know: where the
    final answer starts (everything before it is prompt) and which prompt tokens are its input."""

    ids: list[int]
    labels: list[int]
    response: int  # the first token of the final assistant turn
    input: tuple[int, int]  # the input's tokens, [start, end)
    cut_from: str  # "middle" or "start": which part of the input goes first


def _content_starts(text: str, messages: list[dict[str, str]]) -> list[int] | None:
    """Where each message's content starts in the rendered text (None if a template changes it)."""
    starts, pos = [], 0
    for m in messages:
        i = text.find(m["content"], pos)
        if i < 0:
            return None
        starts.append(i)
        pos = i + len(m["content"])
    return starts


def encode_chat(
    messages: list[dict[str, str]], tokenizer: Any, train_on_prompt: bool,
    input_span: InputSpan | None = None, stops: list[int] | None = None,
) -> Encoded:
    """Token ids and labels (the assistant turns, or everything with train_on_prompt). A turn whose
    trained tokens hold none of `stops` (a template that ends turns with plain text) gets the EOS
    token added after it, trained, so that the tuned model learns to end its answers."""
    text, spans = render_chat(messages, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    starts = [start for start, _ in enc["offset_mapping"]]
    first_of = lambda char: next((i for i, c in enumerate(starts) if c >= char), len(ids))  # noqa: E731
    turns = [(first_of(a), first_of(b)) for a, b in spans]
    if stops and tokenizer.eos_token_id is not None:
        for k in reversed(range(len(turns))):
            a, b = turns[k]
            if b > a and not any(i in stops for i in ids[a:b]):
                ids.insert(b, tokenizer.eos_token_id)
                starts.insert(b, starts[b - 1])
                turns = [(x + (x >= b), y + (y >= b)) for x, y in turns[:k]] + [(a, b + 1)] + [(x + 1, y + 1) for x, y in turns[k + 1 :]]
    trained = set().union(*(range(a, b) for a, b in turns)) if turns else set()
    labels = list(ids) if train_on_prompt else [tok if i in trained else IGNORE for i, tok in enumerate(ids)]
    response = turns[-1][0] if turns else len(ids)
    cut, cut_from = (0, response), "middle"
    content = _content_starts(text, messages) if input_span is not None else None
    if input_span is not None and content is not None:
        (m0, c0), (m1, c1), cut_from = input_span
        a, b = first_of(content[m0] + c0), first_of(content[m1] + c1)
        cut = (min(a, response), min(max(a, b), response))
    return Encoded(ids, labels, response, cut, cut_from)


def fit_to_length(enc: Encoded, limit: int) -> tuple[list[int], list[int], str | None]:
    """The example within `limit` tokens: prompt tokens go first, the response only when it does
    not fit beside a quarter of the limit of prompt. Prompt tokens go in this order: the input
    (its middle, or its start for chats), then the template's head from its start, then the turn
    markers before the answer. Returns (ids, labels, what was cut: None, "prompt" or "response")."""
    ids, labels = enc.ids, enc.labels
    excess = len(ids) - limit
    if excess <= 0:
        return ids, labels, None
    prompt = enc.response
    floor = min(prompt, limit // 4)  # an answer with no question teaches nothing: keep some prompt
    kind = "prompt" if prompt - excess >= floor else "response"
    drop = excess if kind == "prompt" else prompt - floor
    a, b = enc.input
    from_input = min(drop, b - a)
    start = a if enc.cut_from == "start" else a + (b - a - from_input) // 2
    dropped = set(range(start, start + from_input))
    dropped.update(([*range(0, a), *range(b, prompt)])[: drop - from_input])
    keep = [i for i in range(len(ids)) if i not in dropped][:limit]
    return [ids[i] for i in keep], [labels[i] for i in keep], kind


class Truncated(int):
    """How many examples were cut (an int like the other tasks' counts), and how: `prompt` lost
    prompt tokens only, `response` also the end of an answer too long for the limit."""

    prompt: int
    response: int

    def __new__(cls, prompt: int, response: int) -> "Truncated":
        obj = super().__new__(cls, prompt + response)
        obj.prompt, obj.response = prompt, response
        return obj

    def parts(self) -> dict[str, int]:
        return {"prompt": self.prompt, "response": self.response}

    def describe(self) -> str:
        return (f"{self.prompt} lost prompt tokens only (the template's head and the whole answer kept), "
                f"{self.response} also the end of an answer too long for the limit")


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


def encode_table(table: Table, tokenizer: Any, cfg: Any, shape: str) -> list[Encoded]:
    """Every instruction or chat row of the table, encoded whole."""
    stops = turn_end_ids(tokenizer)
    out = []
    for i, row in enumerate(table.rows):
        messages, span = conversation_and_input(row, table.where(i), shape, cfg)
        out.append(encode_chat(messages, tokenizer, cfg.data.train_on_prompt, span, stops))
    return out


def choose_max_length(table: Table, tokenizer: Any, cfg: Any, cap: tuple[int, str], shape: str | None = None) -> LengthChoice:
    """data.max_length: auto: instructions and chats: the 99th percentile of the training examples'
    token lengths (whole, template included); packed, rows of at least AUTO_BLOCK tokens (a row the
    length of one example would hold one example); text: blocks of AUTO_BLOCK tokens."""
    shape = shape or detect_shape(table, cfg)
    if shape == "text":
        return fixed_length(AUTO_BLOCK, cap, "text blocks")
    lengths = [len(e.ids) for e in encode_table(table, tokenizer, cfg, shape)]
    choice = percentile_length(lengths, cap, "training examples")
    if cfg.data.packing and choice.value < min(AUTO_BLOCK, cap[0]):
        block = fixed_length(AUTO_BLOCK, cap, "packed rows")
        rule = f"{block.rule}, several examples to a row ({choice.rule})"
        return LengthChoice(block.value, rule, sum(n > block.value for n in lengths), len(lengths))
    return choice


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str], shape: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Token ids and labels (IGNORE where not trained) within max_length (fit_to_length: prompt
    tokens go first); text data is cut into blocks of max_length instead. Returns (features, the
    truncated count: a Truncated for instructions and chats)."""
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
        empty, cuts = 0, {"prompt": 0, "response": 0}
        for enc in encode_table(table, tokenizer, cfg, shape):
            ids, lab, cut = fit_to_length(enc, max_length)
            if cut:
                cuts[cut] += 1
            if all(x == IGNORE for x in lab[1:]):
                empty += 1
                continue
            features.append({"input_ids": ids, "labels": lab})
        if empty:
            log(f"{table.path}: {empty} examples have no response tokens left within data.max_length={max_length}; skipped")
        if not features:
            raise LmtuneError(f"{table.path}: no example keeps a response within data.max_length={max_length}")
        truncated = Truncated(cuts["prompt"], cuts["response"])
    if d.packing:
        features = _pack(features, max_length, cfg.train.seed)
    return features, truncated


# ---------------------------------------------------------------- model, batches, metrics


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    from .lm_loss import use_chunked_loss

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
            batch["logits_to_keep"], batch["shift_labels"] = trained_positions(labels)
        if self.no_cache:
            batch["use_cache"] = False
        return batch


def trained_positions(labels: Any) -> tuple[Any, Any]:
    """The positions that predict a labelled token (a boolean mask of the labels' shape: position t
    predicts token t + 1) and those tokens, in the mask's order."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep, labels[:, 1:][keep[:, :-1]]


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Collator:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supported = base is not None and "logits_to_keep" in inspect.signature(base.forward).parameters
    no_cache = base is not None and "use_cache" in inspect.signature(type(base).forward).parameters
    return Collator(tokenizer.pad_token_id, trained_logits_only=supported, no_cache=no_cache)


def loss_items(batch: dict[str, Any]) -> int:
    """The trained tokens: the loss is their mean (each position predicts the next token's label)."""
    if "shift_labels" in batch:
        return int(batch["shift_labels"].numel())
    return int((batch["labels"][:, 1:] != IGNORE).sum())


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
    from .lm_loss import has_chunked_loss

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


def validation_samples(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                       table: Table) -> list[dict[str, Any]]:
    """None from the loss pass: the samples of a causal LM are its generations, which extra_metrics
    returns under "samples"."""
    return []


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (rouge-score, stemmed) and corpus BLEU and chrF (sacrebleu), all as shares
    (0-1) like every other metric (sacrebleu reports 0-100), and sacreBLEU's signatures of the two."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    out = {k: float(np.mean([s[k].fmeasure for s in scores])) for k in ("rouge1", "rouge2", "rougeL")}
    # the metric objects, for their signatures (tokenizer, smoothing, version: what makes scores comparable)
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    out["bleu"] = float(bleu.corpus_score(predictions, [references]).score) / 100
    out["chrf"] = float(chrf.corpus_score(predictions, [references]).score) / 100
    out["bleu_signature"] = str(bleu.get_signature())
    out["chrf_signature"] = str(chrf.get_signature())
    return out


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Callable[[str], None] | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Generation metrics on the first `eval.generate_rows` validation rows that have references,
    and under "samples" those rows: {prompt, reference, generated, finished} (finished: it ended
    before eval.max_new_tokens; the caller takes them out of the metrics).
    `log` announces the generation (it takes a while); `progress`: a progress bar."""
    shape = getattr(data, "shape", "text")
    n = cfg.eval.generate_rows
    if shape == "text" or n == 0:
        return {}

    prompts, references = [], []
    for i, row in enumerate(data.validation.rows[:n]):
        messages = conversation(row, data.validation.where(i), shape, cfg)
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(prompt_text(messages[:last], tokenizer))
        references.append(messages[last]["content"])
    if log is not None:
        log(f"generating {len(prompts)} validation rows for ROUGE/BLEU/chrF (eval.generate_rows: {n}; 0: none)")
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    with tqdm(total=len(prompts), disable=not progress or None, unit="row", file=sys.stderr,
              dynamic_ncols=True) as bar:
        generations = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens),
                               progress=bar.update)
    model.train(was_training)
    predictions = [g.text for g in generations]
    unfinished = sum(g.finish_reason == "length" for g in generations)
    # hit_token_limit: the share of generations that ran to eval.max_new_tokens without ending
    samples = [{"prompt": p, "reference": r, "generated": g.text, "finished": g.finish_reason != "length"}
               for p, r, g in zip(prompts, references, generations)]
    return {**text_scores(predictions, references), "hit_token_limit": unfinished / max(len(predictions), 1),
            "generated_rows": len(predictions), "samples": samples}


def decode(logits: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    raise LmtuneError("causal_lm models generate text: use lmtune generate or lmtune predict")


def mask_spans(feature: dict[str, Any], tokenizer: Any, *, per_token: bool = False) -> list[tuple[str, bool]]:
    """The example's text in pieces, each (text, trained): runs of tokens that are all in the loss or
    all out of it (per_token: each token on its own)."""
    ids, labels = feature["input_ids"], feature["labels"]
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or per_token or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            out.append((tokenizer.decode(ids[start:i]), labels[start] != IGNORE))
            start = i
    return out


def show_mask(feature: dict[str, Any], tokenizer: Any, *, color: bool) -> str:
    """The example's text with the trained tokens marked: green in a terminal, [[...]] otherwise."""
    def mark(text: str) -> str:
        return f"\033[1;32m{text}\033[0m" if color else f"[[{text}]]"

    return "".join(mark(text) if trained else text for text, trained in mask_spans(feature, tokenizer))


# ------------------------------------------------------------ inference (see tasks/contract.py)

GENERATIVE = True


def bare_labels(model: Any) -> list[str]:
    return []


def bare_data(labels: list[str]) -> dict[str, Any]:
    return {}


class ChatText(str):
    """A prompt already in its final form (a row's chat messages, prompt template or instruction
    fields put in the model's chat format): generated from as it is, never made a user message again."""


def row_prompt(session: Any, row: dict[str, Any], where: str, template: str | None) -> tuple[str, str | None]:
    """(prompt, reference) for a row: chat messages up to the last assistant turn, a prompt template
    over the row's columns, instruction fields (these three as a ChatText), or a prompt or text
    column (a plain prompt: a user message unless raw, see _generations). The tokenizer is asked for
    only where a chat template applies (lmtune predict reads rows before it is loaded)."""
    if "messages" in row or "conversations" in row:
        cfg = session.cfg or CausalLMConfig.model_validate({"model": "x", "data": {"train": "x"}})
        messages = messages_of(row, where, cfg, need_answer=False)
        reference = None
        if messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        return ChatText(prompt_text(messages, session.tokenizer)), reference
    d = session.data  # the run's data settings (a model folder's: the defaults)
    template = template or d.prompt_template
    response_column = d.response_column
    if template is None and "instruction" in row:
        template = "{instruction}" + ("\n\n{input}" if str(row.get("input") or "").strip() else "")
    if template is not None:
        missing = [f for f in _template_fields(template) if f not in row]
        if missing:
            raise LmtuneError(f"{where}: the prompt template names column {missing[0]!r}, which the row does not have")
        text = template.format(**{k: "" if v is None else v for k, v in row.items()})
        reference = row.get(response_column)
        tokenizer = session.tokenizer
        prompt = prompt_text([{"role": "user", "content": text}], tokenizer) if getattr(tokenizer, "chat_template", None) else text
        return ChatText(prompt), reference if isinstance(reference, str) else None
    for column in ("prompt", d.text_column):
        if isinstance(row.get(column), str):
            return row[column], None
    raise LmtuneError(f"{where}: no messages, instruction, prompt or {d.text_column} column, "
                      f"and no {option('--prompt-template', 'template')}")


def read_inputs(session: Any, path: Path, columns: list[str] | None, template: str | None) -> tuple[Table, list[str], list[str | None]]:
    """A prompt per row (see row_prompt) and the row's reference answer, if it has one."""
    if columns is not None:
        raise LmtuneError(f"{option('--columns', 'columns')}: {path} is read by a generative model with its header "
                          "(or as JSON lines or plain text), so column names are not taken")
    table = _prompt_table(path)
    pairs = [row_prompt(session, row, table.where(i), template) for i, row in enumerate(table.rows)]
    return table, [p for p, _ in pairs], [r for _, r in pairs]


def _prompt_table(path: Path) -> Table:
    """The rows to prompt from. A .txt file: a prompt per paragraph (prompts separated by blank
    lines, each may span lines), or a prompt per line where no blank line separates its texts."""
    table = read_texts(str(path), "auto")
    if path.suffix.lower() == ".txt" and len(table) == 1 and "\n" in table.rows[0]["text"]:
        texts = table.rows[0]["text"].split("\n")
        first = table.lines[0]
        return Table(table.path, ["text"], [{"text": t} for t in texts], list(range(first, first + len(texts))))
    return table


def input_chunks(session: Any, path: Path, columns: list[str] | None, template: str | None, rows: int) -> Any:
    """read_inputs a chunk of rows at a time for a CSV, TSV or JSONL file (a .txt file, prompts
    by paragraph or by line, see _prompt_table, and a JSON file are read whole)."""
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        yield read_inputs(session, path, columns, template)
        return
    if columns is not None:
        read_inputs(session, path, columns, None)  # raises the --columns error
    for table in table_chunks(path, None, rows):
        pairs = [row_prompt(session, row, table.where(i), template) for i, row in enumerate(table.rows)]
        yield table, [p for p, _ in pairs], [r for _, r in pairs]


def _generations(session: Any, prompts: list[Any], raw: bool) -> list[Any]:
    """Each prompt generated from: a plain text as a user message in the model's chat format (as
    it is with raw=True, or when the model has no chat template), a ChatText as it is."""
    from tqdm.auto import tqdm

    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise LmtuneError(f"inputs[{i}]: expected a prompt (a non-empty text), got {str(p)[:80]}")
    texts = [p if raw or isinstance(p, ChatText) else session.prompt(p) for p in prompts]
    with tqdm(total=len(prompts), disable=not session.progress or None, unit="row", file=sys.stderr) as bar:
        return session.generate_batch(texts, raw=True, progress=bar.update)


def predict(session: Any, prompts: list[Any], references: Any, raw: bool = False) -> list[str]:
    """The generated text for each prompt (a user message in the model's chat format unless raw:
    see _generations), with the session's generation settings."""
    return [g.text for g in _generations(session, prompts, raw)]


def predict_rows(session: Any, prompts: list[Any], references: list[str | None] | None,
                 raw: bool = False) -> list[dict[str, Any]]:
    rows = []
    for i, g in enumerate(_generations(session, prompts, raw)):
        reference = references[i] if references else None
        rows.append({"prompt": str(prompts[i]), "generation": g.text, **({"reference": reference} if reference is not None else {})})
    return rows


def read_labelled(session: Any, path: Path, columns: list[str] | None) -> tuple[Table, str]:
    """A file shaped like the run's training data, and its shape."""
    cfg = session.cfg
    if cfg is None:
        raise LmtuneError("evaluating a generative model needs its run folder (for the data columns and template)")
    if columns is not None:
        read_inputs(session, path, columns, None)  # the --columns error
    table = read_texts(path, "auto")
    shape = detect_shape(table, cfg)
    _check_table(table, shape, cfg)
    return table, shape


def evaluate_labelled(session: Any, labelled: tuple[Table, str]) -> dict[str, Any]:
    """Loss, perplexity and (for instructions and chats) generation metrics."""
    from .common import TaskData

    cfg = session.cfg
    table, shape = labelled
    unpacked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": False})})
    features, truncated = prepare(table, session.tokenizer, unpacked, [], shape)
    rows = session.run_batches(
        features, lambda model, batch: eval_step(model, {k: v for k, v in batch.items() if k != "num_tokens"}, cfg),
        collator(session.tokenizer, cfg, session.model))
    metrics = compute_metrics({k: np.stack([r[k] for r in rows]) for k in ("loss_sum", "tokens")}, [], cfg)
    data = TaskData(table, table, None, [], [])
    data.shape = shape  # type: ignore[attr-defined]
    generated = extra_metrics(session.model, session.tokenizer, data, cfg,
                              log=lambda line: print(line, file=sys.stderr), progress=session.progress)
    generated.pop("samples", None)  # (the run's report shows them; eval prints metrics only)
    metrics.update(generated)
    metrics["examples"] = len(table)
    metrics["truncated"] = truncated
    return metrics


TASK = Task.of(sys.modules[__name__], name="causal_lm", config=CausalLMConfig, compile_by_default=True, few_examples=10_000)
