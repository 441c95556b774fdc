"""The route class (``api.routing.JsonRoute``) on rules no route of the API uses yet: a
query parameter that takes several values, and one read by a dependency. A small app of
its own, through the real HTTP stack, so that a route added later keeps them. And the body
limit (``BodyLimit``) on declared lengths no HTTP client sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from api import errors
from api.routing import BodyLimit, HeadAsGet, JsonRoute


def _paging(cursor: Annotated[str | None, Query(max_length=20)] = None) -> str | None:
    return cursor


#: A list type with its own constraint, as a type alias: given as ``Models | None``, the
#: route's parameter is a union holding an ``Annotated`` list.
Models = Annotated[list[str], Field(max_length=3)]

router = APIRouter(route_class=JsonRoute)


@router.get("/things")
async def things(
    cursor: Annotated[str | None, Depends(_paging)],
    tags: Annotated[list[str] | None, Query()] = None,
    ids: Annotated[list[int], Query()] = [],  # noqa: B006 (FastAPI copies the default)
    models: Annotated[Models | None, Query()] = None,
    kinds: Annotated[set[str] | None, Query()] = None,
    ranks: Annotated[Sequence[int] | None, Query()] = None,
    limit: int = 10,
) -> dict[str, Any]:
    return {
        "tags": tags,
        "ids": ids,
        "models": models,
        "kinds": sorted(kinds) if kinds is not None else None,
        "ranks": ranks,
        "limit": limit,
        "cursor": cursor,
    }


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.include_router(router)
    app.add_middleware(HeadAsGet)
    with TestClient(app) as made:
        yield made


def test_a_parameter_of_several_values_may_be_given_again(client: TestClient) -> None:
    r = client.get(
        "/things?tags=a&tags=b&ids=1&ids=2&models=x&models=y&kinds=k&kinds=j&ranks=2&ranks=1"
        "&limit=3"
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tags": ["a", "b"],
        "ids": [1, 2],
        "models": ["x", "y"],
        "kinds": ["j", "k"],
        "ranks": [2, 1],
        "limit": 3,
        "cursor": None,
    }


@pytest.mark.parametrize("query", ["limit=1&limit=2", "cursor=a&cursor=b"])
def test_a_parameter_of_one_value_given_again_is_refused_by_name(
    client: TestClient, query: str
) -> None:
    r = client.get(f"/things?tags=a&tags=b&{query}")
    assert r.status_code == 422, r.text
    name = query.split("=")[0]
    answer = r.json()
    assert (answer["field"], answer["message"]) == (name, f"{name}: given 2 times: give it once")


def test_a_parameter_read_by_a_dependency_is_the_routes_own(client: TestClient) -> None:
    r = client.get("/things?cursor=next")
    assert r.status_code == 200, r.text
    assert r.json()["cursor"] == "next"
    r = client.get("/things?cursr=next")
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["allowed"]) == (
        "cursr",
        ["cursor", "ids", "kinds", "limit", "models", "ranks", "tags"],
    )
    assert client.head("/things?tags=a&tags=b").status_code == 200


@pytest.mark.parametrize(
    ("declared", "status"),
    [
        (b"1e3", 400),
        (b"-1", 400),
        (b"+5", 400),
        (b" 5", 400),
        (b"", 400),
        (b"11", 413),
        # Past the digits Python reads into an int (it raised: a 500).
        (b"9" * 5000, 413),
    ],
)
def test_a_content_length_not_a_count_or_over_the_limit_is_refused_unread(
    declared: bytes, status: int
) -> None:
    """``BodyLimit`` answers before the app sees the request: 413 for a declared length
    over the limit, 400 for one that is not a plain count (which no limit can be read
    against); the servers in front refuse most of these themselves, the limit must not
    rely on it."""
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/charges",
        "headers": [(b"content-type", b"application/json"), (b"content-length", declared)],
    }
    asyncio.run(BodyLimit(app, 10)(scope, receive, send))
    assert called == []
    assert sent[0]["status"] == status
    assert json.loads(sent[1]["body"]) == (
        {"error": "body_too_large", "message": "the body exceeds 10 bytes"}
        if status == 413
        else {
            "error": "invalid_request",
            "message": "Content-Length: not a whole number of bytes",
            "field": "Content-Length",
        }
    )
    at_limit: Scope = {**scope, "headers": [(b"content-length", b"11")]}
    asyncio.run(BodyLimit(app, 11)(at_limit, receive, send))
    assert len(called) == 1  # at the limit: passed on
    padded: Scope = {**scope, "headers": [(b"content-length", b"0" * 5000 + b"11")]}
    asyncio.run(BodyLimit(app, 11)(padded, receive, send))
    assert len(called) == 2  # leading zeros are no more bytes


@pytest.mark.parametrize(("pieces", "refused"), [([4, 4, 2], False), ([4, 4, 3], True)])
def test_a_body_sent_in_pieces_is_counted_whole(pieces: list[int], refused: bool) -> None:
    """Without a Content-Length (chunked), ``BodyLimit`` counts the body as it is read:
    pieces each under the limit, together over it, are refused (413) once they pass it."""
    messages = [
        {"type": "http.request", "body": b"x" * n, "more_body": i < len(pieces) - 1}
        for i, n in enumerate(pieces)
    ]
    read: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            read.append(message["body"])
            if not message["more_body"]:
                return

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        raise AssertionError("the app answers nothing")

    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    if refused:
        with pytest.raises(HTTPException) as raised:
            asyncio.run(BodyLimit(app, 10)(scope, receive, send))
        assert raised.value.status_code == 413
        assert sum(map(len, read)) == 8  # the piece that passed the limit was not handed on
    else:
        asyncio.run(BodyLimit(app, 10)(scope, receive, send))
        assert sum(map(len, read)) == 10
