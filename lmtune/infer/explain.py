"""Which words a prediction rests on: integrated gradients on the input word embeddings (Captum's
LayerIntegratedGradients), for classification and token classification runs; and, for one input,
the model's attention as a map (`attention_map`).

For each explained prediction the attribution of a sub-token is the integral of the gradient of the
explained score along the straight path from a baseline embedding to the input's embedding, times
their difference, summed over the embedding dimensions. The attributions of all sub-tokens add up
to score(input) - score(baseline) (completeness); `Target.delta` is what is left over, the error
of the numerical integral (the same quantity as Captum's convergence delta), which falls as
`steps` grows.

What is explained (the score is a logit, before the softmax, so that it is not squashed by the
other labels' scores):
- classification: the logit of the predicted label;
- token classification: for each word whose predicted tag is not O (or one chosen word), the logit
  of its predicted tag at the word's first sub-token, the one its prediction is read from.
A word's attribution is the sum of its sub-tokens'; special tokens are not shown as words (the
baseline keeps them, so theirs is zero) but stay in the sum that `delta` checks.

What a task explains (its `Task.explain`: the label, or each word's tag) picks its entry here
(`EXPLAINED`); a task that explains nothing (question answering, generation, masked LM) is refused
with one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from ..core.errors import LmtuneError, option
from ..tasks import get_task
from ..tasks.registry import all_tasks

if TYPE_CHECKING:
    import torch


class Loaded(Protocol):
    """What explain reads of a loaded run: lmtune.infer.predictor.Predictor is one (whose `explain`
    calls this module, which therefore does not import it)."""

    model: Any
    tokenizer: Any
    accelerator: Any
    labels: list[str]
    task_name: str
    model_dir: Path
    data: Any  # the run's data settings (data.max_length: a tagger's window)
    max_length: int

    @property
    def name(self) -> str: ...


STEPS = 50  # integration points (Gauss-Legendre); more make the delta smaller and the run slower
# Tokens of the integration path's inputs run through the model at a time, by default: bounds the
# memory of the forward and backward passes the way a training batch's tokens do.
PATH_TOKENS = 8192


@dataclass
class Target:
    """One explained prediction: its label, the score explained and each word's share of it."""

    label: str  # the predicted label (token classification: the word's predicted tag)
    confidence: float  # its softmax probability
    score: float  # the explained logit on the input
    baseline_score: float  # the same logit on the baseline
    attributions: list[float]  # per word of Explanation.words; > 0: pushes towards `label`
    token_attributions: list[float]  # per sub-token of Explanation.tokens, special tokens included
    delta: float  # sum of every sub-token's attribution - (score - baseline_score)
    word: int | None = None  # token classification: the word whose tag is explained (its index in words)

    @property
    def special(self) -> float:
        """The attribution left on special tokens (not shown with the words). The baseline keeps
        them, so it is zero up to rounding; it is counted in `delta` all the same."""
        return float(sum(self.token_attributions) - sum(self.attributions))


@dataclass
class Explanation:
    """The explained predictions of one input."""

    input: Any  # the text, the list of words, or (text, second text) of a pair
    words: list[str]  # the input's words as the model saw them (cut inputs: the words kept)
    gaps: list[str]  # the input's characters before each word (spaces, punctuation kept as written)
    tokens: list[str]  # the sub-tokens the model read, special tokens included
    token_words: list[int | None]  # the word of each sub-token; None for special tokens
    targets: list[Target]  # classification: one; token classification: one per explained word
    truncated: bool = False  # the input was longer than the model takes and was cut
    steps: int = STEPS

    def _only(self) -> Target:
        if not self.targets:
            raise LmtuneError(f"{str(self.input)[:60]!r}: no prediction was explained (no word is tagged other "
                              f"than O); name a word with {option('--word N', 'word=N')}")
        return self.targets[0]

    # the first explained prediction (classification: the only one)
    @property
    def label(self) -> str:
        return self._only().label

    @property
    def confidence(self) -> float:
        return self._only().confidence

    @property
    def attributions(self) -> list[float]:
        return self._only().attributions

    @property
    def score(self) -> float:
        return self._only().score

    @property
    def baseline_score(self) -> float:
        return self._only().baseline_score

    @property
    def delta(self) -> float:
        return self._only().delta


