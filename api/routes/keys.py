"""API keys (admin): create one (shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import Admin, ServicesDep
from api.routing import JsonRoute
from api.schemas import CreatedKey, ErrorPublic, KeyCreate, KeyView

router = APIRouter(prefix="/v1", route_class=JsonRoute, tags=["keys"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No valid API key."},
    403: {"model": ErrorPublic, "description": "Only admin keys manage keys."},
    404: {"model": ErrorPublic, "description": "No such key or account."},
    422: {"model": ErrorPublic, "description": "Invalid request: the field and what is allowed."},
}


@router.post("/keys", status_code=201, response_model=CreatedKey, responses=_ERRORS)
async def create_key(body: KeyCreate, _caller: Admin, services: ServicesDep) -> CreatedKey:
    """A new key. ``key`` is in this response only: the server keeps a digest."""
    return await run_in_threadpool(
        services.keys.create, body.role, name=body.name, account_id=body.account_id
    )


@router.get("/keys", response_model=list[KeyView], responses=_ERRORS)
async def list_keys(_caller: Admin, services: ServicesDep) -> list[KeyView]:
    return await run_in_threadpool(services.keys.list)


@router.delete("/keys/{id}", response_model=KeyView, responses=_ERRORS)
async def revoke_key(id: str, _caller: Admin, services: ServicesDep) -> KeyView:
    """Revoke a key: every later request with it gets 401."""
    return await run_in_threadpool(services.keys.revoke, id)
