"""What the routes depend on: the services, the caller's key and role, idempotency keys."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Forbidden, Unauthorized
from api.metrics import Metrics
from api.schemas import HEADER_TOKEN
from ledger.errors import NotFound
from ledger.ids import random_hex
from ledger.keys import Keys, Principal
from ledger.results import Result
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
# thread pool only when the key is not in the keys' cache). FastAPI's solving of each
# dependency is a measurable part of a request's time, so the paths are kept short: a
# route needs one dependency (``Call``) or two (a caller and the services), each resolved
# in a step or two.


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return _services(request)


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


#: Where a request's caller is kept once its key is checked (``admit``), in the ASGI scope:
#: the route class checks it before anything else of the request, and the route's own
#: dependency then finds it there.
CALLER = "creditledger.caller"


async def _authenticate(request: Request) -> Principal:
    """The caller of the request's bearer key, or 401."""
    credentials = await _bearer(request)
    if credentials is None or not credentials.credentials:
        raise Unauthorized
    keys = _services(request).keys
    token = credentials.credentials
    principal = keys.cached(token)
    if principal is None:
        # A read: run again on a new connection if its own was lost (a restart).
        principal = await run_in_threadpool(keys.db.reading, keys.authenticate, token)
    if principal is None:
        raise Unauthorized
    return principal


async def admit(request: Request, roles: frozenset[str] | None) -> Principal:
    """The request's caller: 401 without a valid key, 403 when its role is not one of
    ``roles`` (None: any role). The key is checked once per request."""
    caller: Principal | None = request.scope.get(CALLER)
    if caller is None:
        caller = await _authenticate(request)
        request.scope[CALLER] = caller
    if roles is not None and caller.role not in roles:
        needs = ", ".join(sorted(roles))
        raise Forbidden(f"a {caller.role} key may not do this (needs: {needs})")
    return caller


Gate = Callable[[Request], Coroutine[Any, Any, Principal]]


def gate_of(call: Callable[..., Any]) -> Gate | None:
    """The key check a dependency stands for (``admit`` with its roles), or None: how
    the route class (``api/routing.py``) finds the one it runs first."""
    gate: Gate | None = getattr(call, "gate", None)
    return gate


def _role(*roles: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    allowed = frozenset(roles) if roles else None

    # ``credentials`` is not read (``admit`` reads the header itself): it puts the bearer
    # scheme in the route's OpenAPI security.
    async def check(request: Request, credentials: _Credentials) -> Principal:
        return await admit(request, allowed)

    async def gate(request: Request) -> Principal:
        return await admit(request, allowed)

    check.gate = gate  # type: ignore[attr-defined]
    return check


#: Any valid key, whatever its role.
get_caller = _role()
_gateway_role = _role("admin", "service")
_admin_role = _role("admin")

#: Any valid key.
Caller = Annotated[Principal, Depends(get_caller)]
#: The gateway's operations: admin and service keys.
Gateway = Annotated[Principal, Depends(_gateway_role)]
#: Administration: admin keys only.
Admin = Annotated[Principal, Depends(_admin_role)]
#: The journal: admins, and customers for their own wallet (the gateway reads balances).
JournalReader = Annotated[Principal, Depends(_role("admin", "customer"))]


def ensure_own(caller: Principal, account_id: str) -> None:
    """A customer key sees its own wallet only; any other is 'not found' (not 'forbidden')."""
    if caller.role == "customer" and caller.account != account_id:
        raise NotFound(f"no account '{account_id}'", field="account_id")


IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=HEADER_TOKEN,
        description="Retry-safe key (printable ASCII without spaces, at most 200 "
        "characters): the same key and body return the original response, marked with the "
        "header 'Idempotent-Replayed: true' (nothing was done again); the same key with "
        "another body is 409.",
    ),
]


def actor_of(caller: Principal) -> str:
    """What the ledger records as having made a change: the caller's API key,
    ``key:<id>`` (``key:environment`` for CREDITLEDGER_ADMIN_KEY)."""
    return f"key:{caller.key_id}"


