"""The one place that maps errors to HTTP responses.

Every error body is JSON: ``error`` (a stable code), ``message``, and where it helps
``field`` and ``allowed``. Domain errors come from ``pricing.errors`` and
``ledger.errors``, with the status ``api.status`` gives each; request validation,
authentication and routing errors are shaped the same way here, so a client parses one
error format.
"""

from __future__ import annotations

import ast
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import jsonin
from api.requestids import log_fields, request_id
from api.schemas import PATTERN_TEXTS, ErrorPublic, InsufficientCreditsPublic
from api.status import status_of
from ledger.db import first_line, is_file_replaced, is_lock_timeout
from ledger.store import UNAVAILABLE_ERRORS, is_unavailable
from pricing.errors import DomainError

log = logging.getLogger("creditledger.api")


class Unauthorized(Exception):
    """No key, or a key that is unknown, malformed or revoked: 401."""


class Forbidden(Exception):
    """The key's role may not do this: 403."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Answer(JSONResponse):
    """An error's JSON, which may echo the request: a lone surrogate in it (a key of a
    JSON body, ``"\\ud800"``: no UTF-8 encodes it) is sent escaped, as JSON writes it,
    rather than failing the answer with a 500."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


def _about(request: Request) -> tuple[str, dict[str, str | None]]:
    """Which request a log line is about: its id (``api.requestids``), method and path as
    text, and as the line's fields (``api.logs``: a JSON log's ``request_id``, ...)."""
    fields = log_fields(request.scope)
    return f"request {fields['request_id']}: {fields['method']} {fields['path']}", fields


def _bug(request: Request, what: str, exc: Exception) -> JSONResponse:
    """500 for a bug: logged with its traceback; the body names the request's id, which
    the log line names too, and nothing of the bug."""
    about, fields = _about(request)
    log.error("%s (%s)", what, about, exc_info=exc, extra=fields)
    body = {"error": "internal_error", "message": "internal error"}
    found = request_id(request)
    if found is not None:
        body["request_id"] = found
    return _Answer(body, 500)


def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = status_of(exc)
    if status == 500:
        # A domain error with no status is a bug (an unbalanced entry, a broken catalog).
        return _bug(request, "unmapped domain error", exc)
    if status == 503:
        # The server's configuration (catalog_changed): retried, it succeeds once the
        # operator has put it right; not at once. Said in the log, for the operator.
        about, fields = _about(request)
        log.error("%s (%s)", exc.message, about, extra=fields)
        return _Answer(exc.to_dict(), status, headers={"Retry-After": "30"})
    return _Answer(exc.to_dict(), status)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def _choices(expected: str) -> list[Any] | str:
    """The values pydantic lists as text for a ``Literal`` or enum field (``"'pack',
    'allocation' or 'promo'"``), as a list, as every other ``allowed`` of choices is.
    Kept as the text when it does not read back to exactly that text."""
    try:
        values = ast.literal_eval(f"[{expected.replace(' or ', ', ')}]")
    except (SyntaxError, ValueError):
        return expected
    if not isinstance(values, list) or not values:
        return expected
    said = [repr(v) for v in values]
    text = said[0] if len(said) == 1 else f"{', '.join(said[:-1])} or {said[-1]}"
    return values if text == expected else expected


def _allowed(error: dict[str, Any]) -> Any:
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        expected = ctx["expected"]
        if error.get("type") in ("literal_error", "enum") and isinstance(expected, str):
            return _choices(expected)
        return expected
    bounds = {k: ctx[k] for k in ("ge", "gt", "le", "lt", "min_length", "max_length") if k in ctx}
    if "pattern" in ctx:
        bounds["pattern"] = ctx["pattern"]
    return bounds or None


def _message(error: dict[str, Any]) -> str:
    """Pydantic's words, but for a pattern: what it allows in words, not as a regex."""
    pattern = (error.get("ctx") or {}).get("pattern")
    if error.get("type") == "string_pattern_mismatch" and pattern in PATTERN_TEXTS:
        return f"must be {PATTERN_TEXTS[pattern]}"
    return str(error.get("msg", ""))


def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        first = errors[0]
        detail = (first.get("ctx") or {}).get("error", "malformed JSON")
        # Nested too deep, the body may be valid JSON; the ledger does not read it.
        said = "the body's" if detail == jsonin.TOO_DEEP else "the body is not valid JSON:"
        return _Answer({"error": "invalid_json", "message": f"{said} {detail}"}, 400)
    shaped = []
    for e in errors:
        # A body of the wrong shape (a list, a number) is at fault as a whole: "body".
        field = _location(e.get("loc", ())) or "body"
        item: dict[str, Any] = {"field": field, "message": _message(e)}
        allowed = _allowed(e)
        if allowed is not None:
            item["allowed"] = allowed
        shaped.append(item)
    first = shaped[0]
    body: dict[str, Any] = {
        "error": "invalid_request",
        "message": f"{first['field']}: {first['message']}",
        "field": first["field"],
    }
    if "allowed" in first:
        body["allowed"] = first["allowed"]
    if len(shaped) > 1:
        body["errors"] = shaped
    return _Answer(_json_safe(body), 422)


