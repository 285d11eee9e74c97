"""`lmtune serve`: an HTTP server for a finished run or a model, with OpenAI-compatible endpoints.

`create_app(target_or_model, ServeOptions(...))` builds the FastAPI app; `serve(app, options)` runs
it under uvicorn. See app.py for the routes and batching.py for how requests share model calls."""

from __future__ import annotations

from typing import Any

from .options import ServeOptions
from .server import serve


def __getattr__(name: str) -> Any:
    # the app and the server (FastAPI, uvicorn, the model's libraries) are imported when first used,
    # so that `lmtune serve` checks its options and its target first
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["create_app", "ServeOptions", "serve"]
