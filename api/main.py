"""The FastAPI application: ``create_app()`` wires the services, routes and handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from api import errors, openapi
from api.deps import Services
from api.logs import AccessLog
from api.metrics import Metrics, MetricsMiddleware
from api.requestids import RequestIds
from api.routes import accounts, gateway, meta
from api.routes import keys as key_routes
from api.routes import reports as report_routes
from api.routing import BodyLimit, HeadAsGet
from api.schemas import MAX_AMOUNT
from ledger.db import Database
from ledger.keys import Keys
from ledger.services import Ledger, ledger_from_settings
from ledger.settings import Settings
from ledger.sweeper import Sweeper, Swept
from reports.jobs import Reports, ReportWorker, preload

DESCRIPTION = """\
Metering and billing ledger for AI-generation APIs.

A gateway asks, for every request: what will it cost (`POST /v1/estimates`), can this
customer pay (`POST /v1/authorizations`: a hold, or **402** with `credits_needed` and
`credits_balance`), and what did it cost (`POST /v1/authorizations/{id}/capture`).

Amounts are integers of the unit's minor units, with `unit` and `scale` beside them.
Send `Authorization: Bearer <key>`; mutating requests take an `Idempotency-Key` header.
Every answer carries `X-Request-ID` (the caller's own, when it sends one), which the
server's log names for the request.
"""


#: Every route of the API, as the route modules' routers built them (once per process, as
#: they were imported). Each app serves these same routes: ``include_router`` would have
#: FastAPI build every route again for each app it makes, on that app's first request
#: (measured: the first request after ``serve`` started took 0.2 to 0.27 s, now about
#: 0.035 s). The routers set their own tags and dependencies; none is added at inclusion.
#: (So an app's ``dependency_overrides`` do not reach them; nothing here uses those.)
ROUTES = tuple(
    route
    for module in (gateway, accounts, key_routes, report_routes, meta)
    for route in module.router.routes
)


def create_app(
    ledger: Ledger,
    keys: Keys,
    *,
    settings: Settings | None = None,
    sweep: bool = False,
    reports: Reports | None = None,
    owns_database: bool = False,
) -> FastAPI:
    """The API over ``ledger``; ``sweep`` runs the background jobs (sweepers and the
    report worker) while the app is up; ``owns_database``: the app closes the ledger's
    database as it shuts down."""
    settings = settings or Settings()
    metrics = Metrics()
    metrics.watch(ledger.db)
    reports = reports or reports_from_settings(ledger, settings)
    worker = ReportWorker(reports, settings.report_poll_seconds)
    if sweep:
        preload()  # now, not in the worker's first round, while requests are served

    def swept(result: Swept) -> None:
        if result.holds_expired:
            metrics.holds_resolved.labels("expired").inc(result.holds_expired)
        if result.keys_pruned:
            metrics.keys_pruned.inc(result.keys_pruned)
        if result.grants_expired:
            metrics.grants_expired.inc(result.grants_expired)
        if result.allocations_granted:
            metrics.allocations_granted.inc(result.allocations_granted)

    sweeper = Sweeper(ledger, settings.sweep_interval_seconds, on_swept=swept)
    if sweep:
        metrics.runs(sweeper)
        metrics.runs(worker)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if sweep:
            sweeper.start()
            worker.start()
        try:
            yield
        finally:
            if sweep:
                worker.stop()
                sweeper.stop()
            if owns_database:
                # Its connections closed, not dropped at exit (uvicorn ends the process
                # by the signal it stopped for): SQLite's last one moves the WAL into
                # the database file and deletes it, leaving one self-contained file.
                ledger.db.dispose()

    app = FastAPI(
        title="creditledger",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        routes=list(ROUTES),
    )
    app.state.services = Services(
        ledger=ledger, keys=keys, metrics=metrics, settings=settings, reports=reports
    )
    app.state.sweeper = sweeper
    app.state.report_worker = worker
    errors.install(app)
    openapi.install(app, exact=(MAX_AMOUNT, -MAX_AMOUNT))
    app.add_middleware(HeadAsGet)  # the innermost: the router sees a GET
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.access_log:
        app.add_middleware(AccessLog)  # inside RequestIds: it logs the answer's id
    app.add_middleware(RequestIds)  # the outermost: every answer carries the request's id
    return app


def app_from_settings(settings: Settings, *, sweep: bool = True) -> FastAPI:
    """The app as ``creditledger serve`` runs it: database and catalogs from ``settings``."""
    ledger = ledger_from_settings(settings)
    keys = keys_from_settings(ledger.db, settings)
    return create_app(ledger, keys, settings=settings, sweep=sweep, owns_database=True)


def keys_from_settings(db: Database, settings: Settings) -> Keys:
    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    return Keys(db, admin_key=admin, cache_seconds=settings.key_cache_seconds)


def reports_from_settings(ledger: Ledger, settings: Settings) -> Reports:
    """Report jobs on the ledger's database, with the lease and the month's close delay
    the operator configured."""
    return Reports(
        ledger.db,
        clock=ledger.clock,
        lease=timedelta(seconds=settings.report_lease_seconds),
        close_delay=timedelta(seconds=settings.report_close_delay_seconds),
    )
