"""Chat with a generative run beside its base model: both loaded the way lmtune.load loads them
(the tuned one with its LoRA adapters merged), kept for the next message (the models of at most
MAX_RUNS runs at a time), and the answer streamed piece by piece."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import LmtuneError
from ..infer.generation import GenerationSettings, Generator
from .runs import read_config

MAX_RUNS = 2
SIDES = ("base", "tuned")


class Models:
    """The Generators of the runs chatted with last, by run folder and side."""

    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self.max_runs = max_runs
        self._loaded: OrderedDict[str, dict[str, Generator]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folder: Path, side: str) -> Generator:
        """The run's tuned model or its base (the config's model); loads it the first time (seconds)."""
        if side not in SIDES:
            raise LmtuneError(f"side: expected base or tuned, got {side!r}")
        key = str(folder.resolve())
        with self._lock:
            sides = self._loaded.setdefault(key, {})
            self._loaded.move_to_end(key)
            while len(self._loaded) > self.max_runs:
                self._loaded.popitem(last=False)
            if side not in sides:
                target = str(folder) if side == "tuned" else str(read_config(folder).get("model"))
                sides[side] = Generator.load(target)
            return sides[side]


def settings_of(body: dict[str, Any]) -> GenerationSettings:
    """The generation settings a chat request asks for; LmtuneError listing every bad one."""
    try:
        settings = GenerationSettings(max_new_tokens=int(body.get("max_new_tokens", 128)),
                                      temperature=float(body.get("temperature", 0.0)),
                                      top_p=float(body.get("top_p", 1.0)))
    except (TypeError, ValueError):
        raise LmtuneError("max_new_tokens, temperature, top_p: expected numbers") from None
    problems = settings.problems()
    if problems:
        raise LmtuneError(*problems)
    return settings


def messages_of(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
        raise LmtuneError("messages: expected a list of {role, content}, at least one")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def pieces(generator: Generator, messages: list[dict[str, str]], settings: GenerationSettings,
           cancel: threading.Event) -> Iterator[str]:
    """The answer's text piece by piece; the generator returns the Generation."""
    prompt = generator.chat_prompt(messages) if getattr(generator.tokenizer, "chat_template", None) else \
        "\n".join(m["content"] for m in messages)
    return generator.stream(prompt, settings, cancel, raw=True)