@dataclass
class _Encoded:
    """One input tokenized as the model reads it, with its words."""

    ids: list[int]
    token_types: list[int] | None
    special: list[bool]
    tokens: list[str]
    token_words: list[int | None]
    words: list[str]
    gaps: list[str]
    truncated: bool

    def first_positions(self) -> list[int]:
        """The position of each word's first sub-token."""
        first: dict[int, int] = {}
        for pos, w in enumerate(self.token_words):
            if w is not None and w not in first:
                first[w] = pos
        return [first[w] for w in range(len(self.words))]


# ---------------------------------------------------------------- what each task explains

# (word or None, position or None, label id) of each prediction to explain, from the logits of the
# input (a [labels] row for a sequence head, [tokens, labels] for a token head)
Chosen = list[tuple["int | None", "int | None", int]]
Chooser = Callable[["torch.Tensor", _Encoded, list[str], "int | None"], Chosen]


def _predicted_label(logits: "torch.Tensor", enc: _Encoded, labels: list[str], word: int | None) -> Chosen:
    return [(None, None, int(logits.argmax()))]


def _tagged_words(logits: "torch.Tensor", enc: _Encoded, labels: list[str], word: int | None) -> Chosen:
    first = enc.first_positions()
    if word is not None:
        if not 0 <= word < len(first):
            raise LmtuneError(f"{option('--word', 'word')}={word}: the input has {len(first)} words "
                              f"(0 to {len(first) - 1}): {' '.join(enc.words)[:80]}")
        return [(word, first[word], int(logits[first[word]].argmax()))]
    chosen = [(w, pos, int(logits[pos].argmax())) for w, pos in enumerate(first)]
    return [c for c in chosen if labels[c[2]] != "O"]


@dataclass(frozen=True)
class _Explained:
    """What a task explains, and the longest input it reads at once (as its predict cuts or windows)."""

    choose: Chooser
    max_length: Callable[["Loaded"], int]
    per_word: bool  # a prediction per word (`word` chooses one)


# by what a task explains (Task.explain): its predicted label, or each word's tag
EXPLAINED: dict[str, _Explained] = {
    "label": _Explained(_predicted_label, lambda p: p.max_length, per_word=False),
    "words": _Explained(_tagged_words, lambda p: p.data.max_length, per_word=True),  # its window
}


def check_explainable(task: str, where: str | Path, word: int | None = None) -> _Explained:
    """What the task explains; an LmtuneError for a task that explain does not support, or for a
    chosen word where the task predicts one label per input."""
    kind = get_task(task).explain
    if kind is None:
        explained = [t.name for t in all_tasks() if t.explain is not None]
        raise LmtuneError(f"{where}: explain supports {' and '.join(explained)} runs; this is a {task} run")
    if word is not None and not EXPLAINED[kind].per_word:
        raise LmtuneError(f"{option('--word', 'word')}: a {task} model predicts one label per input, "
                          "not one per word; leave it out")
    return EXPLAINED[kind]


# ---------------------------------------------------------------- inputs


