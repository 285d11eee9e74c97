"""The FastAPI app of `lmtune studio`: `create_studio_app(runs_dir, options)` (usable in tests without
uvicorn). The page at / (static files under /static/), the JSON API under /api/ (docs/studio.md),
server-sent events that poll the run folders' files."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..core import __version__
from ..core.errors import LmtuneError
from ..core.rundir import RunDir
from ..serve.errors import error_response
from ..serve.guard import Guard
from ..serve.streaming import EventStreamResponse, sse
from ..tasks.run_config import output_dir_of
from . import chat, forms, runs
from .jobs import Jobs

STATIC = Path(__file__).with_name("static")
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class StudioOptions:
    """The flags of `lmtune studio` that the app reads."""

    api_key: str | None = None  # when set, /api/* needs `Authorization: Bearer KEY` or ?key=KEY
    parallel: int = 1  # runs at a time; the others wait in the queue
    max_body_bytes: int = 1_000_000
    poll_seconds: float = POLL_SECONDS


def create_studio_app(runs_dir: str | Path, options: StudioOptions | None = None) -> FastAPI:
    """The studio over a runs folder (which must exist). The queue's thread starts with the app and
    stops with it; runs started stay running."""
    options = options or StudioOptions()
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise LmtuneError(f"--runs: {runs_dir} is not a folder; create it or give the folder that holds your runs")
    jobs = Jobs(runs_dir, options.parallel)
    models = chat.Models()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        yield
        jobs.close()

    app = FastAPI(title="lmtune studio", version=__version__, lifespan=lifespan)
    app.state.jobs = jobs
    app.state.runs_dir = runs_dir

    @app.exception_handler(LmtuneError)
    async def lmtune_error(request: Request, e: LmtuneError) -> JSONResponse:
        return error_response(404 if isinstance(e, runs.NoSuchRun) else 400, "; ".join(e.problems))

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(_run_routes(runs_dir, jobs))
    app.include_router(_form_routes())
    app.include_router(_event_routes(runs_dir, jobs, options.poll_seconds))
    app.include_router(_chat_routes(runs_dir, models))
    app.add_middleware(Guard, api_key=options.api_key, max_body_bytes=options.max_body_bytes, protected="/api",
                       query_key=True)
    return app


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise LmtuneError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise LmtuneError("the request body: expected a JSON object")
    return body


def _count(body: dict[str, Any], key: str, default: int, least: int, what: str) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise LmtuneError(f"{key}: expected {what}, at least {least}, got {value!r}")
    return value


def _listing(runs_dir: Path, jobs: Jobs) -> dict[str, Any]:
    return {"runs": runs.list_runs(runs_dir), "queue": jobs.queue()}


def _run_routes(runs_dir: Path, jobs: Jobs) -> APIRouter:
    r = APIRouter(prefix="/api")

    @r.get("/runs")
    def list_runs() -> dict[str, Any]:
        return _listing(runs_dir, jobs)

    @r.get("/runs/{name}")
    def run_details(name: str) -> dict[str, Any]:
        return runs.run_details(runs_dir, name)

    @r.post("/runs", status_code=201)
    async def launch(request: Request) -> Any:
        config = (await _body(request)).get("config")
        cfg, problems = await run_in_threadpool(forms.check, config)
        if cfg is None:
            return JSONResponse({"problems": problems}, status_code=422)
        raw = dict(config)
        name = Path(output_dir_of(None, dict(raw))).name
        raw["output_dir"] = str(runs_dir / name)
        busy = jobs.find(name) is not None
        try:
            RunDir(runs_dir / name).check(resume=False, overwrite=False)
        except LmtuneError as e:
            busy, why = True, "; ".join(e.problems)
        else:
            why = f"{name} is already in the queue"
        if busy:
            return error_response(409, why)
        state = jobs.submit(name, "train", yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        return JSONResponse({"name": name, "state": state}, status_code=201)

    @r.post("/runs/{name}/stop", status_code=202)
    def stop(name: str) -> dict[str, Any]:
        if jobs.find(name) is None:
            runs.folder_of(runs_dir, name)  # (404 for a name that is neither queued nor a run)
        jobs.stop(name)
        return {"name": name}

    @r.post("/runs/{name}/resume", status_code=202)
    def resume(name: str) -> Any:
        folder = runs.folder_of(runs_dir, name)
        jobs.tick()  # (a run that has just stopped leaves the queue first)
        status, resumable, _ = runs.run_status(folder)
        if jobs.find(name) is not None or not resumable:
            return error_response(409, f"{name} is {status}: nothing to resume" if jobs.find(name) is None
                                  else f"{name} is already in the queue")
        return {"name": name, "state": jobs.submit(name, "resume")}

    return r


def _form_routes() -> APIRouter:
    r = APIRouter(prefix="/api")

    @r.get("/schema")
    def schema(task: str | None = None) -> dict[str, Any]:
        return forms.schema(task)

    @r.post("/validate")
    async def validate(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(forms.validate_config, (await _body(request)).get("config"))

    @r.post("/plan")
    async def plan(request: Request) -> dict[str, Any]:
        body = await _body(request)
        probe = _count(body, "probe", 3, 0, "a number of steps")
        return await run_in_threadpool(forms.plan_text, body.get("config"), probe)

    @r.post("/preview")
    async def preview(request: Request) -> dict[str, Any]:
        body = await _body(request)
        rows = _count(body, "rows", 5, 1, "a number of rows")
        return await run_in_threadpool(forms.preview, body.get("config"), rows)

    return r


def _fingerprint(runs_dir: Path, jobs: Jobs) -> tuple[Any, ...]:
    """What changes when the list of runs or the queue does, or a search's or compare's details (a new
    trial, a row of trials.csv, one of its runs' status): cheap to read twice a second."""
    seen: list[Any] = [jobs.changes]
    for folder in sorted(runs_dir.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                seen.append(runs.change_mark(folder))
            except OSError:  # (a folder removed while read)
                seen.append((folder.name, None))
    return tuple(seen)


async def _until_disconnected(request: Request, poll: float, step: Any) -> AsyncIterator[str]:
    """Call `step()` (a list of events to send) every `poll` seconds until the client goes away."""
    while not await request.is_disconnected():
        for event in await run_in_threadpool(step):
            yield event
        await asyncio.sleep(poll)


def _event_routes(runs_dir: Path, jobs: Jobs, poll: float) -> APIRouter:
    r = APIRouter(prefix="/api")

    @r.get("/events")
    async def events(request: Request) -> EventStreamResponse:
        last: list[Any] = [None]

        def step() -> list[str]:
            now = _fingerprint(runs_dir, jobs)
            changed, last[0] = now != last[0], now
            return [sse({"type": "runs"})] if changed else []

        return EventStreamResponse(_until_disconnected(request, poll, step), on_close=lambda: None)

    @r.get("/runs/{name}/events")
    async def run_events(request: Request, name: str) -> EventStreamResponse:
        # (a run just launched has its folder once its process has started)
        folder = runs_dir / name if jobs.find(name) is not None else runs.folder_of(runs_dir, name)
        start = request.query_params.get("from", "0")
        if not start.isdigit():
            raise LmtuneError(f"from: expected the history line to start at (0, 1, ...), got {start!r}")
        state: dict[str, Any] = {"line": int(start), "status": None, "log": _log_size(runs_dir, name)}

        def step() -> list[str]:
            return _run_step(runs_dir, name, folder, state)

        return EventStreamResponse(_until_disconnected(request, poll, step), on_close=lambda: None)

    return r


def _log_size(runs_dir: Path, name: str) -> int:
    path = runs.log_path(runs_dir, name)
    return path.stat().st_size if path.is_file() else 0


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _run_step(runs_dir: Path, name: str, folder: Path, state: dict[str, Any]) -> list[str]:
    """The events of one look at a run's files: new history records, a new status, new log text."""
    records, state["line"] = runs.history_from(folder, state["line"])
    out = [_event("history", r) for r in records]
    try:
        status = runs.run_status(folder)[0]
    except LmtuneError:
        status = "unreadable"
    if status != state["status"]:
        state["status"] = status
        out.append(_event("status", {"status": status}))
    path = runs.log_path(runs_dir, name)
    size = _log_size(runs_dir, name)
    if size < state["log"]:
        state["log"] = 0  # (a new log)
    if size > state["log"]:
        with open(path, "rb") as f:
            f.seek(state["log"])
            text = f.read(size - state["log"])
        state["log"] = size
        out.append(_event("log", {"text": text.decode("utf-8", errors="replace")}))
    return out


def _chat_routes(runs_dir: Path, models: chat.Models) -> APIRouter:
    r = APIRouter(prefix="/api")

    @r.post("/runs/{name}/chat")
    async def chat_stream(request: Request, name: str) -> Any:
        body = await _body(request)
        folder = runs.folder_of(runs_dir, name)
        settings, messages = chat.settings_of(body), chat.messages_of(body)
        details = await run_in_threadpool(runs.run_details, runs_dir, name)
        if not details.get("chat"):
            return error_response(409, f"{name}: chat needs a finished run of a generative task ({details['status']} "
                                  f"{details.get('task')} run)")
        generator = await run_in_threadpool(models.get, folder, str(body.get("side", "tuned")))
        cancel = threading.Event()
        return EventStreamResponse(_chat_events(chat.pieces(generator, messages, settings, cancel)),
                                   on_close=cancel.set)

    return r


async def _chat_events(pieces: Any) -> AsyncIterator[str]:
    started, done = time.perf_counter(), object()

    def next_piece() -> Any:
        try:
            return next(pieces)
        except StopIteration as end:
            return (done, end.value)

    while True:
        try:
            piece = await run_in_threadpool(next_piece)
        except LmtuneError as e:
            yield sse({"error": "; ".join(e.problems)})
            return
        if isinstance(piece, tuple) and piece[0] is done:
            generation = piece[1]
            tokens = generation.completion_tokens if generation is not None else 0
            yield sse({"done": True, "tokens": tokens, "seconds": round(time.perf_counter() - started, 3)})
            return
        yield sse({"text": piece})
