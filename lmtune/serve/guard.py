"""What every request passes before a route sees it, as one plain ASGI middleware: the API key
(on /v1/* only), the body-size limit, the JSON nesting limit, and one access-log line per request
(method, path, status, ms).

Plain ASGI rather than FastAPI's `@app.middleware("http")`, so that a streamed response goes through
untouched and still hears when its client disconnects.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from .errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]

access_log = logging.getLogger("lmtune.serve.access")

# No request of the API nests deeper than a few levels. A deeper body gets a 400 here, whatever the
# JSON parser's own limit (Python's recursion limit, which libraries such as torch.compile raise).
MAX_JSON_DEPTH = 64
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class Guard:
    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, protected: str = "/v1",
                 query_key: bool = False) -> None:
        """`protected`: the path (and those below it) that needs the key; `query_key`: the key may
        also come as ?key=KEY (a browser's EventSource cannot set headers)."""
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.protected = protected
        self.query_key = query_key

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                body, refusal = await self._read_body(scope, receive)
            if refusal is None and nesting(body) > MAX_JSON_DEPTH:
                refusal = 400, f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep", {}
            if refusal is not None:
                await _answer(send_and_note, *refusal)
                return
            await self.app(scope, _replay(body, receive), send_and_note)
        finally:
            ms = (time.perf_counter() - start) * 1000
            client = (scope.get("client") or ("-",))[0]
            access_log.info("%s %s %s %d %.1fms", client, scope["method"], scope["path"], status or 500, ms)

    def _refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        """401 for the protected paths without the key; 413 for a declared body over the limit."""
        path = scope["path"]
        if self.api_key is not None and (path == self.protected or path.startswith(self.protected + "/")):
            given = _header(scope, b"authorization")
            scheme, _, key = given.partition(b" ")
            if self.query_key and not given:
                given = key = _query_value(scope, "key").encode()
                scheme = b"bearer"
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key):
                why = "missing" if not given else "wrong"
                how = "the header Authorization: Bearer KEY" + (" or ?key=KEY" if self.query_key else "")
                return 401, f"{why} API key: send {how}", {"WWW-Authenticate": "Bearer"}
        length = _header(scope, b"content-length")
        if length:
            if not length.isdigit():
                return 400, "the Content-Length header is not a number", {}
            if int(length) > self.max_body_bytes:
                return 413, f"the request body has {int(length)} bytes; at most {self.max_body_bytes} (--max-body-bytes)", {}
        return None

    async def _read_body(self, scope: Scope, receive: Any) -> tuple[bytes, tuple[int, str, dict[str, str]] | None]:
        """The whole body, or a 413 as soon as it passes the limit (a chunked body declares no length)."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "the client disconnected", {})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", (413, f"the request body has more than {self.max_body_bytes} bytes (--max-body-bytes)", {})
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), None


def nesting(body: bytes) -> int:
    """How deep a JSON body's arrays and objects nest (brackets inside strings aside)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # (too few brackets to pass the limit: every ordinary request)
    depth = deepest = 0
    for bracket in _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return b""


def _query_value(scope: Scope, name: str) -> str:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[-1] if values else ""


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that gives the body already read, then what the client sends next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Any, status: int, message: str, headers: dict[str, str]) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
