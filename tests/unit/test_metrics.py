"""``api.metrics.MetricsMiddleware``: every request counted once, by its route template,
whatever became of it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.types import Message

from api.metrics import Metrics, MetricsMiddleware


def _run(app: Any, metrics: Metrics, path: str = "/v1/accounts/acme") -> list[Message]:
    """Send a GET of ``path`` through the middleware to ``app``; what it sent back."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    asyncio.run(MetricsMiddleware(app, metrics)(scope, receive, send))
    return sent


def _counted(metrics: Metrics) -> list[str]:
    return [
        line
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("creditledger_http_requests_total{")
    ]


class _Route:
    path = "/v1/accounts/{id}"


def test_an_error_that_escapes_before_any_answer_counts_as_a_500() -> None:
    """The server answers it 500 (the last resort, outside): the count says so, not the
    status of an answer never started."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = _Route()
        raise RuntimeError("before the answer")

    metrics = Metrics()
    with pytest.raises(RuntimeError, match="before the answer"):
        _run(app, metrics)
    assert _counted(metrics) == [
        'creditledger_http_requests_total{method="GET",route="/v1/accounts/{id}",status="500"} 1.0'
    ]


def test_a_path_no_route_matched_is_counted_as_unmatched_not_by_its_text() -> None:
    """Paths are the caller's to make up: one label each would grow the metrics without
    bound (a scanner's thousand paths, a thousand series)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    metrics = Metrics()
    for n in range(3):
        _run(app, metrics, path=f"/wp-admin/{n}.php")
    assert _counted(metrics) == [
        'creditledger_http_requests_total{method="GET",route="unmatched",status="404"} 3.0'
    ]
