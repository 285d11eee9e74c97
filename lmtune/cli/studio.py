"""lmtune studio: a local web app over a runs folder: the runs, their curves and diagnosis, a form
that validates, plans and starts runs (queued, one at a time), stop and resume, chat with a
generative run beside its base (docs/studio.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.errors import LmtuneError
from ..infer.saved_run import did_you_mean
from ..serve.options import ServeOptions
from ..serve.server import serve


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("studio", help="a local web app over the runs folder: runs, curves, a run form, queue, chat")
    s.add_argument("--runs", default="runs", help="the folder that holds the run folders (default: runs)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=7861, help="0: any free port (printed at start)")
    s.add_argument("--api-key", default=None,
                   help="require Authorization: Bearer KEY (or ?key=KEY) on /api/* (or set LMTUNE_API_KEY)")
    s.add_argument("--parallel", type=int, default=1, help="runs at a time; the others wait in the queue")
    s.set_defaults(func=cmd_studio)


def cmd_studio(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs)
    if not runs_dir.is_dir():
        what = "is a file" if runs_dir.exists() else "does not exist"
        raise LmtuneError(f"--runs: {runs_dir} {what} (expected the folder that holds your run folders)"
                          f"{did_you_mean(runs_dir)}")
    if args.parallel < 1:
        raise LmtuneError(f"--parallel: must be at least 1, got {args.parallel}")
    options = ServeOptions(host=args.host, port=args.port,
                           api_key=args.api_key or os.environ.get("LMTUNE_API_KEY") or None).check()
    from ..studio.app import StudioOptions, create_studio_app

    app = create_studio_app(runs_dir, StudioOptions(api_key=options.api_key, parallel=args.parallel))
    serve(app, options, announce=f"{runs_dir}/ ", name="studio")
    return 0
