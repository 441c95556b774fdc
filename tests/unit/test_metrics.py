"""``api.metrics.MetricsMiddleware``: every request counted once, by its route template,
whatever became of it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.types import Message

from api.metrics import BUCKETS, Metrics, MetricsMiddleware
from ledger.sweeper import Periodic


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


@pytest.mark.parametrize(
    ("routed", "label"),
    [
        ({"endpoint": object(), "path_params": {}}, "/openapi.json"),
        ({"endpoint": object(), "path_params": {"name": "x"}}, "unmatched"),
        ({"path_params": {}}, "unmatched"),
    ],
)
def test_a_plain_route_without_parameters_is_counted_by_its_path(
    routed: dict[str, Any], label: str
) -> None:
    """FastAPI's own ``/openapi.json`` and ``/docs`` are Starlette routes, which name no
    route in the scope: matched (an endpoint) with no path parameters, the path is the
    route's template. With parameters, or with nothing matched, the path is the caller's
    text, never a label."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope.update(routed)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    metrics = Metrics()
    _run(app, metrics, path="/openapi.json")
    assert _counted(metrics) == [
        f'creditledger_http_requests_total{{method="GET",route="{label}",status="200"}} 1.0'
    ]


def test_each_request_is_timed_from_its_start_to_its_answer() -> None:
    """The latency histogram holds the time the request took, in seconds, in the bucket of
    that time (an answer after 30 ms is not in the 25 ms bucket)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = _Route()
        await asyncio.sleep(0.03)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    metrics = Metrics()
    _run(app, metrics)
    labels = {"method": "GET", "route": "/v1/accounts/{id}"}
    name = "creditledger_http_request_duration_seconds"

    def sample(suffix: str, **extra: str) -> float | None:
        return metrics.registry.get_sample_value(f"{name}{suffix}", {**labels, **extra})

    assert sample("_count") == 1.0
    took = sample("_sum")
    assert took is not None
    assert 0.025 <= took < 10
    assert sample("_bucket", le="0.025") == 0.0
    assert sample("_bucket", le="+Inf") == 1.0
    # Fine below 25 ms, where the ledger's latency target lies (not prometheus' default
    # buckets, whose first is 5 ms).
    bounds = [
        s.labels["le"]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == f"{name}_bucket"
    ]
    assert bounds == [*(str(b) for b in BUCKETS), "+Inf"]


def test_what_is_not_an_http_request_passes_through_uncounted() -> None:
    """A websocket (no route takes one) or the server's lifespan events are not HTTP
    requests: handed on as they are, neither counted nor timed."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    metrics = Metrics()
    for kind in ("websocket", "lifespan"):
        scope = {"type": kind, "path": "/v1/accounts"}
        asyncio.run(MetricsMiddleware(app, metrics)(scope, None, None))  # type: ignore[arg-type]
    assert seen == ["websocket", "lifespan"]
    assert _counted(metrics) == []


class _Job(Periodic):
    """A background job whose rounds fail while told to."""

    name = "creditledger-test-job"
    task = "job"

    def __init__(self) -> None:
        super().__init__(7.5)
        self.failing = False

    def run_once(self) -> object:
        if self.failing:
            raise RuntimeError("a bug")
        return None


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_jobs_rounds_are_counted_timed_and_its_last_success_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its series are there from the start at zero (an alert on a rate has something to
    read); each round counts by outcome and is timed; a failed one leaves the last
    success where it was, so that ``time() - last_success`` grows while it fails."""
    metrics, job = Metrics(), _Job()
    metrics.runs(job)
    rounds = "creditledger_background_rounds_total"
    last = "creditledger_background_last_success_timestamp_seconds"
    assert _sample(metrics, rounds, task="job", outcome="ok") == 0
    assert _sample(metrics, rounds, task="job", outcome="failed") == 0
    assert _sample(metrics, "creditledger_background_interval_seconds", task="job") == 7.5
    assert _sample(metrics, last, task="job") is None  # no success yet
    before, began = time.time(), time.perf_counter()
    assert job.run_round() is True
    succeeded = _sample(metrics, last, task="job")
    assert succeeded is not None
    assert before <= succeeded <= time.time()
    job.failing = True
    with caplog.at_level(logging.ERROR, logger="creditledger.sweeper"):
        assert job.run_round() is False  # logged, not raised
        assert job.run_round() is False
    assert [r.exc_info is not None for r in caplog.records] == [True, True]
    assert _sample(metrics, rounds, task="job", outcome="ok") == 1
    assert _sample(metrics, rounds, task="job", outcome="failed") == 2
    assert _sample(metrics, last, task="job") == succeeded
    timed = "creditledger_background_round_duration_seconds_count"
    assert _sample(metrics, timed, task="job") == 3
    # Timed as the rounds took: together, no longer than the three of them did.
    took = _sample(metrics, "creditledger_background_round_duration_seconds_sum", task="job")
    assert took is not None
    assert 0 <= took <= time.perf_counter() - began
