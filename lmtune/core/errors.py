"""The one exception type for problems in what the user gave us (config, data, model names, run folders).

The command line prints it as one clear line (one per problem) and exits with status 2. Anything
else that escapes is a bug and keeps its traceback.

A message that tells how to go on names the option the caller has: `option("--overwrite",
"overwrite=True")` is the flag on the command line (inside `command_line()`) and the keyword
argument in a Python call.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_ON_COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("lmtune_on_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Error messages raised within name command-line flags (lmtune.cli.main runs every command in it)."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)


def option(flag: str, argument: str) -> str:
    """How a message names an option: `flag` (`--overwrite`) on the command line, else `argument`
    (`overwrite=True`), as a Python caller writes it."""
    return flag if _ON_COMMAND_LINE.get() else argument


class LmtuneError(Exception):
    """A problem with the user's input. `problems` holds one line per problem found."""

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


class RunStopped(Exception):
    """A training run stopped cleanly when asked (its folder's stop.request, or SIGTERM): its last
    checkpoint is at `step`, and `lmtune train RUN --resume` goes on from there. Not an error: the
    command line exits with status 3."""

    def __init__(self, message: str, step: int) -> None:
        self.step = step
        super().__init__(message)


def one_line(e: BaseException) -> str:
    """An error as one line: an LmtuneError's problems, else the exception's type and first line."""
    if isinstance(e, LmtuneError):
        return "; ".join(e.problems)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
