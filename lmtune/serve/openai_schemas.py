"""Request bodies of the OpenAI-compatible endpoints (/v1/chat/completions, /v1/completions).

Strict like the rest of lmtune: a misspelled field or a wrong type is a 422 that names it. The
OpenAI fields that lmtune cannot honour are accepted only at their neutral values (penalties 0, no
logprobs), so that a client leaving them at their defaults works and one relying on them hears so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

STOP_LIMIT = 16  # stop strings per request
STOP_CHARS = 200  # characters per stop string


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = Field(False, description="a last chunk with the token counts and no choices")


class SamplingFields(BaseModel):
    """What both endpoints share. temperature absent means 1.0 (OpenAI's default); 0 is greedy."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="the served model's name; absent: the served model")
    max_tokens: int | None = Field(None, ge=1, description="at most this many new tokens (default 128, at most --max-tokens-limit)")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; absent: 1.0")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="lmtune extra: sample from the k likeliest tokens (0: all)")
    repetition_penalty: float = Field(1.0, gt=0, description="lmtune extra: >1 discourages repeats")
    stop: str | list[str] | None = Field(None, description="end the text before any of these strings")
    n: int = Field(1, ge=1, description="choices per prompt")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="makes sampling reproducible")
    stream: bool = Field(False, description="server-sent events, as OpenAI sends them")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted and ignored")
    presence_penalty: float = Field(0.0, description="only 0 (not supported)")
    frequency_penalty: float = Field(0.0, description="only 0 (not supported)")
    logprobs: bool | int | None = Field(None, description="not supported: leave it out")

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > STOP_LIMIT:
            raise ValueError(f"at most {STOP_LIMIT} stop strings, got {len(stops)}")
        if any(not s or len(s) > STOP_CHARS for s in stops):
            raise ValueError(f"stop strings must be non-empty and at most {STOP_CHARS} characters")
        return stop

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("not supported; use repetition_penalty")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("not supported")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, description="accepted and ignored")

    def as_dict(self) -> dict[str, str]:
        """{role, content} for the chat template (a developer message is a system message)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(description="the conversation so far; the model writes the next assistant turn")
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="a text or a list of texts, each a user message in the model's chat "
                                                "template (continued as it is with raw, or when the model has none)")
    raw: bool = Field(False, description="continue each prompt as it is, without the chat template")
