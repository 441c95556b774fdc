"""Catalogs, health and metrics."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import Caller, ServicesDep
from api.errors import documented
from api.routing import JsonRoute
from api.schemas import CatalogsPublic, HealthPublic
from ledger.errors import NotFound
from pricing.catalog import describe

router = APIRouter(route_class=JsonRoute)

_ERRORS = documented(401, 404)


@router.get("/v1/catalogs", response_model=CatalogsPublic, responses=_ERRORS, tags=["catalogs"])
async def list_catalogs(_caller: Caller, services: ServicesDep) -> CatalogsPublic:
    """Every catalog: versions (which is in force), operations, models and prices."""
    return CatalogsPublic(catalogs=describe(services.ledger.catalogs, services.ledger.clock()))


@router.get(
    "/v1/catalogs/{name}", response_model=dict[str, Any], responses=_ERRORS, tags=["catalogs"]
)
async def read_catalog(name: str, _caller: Caller, services: ServicesDep) -> dict[str, Any]:
    for catalog in describe(services.ledger.catalogs, services.ledger.clock()):
        if catalog["name"] == name:
            return catalog
    raise NotFound(
        f"no catalog '{name}'", field="name", allowed=sorted(services.ledger.catalogs.catalogs)
    )


@router.get("/healthz", response_model=HealthPublic, tags=["meta"])
async def health(services: ServicesDep) -> HealthPublic:
    """Liveness and database reachability (no key needed; monitors may ask with HEAD): a
    pooled connection the database dropped (a restart) is not unreachability, so it is
    tried on a new one."""

    def ping() -> None:
        with services.ledger.db.transaction(write=False) as conn:
            conn.execute(sa.text("SELECT 1"))

    await run_in_threadpool(services.ledger.db.reading, ping)
    return HealthPublic(status="ok", database=services.ledger.db.dialect)


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format (no key needed: scrape it from the private network)."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
