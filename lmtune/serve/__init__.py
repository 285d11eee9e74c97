"""`lmtune serve`: an HTTP server for a finished run or a model, with OpenAI-compatible endpoints.

`create_app(target_or_model, ServeOptions(...))` builds the FastAPI app; `serve(app, options)` runs
it under uvicorn. See app.py for the routes and batching.py for how requests share model calls."""

from __future__ import annotations

from .app import create_app
from .options import ServeOptions
from .server import serve

__all__ = ["create_app", "ServeOptions", "serve"]
