"""``api.errors.Contained``, the last resort for an error no handler took: a JSON 500 as
an ordinary response while nothing of the response was sent, and the error passed on to
the server once something was (a second response would break the protocol)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message

from api.errors import Contained

SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}


def _run(app: Any, sent: list[Message]) -> None:
    """Run ``app`` behind ``Contained`` for a GET; what it sends goes to ``sent``."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(Contained(app)(dict(SCOPE), receive, send))


def test_an_error_before_the_response_started_is_answered_with_a_json_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("before")

    sent: list[Message] = []
    _run(app, sent)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert body["error"] == "internal_error"
    assert "before" not in sent[1]["body"].decode()


def test_an_error_after_the_response_started_goes_on_to_the_server() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("midway")

    sent: list[Message] = []
    with pytest.raises(RuntimeError, match="midway"):
        _run(app, sent)
    # No second response after the first one's start: the server ends the connection.
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
