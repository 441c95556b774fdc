"""API keys (admin): create one (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import Admin, CursorQuery, LimitQuery, ServicesDep, actor_of, read
from api.errors import documented
from api.routing import JsonRoute
from api.schemas import CreatedKey, KeyCreate, KeyPage, KeyView

router = APIRouter(prefix="/v1", route_class=JsonRoute, tags=["keys"])

_ERRORS = documented(401, 403, 404, 422)
#: A list: a filter naming no wallet or key finds nothing (no 404).
_LISTED = documented(401, 403, 422)


@router.post("/keys", status_code=201, response_model=CreatedKey, responses=_ERRORS)
async def create_key(body: KeyCreate, caller: Admin, services: ServicesDep) -> CreatedKey:
    """A new key. ``key`` is in this response only: the server keeps a digest. The key
    that made it is kept (``created_by``)."""
    return await run_in_threadpool(
        services.keys.create,
        body.role,
        name=body.name,
        account_id=body.account_id,
        expires_at=body.expires_at,
        actor=actor_of(caller),
    )


@router.get("/keys", response_model=KeyPage, responses=_LISTED)
async def list_keys(
    _caller: Admin,
    services: ServicesDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
    role: Annotated[Literal["admin", "service", "customer"] | None, Query()] = None,
    account_id: Annotated[
        str | None, Query(min_length=1, max_length=200, description="One wallet's customer keys.")
    ] = None,
    active: Annotated[
        bool | None,
        Query(description="true: only keys accepted now; false: only revoked or expired ones."),
    ] = None,
    created_by: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=80,
            description="Only the keys this actor made (key:<id>, cli:<user> or system): "
            "those a leaked key made, to revoke them too.",
        ),
    ] = None,
) -> KeyPage:
    """The keys (never a secret), in the order they were made, a page at a time: pass
    ``next_cursor``, with the same filters, for the next page. Filtered by role, wallet,
    whether they are accepted now (such as a customer's live keys, to revoke) and who
    made them."""
    return await read(
        services,
        services.keys.page,
        cursor=cursor,
        limit=limit,
        role=role,
        account_id=account_id,
        active=active,
        created_by=created_by,
    )


@router.delete("/keys/{id}", response_model=KeyView, responses=_ERRORS)
async def revoke_key(id: str, caller: Admin, services: ServicesDep) -> KeyView:
    """Revoke a key: every later request with it gets 401. The key that revoked it is
    kept (``revoked_by``)."""
    return await run_in_threadpool(
        services.keys.db.repeatable, services.keys.revoke, id, actor=actor_of(caller)
    )
