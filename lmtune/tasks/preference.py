"""Preference tuning of decoder models on pairs of answers to one prompt, the chosen and the
rejected: DPO (its sigmoid loss, with optional label smoothing), IPO, ORPO and SimPO.

Data, each file's form found from its columns: `prompt`/`chosen`/`rejected` strings (the prompt a
user message in the model's chat template); conversational rows (`prompt` a list of messages,
`chosen`/`rejected` an assistant message, a list of one, or a string); or OpenAI's DPO fine-tuning
format (`input.messages`, `preferred_output`, `non_preferred_output`). Only response tokens are
scored; a pair too long for data.max_length loses prompt tokens from the left (the same number for
both answers), then, if an answer alone is too long, that answer's end. Pairs whose answers are
empty or identical teach nothing: they are dropped and counted (dropped.jsonl).

A batch holds the chosen sequences, then the rejected ones (one forward for both). The policy's
log-probability of an answer is the sum over its tokens (IPO, ORPO, SimPO: the mean). DPO and IPO
compare it with a reference model's: the initial model (with strategy lora, that is the model with
its adapters disabled), which scores each pair once, before training (`prepare`), and is then let go:
no second copy of the model stays in memory, and no step pays a second forward pass. ORPO and SimPO
need no reference. The objective's keys are in the run config's `preference:` section.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..core.config import DataConfig, EvalConfig, RunConfig, Section
from ..core.errors import LmtuneError
from ..core.models import describe, load_pretrained, load_tokenizer, resolve
from ..core.rundir import write_json_atomic
from ..core.runtime import bf16_available, first_process, log
from ..data.readers import Table, read_table
from . import causal_lm
from .causal_lm import IGNORE, Truncated, encode_chat
from .chat import prompt_text
from .common import PLANNING, LengthChoice, TaskData, percentile_length
from .contract import Task
from .decoding import turn_end_ids


class PreferenceData(DataConfig):
    """data: keys of preference runs (the columns are fixed: see the module's docstring)."""


class PreferenceEval(EvalConfig):
    """eval: keys of preference runs."""


class PreferenceObjective(Section):
    """preference: the objective and its constants (defaults: TRL's)."""

    objective: Literal["dpo", "ipo", "orpo", "simpo"] = Field(
        "dpo", description="dpo (sigmoid loss), ipo (squared loss), orpo (odds ratio beside the chosen answer's NLL, "
        "no reference) or simpo (length-normalised margin, no reference)"
    )
    beta: float = Field(0.1, gt=0, description="dpo, ipo, simpo: the inverse temperature of the reward (the reference's pull)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo: the assumed share of pairs whose preference is flipped")
    orpo_lambda: float = Field(0.1, gt=0, description="orpo: the weight of the odds-ratio term beside the NLL")
    gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin")


class PreferenceConfig(RunConfig):
    task: Literal["preference"] = "preference"
    data: PreferenceData
    eval: PreferenceEval = Field(default_factory=PreferenceEval)
    preference: PreferenceObjective = Field(default_factory=PreferenceObjective)


METRICS = ("reward_accuracy", "reward_margin", "loss", "chosen_logps", "rejected_logps")
GREATER_IS_BETTER = {"reward_accuracy": True, "reward_margin": True, "loss": False, "chosen_logps": True,
                     "rejected_logps": False}
AUTO_MODEL = "AutoModelForCausalLM"
EAGER_MAX_LENGTH = causal_lm.EAGER_MAX_LENGTH
ROLES = {"system", "user", "assistant"}
FORMS = {"strings": ("prompt", "chosen", "rejected"), "conversational": ("prompt", "chosen", "rejected"),
         "openai": ("input", "preferred_output", "non_preferred_output")}


# ---------------------------------------------------------------- reading


def detect_form(table: Table) -> str:
    """openai (input, preferred_output, non_preferred_output), conversational (a prompt of messages)
    or strings (prompt, chosen and rejected texts), by the file's columns and first row."""
    if "preferred_output" in table.columns or "input" in table.columns:
        table.require_columns(*FORMS["openai"])
        return "openai"
    table.require_columns(*FORMS["strings"])
    first = table.rows[0].get("prompt") if table.rows else None
    return "conversational" if isinstance(first, list) else "strings"


def _messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise LmtuneError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LmtuneError(f"{where}: message {i + 1} must be {{role: system|user|assistant, content: text}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _answer(raw: Any, where: str) -> str:
    """An answer: a text, an assistant message, or a list of one assistant message."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict):
        raw = [raw]
    messages = _messages(raw, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise LmtuneError(f"{where}: expected one assistant message (or a text)")
    return messages[0]["content"]


def pair_of(row: dict[str, Any], where: str, form: str) -> tuple[list[dict[str, str]], str, str]:
    """(the prompt as messages, the chosen answer, the rejected answer) of a row."""
    prompt_key, chosen_key, rejected_key = FORMS[form]
    if form == "openai":
        source = row.get("input")
        if not isinstance(source, dict) or "messages" not in source:
            raise LmtuneError(f"{where}: 'input' must be an object with 'messages'")
        prompt = _messages(source["messages"], f"{where}: input.messages")
    elif form == "conversational":
        prompt = _messages(row.get("prompt"), f"{where}: prompt")
    else:
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise LmtuneError(f"{where}: 'prompt' must be a non-empty text")
        prompt = [{"role": "user", "content": text}]
    return prompt, _answer(row.get(chosen_key), f"{where}: {chosen_key}"), _answer(row.get(rejected_key), f"{where}: {rejected_key}")


def read_pairs(path: str, fmt: str) -> tuple[Table, list[dict[str, Any]], str]:
    """The file's pairs, checked; the pairs that teach nothing left out, each as a dropped record."""
    table = read_table(path, fmt)
    if not table.rows:
        raise LmtuneError(f"{path}: no rows")
    form = detect_form(table)
    kept, dropped = [], []
    for i, row in enumerate(table.rows):
        _, chosen, rejected = pair_of(row, table.where(i), form)
        reason = ("empty answer" if not chosen.strip() or not rejected.strip()
                  else "identical answers" if chosen.strip() == rejected.strip() else None)
        if reason is None:
            kept.append(i)
        else:
            dropped.append({"file": str(path), "line": table.lines[i], "reason": reason, "row": row})
    if not kept:
        raise LmtuneError(f"{path}: no pair has two different, non-empty answers")
    out = table.subset(kept)
    out.form = form  # type: ignore[attr-defined]
    return out, dropped, form


def check_decoder(name: str) -> None:
    """Preference tuning scores answers token by token: the model must be a decoder (a causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    kind = describe(name).model_type
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise LmtuneError(f"model: {name} is a {kind} model, not a decoder: preference tuning needs a causal LM "
                          "(lmtune models lists them)")


def check_template(name: str, form: str, path: str) -> None:
    """Prompts given as message lists (system, user, assistant turns) need the model's chat template
    to become text; plain texts fall back to a User/Assistant layout."""
    if form != "strings" and not getattr(load_tokenizer(resolve(name)), "chat_template", None):
        raise LmtuneError(f"{path}: the prompts are message lists ({form} pairs), but {name} has no chat template to "
                          "render them: give prompt, chosen and rejected as texts, or tune a chat model")


def load_data(cfg: Any) -> TaskData:
    from ..data.split import random_holdout

    d = cfg.data
    train, dropped, form = read_pairs(d.train, d.format)
    check_decoder(cfg.model)
    check_template(cfg.model, form, d.train)
    notes = [f"data form: {form}"]
    if d.validation:
        validation, more, _ = read_pairs(d.validation, d.format)
        dropped += more
    else:
        kept, held = random_holdout(len(train), d.validation_size, cfg.train.seed, source=str(d.train), unit="examples")
        train, validation = train.subset(kept), train.subset(held)
        notes.append(f"no validation file: held out {len(held)} of {len(held) + len(kept)} training pairs (seed {cfg.train.seed})")
    test = None
    if d.test:
        test, more, _ = read_pairs(d.test, d.format)
        dropped += more
    if dropped:
        reasons = ", ".join(f"{r} {sum(x['reason'] == r for x in dropped)}" for r in dict.fromkeys(x["reason"] for x in dropped))
        first = dropped[0]
        notes.append(f"dropped {len(dropped)} pairs ({reasons}; the first at {first['file']}:{first['line']}; each in dropped.jsonl)")
    data = TaskData(train, validation, test, [], notes, {}, dropped)
    data.shape = form  # type: ignore[attr-defined]  (lmtune data preview names it)
    return data


# ---------------------------------------------------------------- tokens


def encode_answer(prompt: list[dict[str, str]], answer: str, tokenizer: Any, stops: list[int]) -> tuple[list[int], list[int], int]:
    """(ids, labels, where the answer starts) of the prompt and one answer in the chat template:
    only the final assistant turn is labelled."""
    enc = encode_chat(prompt + [{"role": "assistant", "content": answer}], tokenizer, False, None, stops)
    labels = [IGNORE if i < enc.response else tok for i, tok in enumerate(enc.labels)]
    return enc.ids, labels, enc.response


def fit_pair(chosen: tuple[list[int], list[int], int], rejected: tuple[list[int], list[int], int],
             limit: int) -> tuple[list[tuple[list[int], list[int]]], str | None]:
    """Both sequences within `limit`: the same number of prompt tokens cut from the left of both,
    then the end of an answer that alone does not fit. Returns them and what was cut."""
    excess = max(len(chosen[0]), len(rejected[0])) - limit
    if excess <= 0:
        return [(chosen[0], chosen[1]), (rejected[0], rejected[1])], None
    drop = min(excess, chosen[2], rejected[2])
    out, cut = [], "prompt"
    for ids, labels, _ in (chosen, rejected):
        ids, labels = ids[drop:], labels[drop:]
        if len(ids) > limit:
            ids, labels, cut = ids[:limit], labels[:limit], "response"
        out.append((ids, labels))
    return out, cut


def encode_pairs(table: Table, tokenizer: Any) -> list[tuple[tuple[list[int], list[int], int], ...]]:
    form = getattr(table, "form", None) or detect_form(table)
    stops = turn_end_ids(tokenizer)
    out = []
    for i, row in enumerate(table.rows):
        prompt, chosen, rejected = pair_of(row, table.where(i), form)
        out.append((encode_answer(prompt, chosen, tokenizer, stops), encode_answer(prompt, rejected, tokenizer, stops)))
    return out


def choose_max_length(table: Table, tokenizer: Any, cfg: Any, cap: tuple[int, str]) -> LengthChoice:
    """data.max_length: auto: the 99th percentile of the pairs' longer sequences."""
    lengths = [max(len(c[0]), len(r[0])) for c, r in encode_pairs(table, tokenizer)]
    return percentile_length(lengths, cap, "training pairs")


def prepare(table: Table, tokenizer: Any, cfg: Any, labels: list[str], form: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """A feature per pair: the chosen sequence (input_ids, labels) and the rejected one
    (rejected_input_ids, rejected_labels), within data.max_length; with DPO and IPO, also the
    reference model's summed log-probabilities (ref_chosen, ref_rejected).
    (`form`, which lmtune data preview passes as a causal LM's shape, is the table's own anyway.)"""
    features, cuts = [], {"prompt": 0, "response": 0}
    for chosen, rejected in encode_pairs(table, tokenizer):
        ((c_ids, c_lab), (r_ids, r_lab)), cut = fit_pair(chosen, rejected, cfg.data.max_length)
        if cut:
            cuts[cut] += 1
        features.append({"input_ids": c_ids, "labels": c_lab, "rejected_input_ids": r_ids, "rejected_labels": r_lab})
    if needs_reference(cfg) and PLANNING.get():  # (lmtune plan times the scoring; it does not score)
        for f in features:
            f["ref_chosen"] = f["ref_rejected"] = 0.0
    elif needs_reference(cfg):
        add_reference(features, tokenizer, cfg)
    return features, Truncated(cuts["prompt"], cuts["response"])


def needs_reference(cfg: Any) -> bool:
    return cfg.preference.objective in ("dpo", "ipo")


REFERENCE_FILE = "reference_logps.json"  # in the run folder: the reference's scores, by pair
_SCORED: dict[str, dict[str, list[float]]] = {}  # the scores this process has, by reference model and precision


def _pair_key(feature: dict[str, Any]) -> str:
    parts = (feature["input_ids"], feature["labels"], feature["rejected_input_ids"], feature["rejected_labels"])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:20]


def add_reference(features: list[dict[str, Any]], tokenizer: Any, cfg: Any, batch_size: int = 8) -> None:
    """The initial model's summed log-probabilities of each pair's answers, in place: the reference
    of DPO and IPO (with LoRA, the model with its adapters off, whose scores these are). Each pair is scored once, before training, and
    kept in the run folder (REFERENCE_FILE), so a resumed run and the evaluations read them there
    instead of holding a second, frozen copy of the model beside the one that trains, or running
    the model a second time, adapters off, at every step (three forward passes a pair in three
    epochs, where scoring once makes one)."""
    model_path = str(resolve(cfg.model))
    cache_file = Path(cfg.output_dir) / REFERENCE_FILE if cfg.output_dir else None
    half = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and bf16_available())
    scored = _SCORED.setdefault(f"{model_path} {half}", {})  # (scores in bf16 and in fp32 differ a little)
    on_file: dict[str, list[float]] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            saved = json.loads(cache_file.read_text())
            on_file = dict(saved["pairs"]) if (saved.get("model"), saved.get("bf16")) == (model_path, half) else {}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable cache: its pairs are scored again
        scored.update(on_file)
    keys = [_pair_key(f) for f in features]
    missing = sorted({k: i for i, k in enumerate(keys) if k not in scored}.values())
    started = time.perf_counter()
    if missing:
        for i, pair in zip(missing, _score(model_path, [features[i] for i in missing], tokenizer, batch_size, half)):
            scored[keys[i]] = pair
    where = ""
    if cache_file is not None and cache_file.parent.is_dir() and first_process() and not set(keys) <= set(on_file):
        try:
            write_json_atomic(cache_file, {"model": model_path, "bf16": half, "pairs": {**on_file, **{k: scored[k] for k in keys}}})
            where = f"; kept in {cache_file}"
        except OSError:
            pass
    if missing:
        log(f"reference: the initial model scored {len(missing)} pairs ({time.perf_counter() - started:.0f} s{where}), "
            "so no second copy of it stays in memory")
    for f, k in zip(features, keys):
        f["ref_chosen"], f["ref_rejected"] = scored[k]


def _score(model_path: str, features: list[dict[str, Any]], tokenizer: Any, batch_size: int, half: bool) -> list[list[float]]:
    """[chosen, rejected] summed log-probabilities of each pair under the model at `model_path`, in
    the precision the run trains in (`half`: under bf16 autocast), so that a policy still equal to
    its reference scores what it does (a DPO loss of ln 2 at the first step)."""
    import torch

    from .lm_loss import use_chunked_loss

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    model = load_pretrained(AUTO_MODEL, model_path).to(device).eval()
    use_chunked_loss(model)
    collate = Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[list[float]] = [[0.0, 0.0] for _ in features]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=half):
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([features[i] for i in part]).items()}
            sums, _ = sequence_logps(model, batch)
            for j, i in enumerate(part):
                out[i] = [float(sums[j]), float(sums[len(part) + j])]
    del model
    return out


