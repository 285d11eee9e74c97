"""The work the worker thread does: each function turns a list of items into one result per item.
Everything that touches the model or its tokenizer runs here, in that one thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..core.errors import LmtuneError
from ..tasks.decoding import Generation, GenerationSettings
from .streaming import Done, EventFeed, Piece, Ready


@dataclass(frozen=True)
class Prompt:
    text: str
    where: str  # how the error messages name it: "prompt 2", "messages"


def predict(predictor: Any, inputs: list[Any]) -> list[dict[str, Any]]:
    return predictor.predict_rows(inputs)


def context_size(generator: Any) -> int | None:
    config = getattr(generator.model, "config", None)
    size = getattr(config, "max_position_embeddings", None)
    return size if isinstance(size, int) and size > 0 else None


def check_prompts(generator: Any, prompts: list[Prompt], max_tokens: int) -> None:
    """Each prompt has tokens and leaves room for max_tokens in the model's context (a longer
    one would fail deep in the model, or take the machine's memory)."""
    context = context_size(generator)
    for p in dict.fromkeys(prompts):  # n copies of a prompt: counted once
        n = len(generator.tokenizer(p.text, add_special_tokens=False)["input_ids"])
        if n == 0:
            raise LmtuneError(f"{p.where}: empty prompt")
        if context is not None and n + max_tokens > context:
            raise LmtuneError(f"{p.where}: {n} prompt tokens and max_tokens {max_tokens} exceed the model's "
                              f"context of {context} tokens")


def generate(generator: Any, settings: GenerationSettings, batch_size: int, prompts: list[Prompt]) -> list[Generation]:
    check_prompts(generator, prompts, settings.max_new_tokens)
    # the texts as they are: a completion's prompt by OpenAI's convention, a chat's already templated
    return generator.generate_batch([p.text for p in prompts], settings, raw=True, batch_size=batch_size)


class Trimmed:
    """The pieces of a text as they come, without its leading and trailing whitespace, so that they
    join to the same text as a Generation's (which is stripped)."""

    def __init__(self) -> None:
        self.sent = ""
        self._held = ""  # whitespace that is sent only if more text follows

    def feed(self, piece: str) -> str:
        text = self._held + piece
        if not self.sent:
            text = text.lstrip()
        body = text.rstrip()
        self._held = text[len(body):]
        self.sent += body
        return body

    def finish(self, final: str) -> str:
        """What the finished text has beyond what was sent (normally nothing)."""
        if final.startswith(self.sent) and len(final) > len(self.sent):
            rest, self.sent = final[len(self.sent):], final
            return rest
        return ""


def stream(generator: Any, settings: GenerationSettings, feed: EventFeed,
           cancelled: threading.Event, prompts: list[Prompt]) -> list[Generation | None]:
    """Stream each prompt's generation in turn into `feed`; stops generating when `cancelled` is set
    (the client went away). Returns the Generations (None for those not run)."""
    check_prompts(generator, prompts, settings.max_new_tokens)
    feed.put(Ready())
    out: list[Generation | None] = []
    for index, prompt in enumerate(prompts):
        if cancelled.is_set():
            break
        trimmed = Trimmed()
        pieces = generator.stream(prompt.text, settings, cancel=cancelled, raw=True)
        while True:
            try:
                piece = next(pieces)
            except StopIteration as stop:
                generation: Generation = stop.value
                break
            if cancelled.is_set():
                continue  # nobody listens: generate ends within a token (cancel); drain it
            text = trimmed.feed(piece)
            if text:
                feed.put(Piece(index, text))
        rest = trimmed.finish(generation.text)
        if rest:
            feed.put(Piece(index, rest))
        feed.put(Done(index, generation))
        out.append(generation)
    return out + [None] * (len(prompts) - len(out))
