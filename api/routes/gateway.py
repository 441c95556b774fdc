"""What a gateway calls per request: estimate, authorize, capture, void, charge, and
report usage after the fact."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from api.deps import Caller, GatewayCall, ServicesDep, ensure_own, read, replayable
from api.errors import documented
from api.routing import JsonRoute
from api.schemas import (
    AuthorizationCreate,
    CaptureCreate,
    CaptureResult,
    ChargeCreate,
    ChargeResult,
    EstimateCreate,
    EstimatePublic,
    ExtensionCreate,
    HoldView,
    UsageReportCreate,
    UsageReportResult,
)
from ledger.errors import InvalidInput

router = APIRouter(prefix="/v1", route_class=JsonRoute, tags=["gateway"])

#: A read (an estimate, a hold): any key may ask; a customer's of its own wallet only (404).
_READ = documented(401, 404, 422)
_ERRORS = documented(401, 403, 404, 409, 422)
_PAYING = documented(401, 402, 403, 404, 409, 422)
#: A change's responses, with the header of a replayed answer on its 201 or 200.
_PAID = replayable(201, _PAYING)
_CHANGED = replayable(200, _ERRORS)
_CREATED = replayable(201, _ERRORS)


@router.post("/estimates", response_model=EstimatePublic, responses=_READ)
async def create_estimate(
    body: EstimateCreate, caller: Caller, services: ServicesDep
) -> EstimatePublic:
    """Quote a request; with ``account_id``, also whether the wallet can afford it now;
    with ``at``, as the catalogs priced it at that instant."""
    if body.at is not None and body.account_id is not None:
        raise InvalidInput(
            "at prices a request as it was then; account_id asks whether it is affordable "
            "now: give one of them",
            field="at",
        )
    ledger = services.ledger
    quote = ledger.quote(body.envelope(), at=body.at)
    public = EstimatePublic.model_validate(quote.to_dict())
    if body.account_id is None:
        return public
    ensure_own(caller, body.account_id)
    wallet = await read(services, services.ledger.affordability, body.account_id, quote)
    return public.model_copy(
        update={
            "affordable": wallet.affordable,
            "credits_balance": wallet.available,
            "blocked": wallet.blocked,
            "spend_remaining": wallet.spend_remaining,
        }
    )


@router.post("/authorizations", status_code=201, response_model=HoldView, responses=_PAID)
async def create_authorization(body: AuthorizationCreate, call: GatewayCall) -> HoldView:
    """Hold the request's worst-case cost, or 402 with ``credits_needed``/``credits_balance``."""
    hold = await call.run(
        call.services.ledger.authorize,
        body.account_id,
        body.envelope(),
        request_id=body.request_id,
        ttl=None if body.ttl_seconds is None else timedelta(seconds=body.ttl_seconds),
    )
    if not hold.replayed:  # a retry answered again opened no second hold
        call.services.metrics.holds_opened.inc()
    return hold


@router.get("/authorizations/{id}", response_model=HoldView, responses=_READ)
async def read_authorization(id: str, caller: Caller, services: ServicesDep) -> HoldView:
    # A customer sees its own wallet's authorizations; others do not exist for it.
    owner = caller.account if caller.role == "customer" else None
    return await read(services, services.ledger.hold, id, owner=owner)


@router.post("/authorizations/{id}/capture", response_model=CaptureResult, responses=_CHANGED)
async def capture_authorization(id: str, body: CaptureCreate, call: GatewayCall) -> CaptureResult:
    """Charge what was used (ERROR: nothing) and release the rest of the hold."""
    result = await call.run(
        call.services.ledger.capture,
        id,
        status=body.status,
        usage=body.usage,
        actor=call.actor,
    )
    if not result.replayed:
        call.services.metrics.holds_resolved.labels("captured").inc()
    return result


@router.post("/authorizations/{id}/void", response_model=HoldView, responses=_CHANGED)
async def void_authorization(id: str, call: GatewayCall) -> HoldView:
    """Release the whole hold."""
    hold = await call.run(call.services.ledger.void, id)
    if not hold.replayed:
        call.services.metrics.holds_resolved.labels("voided").inc()
    return hold


@router.post("/authorizations/{id}/extend", response_model=HoldView, responses=_CHANGED)
async def extend_authorization(id: str, body: ExtensionCreate, call: GatewayCall) -> HoldView:
    """Keep a pending hold longer (the provider's queue is slow): it now expires
    ``ttl_seconds`` from now. An expired or resolved hold is 409: authorize again."""
    return await call.run(
        call.services.ledger.extend,
        id,
        ttl=timedelta(seconds=body.ttl_seconds),
    )


@router.post("/charges", status_code=201, response_model=ChargeResult, responses=_PAID)
async def create_charge(body: ChargeCreate, call: GatewayCall) -> ChargeResult:
    """Deduct the request's cost at once (APIs that charge when generation starts)."""
    return await call.run(
        call.services.ledger.charge,
        body.account_id,
        body.envelope(),
        actor=call.actor,
        request_id=body.request_id,
    )


@router.post(
    "/usage-records", status_code=201, response_model=UsageReportResult, responses=_CREATED
)
async def report_usage(body: UsageReportCreate, call: GatewayCall) -> UsageReportResult:
    """Charge a request's usage reported after it ran (post-paid, no authorization before):
    priced like a capture, never refused for want of credits (the provider did the work;
    a shortfall is recorded as debt, which blocks new authorizations until a top-up)."""
    result = await call.run(
        call.services.ledger.report_usage,
        body.account_id,
        body.envelope(),
        status=body.status,
        usage=body.usage,
        actor=call.actor,
        request_id=body.request_id,
        occurred_at=body.occurred_at,
    )
    if not result.replayed:
        call.services.metrics.usage_reported.labels(result.status).inc()
    return result
