"""API keys (admin): create one (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import Admin, ServicesDep
from api.errors import documented
from api.routing import JsonRoute
from api.schemas import CreatedKey, KeyCreate, KeyView

router = APIRouter(prefix="/v1", route_class=JsonRoute, tags=["keys"])

_ERRORS = documented(401, 403, 404, 422)


@router.post("/keys", status_code=201, response_model=CreatedKey, responses=_ERRORS)
async def create_key(body: KeyCreate, _caller: Admin, services: ServicesDep) -> CreatedKey:
    """A new key. ``key`` is in this response only: the server keeps a digest."""
    return await run_in_threadpool(
        services.keys.create,
        body.role,
        name=body.name,
        account_id=body.account_id,
        expires_at=body.expires_at,
    )


@router.get("/keys", response_model=list[KeyView], responses=_ERRORS)
async def list_keys(
    _caller: Admin,
    services: ServicesDep,
    role: Annotated[Literal["admin", "service", "customer"] | None, Query()] = None,
    account_id: Annotated[
        str | None, Query(min_length=1, max_length=200, description="One wallet's customer keys.")
    ] = None,
    active: Annotated[
        bool | None,
        Query(description="true: only keys accepted now; false: only revoked or expired ones."),
    ] = None,
) -> list[KeyView]:
    """The keys (never a secret), in the order they were made; filtered by role, wallet
    and whether they are accepted now (such as a customer's live keys, to revoke)."""
    return await run_in_threadpool(
        services.keys.db.reading,
        services.keys.list,
        role=role,
        account_id=account_id,
        active=active,
    )


@router.delete("/keys/{id}", response_model=KeyView, responses=_ERRORS)
async def revoke_key(id: str, _caller: Admin, services: ServicesDep) -> KeyView:
    """Revoke a key: every later request with it gets 401."""
    return await run_in_threadpool(services.keys.db.repeatable, services.keys.revoke, id)