def scoped_key(caller: Principal, idempotency_key: str | None) -> str:
    """The ledger's idempotency key: the header, scoped to the caller's tenant.

    Admin and service keys act for the operator and share one scope (a gateway retrying
    with a rotated key still deduplicates); a customer key's scope is its wallet. Without
    the header every request is new.
    """
    if idempotency_key is None:
        return f"auto:{random_hex(16)}"
    if caller.role == "customer":
        account = hashlib.sha256(str(caller.account).encode()).hexdigest()[:16]
        scope = f"customer:{account}"
    else:
        scope = "operator"
    return f"{scope}:{idempotency_key}"


#: The response header that marks an answer given back for an idempotency key already
#: answered (the request had no effect of its own), as payment APIs name it.
REPLAYED_HEADER = "Idempotent-Replayed"

R = TypeVar("R", bound=Result)
T = TypeVar("T")


def replayable(status: int, responses: dict[int | str, Any]) -> dict[int | str, Any]:
    """The OpenAPI ``responses`` of a mutating route: ``responses``, and on its success
    (``status``) the header a replayed answer carries."""
    header = {
        REPLAYED_HEADER: {
            "description": "Present on an answer given back for an Idempotency-Key already "
            "answered: nothing was done again.",
            "schema": {"type": "string", "enum": ["true"]},
        }
    }
    return {**responses, status: {"headers": header}}


@dataclass(frozen=True)
class Call:
    """A mutating request's context: the services, the caller (its role checked), the
    scoped idempotency key and the response's headers. One dependency, so the route does
    not pay for four."""

    services: Services
    caller: Principal
    key: str
    response: Response
    #: Whether the use case may be handed to the database (``Database.submit``: on
    #: SQLite its write thread, on PostgreSQL a worker thread): one transaction, nothing
    #: read after it elsewhere.
    queued: bool = False

    @property
    def actor(self) -> str:
        """What the ledger records as having made the change: the caller's API key."""
        return actor_of(self.caller)

    async def run(self, use_case: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a ledger use case with this call's idempotency key: handed to the
        database when ``queued``, otherwise in the thread pool. A replayed answer says so
        in a response header (``Idempotent-Replayed: true``)."""
        db = self.services.ledger.db
        if self.queued:
            future = db.submit(use_case, *args, idempotency_key=self.key, **kwargs)
            result = await asyncio.wrap_future(future)
        else:
            result = await run_in_threadpool(use_case, *args, idempotency_key=self.key, **kwargs)
        if result.replayed:
            self.response.headers[REPLAYED_HEADER] = "true"
        if result.holds_expired:  # released on the way, as the sweeper would have
            self.services.metrics.holds_resolved.labels("expired").inc(result.holds_expired)
        return result


#: Where the previous page of a listing ended (its ``next_cursor``), and the rows per page.
CursorQuery = Annotated[str | None, Query(max_length=200)]
LimitQuery = Annotated[int, Query(ge=1, le=500)]


async def read(services: Services, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a ledger read off the event loop, on one of the database's few worker
    threads (``Database.submit_read``)."""
    future = services.ledger.db.submit_read(query, *args, **kwargs)
    return await asyncio.wrap_future(future)


# A request's key is checked before anything else of it (``JsonRoute``, with ``gate_of``):
# a request without a valid key is 401, and a key of the wrong role 403, whatever is wrong
# with its body, query or headers besides. Only a body over the size limit (413, before it
# is read) and an Authorization header given twice (422: whose key acts is not to be
# guessed) come earlier. One function per role rather than a factory: with postponed
# annotations, FastAPI resolves a parameter's ``Annotated[..., Depends(role)]`` in the
# module's globals, where a factory's ``role`` is not.


async def _gateway_call(
    request: Request, response: Response, caller: Gateway, idempotency_key: IdempotencyHeader = None
) -> Call:
    # The gateway's use cases (authorize, capture, void, extend, charge, usage records)
    # are each one ledger transaction: they may be queued for the write thread.
    key = scoped_key(caller, idempotency_key)
    return Call(_services(request), caller, key, response, queued=True)


async def _admin_call(
    request: Request, response: Response, caller: Admin, idempotency_key: IdempotencyHeader = None
) -> Call:
    return Call(_services(request), caller, scoped_key(caller, idempotency_key), response)


#: A gateway operation (admin and service keys) with its idempotency key.
GatewayCall = Annotated[Call, Depends(_gateway_call)]
#: An administrative change (admin keys) with its idempotency key.
AdminCall = Annotated[Call, Depends(_admin_call)]