def _encode(tokenizer: Any, x: Any, pair: str | None, max_length: int) -> _Encoded:
    """Tokenize one input (a text, a list of words, or a text and its second text) as the model
    reads it, cut to max_length, and find its words: the tokenizer's words with their characters
    (fast tokenizers), the given words for a list of words, else each sub-token as a word."""
    split = isinstance(x, (list, tuple))
    if split and not all(isinstance(t, str) for t in x):
        raise LmtuneError(f"expected a text or a list of words (strings), got {str(x)[:80]}")
    if not split and not isinstance(x, str):
        raise LmtuneError(f"expected a text, got {str(x)[:80]}")
    fast = bool(getattr(tokenizer, "is_fast", False))
    if split and not fast:
        raise LmtuneError(f"a list of words needs a fast tokenizer; {type(tokenizer).__name__} is not one")
    kwargs: dict[str, Any] = {"return_special_tokens_mask": True, "is_split_into_words": split}
    if fast and not split:
        kwargs["return_offsets_mapping"] = True
    source = list(x) if split else x
    full = tokenizer(source, pair, truncation=False, verbose=False, **kwargs)
    truncated = len(full["input_ids"]) > max_length
    enc = tokenizer(source, pair, truncation=True, max_length=max_length, **kwargs) if truncated else full
    ids = list(enc["input_ids"])
    special = [bool(s) for s in enc["special_tokens_mask"]]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    token_types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
    if not fast:  # no word boundaries: each sub-token is a word
        index = iter(range(len(ids)))
        token_words = [None if s else next(index) for s in special]
        words = [t for t, s in zip(tokens, special) if not s]
        return _Encoded(ids, token_types, special, tokens, token_words, words,
                        [""] + [" "] * (len(words) - 1), truncated)
    keys: dict[tuple[int, int], int] = {}
    token_words = []
    spans: list[list[int]] = []
    for pos, (w, part) in enumerate(zip(enc.word_ids(), enc.sequence_ids())):
        if w is None or special[pos]:
            token_words.append(None)
            continue
        key = (part or 0, w)
        if key not in keys:
            keys[key] = len(keys)
            spans.append([w, w] if split else list(enc["offset_mapping"][pos]))
        k = keys[key]
        token_words.append(k)
        if not split:
            spans[k][0] = min(spans[k][0], enc["offset_mapping"][pos][0])
            spans[k][1] = max(spans[k][1], enc["offset_mapping"][pos][1])
    texts = [source, pair]
    words, gaps, previous = [], [], (0, 0)
    for (part, w), span in zip(keys, spans):
        if split:
            words.append(source[w])
            gaps.append("" if not words[:-1] else " ")
            continue
        words.append(texts[part][span[0]:span[1]])
        start = previous[1] if previous[0] == part else 0
        gaps.append(("  ‖  " if part != previous[0] else "") + texts[part][start:span[0]])
        previous = (part, span[1])
    return _Encoded(ids, token_types, special, tokens, token_words, words, gaps, truncated)


def _pairs(inputs: Any, pairs: Sequence[str] | None) -> tuple[list[Any], list[str | None]]:
    """Inputs and their second texts from the Python forms: texts (with `pairs`), lists of words,
    [text, text_pair] or {text, text_pair}."""
    if isinstance(inputs, (str, dict)):
        inputs = [inputs]
    inputs = list(inputs)
    if pairs is not None:
        if len(pairs) != len(inputs):
            raise LmtuneError(f"{len(inputs)} texts but {len(pairs)} second texts")
        return inputs, list(pairs)
    out, seconds = [], []
    for x in inputs:
        if isinstance(x, dict) and isinstance(x.get("text"), str) and isinstance(x.get("text_pair"), str):
            out.append(x["text"])
            seconds.append(x["text_pair"])
        else:
            out.append(x)
            seconds.append(None)
    return out, seconds


# ---------------------------------------------------------------- the model


def _bare(predictor: "Loaded") -> Any:
    """The model without the accelerator's wrappers: the integral is computed in the weights' own
    precision (float32 as trained and saved), where completeness can be checked, also where the
    predictor itself autocasts to bf16 (see _forward)."""
    return predictor.accelerator.unwrap_model(predictor.model)


def _forward(model: Any) -> Callable[..., "torch.Tensor"]:
    """The model's logits for a batch: [batch, labels] for a sequence head; for a token head the
    logits of each example's explained position."""
    import torch

    # accelerate's mixed precision replaces the model's forward with an autocast one and keeps the
    # plain forward beside it: the integral takes the plain one
    plain = getattr(model, "_original_forward", model)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                positions: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        logits = plain(**kwargs).logits.float()
        if logits.dim() == 3:
            logits = logits[torch.arange(logits.shape[0], device=logits.device), positions]
        return logits

    return forward


def _run_with(layer: Any, embeddings: "torch.Tensor | None", run: Callable[[], "torch.Tensor"]) -> "torch.Tensor":
    """run(), without gradients, with the embedding layer's output replaced by `embeddings`
    (None: as it is)."""
    import torch

    handle = layer.register_forward_hook(lambda module, args, output: embeddings) if embeddings is not None else None
    try:
        with torch.no_grad():
            return run()
    finally:
        if handle is not None:
            handle.remove()


