"""Text generation from a causal LM: the settings every caller shares (`lmtune generate`, `lmtune
predict`, the generation metrics of training and the server), the tokens that end an answer,
and the one generation function: batched with left padding and the KV cache, streaming a mode of it.

`generate(model, tokenizer, prompts, settings)` returns one `Generation` per prompt, in prompt order;
with `on_piece=callback` (one prompt) it also hands the text to the callback as it is generated.
`stream(model, tokenizer, prompt, settings)` is that mode as an iterator (generate in a thread): it
yields the text as it is generated and returns the `Generation` at the end.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

from ..core.errors import LmtuneError
from .chat import render_chat


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. temperature 0 is greedy; top_k 0 and top_p 1 leave sampling unrestricted;
    a stop string ends the text before it (the string itself is not returned); seed makes sampling
    reproducible for the same prompts."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            out.append(f"temperature: must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            out.append(f"top_k: must be 0 (off) or more, got {self.top_k}")
        if self.repetition_penalty <= 0:
            out.append(f"repetition_penalty: must be more than 0, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            out.append("stop: stop strings must be non-empty texts")
        return out

    def check(self) -> "GenerationSettings":
        problems = self.problems()
        if problems:
            raise LmtuneError("; ".join(problems))
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": a turn-end token or a stop string ended it; "length": max_new_tokens did
    token_ids: list[int] = field(default_factory=list, repr=False)


def turn_end_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS, the special token that the chat template
    puts after an assistant message (<|im_end|> in ChatML, <|eot_id|> in Llama 3, which is not
    always the EOS a model's generation config names) and that config's EOS tokens. Training
    checks that one of them is trained after every response; generation stops on any of them."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "OK"}]
        try:
            text, spans = render_chat(probe, tokenizer)
        except Exception:  # a template that refuses the probe: the EOS alone
            text, spans = "", []
        for a, b in spans:
            turn = text[a:b]
            after = turn[turn.find("OK") + 2 :] if "OK" in turn else ""
            special = set(tokenizer.all_special_ids) | {
                i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
            }
            ids += [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special][:1]
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids += [eos] if isinstance(eos, int) else list(eos or [])
    return list(dict.fromkeys(ids))


def _generate_kwargs(model: Any, tokenizer: Any, settings: GenerationSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": turn_end_ids(tokenizer, model),
        "use_cache": True,
    }
    if settings.greedy:
        # the model's generation_config may name sampling settings of its own: greedy means greedy
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    if settings.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = settings.repetition_penalty
    if settings.stop and _can_stop_early(tokenizer, settings.stop):
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    return kwargs


def _can_stop_early(tokenizer: Any, stops: tuple[str, ...]) -> bool:
    """Whether transformers can end generation at the stop strings. Its matcher decodes every
    vocabulary entry after a probe text, which fails for tokenizers that cannot encode the probe (a
    word-level vocabulary); then generation runs on and the text is cut at the stop string after."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    known = getattr(tokenizer, "_lmtune_stops_early", None)  # the same for every stop string: asked once
    if known is None:
        try:
            StopStringCriteria(tokenizer, list(stops))
            known = True
        except ValueError:
            known = False
        tokenizer._lmtune_stops_early = known
    return known


def _finish(tokenizer: Any, ids: list[int], prompt_tokens: int, stops: set[int], settings: GenerationSettings) -> Generation:
    """The Generation of one row's new tokens (pads after the end already removed)."""
    ended = bool(ids) and ids[-1] in stops
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in settings.stop) if i >= 0), default=-1)
    if cut >= 0:
        text, ended = text[:cut], True
    return Generation(text.strip(), prompt_tokens, len(ids), "stop" if ended else "length", ids)


def _new_tokens(row: list[int], stops: set[int], pad: int | None) -> list[int]:
    """The generated ids of one output row: up to and with the first turn-end token."""
    for i, t in enumerate(row):
        if t in stops:
            return row[: i + 1]
    if pad is not None:  # a row that stopped on a stop string is padded after it
        while row and row[-1] == pad:
            row = row[:-1]
    return row


