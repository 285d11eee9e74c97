"""Running the app under uvicorn: bind first (port 0 picks a free port), say where, then serve."""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..core.errors import LmtuneError
from .options import ServeOptions

LOOPBACK = {"127.0.0.1", "::1"}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line LmtuneError (port taken, no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LmtuneError(f"--host: cannot resolve {host!r} ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise LmtuneError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, options: ServeOptions, *, announce: str = "", name: str = "serve") -> None:
    """Serve until interrupted (Ctrl-C), with lmtune's own access log instead of uvicorn's. `name`:
    the command, as the lines it prints call it."""
    import uvicorn

    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"lmtune {name}: {announce}on http://{shown}:{port} (docs at /docs)", file=sys.stderr, flush=True)
    if options.api_key is None and host not in LOOPBACK:
        print(f"lmtune {name}: warning: listening on {host} without --api-key: anyone who reaches it can use "
              f"{'the model' if name == 'serve' else 'it'}",
              file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
