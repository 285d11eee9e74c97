"""The FastAPI app of `lmtune serve`: `create_app(target_or_model, options)` (usable in tests without
uvicorn). Routes: GET / (the playground page), /health, /v1/models; POST /v1/predict for encoder
runs; POST /v1/chat/completions and /v1/completions for generative ones; OpenAPI docs at /docs."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse

from ..core import __version__
from . import errors, openai_routes, predict_routes
from .batching import MicroBatcher
from .guard import Guard, access_log
from .options import ServeOptions
from .served import ServeContext, Served

PLAYGROUND = Path(__file__).with_name("playground.html")


def _log_to_stderr() -> None:
    """One access line per request on stderr (once, however many apps are made)."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)


def create_app(target_or_model: Any, options: ServeOptions | None = None, *, name: str | None = None) -> FastAPI:
    """An app serving a run folder, a bundled model name or a model folder (loaded here), or a
    Predictor / Generator already loaded. `name`: what clients call the model (default: the folder's
    base name). Raises LmtuneError for a target that cannot be served. The worker thread starts here
    and stops when the app shuts down."""
    options = (options or ServeOptions()).check()
    served = Served.of(target_or_model, name)
    batcher = MicroBatcher(max_batch=options.max_batch, max_wait_s=options.max_wait_ms / 1000, max_queue=options.max_queue)
    ctx = ServeContext(served, options, batcher)
    _log_to_stderr()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title=f"lmtune serve: {served.name}", version=__version__, lifespan=lifespan,
                  description=f"{served.name} ({served.task}), served by lmtune. Errors come in OpenAI's shape.")
    app.state.ctx = ctx
    errors.install(app)

    @app.get("/", include_in_schema=False)
    async def playground() -> Any:
        if PLAYGROUND.is_file():
            return FileResponse(PLAYGROUND, media_type="text/html")
        return HTMLResponse("<p>lmtune serve: the playground page (lmtune/serve/playground.html) is not installed; "
                            "the API is at <a href=\"/docs\">/docs</a>.</p>")

    @app.get("/health", summary="liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", summary="the served model (OpenAI's list shape, with task and labels)")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [served.card()]}

    @app.get("/v1/models/{model_id:path}", summary="one model")
    async def get_model(model_id: str) -> dict[str, Any]:
        served.check_name(model_id)
        return served.card()

    app.include_router(predict_routes.router(ctx))
    app.include_router(openai_routes.router(ctx))
    app.add_middleware(Guard, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
    return app