# ---------------------------------------------------------------- model, batches, loss


def build_model(path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any:
    from .lm_loss import use_chunked_loss

    model = load_pretrained(AUTO_MODEL, path, dropout=cfg.train.dropout, attn_implementation=attn_implementation)
    model.config.use_cache = False
    use_chunked_loss(model)  # the LM head only where an answer's token is predicted, chunk by chunk
    return model


class Collator:
    """One batch of 2n rows: the n chosen sequences, then the n rejected ones, padded together;
    the reference's log-probabilities (`ref_logps`, 2n) when the features hold them."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs = [(f["input_ids"], f["labels"]) for f in features] + [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        width = max(len(ids) for ids, _ in seqs)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids + [self.pad_id] * (width - len(ids)) for ids, _ in seqs]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in seqs]),
            "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in seqs]),
            "num_tokens": torch.tensor(sum(len(ids) for ids, _ in seqs)),
        }
        if "ref_chosen" in features[0]:
            batch["ref_logps"] = torch.tensor([f["ref_chosen"] for f in features] + [f["ref_rejected"] for f in features],
                                              dtype=torch.float32)
        return batch


def collator(tokenizer: Any, cfg: Any = None, model: Any = None) -> Collator:
    return Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def loss_items(batch: dict[str, Any]) -> int:
    """The pairs: the loss is their mean."""
    return int(batch["input_ids"].shape[0]) // 2


LOGITS_BUDGET = 2**28  # bytes of fp32 logits that one forward without gradients may hold


def sequence_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Each row's summed log-probability of its labelled tokens, and how many there are. Without
    gradients (evaluation, the reference) the rows go through the model a few at a time, so that
    their logits stay within LOGITS_BUDGET whatever the batch (256 MiB: 1.3 GiB at the peak
    on SmolLM2-135M, where 1 GiB took 4.2 and was slower): an evaluation batch of 64 pairs
    of 256 tokens would otherwise hold 128 x 256 x 49,152 logits, several times over."""
    import torch

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if torch.is_grad_enabled():
        return _row_logps(model, ids, mask, labels)
    vocab = getattr(getattr(model, "module", model), "config").vocab_size
    rows = max(1, LOGITS_BUDGET // (4 * vocab * ids.shape[1]))
    parts = [_row_logps(model, ids[i : i + rows], mask[i : i + rows], labels[i : i + rows]) for i in range(0, len(ids), rows)]
    return torch.cat([s for s, _ in parts]), torch.cat([c for _, c in parts])


def _row_logps(model: Any, ids: Any, mask: Any, labels: Any) -> tuple[Any, Any]:
    """Each row's summed log-probability of its labelled tokens, and their count. With the chunked
    LM head (lm_loss), the head runs only at the positions that predict an answer's token: on
    SmolLM2-135M the head and its softmax over all positions of a batch of pairs cost about as much
    as the blocks."""
    import torch.nn.functional as F

    from .lm_loss import has_chunked_loss

    if has_chunked_loss(model):
        keep, kept_targets = causal_lm.trained_positions(labels)
        losses = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, shift_labels=kept_targets,
                       per_position=True).loss
        sums = losses.new_zeros(ids.shape[0]).index_add(0, keep.nonzero()[:, 0], -losses)
        return sums, keep.sum(1)
    logits = model(input_ids=ids, attention_mask=mask).logits
    targets = labels[:, 1:]
    token_logps = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return token_logps.sum(1), (targets != IGNORE).sum(1)


def reference_logps(model: Any, batch: dict[str, Any]) -> Any:
    """The reference's summed log-probabilities: precomputed in the batch (prepare), else the model's
    own with its adapters disabled (strategy lora)."""
    import torch

    if "ref_logps" in batch:
        return batch["ref_logps"]
    inner = getattr(model, "module", model)
    if not hasattr(inner, "disable_adapter"):
        raise LmtuneError("preference: DPO and IPO need a reference: the batch holds none and the model has no adapters")
    with torch.no_grad(), inner.disable_adapter():
        return sequence_logps(inner, batch)[0].detach()


def pair_terms(model: Any, batch: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Per pair: the loss, the policy's summed log-probabilities of both answers and their rewards."""
    import torch
    import torch.nn.functional as F

    p = cfg.preference
    sums, counts = sequence_logps(model, batch)
    n = sums.shape[0] // 2
    counts = counts.clamp(min=1).to(sums.dtype)
    mean = p.objective != "dpo"  # IPO, ORPO and SimPO compare per-token means
    policy = sums / counts if mean else sums
    pc, pr = policy[:n], policy[n:]
    if needs_reference(cfg):
        ref = reference_logps(model, batch).to(sums.dtype)
        ref = ref / counts if mean else ref
        chosen_reward, rejected_reward = p.beta * (pc - ref[:n]), p.beta * (pr - ref[n:])
        logits = (pc - ref[:n]) - (pr - ref[n:])
        if p.objective == "dpo":
            eps = p.label_smoothing
            loss = -F.logsigmoid(p.beta * logits) * (1 - eps) - F.logsigmoid(-p.beta * logits) * eps
        else:
            loss = (logits - 1 / (2 * p.beta)) ** 2
    else:
        chosen_reward, rejected_reward = p.beta * pc, p.beta * pr
        if p.objective == "orpo":
            log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
            loss = -pc - p.orpo_lambda * F.logsigmoid(log_odds)  # the chosen answer's NLL, then the odds ratio
        else:
            loss = -F.logsigmoid(p.beta * (pc - pr) - p.gamma)
    return {"loss": loss, "chosen_logps": sums[:n], "rejected_logps": sums[n:],
            "chosen_reward": chosen_reward.detach(), "rejected_reward": rejected_reward.detach()}


def training_loss(model: Any, batch: dict[str, Any], cfg: Any) -> Any:
    """The mean loss of the batch's pairs."""
    return pair_terms(model, batch, cfg)["loss"].mean()


def eval_step(model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    return {k: v.detach() for k, v in pair_terms(model, batch, cfg).items()}


def compute_metrics(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None, features: Any = None) -> dict[str, Any]:
    margin = outputs["chosen_reward"] - outputs["rejected_reward"]
    return {"reward_accuracy": float((margin > 0).mean()), "reward_margin": float(margin.mean()),
            "loss": float(outputs["loss"].mean()), "chosen_logps": float(outputs["chosen_logps"].mean()),
            "rejected_logps": float(outputs["rejected_logps"].mean()), "pairs": int(len(margin))}


def validation_samples(outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                       table: Table) -> list[dict[str, Any]]:
    """Each validation pair's log-probabilities and rewards, with the row's line and the start of
    its prompt (the last message) and answers."""
    form = getattr(table, "form", None) or detect_form(table)
    rows = []
    for i in range(min(len(table), len(outputs.get("loss", [])), 50)):
        prompt, chosen, rejected = pair_of(table.rows[i], table.where(i), form)
        texts = {"prompt": prompt[-1]["content"], "chosen": chosen, "rejected": rejected}
        rows.append({"line": table.lines[i], **{k: _clip(v) for k, v in texts.items()},
                     **{k: round(float(outputs[k][i]), 4) for k in
                        ("chosen_logps", "rejected_logps", "chosen_reward", "rejected_reward")}})
    return rows


def _clip(text: str, chars: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def extra_metrics(model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Any = None, progress: bool = False) -> dict[str, Any]:
    return {}


# ------------------------------------------------------------ inference: a tuned model generates like causal_lm's

GENERATIVE = True
bare_labels = causal_lm.bare_labels
bare_data = causal_lm.bare_data  # (prompt_text, the model's chat prompt, is imported from .chat)


def row_prompt(session: Any, row: dict[str, Any], where: str, template: str | None) -> tuple[str, str | None]:
    """A pair's prompt in the model's chat format, its chosen answer the reference; other rows as a causal LM's."""
    if "preferred_output" in row or ("prompt" in row and "chosen" in row):
        form = "openai" if "preferred_output" in row else "conversational" if isinstance(row["prompt"], list) else "strings"
        prompt, chosen, _ = pair_of(row, where, form)
        return causal_lm.ChatText(prompt_text(prompt, session.tokenizer)), chosen
    if "prompt" in row and isinstance(row["prompt"], str):
        return row["prompt"], None
    raise LmtuneError(f"{where}: no prompt (a preference model is prompted with a 'prompt' column or pair rows)")


def read_inputs(session: Any, path: Path, columns: list[str] | None, template: str | None) -> tuple[Table, list[str], list[str | None]]:
    if columns is not None:
        raise LmtuneError(f"--columns: {path} is read by a generative model with its header, so column names are not taken")
    table = causal_lm._prompt_table(path)
    pairs = [row_prompt(session, row, table.where(i), template) if table.columns != ["text"] else (row["text"], None)
             for i, row in enumerate(table.rows)]
    return table, [p for p, _ in pairs], [r for _, r in pairs]


def input_chunks(session: Any, path: Path, columns: list[str] | None, template: str | None, rows: int) -> Any:
    yield read_inputs(session, path, columns, template)


predict = causal_lm.predict
predict_rows = causal_lm.predict_rows


def read_labelled(session: Any, path: Path, columns: list[str] | None) -> tuple[Table, list[dict[str, Any]]]:
    """A pair file (any of the three forms), checked, and its dropped pairs."""
    if columns is not None:
        raise LmtuneError(f"--columns: {path} is read by its own column names (prompt/chosen/rejected or OpenAI's)")
    if session.cfg is None:
        raise LmtuneError("evaluating preference pairs needs the run folder (its objective and reference)")
    table, dropped, _ = read_pairs(str(path), "auto")
    return table, dropped


def evaluate_labelled(session: Any, labelled: tuple[Table, list[dict[str, Any]]]) -> dict[str, Any]:
    """The run's metrics on the pairs: the reference is the run's initial model (for a
    LoRA run, the model with its adapters disabled), scored here."""
    table, dropped = labelled
    metrics = session.evaluate_table(table)
    metrics["dropped"] = len(dropped)
    return metrics


TASK = Task.of(sys.modules[__name__], name="preference", config=PreferenceConfig, sequences_per_example=2, compile_by_default=True,
               scores_before_training=needs_reference)
