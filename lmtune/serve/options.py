"""The settings of `lmtune serve`: where it listens, who may call it, how it batches and what it accepts."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..core.errors import LmtuneError


@dataclass(frozen=True)
class ServeOptions:
    """Every field is a flag of `lmtune serve` (max_batch is --max-batch)."""

    host: str = "127.0.0.1"  # loopback only unless asked otherwise
    port: int = 8000  # 0: a free port, printed at start
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer KEY`
    max_batch: int = 16  # inputs gathered into one model call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for more
    max_queue: int = 64  # requests waiting for the model; more get 503 with Retry-After
    max_inputs: int = 256  # inputs (or prompts × n) in one request; more get 413
    max_body_bytes: int = 1_000_000  # a longer request body gets 413
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for (422 above)

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.port <= 65535:
            out.append(f"--port: must be 0 (any free port) to 65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            out.append("--api-key: empty; give a key or leave the flag out")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("max_batch", "max_queue", "max_inputs", "max_body_bytes", "max_tokens_limit") and value < 1:
                out.append(f"--{f.name.replace('_', '-')}: must be at least 1, got {value}")
        if self.max_wait_ms < 0:
            out.append(f"--max-wait-ms: must be 0 or more, got {self.max_wait_ms}")
        return out

    def check(self) -> "ServeOptions":
        problems = self.problems()
        if problems:
            raise LmtuneError(*problems)
        return self
