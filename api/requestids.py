"""A request id on every answer, for finding a request in the server's log.

A gateway that sends its own ``X-Request-ID`` (one value: printable ASCII, no spaces, at
most 200 characters) gets it back; otherwise the server makes one. Either way the
response carries it in ``X-Request-ID``, and the server's log lines about the request (a
bug's traceback, the database unavailable, a lock wait run out) name it, as does the
body of a 500: what a caller quotes when it reports a failure.
"""

from __future__ import annotations

import re
import time

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.ids import random_hex

HEADER = "X-Request-ID"
_NAME = HEADER.lower().encode("latin-1")
#: Where the request's id is kept, in the ASGI scope.
SCOPE_KEY = "creditledger.request_id"
_GIVEN = re.compile(rb"[\x21-\x7e]{1,200}")


def request_id(connection: HTTPConnection) -> str | None:
    """The id of the request (``RequestIds``), or None outside one."""
    found: str | None = connection.scope.get(SCOPE_KEY)
    return found


def log_fields(scope: Scope) -> dict[str, str | None]:
    """What the server's log lines about a request name (``api.logs``): its id, method,
    path as sent (percent-encoded) and query, if any."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string") or b""
    return {
        "request_id": scope.get(SCOPE_KEY),
        "method": scope["method"],
        "path": raw.decode("ascii", "backslashreplace"),
        "query": query.decode("ascii", "backslashreplace") or None,
    }


def _given(scope: Scope) -> bytes | None:
    """The caller's own id: its one ``X-Request-ID`` header, if that is well formed."""
    values: list[bytes] = [value for name, value in scope["headers"] if name == _NAME]
    if len(values) == 1 and _GIVEN.fullmatch(values[0]):
        return values[0]
    return None


class RequestIds:
    """Gives each HTTP request its id (the caller's, or a new one) and every response
    the ``X-Request-ID`` header. The outermost middleware: whatever answers, the answer
    carries it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _given(scope)
        raw = given if given is not None else random_hex(16).encode("ascii")
        scope[SCOPE_KEY] = raw.decode("ascii")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (_NAME, raw)]
            await send(message)

        await self.app(scope, receive, sending)


class Observed:
    """A middleware that sees each HTTP request's answer: ``answered`` is called once the
    request is done (answered, or failed), with the start of its answer (its status and
    headers; None when no answer was started: the connection was dropped, or the error
    went on to the server) and the seconds it took. The base of the request metrics and
    the access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def answered(self, scope: Scope, answer: Message | None, seconds: float) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answer: list[Message | None] = [None]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer[0] = message
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.answered(scope, answer[0], time.perf_counter() - start)
