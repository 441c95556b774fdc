"""The route class of every JSON endpoint: exact numbers in, JSON bodies only.

Request bodies are parsed with ``Decimal`` for fractions (floats never touch money or a
price parameter) and refuse ``NaN`` and ``Infinity``, which Python's JSON parser would
otherwise accept. A body sent with a content type other than JSON gets 415. A key given
twice in one JSON object, or a query parameter or header of one value given twice, gets
422 naming it, rather than one of them chosen; so does a query parameter the route does
not take, rather than ignored. All of these come after the caller's key is checked (401,
403): a caller without a valid key learns nothing of a route's rules.
"""

from __future__ import annotations

import json
import types
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import jsonin
from api.deps import CALLER, Gate, gate_of
from api.errors import documented
from ledger import kernel


def _constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a number", name, 0)


def loads(body: bytes) -> Any:
    """JSON with exact fractions (Decimal), no NaN/Infinity and no key given twice in an
    object (``jsonin.RepeatedKey``); the body must be UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8", repr(body[:32]), exc.start) from None
    return jsonin.loads(text, constant=_constant)


class _ExactRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


def _unstorable(value: Any, loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str] | None:
    """Where in ``value`` a text holds what no database can store (NUL, U+0000, which
    PostgreSQL refuses, so both databases are refused it alike; a lone surrogate), and
    what; None when nothing does. Checked at the edge, before any field is read."""
    if isinstance(value, str):
        problem = kernel.text_problem(value)
        return None if problem is None else (loc, problem)
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable(key, (*loc, key)) or _unstorable(item, (*loc, key))
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable(item, (*loc, index))
            if found:
                return found
    return None


def _shown(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """``loc`` as an answer can give it: a lone surrogate in a key, escaped (``\\ud800``),
    as no UTF-8 encodes it."""
    return tuple(
        part.encode("utf-8", "backslashreplace").decode() if isinstance(part, str) else part
        for part in loc
    )


async def _refuse_unstorable(request: _ExactRequest, takes_body: bool) -> None:
    """422 for NUL, or a lone surrogate, in the path, the query or the body. The body is
    parsed here, so a key it gives twice in one object (``jsonin.RepeatedKey``) is refused
    here too: 422 naming it. Malformed JSON is left to the route's handler (400)."""
    found = _unstorable(request.path_params, ("path",)) or _unstorable(
        dict(request.query_params), ("query",)
    )
    if found is None and takes_body and await request.body():
        try:
            found = _unstorable(await request.json(), ("body",))
        except json.JSONDecodeError:
            return  # the route's handler answers 400 for it
        except jsonin.RepeatedKey as exc:
            raise RequestValidationError(
                [
                    {
                        "type": "repeated_key",
                        "loc": ("body", *_shown(exc.loc)),
                        "msg": exc.reason,
                        "input": None,
                    }
                ]
            ) from None
    if found is not None:
        where, problem = found
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": _shown(where),
                    "msg": f"text {problem}",
                    "input": None,
                }
            ]
        )


