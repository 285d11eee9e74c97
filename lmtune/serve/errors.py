"""Every error the server answers, in OpenAI's shape: {"error": {"message", "type", "param", "code"}},
with a one-line message. Nothing a client sends escapes as a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..core.errors import LmtuneError

log = logging.getLogger("lmtune.serve")

# status -> (type, code)
KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "too_large"),
    422: ("invalid_request_error", "invalid_value"),
    500: ("server_error", "internal_error"),
    503: ("overloaded_error", "overloaded"),
}


class ApiError(Exception):
    """An answer other than 200: its status, one line of message, and the request field it is about."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind, default_code = KINDS.get(status, ("invalid_request_error", "error"))
    one_line = " ".join(message.split())
    return {"error": {"message": one_line, "type": kind, "param": param, "code": code or default_code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_parts(loc: tuple[Any, ...]) -> tuple[list[Any], str | None]:
    """The field path of pydantic's ('body', 'messages', 0, 'role'), and the union member that an
    error is about ('str' in ('body', 'prompt', 'str')), if any."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    for i, part in enumerate(parts):
        if isinstance(part, str) and (part in TYPE_NAMES or not part.isidentifier()):
            return parts[:i], part
    return parts, None


def _field(parts: list[Any]) -> str:
    """`messages[0].role` from ['messages', 0, 'role']."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_error(exc: RequestValidationError, content_type: str = "application/json") -> JSONResponse:
    """400 for a body that is not JSON at all; 422 naming the first wrong field otherwise."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the request body is not valid JSON", code="invalid_json")
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    parts, member = _field_parts(tuple(first.get("loc", ())))
    where = _field(parts)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if member is not None:  # a value that fits none of a union's types: name them all
        same = [e for e in errors if _field_parts(tuple(e.get("loc", ())))[0] == parts]
        members = list(dict.fromkeys(m for e in same if (m := _field_parts(tuple(e.get("loc", ())))[1])))
        message = "expected " + " or ".join(members)
        errors = [e for e in errors if e not in same] + [first]
    elif first.get("type") == "missing":
        message = "required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    elif where == "body" and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        message = "expected a JSON object"
        if "json" not in content_type:
            message += f" (sent as {content_type or 'no content type'}: send the header Content-Type: application/json)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return error_response(422, f"{where}: {message}{more}", param=where)


def install(app: FastAPI) -> None:
    """Turn every kind of failure into the OpenAI error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, request.headers.get("content-type", "application/json"))

    @app.exception_handler(LmtuneError)
    async def _lmtune(request: Request, exc: LmtuneError) -> JSONResponse:
        return error_response(400, "; ".join(exc.problems) or "bad input")

    async def _http(request: Request, exc: Exception) -> JSONResponse:
        """Starlette's own HTTP errors (no such route, wrong method, an unreadable body)."""
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "")
        message = detail if isinstance(detail, str) and detail else str(exc)
        if status == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            message = f"{request.url.path} does not take {request.method}"
        return error_response(status, message, headers=getattr(exc, "headers", None))

    for status in KINDS:  # by status: the handler takes Starlette's HTTPException of that status
        if status != 500:  # (500 is the last-resort handler below)
            app.add_exception_handler(status, _http)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server logged it")