def _scores(model: Any, step: Callable[[Any, dict[str, Any]], dict[str, "torch.Tensor"]], batch: dict[str, Any],
            device: Any) -> "torch.Tensor":
    """The logits that `step` gives for one batch (copies of the explained input) in float32, back
    on the model's device (the softmax of the confidence runs where it always did): a pass of the
    evaluation engine, without autocast of its own (the integral's forward is the plain one: see
    _forward) and without gradients, not in inference mode (the integral's backward passes follow
    on the same model)."""
    import torch

    from ..training.evaluation import forward_batches

    rows = list(range(batch["input_ids"].shape[0]))
    [(_, out)] = forward_batches(model, [(rows, batch)], step, device=device, inference=False)
    return torch.from_numpy(out["logits"]).to(device)


def _explain_one(predictor: "Loaded", task: _Explained, x: Any, pair: str | None, *, steps: int,
                 internal_batch_size: int | None, word: int | None) -> Explanation:
    import torch
    from captum.attr import LayerIntegratedGradients

    model = _bare(predictor)
    tokenizer = predictor.tokenizer
    enc = _encode(tokenizer, x, pair, task.max_length(predictor))
    device = next(model.parameters()).device
    ids = torch.tensor([enc.ids], device=device)
    if tokenizer.pad_token_id is None:
        raise LmtuneError(f"{predictor.model_dir}: the tokenizer has no pad token to build the baseline from")
    # The baseline: the same input with every word's sub-tokens replaced by the pad token. The
    # special tokens ([CLS], [SEP]) stay, as do the length and positions, so that only the words
    # differ between the two ends of the path; the pad token is the model's own "nothing here",
    # an embedding it has seen, unlike an all-zero vector that no token has.
    special = torch.tensor([enc.special], device=device)
    base = ids.masked_fill(~special, tokenizer.pad_token_id)
    mask = torch.ones_like(ids)
    types = torch.tensor([enc.token_types], device=device) if enc.token_types is not None else None
    forward = _forward(model)
    layer = model.get_input_embeddings()
    # the prediction explained, as the predictor makes it (the model's forward, autocast where it is)
    logits = _scores(model, lambda model, batch: {"logits": model(**batch).logits}, _kwargs(ids, mask, types), device)[0]
    with torch.no_grad():
        baseline_embeddings = layer(base)
    chosen = task.choose(logits, enc, predictor.labels, word)
    targets = []
    lig = LayerIntegratedGradients(forward, layer)
    at_once = internal_batch_size or max(1, PATH_TOKENS // len(enc.ids))
    for start in range(0, len(chosen), at_once):
        group = chosen[start : start + at_once]
        k = len(group)
        positions = torch.tensor([p or 0 for _, p, _ in group], device=device)
        label_ids = torch.tensor([t for _, _, t in group], device=device)
        repeat = (ids.repeat(k, 1), mask.repeat(k, 1), types.repeat(k, 1) if types is not None else None, positions)
        # both ends of the path as the integral runs it: the input's ids, with the embedding layer's
        # output replaced at the baseline end (so that a head which finds its token by id, as
        # decoders' sequence heads find the last non-pad token, reads the same token at both ends)
        batch = dict(zip(("input_ids", "attention_mask", "token_type_ids", "positions"), repeat))
        at_input = _run_with(layer, None, lambda: _scores(model, lambda _, b: {"logits": forward(**b)}, batch, device))
        at_base = _run_with(layer, baseline_embeddings.repeat(k, 1, 1),
                            lambda: _scores(model, lambda _, b: {"logits": forward(**b)}, batch, device))
        attributions = lig.attribute(
            repeat[0], baselines=base.repeat(k, 1), target=label_ids.tolist(), additional_forward_args=repeat[1:],
            n_steps=steps, internal_batch_size=max(at_once, k),
        )
        per_token = attributions.float().sum(-1).detach().cpu().double()
        for j, (w, _, label) in enumerate(group):
            score, baseline = float(at_input[j, label]), float(at_base[j, label])
            tokens = per_token[j]
            by_word = [0.0] * len(enc.words)
            for pos, wi in enumerate(enc.token_words):
                if wi is not None:
                    by_word[wi] += float(tokens[pos])
            targets.append(Target(
                label=predictor.labels[label],
                confidence=float(torch.softmax(at_input[j], -1)[label]),
                score=score, baseline_score=baseline, attributions=by_word,
                token_attributions=[float(t) for t in tokens],
                delta=float(tokens.sum()) - (score - baseline), word=w,
            ))
    return Explanation(x if pair is None else (x, pair), enc.words, enc.gaps, enc.tokens, enc.token_words, targets,
                       enc.truncated, steps)


def _kwargs(ids: "torch.Tensor", mask: "torch.Tensor", types: "torch.Tensor | None") -> dict[str, Any]:
    return {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}


def explain(predictor: "Loaded", inputs: Any, pairs: Sequence[str] | None = None, *, steps: int = STEPS,
            internal_batch_size: int | None = None, word: int | None = None) -> list[Explanation]:
    """An Explanation per input, in input order. Inputs: a text, or a list of texts (with `pairs`
    for a text pair model, or as {text, text_pair}); for token classification also lists of words
    (one sentence as [words]: a plain list of strings is a list of texts, as for predict). `steps`:
    integration points (more: a smaller delta); `internal_batch_size`: inputs on the integration
    path run through the model at a time (default: PATH_TOKENS tokens' worth); `word` (token
    classification): explain this word's tag (its index in Explanation.words, O included) instead
    of every word tagged other than O."""
    task = check_explainable(predictor.task_name, predictor.name, word)
    if steps < 1:
        raise LmtuneError(f"{option('--steps', 'steps')}={steps}: integration needs at least 1 step")
    if internal_batch_size is not None and internal_batch_size < 1:
        raise LmtuneError(f"internal_batch_size={internal_batch_size}: at least 1")
    xs, seconds = _pairs(inputs, pairs)
    return [_explain_one(predictor, task, x, pair, steps=steps, internal_batch_size=internal_batch_size, word=word)
            for x, pair in zip(xs, seconds)]


# ---------------------------------------------------------------- attention


def attention_map(predictor: "Loaded", x: Any, path: str | Path, *, pair: str | None = None,
                  layer: int | str = "last") -> Path:
    """A PNG of the model's attention over one input's sub-tokens (rows attend to columns),
    averaged over the heads. layer "last" (the default): the last layer, the one whose output the
    head reads, so the closest to the prediction; "mean": averaged over the layers; an int: that
    layer (0 is the first). Attention is read with transformers' eager kernel (the fused ones do
    not return the weights); the model's kernel is set back afterwards."""
    import torch

    from ..training.cpu import first_token

    task = check_explainable(predictor.task_name, predictor.name)
    model = _bare(predictor)
    body = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT adapter's model
    enc = _encode(predictor.tokenizer, x, pair, task.max_length(predictor))
    device = next(model.parameters()).device
    ids = torch.tensor([enc.ids], device=device)
    types = torch.tensor([enc.token_types], device=device) if enc.token_types is not None else None
    kernel = getattr(body.config, "_attn_implementation", None)
    if kernel != "eager":
        body.set_attn_implementation("eager")
    try:
        with torch.no_grad(), first_token.whole_last_layer(model):  # (every position's attention)
            out = model(**_kwargs(ids, torch.ones_like(ids), types), output_attentions=True)
    finally:
        if kernel not in (None, "eager"):
            body.set_attn_implementation(kernel)
    attentions = torch.stack([a[0].float() for a in out.attentions])  # [layers, heads, tokens, tokens]
    n = attentions.shape[0]
    if layer == "mean":
        weights, which = attentions.mean((0, 1)), f"mean of {n} layers"
    elif layer == "last":
        weights, which = attentions[-1].mean(0), f"last layer ({n} of {n})"
    elif isinstance(layer, int) and -n <= layer < n:
        weights, which = attentions[layer].mean(0), f"layer {layer % n + 1} of {n}"
    else:
        raise LmtuneError(f"{option('--attention-layer', 'layer')}={layer!r}: expected last, mean or a layer "
                          f"number from 0 to {n - 1}")
    return _plot(weights.cpu().numpy(), enc.tokens, Path(path), f"{predictor.name}: attention, head mean, {which}")


def _plot(weights: Any, tokens: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    size = min(4 + 0.28 * len(tokens), 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        image = ax.imshow(weights, cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
        ax.set_xlabel("attended to")
        ax.set_ylabel("attending")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
