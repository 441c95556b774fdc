"""Prometheus metrics of the HTTP API: requests, latencies, holds, reported usage, 402s,
the database's work run again after a lost connection, and the background jobs' rounds.

Each app has its own registry (several apps may live in one process, as in the tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Scope

from api.logwriter import Stderr
from api.requestids import Observed
from ledger.db import Database
from ledger.sweeper import Periodic

#: Latency buckets in seconds: fine below 25 ms, where the ledger's target lies.
BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Buckets of a background job's round, in seconds: a quiet sweep takes milliseconds, a
#: report a minute.
ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "creditledger_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "creditledger_http_request_duration_seconds",
            "HTTP request latency by method and route template, in seconds.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.holds_opened = Counter(
            "creditledger_holds_opened_total",
            "Authorizations that opened a hold (a replayed retry does not count).",
            registry=self.registry,
        )
        self.holds_resolved = Counter(
            "creditledger_holds_resolved_total",
            "Holds resolved, by outcome (captured, voided, expired; a replayed retry does "
            "not count).",
            ["outcome"],
            registry=self.registry,
        )
        self.usage_reported = Counter(
            "creditledger_usage_reported_total",
            "Usage reports recorded (POST /v1/usage-records; a replayed retry does not "
            "count), by the provider's outcome (an ERROR is recorded, never charged).",
            ["outcome"],
            registry=self.registry,
        )
        self.keys_pruned = Counter(
            "creditledger_idempotency_keys_pruned_total",
            "Idempotency keys deleted by the sweeper once past their retention.",
            registry=self.registry,
        )
        self.insufficient = Counter(
            "creditledger_insufficient_credits_total",
            "Requests answered 402 Insufficient credits, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.grants_expired = Counter(
            "creditledger_grants_expired_total",
            "Grants the sweeper expired (their remainder moved to the expired credits).",
            registry=self.registry,
        )
        self.allocations_granted = Counter(
            "creditledger_allocations_granted_total",
            "Monthly allocations the sweeper granted as their period began.",
            registry=self.registry,
        )
        self.rounds = Counter(
            "creditledger_background_rounds_total",
            "Rounds of the background jobs (task: sweeper, reports), by outcome (ok; "
            "failed: logged, and run again after the interval).",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.round_seconds = Histogram(
            "creditledger_background_round_duration_seconds",
            "How long a background job's round took, in seconds, by task.",
            ["task"],
            buckets=ROUND_BUCKETS,
            registry=self.registry,
        )
        self.last_success = Gauge(
            "creditledger_background_last_success_timestamp_seconds",
            "Unix time at which the task's last round ended without error (a task that "
            "fails or hangs falls behind: alert on time() minus this).",
            ["task"],
            registry=self.registry,
        )
        self.interval = Gauge(
            "creditledger_background_interval_seconds",
            "The seconds a task waits between its rounds.",
            ["task"],
            registry=self.registry,
        )
        self.registry.register(_LogLines())

    def runs(self, job: Periodic) -> None:
        """Count and time ``job``'s rounds (its series present, at zero, from now)."""
        for outcome in ("ok", "failed"):
            self.rounds.labels(job.task, outcome)
        self.round_seconds.labels(job.task)
        self.interval.labels(job.task).set(job.interval)
        job.on_round = self.round

    def round(self, task: str, seconds: float, ok: bool) -> None:
        """A background job's round ended (``Periodic.on_round``)."""
        self.rounds.labels(task, "ok" if ok else "failed").inc()
        self.round_seconds.labels(task).observe(seconds)
        if ok:
            self.last_success.labels(task).set_to_current_time()

    def watch(self, db: Database) -> None:
        """Expose what ``db`` counts itself: the reads and writes run again after their
        connection was lost (PostgreSQL restarted, failed over, ended a session)."""
        self.registry.register(_Reruns(db))


class _Reruns(Collector):
    """``creditledger_database_reruns_total``, read from the database at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "creditledger_database_reruns",
            "Reads and writes run once more on a new connection after theirs was lost "
            "(PostgreSQL restarted, failed over or ended the session; a write under its "
            "idempotency key), by work.",
            labels=["work"],
        )
        for work, count in self.db.reruns().items():
            family.add_metric([work], count)
        yield family


class _LogLines(Collector):
    """The log's lines waiting for stderr and dropped (``api.logwriter.Stderr``), read at each
    scrape: where the log's reader stalled, the log itself cannot say so in time."""

    def collect(self) -> Iterator[Metric]:
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, Stderr)]
        yield GaugeMetricFamily(
            "creditledger_log_lines_waiting",
            "Log lines handed over and not yet written to stderr (it does not keep up "
            "while this grows).",
            value=sum(h.waiting() for h in handlers),
        )
        yield CounterMetricFamily(
            "creditledger_log_lines_dropped",
            "Log lines dropped, more than could wait for a stderr that did not keep up.",
            value=sum(h.dropped for h in handlers),
        )


def _plain_route(scope: Scope) -> str | None:
    """The path of a route Starlette matched that FastAPI names no route for (its own
    ``/openapi.json`` and ``/docs``), when it takes no path parameters: then its path is
    its template, so the label stays one of a few (a path no route matched is the
    caller's text, never a label)."""
    if "endpoint" in scope and scope.get("path_params") == {}:
        return str(scope["path"])
    return None


class MetricsMiddleware(Observed):
    """Counts and times every HTTP request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    def answered(self, scope: Scope, answer: Message | None, seconds: float) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or _plain_route(scope) or "unmatched"
        method = scope["method"]
        # No answer started: the error went on to the server, which answers 500.
        code: int = 500 if answer is None else answer["status"]
        self.metrics.latency.labels(method, template).observe(seconds)
        self.metrics.requests.labels(method, template, str(code)).inc()
        if code == 402:
            self.metrics.insufficient.labels(template).inc()
