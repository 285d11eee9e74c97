"""Generated text on its way from the worker thread to a client, as server-sent events.

The worker puts events into an `EventFeed`; the response reads them on the event loop and writes
`data: {chunk}\\n\\n` lines, then `data: [DONE]\\n\\n`. When the client disconnects, the response is
cancelled; its `on_close` then sets the stream's `cancelled` event, which stops the generation (the
`cancel` of Generator.stream) and frees the worker for the next request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from ..core.errors import LmtuneError
from ..tasks.decoding import Generation
from .errors import error_body


@dataclass(frozen=True)
class Ready:
    """The prompts passed their checks; text follows."""


@dataclass(frozen=True)
class Piece:
    index: int
    text: str


@dataclass(frozen=True)
class Done:
    index: int
    generation: Generation


@dataclass(frozen=True)
class End:
    error: BaseException | None = None


Event = Ready | Piece | Done | End


class EventFeed:
    """Events from the worker thread to one response on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        """Thread-safe; a no-op once the event loop has closed (nobody listens then)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            pass

    def end_with(self, future: Future) -> None:
        """A done-callback for the stream's job: the last event, with the job's error if any."""
        if future.cancelled():
            self.put(End(LmtuneError("the request was cancelled")))
        else:
            self.put(End(future.exception()))

    async def get(self) -> Event:
        return await self._queue.get()


def sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def error_message(error: BaseException) -> str:
    if isinstance(error, LmtuneError):
        return "; ".join(error.problems)
    return f"internal error ({type(error).__name__})"


async def events(feed: EventFeed, *, on_piece: Callable[[Piece], dict[str, Any]],
                 on_done: Callable[[Done], dict[str, Any]], on_start: Callable[[int], dict[str, Any] | None],
                 on_finish: Callable[[list[Generation]], dict[str, Any] | None]) -> AsyncIterator[str]:
    """The event stream of one response: a chunk per piece and per finished choice, an optional
    last chunk (usage), then [DONE]; an error mid-way is an `error` event, as OpenAI sends it."""
    started: set[int] = set()
    finished: list[Generation] = []
    while True:
        event = await feed.get()
        if isinstance(event, (Piece, Done)) and event.index not in started:
            started.add(event.index)
            first = on_start(event.index)
            if first is not None:
                yield sse(first)
        if isinstance(event, Piece):
            yield sse(on_piece(event))
        elif isinstance(event, Done):
            finished.append(event.generation)
            yield sse(on_done(event))
        elif isinstance(event, End):
            if event.error is not None:
                yield sse(error_body(500 if not isinstance(event.error, LmtuneError) else 400, error_message(event.error)))
                return
            break
    last = on_finish(finished)
    if last is not None:
        yield sse(last)
    yield sse("[DONE]")


class EventStreamResponse(StreamingResponse):
    """Server-sent events that call `on_close` however the response ends: sent to the end, failed,
    or cancelled because the client went away (even before the first event)."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