def _json_safe(value: Any) -> Any:
    """Validation contexts may hold Decimals or exceptions: make them text."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _unauthorized(_request: Request, _exc: Exception) -> JSONResponse:
    return _Answer(
        {
            "error": "unauthorized",
            "message": "send a valid API key as 'Authorization: Bearer <key>'",
        },
        401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _forbidden(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Forbidden)
    return _Answer({"error": "forbidden", "message": exc.message}, 403)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return _Answer({"error": code, "message": message}, exc.status_code, headers=headers)


#: The methods a 405's ``Allow`` may name, in the order it names them.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """What the path answers, for a 405's ``Allow`` (RFC 9110, 10.2.1): every route of the
    path's, not only the first the router met (``/v1/accounts`` takes GET and POST), and
    HEAD wherever GET is, as ``api.routing.HeadAsGet`` answers it. Each method is put to
    the app's routes as the router would (their ``matches``), so routers included with a
    prefix count as they route."""
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": "GET" if method == "HEAD" else method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return ", ".join(allowed)


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503: nothing was committed; retry later with the same idempotency key.

    Registered for the database's errors themselves (not through ``Exception``), so the
    response is an ordinary one: Starlette's last-resort handler re-raises after it
    answers, and uvicorn then drops the connection, which a client's next request on it
    would meet as a reset.
    """
    about, fields = _about(request)
    if is_lock_timeout(exc):
        # Another transaction held a lock this one needed for longer than the lock
        # timeout (CREDITLEDGER_LOCK_TIMEOUT_SECONDS).
        log.warning("lock wait timed out (%s): %s", about, exc, extra=fields)
        body = {
            "error": "database_busy",
            "message": "a lock this request needs was held by another transaction for "
            "longer than the lock timeout; nothing was committed; retry",
        }
    elif is_file_replaced(exc):
        # Retrying does not help: the server must be restarted (said in the log, each time).
        log.error("%s (%s)", first_line(exc), about, extra=fields)
        body = {
            "error": "database_unavailable",
            "message": "the database file was deleted or replaced while the server ran; "
            "nothing was committed; the server must be restarted",
        }
    else:
        # The database is unreachable, overloaded or cut off: a line per request (during
        # an outage, a traceback each would bury the log), the driver's own words.
        log.warning("database unavailable (%s): %s", about, first_line(exc), extra=fields)
        body = {"error": "database_unavailable", "message": "the database is unavailable; retry"}
    return _Answer(body, 503, headers={"Retry-After": "1"})


def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Raised outside the routes (a middleware), or wrapped by SQLAlchemy in a class of
    # its own that is not all unavailability (InternalError, for an ended session).
    if is_unavailable(exc):
        return _unavailable(request, exc)
    return _bug(request, "unhandled error", exc)


class Contained:
    """Answers an error no handler took with the JSON 500 of ``_internal``, as an
    ordinary response.

    Starlette's last-resort handler (``ServerErrorMiddleware``) answers too, but then
    re-raises, and uvicorn closes the connection: a client's next request on that
    keep-alive connection would meet a reset, an error of its own on top of the bug's.
    An error raised after the response started still goes on to the server (the
    response cannot be replaced any more).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            await _internal(Request(scope), exc)(scope, receive, send)


_DESCRIBED = {
    400: "Malformed JSON (NaN and Infinity included), a body that is not UTF-8, or a "
    "Content-Length that is not a whole number of bytes (on any route).",
    401: "No valid API key.",
    402: "Insufficient credits: credits_needed and credits_balance.",
    403: "The key's role may not do this (forbidden), or the wallet is blocked (account_blocked).",
    404: "No such resource (or not the customer key's own).",
    409: "A conflict: exists, already resolved, reversed or revoked, idempotency key reused.",
    413: "The body is larger than the server reads (CREDITLEDGER_MAX_BODY_BYTES), on any route.",
    415: "The body is not application/json.",
    422: "Invalid request: the field and what is allowed.",
    500: "An unexpected bug; the transaction it interrupted was rolled back.",
    503: "The database is unavailable (database_unavailable) or a lock the request needs "
    "stayed taken past the lock timeout (database_busy); nothing was committed. Retry after "
    "Retry-After seconds with the same Idempotency-Key. (A SQLite file deleted or replaced "
    "under the server: database_unavailable until the server is restarted. A capture of a "
    "hold whose catalog version the server's catalogs no longer hold: catalog_changed, "
    "until the operator restores it.)",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route: its error statuses and their bodies."""
    return {
        status: {
            "model": InsufficientCreditsPublic if status == 402 else ErrorPublic,
            "description": _DESCRIBED[status],
        }
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (call before adding other middleware: the
    last resort is the innermost)."""
    app.add_middleware(Contained)
    app.add_exception_handler(Exception, _internal)
    # The database unreachable, overloaded or cut off, as SQLAlchemy or (on the
    # ledger's pipelined statements) the driver raises it.
    for unavailable in UNAVAILABLE_ERRORS:
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(StarletteHTTPException, _http)
