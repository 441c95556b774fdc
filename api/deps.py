"""What the routes depend on: the services, the caller's key and role, idempotency keys."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Forbidden, Unauthorized
from api.metrics import Metrics
from ledger.errors import NotFound
from ledger.keys import Keys, Principal
from ledger.services import Ledger
from ledger.settings import Settings
from reports.jobs import Reports


@dataclass(frozen=True)
class Services:
    """Everything a request may use, built once per app."""

    ledger: Ledger
    keys: Keys
    metrics: Metrics
    settings: Settings
    reports: Reports


# The dependencies are ``async``: a synchronous one would cost a hop through the thread
# pool on every request. None of them blocks (the key check reads the database in the
# thread pool only when the key is not in the keys' cache).


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def get_caller(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The authenticated caller, or 401."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized
    token = credentials.credentials
    principal = services.keys.cached(token)
    if principal is None:
        principal = await run_in_threadpool(services.keys.authenticate, token)
    if principal is None:
        raise Unauthorized
    return principal


def _role(*roles: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
        if caller.role not in roles:
            raise Forbidden(f"a {caller.role} key may not do this (needs: {', '.join(roles)})")
        return caller

    return check


#: Any valid key.
Caller = Annotated[Principal, Depends(get_caller)]
#: The gateway's operations: admin and service keys.
Gateway = Annotated[Principal, Depends(_role("admin", "service"))]
#: Administration: admin keys only.
Admin = Annotated[Principal, Depends(_role("admin"))]
#: The journal: admins, and customers for their own wallet (the gateway reads balances).
JournalReader = Annotated[Principal, Depends(_role("admin", "customer"))]


def ensure_own(caller: Principal, account_id: str) -> None:
    """A customer key sees its own wallet only; any other is 'not found' (not 'forbidden')."""
    if caller.role == "customer" and caller.account != account_id:
        raise NotFound(f"no account '{account_id}'", field="account_id")


async def get_idempotency_key(
    caller: Caller,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry-safe key (printable ASCII, at most 200 characters): the same key "
            "and body return the original response; the same key with another body is 409.",
        ),
    ] = None,
) -> str:
    """The ledger's idempotency key: the header, scoped to the caller's tenant.

    Admin and service keys act for the operator and share one scope (a gateway retrying
    with a rotated key still deduplicates); a customer key's scope is its wallet. Without
    the header every request is new.
    """
    if idempotency_key is None:
        return f"auto:{uuid.uuid4().hex}"
    if caller.role == "customer":
        account = hashlib.sha256(str(caller.account).encode()).hexdigest()[:16]
        scope = f"customer:{account}"
    else:
        scope = "operator"
    return f"{scope}:{idempotency_key}"


IdempotencyKey = Annotated[str, Depends(get_idempotency_key)]