def generate(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings = GenerationSettings(),
             *, batch_size: int = 16, progress: Any = None, on_piece: Callable[[str], Any] | None = None,
             cancel: threading.Event | None = None) -> list[Generation]:
    """One Generation per prompt, in prompt order. Prompts are tokenized as they are (a chat prompt
    already holds its special tokens), sorted by length and generated in batches of `batch_size`,
    left-padded, with the KV cache. `progress`: called with the number of prompts done after each batch.

    Streaming is a mode of it: with `on_piece` (one prompt), the text is handed to on_piece piece by
    piece as it is generated, in the calling thread (a stop string, and any text that could be the
    start of one, is held back); the pieces join to the text before the Generation strips it.
    `cancel`: when set (say, the reader went away), generation ends after the token in progress."""
    import torch

    settings.check()
    if not prompts:
        return []
    if on_piece is not None and len(prompts) != 1:
        raise ValueError(f"on_piece streams one prompt, got {len(prompts)}")
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(not ids for ids in encoded):
        raise LmtuneError(f"prompt {next(i for i, ids in enumerate(encoded) if not ids) + 1}: empty prompt")
    kwargs = _generate_kwargs(model, tokenizer, settings)
    stops = set(kwargs["eos_token_id"])
    if cancel is not None:
        kwargs["stopping_criteria"] = _cancelled_by(cancel)
    pieces = _Pieces(tokenizer, settings.stop, on_piece) if on_piece is not None else None
    if pieces is not None:
        kwargs["streamer"] = pieces
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[Generation | None] = [None] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            which = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in which]}, return_tensors="pt").to(device)
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            with torch.inference_mode():
                result = model.generate(**batch, **kwargs)
            if pieces is not None:
                pieces.flush()
            width = batch["input_ids"].shape[1]
            for row, i in zip(result[:, width:].tolist(), which):
                out[i] = _finish(tokenizer, _new_tokens(row, stops, tokenizer.pad_token_id), len(encoded[i]), stops, settings)
            if progress is not None:
                progress(len(which))
    finally:
        tokenizer.padding_side = side
    return out  # type: ignore[return-value]


def _cancelled_by(event: threading.Event) -> Any:
    """A stopping criterion for `generate`: stop every row once `event` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def _Pieces(tokenizer: Any, stop: tuple[str, ...], on_piece: Callable[[str], Any]) -> Any:
    """The streamer of generate's streaming mode: the new text as transformers' TextStreamer cuts it
    (whole words, the prompt and special tokens left out), cut at the first stop string, with the
    text that could still become one held back until it cannot or generation ends (`flush`)."""
    from transformers import TextStreamer

    class Pieces(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.text, self.sent, self.stopped = "", 0, False
            self.hold = max((len(s) for s in stop), default=1) - 1

        def on_finalized_text(self, piece: str, stream_end: bool = False) -> None:
            if self.stopped:
                return  # generation ends at the stop string's tokens
            self.text += piece
            cut = min((i for i in (self.text.find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.stopped = self.text[:cut], True
            ready = len(self.text) if self.stopped else max(self.sent, len(self.text) - self.hold)
            if ready > self.sent:
                on_piece(self.text[self.sent:ready])
                self.sent = ready

        def flush(self) -> None:
            """The text held back, once generation has ended."""
            if self.sent < len(self.text):
                on_piece(self.text[self.sent:])
                self.sent = len(self.text)

    return Pieces()


def stream(model: Any, tokenizer: Any, prompt: str, settings: GenerationSettings = GenerationSettings(), *,
           context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
           cancel: threading.Event | None = None) -> Iterator[str]:
    """`generate`'s streaming mode as an iterator: the text of one prompt's generation piece by
    piece, and the Generation as the generator's return value. Generation runs in a thread of its
    own; `context`: entered around it in that thread (e.g. autocast); `cancel`: see generate."""
    import queue

    pieces: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}
    done = object()

    def run() -> None:
        try:
            with context():
                result["generation"] = generate(model, tokenizer, [prompt], settings, batch_size=1,
                                                on_piece=pieces.put, cancel=cancel)[0]
        except BaseException as e:  # handed to the consumer, which raises it
            result["error"] = e
        finally:
            pieces.put(done)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (piece := pieces.get()) is not done:
        yield piece
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["generation"]
