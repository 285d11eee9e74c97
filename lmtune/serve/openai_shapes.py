"""Response bodies in OpenAI's shapes. Chat and plain completions differ only in a few names and in
how a choice holds its text; a `Flavour` says which, so one code path serves both endpoints."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..tasks.decoding import Generation


@dataclass(frozen=True)
class Flavour:
    object: str  # of the whole response
    chunk_object: str  # of each streamed chunk
    id_prefix: str
    choice: Callable[[int, Generation], dict[str, Any]]  # a finished choice
    first_delta: Callable[[int], dict[str, Any] | None]  # what a streamed choice starts with
    piece: Callable[[int, str], dict[str, Any]]  # a streamed piece of text
    last_delta: Callable[[int, str], dict[str, Any]]  # a streamed choice's end, with its finish_reason


CHAT = Flavour(
    object="chat.completion",
    chunk_object="chat.completion.chunk",
    id_prefix="chatcmpl-",
    choice=lambda i, g: {"index": i, "message": {"role": "assistant", "content": g.text},
                         "finish_reason": g.finish_reason, "logprobs": None},
    first_delta=lambda i: {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None},
    piece=lambda i, text: {"index": i, "delta": {"content": text}, "finish_reason": None, "logprobs": None},
    last_delta=lambda i, reason: {"index": i, "delta": {}, "finish_reason": reason, "logprobs": None},
)

COMPLETION = Flavour(
    object="text_completion",
    chunk_object="text_completion",
    id_prefix="cmpl-",
    choice=lambda i, g: {"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None},
    first_delta=lambda i: None,
    piece=lambda i, text: {"index": i, "text": text, "finish_reason": None, "logprobs": None},
    last_delta=lambda i, reason: {"index": i, "text": "", "finish_reason": reason, "logprobs": None},
)


def usage(generations: list[Generation], prompt_tokens: int) -> dict[str, int]:
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def prompt_tokens(generations: list[Generation | None], n: int) -> int:
    """The prompt tokens of a request: each prompt once, however many choices it had."""
    return sum(g.prompt_tokens for g in generations[::n] if g is not None)


@dataclass(frozen=True)
class Reply:
    """The id, time and model that every body and chunk of one response repeats."""

    flavour: Flavour
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, flavour: Flavour, model: str) -> "Reply":
        return cls(flavour, model, flavour.id_prefix + uuid.uuid4().hex[:24], int(time.time()))

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model, "system_fingerprint": None}

    def body(self, generations: list[Generation], n: int) -> dict[str, Any]:
        return {**self._head(self.flavour.object),
                "choices": [self.flavour.choice(i, g) for i, g in enumerate(generations)],
                "usage": usage(generations, prompt_tokens(generations, n))}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None,
              with_usage: bool = False) -> dict[str, Any]:
        out = {**self._head(self.flavour.chunk_object), "choices": choices}
        if with_usage:  # asked for: null in every chunk but the last (OpenAI's stream_options)
            out["usage"] = usage
        return out