def _many(annotation: Any) -> bool:
    """Whether a parameter of this type takes several values (``list[str]``...)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _many(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_many(arg) for arg in get_args(annotation))
    return origin in (list, set, frozenset, tuple, Sequence, AbstractSet)


def _single(dependant: Dependant) -> tuple[frozenset[str], dict[bytes, str]]:
    """The query parameters and the headers of which a route, with its dependencies, reads
    one value; the headers by their lower-case name (as ASGI gives them) to their name."""
    queries = {f.alias for f in dependant.query_params if not _many(f.field_info.annotation)}
    headers = {
        f.alias.lower().encode("latin-1"): f.alias
        for f in dependant.header_params
        if not _many(f.field_info.annotation)
    }
    for sub in dependant.dependencies:
        more_queries, more_headers = _single(sub)
        queries |= more_queries
        headers.update(more_headers)
    return frozenset(queries), headers


def _refuse_repeated(request: Request, queries: frozenset[str], headers: dict[bytes, str]) -> None:
    """422 for a parameter of one value given more than once (``?limit=5&limit=500``, two
    ``Idempotency-Key`` headers): which of them was meant is not for the server to guess,
    and FastAPI would take one and drop the rest unseen, invalid or not."""
    given = [("header", headers[name]) for name, _ in request.scope["headers"] if name in headers]
    if queries and request.scope.get("query_string"):
        given += [("query", k) for k, _ in request.query_params.multi_items() if k in queries]
    if len(given) < 2 or len(set(given)) == len(given):
        return
    raise RequestValidationError(
        [
            {
                "type": "repeated_parameter",
                "loc": (where, name),
                "msg": f"given {n} times: give it once",
                "input": None,
            }
            for (where, name), n in Counter(given).items()
            if n > 1
        ]
    )


def _queries(dependant: Dependant) -> frozenset[str]:
    """Every query parameter a route, with its dependencies, reads."""
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _queries(sub)
    return frozenset(names)


def _refuse_unknown(request: Request, known: frozenset[str]) -> None:
    """422 for a query parameter the route does not take (``?limt=10``): ignored, the
    caller's typo would silently mean the default. Each is named, with the route's own
    parameters as the allowed ones (as a body's unknown field is refused)."""
    if not request.scope.get("query_string"):
        return
    unknown = sorted({k for k in request.query_params if k not in known})
    if not unknown:
        return
    takes = ", ".join(sorted(known)) or "none"
    raise RequestValidationError(
        [
            {
                "type": "unknown_parameter",
                "loc": ("query", name),
                "msg": f"unknown query parameter (this route takes: {takes})",
                "input": None,
                "ctx": {"expected": sorted(known)},
            }
            for name in unknown
        ]
    )


def _gates(dependant: Dependant) -> list[Gate]:
    """The key checks of a route's dependencies (``api.deps.gate_of``), each once."""
    found: list[Gate] = []
    for sub in dependant.dependencies:
        gate = gate_of(sub.call) if sub.call is not None else None
        for each in [gate] if gate is not None else _gates(sub):
            if each not in found:
                found.append(each)
    return found


#: Whose key acts is not to be guessed: two Authorization headers are refused (422)
#: before either key is checked.
_AUTHORIZATION = {b"authorization": "Authorization"}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonRoute(APIRoute):
    """A JSON endpoint; its OpenAPI lists the errors any route can answer besides its own:
    for every route 400 and 413 (``BodyLimit`` refuses a ``Content-Length`` that is no
    count of bytes, or over the limit, whatever the route), 422 (a query parameter the
    route does not take), 500 and 503; and 415 for a route that takes a body."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        statuses = [400, 413, 415, 422] if self.body_field is not None else [400, 413, 422]
        own = kwargs.pop("responses", None) or {}
        # Built again with them: FastAPI makes a response's schema as it builds the route
        # (whether the route takes a body, and so may answer 415, is known once it is built).
        super().__init__(
            path, endpoint, responses={**documented(*statuses, 500, 503), **own}, **kwargs
        )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        queries, headers = _single(self.dependant)
        known = _queries(self.dependant)
        gates = _gates(self.dependant)

        async def exact(request: Request) -> Response:
            exact_request = _ExactRequest(request.scope, request.receive)
            # Who asks comes first: without a valid key (401) or with one of the wrong
            # role (403), nothing else of the request is looked at.
            _refuse_repeated(exact_request, frozenset(), _AUTHORIZATION)
            for gate in gates:
                await gate(exact_request)
            if takes_body and await exact_request.body():
                content_type = exact_request.headers.get("content-type", "")
                if not _is_json(content_type):
                    got = repr(content_type) if content_type else "no Content-Type"
                    raise HTTPException(415, f"send the body as application/json (got {got})")
            _refuse_unknown(exact_request, known)
            _refuse_repeated(exact_request, queries, headers)
            await _refuse_unstorable(exact_request, takes_body)
            return await handler(exact_request)

        return exact


#: Marks the scope of a HEAD passed on as a GET (see ``HeadAsGet``).
_HEAD = "creditledger.head"


def is_head(request: Request) -> bool:
    """Whether ``request`` is a HEAD answered as its GET: a route whose body costs work to
    make (a file decompressed as it is sent) can leave the body out; the headers must stay
    the GET's."""
    return bool(request.scope.get(_HEAD))


class HeadAsGet:
    """HEAD is answered as GET is, without the body (RFC 9110, 9.3.2: a server that
    answers GET answers HEAD): the same status and headers, ``Content-Length`` included,
    so a monitor checking ``/healthz`` or a client sizing a report's download need not
    read the body. Any route, key check and error answers as it does for the GET.

    The request goes on as a GET on a copy of its scope. The server reads the original's
    method to frame its answer: it sends the headers alone (uvicorn does, as does the
    test client). The request's metrics and access log keep ``HEAD``; the route that
    answered and the caller its key names are copied back for them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        as_get = {**scope, "method": "GET", _HEAD: True}
        try:
            await self.app(as_get, receive, send)
        finally:
            for found in ("route", CALLER):
                if found in as_get:
                    scope[found] = as_get[found]


#: A ``Content-Length`` that is not a count of bytes.
NOT_A_LENGTH = {
    "error": "invalid_request",
    "message": "Content-Length: not a whole number of bytes",
    "field": "Content-Length",
}


class BodyLimit:
    """413, in the API's JSON error format, for a body over ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before the body is read (and
    one that is not a count of bytes, against which no limit can be read, with a 400); a
    body sent without one (chunked) is counted as it is read and refused when it passes.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await JSONResponse(NOT_A_LENGTH, 400)(scope, receive, send)
                    return
                # Past 18 digits no limit is near (and past 4,300 ``int`` raises).
                digits = value.lstrip(b"0")
                if len(digits) > 18 or int(digits or b"0") > self.limit:
                    await JSONResponse(self._body(), 413)(scope, receive, send)
                    return
                break
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._body()["message"])
            return message

        await self.app(scope, counted, send)

    def _body(self) -> dict[str, str]:
        return {"error": "body_too_large", "message": f"the body exceeds {self.limit} bytes"}
