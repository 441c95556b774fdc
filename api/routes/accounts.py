"""Wallets: open, read, top up, adjust; the journal: entries and reversals."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import (
    Admin,
    AdminCall,
    Caller,
    CursorQuery,
    Gateway,
    JournalReader,
    LimitQuery,
    ServicesDep,
    ensure_own,
    read,
    replayable,
)
from api.errors import Forbidden, documented
from api.routing import JsonRoute
from api.schemas import (
    MAX_AMOUNT,
    AccountChangesPublic,
    AccountCreate,
    AccountPagePublic,
    AccountPublic,
    AccountSummaryPublic,
    AccountUpdate,
    AdjustmentCreate,
    AdjustmentResult,
    BalancePublic,
    Day,
    EntryPage,
    HoldPage,
    Instant,
    ReversalCreate,
    ReversalResult,
    RevocationCreate,
    RevocationResult,
    TopUpCreate,
    TopUpResult,
    UsagePublic,
    UsageRecordPage,
    UsageRecordView,
)
from ledger.results import AccountSummary, AccountView
from ledger.services import UNSET

router = APIRouter(prefix="/v1", route_class=JsonRoute, tags=["accounts"])

_ERRORS = documented(401, 403, 404, 409, 422)
#: A read of a wallet any key may ask for (a customer's of its own wallet only: 404).
_READ = documented(401, 404, 422)
#: A read of a wallet's journal: admin and customer keys (a service key's is 403).
_JOURNAL = documented(401, 403, 404, 422)
#: A change's responses, with the header of a replayed answer on its 201 or 200.
_CREATED = replayable(201, _ERRORS)
_CHANGED = replayable(200, _ERRORS)
EntryKindQuery = Annotated[
    Literal["topup", "adjustment", "capture", "charge", "expiry", "reversal", "allocation"] | None,
    Query(),
]
ReferenceQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="Of one payment: the top-ups given this reference (an invoice, a "
        "payment's id), the reversals that took them back (a chargeback), and the expiries "
        "and revocations that took back what was left of them.",
    ),
]
ActorQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=80,
        description="Who made it: key:<id> (an API key), cli:<user> or system.",
    ),
]


def _public(view: AccountView) -> AccountPublic:
    return AccountPublic(id=view.account_id, **view.model_dump(exclude={"account_id", "as_of"}))


def _summary(view: AccountSummary) -> AccountSummaryPublic:
    return AccountSummaryPublic(
        id=view.account_id, **view.model_dump(exclude={"account_id", "as_of"})
    )


@router.post("/accounts", status_code=201, response_model=AccountPublic, responses=_CREATED)
async def create_account(body: AccountCreate, call: AdminCall) -> AccountPublic:
    """Open a wallet counted in ``unit`` (409 if the id is taken); with a
    ``monthly_allocation``, this period's is granted at once."""
    return _public(
        await call.run(
            call.services.ledger.open_account,
            body.id,
            body.unit,
            overdraft_limit=body.overdraft_limit,
            monthly_allocation=body.monthly_allocation,
            timezone=body.timezone,
            monthly_spend_limit=body.monthly_spend_limit,
        )
    )


@router.get("/accounts", response_model=AccountPagePublic, responses=documented(401, 403, 422))
async def list_accounts(
    _caller: Gateway,
    services: ServicesDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
    unit: Annotated[str | None, Query(max_length=16)] = None,
    blocked: bool | None = None,
    available_below: Annotated[
        int | None,
        Query(
            ge=-MAX_AMOUNT,
            le=MAX_AMOUNT,
            description="Only wallets whose available balance is below this many minor "
            "units of `unit` (which it needs): those that could not pay a request of "
            "that price.",
        ),
    ] = None,
    in_debt: Annotated[
        bool | None,
        Query(description="Only the wallets in debt (`true`), or only those not (`false`)."),
    ] = None,
) -> AccountPagePublic:
    """Every wallet in the order they were opened, with its balances: pass
    ``next_cursor``, with the same filters, for the next page. Filters: of one ``unit``;
    only the blocked or the unblocked ones; only those with less available than
    ``available_below``; only those in debt or not. Admin and service keys."""
    page = await read(
        services,
        services.ledger.accounts,
        cursor=cursor,
        limit=limit,
        unit=unit,
        blocked=blocked,
        available_below=available_below,
        in_debt=in_debt,
    )
    return AccountPagePublic(
        items=[_summary(item) for item in page.items], next_cursor=page.next_cursor
    )


@router.get("/accounts/{id}", response_model=AccountPublic, responses=_READ)
async def read_account(id: str, caller: Caller, services: ServicesDep) -> AccountPublic:
    """Balances (posted, pending holds, available) and credit grants."""
    ensure_own(caller, id)
    return _public(await read(services, services.ledger.account, id))


@router.patch("/accounts/{id}", response_model=AccountPublic, responses=_CHANGED)
async def update_account(id: str, body: AccountUpdate, call: AdminCall) -> AccountPublic:
    """Change a wallet's overdraft limit (at once), monthly allocation (from the next
    period, at once in a period that had none; null stops it), monthly spend limit (at
    once, this month's spending counts; null removes it), or block it (at once: new
    authorizations and charges are 403 ``account_blocked``; its pending holds still
    capture, void and extend; it can still be topped up) and unblock it (a period without
    its allocation is granted it at once). Each change is kept:
    ``GET /v1/accounts/{id}/changes``."""
    given = body.model_fields_set

    def setting(name: str) -> Any:
        return getattr(body, name) if name in given else UNSET

    return _public(
        await call.run(
            call.services.ledger.update_account,
            id,
            actor=call.actor,
            overdraft_limit=setting("overdraft_limit"),
            monthly_allocation=setting("monthly_allocation"),
            blocked=setting("blocked"),
            monthly_spend_limit=setting("monthly_spend_limit"),
            reason=body.reason,
        )
    )


@router.get("/accounts/{id}/changes", response_model=AccountChangesPublic, responses=_JOURNAL)
async def list_account_changes(
    id: str,
    caller: JournalReader,
    services: ServicesDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> AccountChangesPublic:
    """The changes of the wallet's settings, newest first: from what to what, why, when.
    Admin keys, and the wallet's customer (as for its entries)."""
    ensure_own(caller, id)
    page = await read(services, services.ledger.account_changes, id, cursor=cursor, limit=limit)
    items = page.items
    if caller.role == "customer":
        items = [change.model_copy(update={"actor": None}) for change in items]
    return AccountChangesPublic(items=items, next_cursor=page.next_cursor)


@router.get("/accounts/{id}/balance", response_model=BalancePublic, responses=_READ)
async def read_balance(
    id: str,
    caller: Caller,
    services: ServicesDep,
    as_of: Annotated[
        Instant | None,
        Query(
            description="An ISO 8601 instant with its timezone, not later than now; omitted: now."
        ),
    ] = None,
) -> BalancePublic:
    """The wallet's balance, pending and available now, or at a past instant (``as_of``):
    everything posted by then, the holds open then and the overdraft limit in force then."""
    ensure_own(caller, id)
    view = await read(services, services.ledger.balance, id, as_of=as_of)
    return BalancePublic(id=view.account_id, **view.model_dump(exclude={"account_id"}))


@router.get("/accounts/{id}/usage", response_model=UsagePublic, responses=_READ)
async def read_usage(
    id: str,
    caller: Caller,
    services: ServicesDep,
    from_day: Annotated[
        Day | None,
        Query(alias="from", description="First day (YYYY-MM-DD, the wallet's timezone)."),
    ] = None,
    to_day: Annotated[
        Day | None, Query(alias="to", description="Last day, included (default: today).")
    ] = None,
) -> UsagePublic:
    """What the wallet used, per day, catalog, operation and model, and what it was
    charged for it (refunds are reversal entries): by default its current month up to
    today, at most 366 days at once. Days are the wallet's (its timezone)."""
    ensure_own(caller, id)
    view = await read(services, services.ledger.usage, id, from_day=from_day, to_day=to_day)
    return UsagePublic(
        id=view.account_id,
        unit=view.unit,
        scale=view.scale,
        timezone=view.timezone,
        from_=view.first_day,
        to=view.last_day,
        items=view.items,
        totals=view.totals,
    )


@router.get("/accounts/{id}/entries", response_model=EntryPage, responses=_JOURNAL)
async def list_entries(
    id: str,
    caller: JournalReader,
    services: ServicesDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
    kind: EntryKindQuery = None,
    since: Annotated[Instant | None, Query(description="Posted at or after this instant.")] = None,
    until: Annotated[Instant | None, Query(description="Posted before this instant.")] = None,
    actor: ActorQuery = None,
    reference: ReferenceQuery = None,
) -> EntryPage:
    """The wallet's journal entries, newest first, of one ``kind``, made by one ``actor``
    (admin keys), of one payment (``reference``) and posted from ``since`` to before
    ``until`` if given; pass ``next_cursor`` (with the same filters) for the next page."""
    ensure_own(caller, id)
    if actor is not None and caller.role != "admin":
        raise Forbidden("only admin keys see, and filter by, who made an entry")
    page = await read(
        services,
        services.ledger.entries,
        id,
        cursor=cursor,
        limit=limit,
        kind=kind,
        since=since,
        until=until,
        actor=actor,
        reference=reference,
    )
    if caller.role == "customer":
        # Who made each entry (the operator's keys and users) is the operator's to see.
        hidden = [entry.model_copy(update={"actor": None}) for entry in page.items]
        page = page.model_copy(update={"items": hidden})
    return page


@router.get("/entries", response_model=EntryPage, responses=documented(401, 403, 422))
async def list_journal(
    _caller: Admin,
    services: ServicesDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
    kind: EntryKindQuery = None,
    since: Annotated[Instant | None, Query(description="Posted at or after this instant.")] = None,
    until: Annotated[Instant | None, Query(description="Posted before this instant.")] = None,
    actor: ActorQuery = None,
    reference: ReferenceQuery = None,
) -> EntryPage:
    """Every wallet's journal entries, newest first, filtered as a wallet's are: what one
    API key or user did (``actor``, such as after a key leaked), what one payment
    credited and took back (``reference``), or what was posted in a window. Unless
    narrowed by a ``kind`` other than capture and charge, or by ``reference``, it reads
    the whole journal: an audit, not a request path."""
    return await read(
        services,
        services.ledger.journal,
        cursor=cursor,
        limit=limit,
        kind=kind,
        since=since,
        until=until,
        actor=actor,
        reference=reference,
    )


@router.get("/accounts/{id}/authorizations", response_model=HoldPage, responses=_READ)
async def list_authorizations(
    id: str,
    caller: Caller,
    services: ServicesDep,
    status: Annotated[Literal["pending", "captured", "voided", "expired"] | None, Query()] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> HoldPage:
    """The wallet's authorizations (holds), newest first, of one ``status`` if given: what
    its ``pending`` is made of. Pass ``next_cursor`` for the next page."""
    ensure_own(caller, id)
    return await read(
        services, services.ledger.holds_of, id, status=status, cursor=cursor, limit=limit
    )


@router.get("/accounts/{id}/usage-records", response_model=UsageRecordPage, responses=_READ)
async def list_usage_records(
    id: str,
    caller: Caller,
    services: ServicesDep,
    status: Annotated[
        Literal["pending", "COMPLETED", "FAILED", "ERROR", "CHARGED", "voided", "expired"] | None,
        Query(description="The outcome: a capture's provider status, CHARGED, or the hold's."),
    ] = None,
    kind: Annotated[
        Literal["authorization", "charge", "usage"] | None,
        Query(description="What was metered: an authorization, a charge, or usage reported."),
    ] = None,
    catalog: Annotated[str | None, Query(max_length=64)] = None,
    operation: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    request_id: Annotated[
        str | None, Query(max_length=200, description="The gateway's id of the request.")
    ] = None,
    since: Annotated[Instant | None, Query(description="Made at or after this instant.")] = None,
    until: Annotated[Instant | None, Query(description="Made before this instant.")] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 50,
) -> UsageRecordPage:
    """The wallet's requests as metered, one record per authorization, immediate charge
    or usage reported after the fact (``kind``), newest first: what was asked, held,
    used and charged, and the refund if one was made. Filter by outcome, catalog,
    operation, model, the gateway's ``request_id`` and time; pass ``next_cursor`` (with
    the same filters) for the next page."""
    ensure_own(caller, id)
    return await read(
        services,
        services.ledger.usage_records,
        id,
        status=status,
        kind=kind,
        catalog=catalog,
        operation=operation,
        model=model,
        request_id=request_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )


@router.get("/usage-records/{id}", response_model=UsageRecordView, responses=_READ)
async def read_usage_record(id: str, caller: Caller, services: ServicesDep) -> UsageRecordView:
    """One request as metered: a charge's or a usage report's ``id``, or an
    authorization's ``metering_id``."""
    owner = caller.account if caller.role == "customer" else None
    return await read(services, services.ledger.usage_record, id, owner=owner)


@router.post(
    "/accounts/{id}/topups", status_code=201, response_model=TopUpResult, responses=_CREATED
)
async def create_topup(
    id: str,
    body: TopUpCreate,
    call: AdminCall,
) -> TopUpResult:
    """Add credits as a grant (a token pack, a monthly allocation, a promotion)."""
    return await call.run(
        call.services.ledger.top_up,
        id,
        body.amount,
        actor=call.actor,
        kind=body.kind,
        expires_at=body.expires_at,
        priority=body.priority,
        reference=body.reference,
    )


@router.post(
    "/accounts/{id}/adjustments",
    status_code=201,
    response_model=AdjustmentResult,
    responses=_CREATED,
)
async def create_adjustment(
    id: str,
    body: AdjustmentCreate,
    call: AdminCall,
) -> AdjustmentResult:
    """An admin correction: a signed amount with its reason."""
    return await call.run(
        call.services.ledger.adjust,
        id,
        body.amount,
        reason=body.reason,
        actor=call.actor,
    )


@router.post(
    "/entries/{id}/reverse",
    status_code=201,
    response_model=ReversalResult,
    responses=_CREATED,
)
async def reverse_entry(
    id: str,
    body: ReversalCreate,
    call: AdminCall,
) -> ReversalResult:
    """Reverse an entry (refund a charge, take back a top-up), at most once."""
    return await call.run(
        call.services.ledger.reverse,
        id,
        reason=body.reason,
        actor=call.actor,
    )


@router.post(
    "/grants/{id}/revoke",
    status_code=201,
    response_model=RevocationResult,
    responses=_CREATED,
)
async def revoke_grant(id: str, body: RevocationCreate, call: AdminCall) -> RevocationResult:
    """Take back what is left of a grant (a promotion withdrawn, credits granted by
    mistake): it expires now, its remainder moves out by an expiry entry. What was spent
    from it stays spent. 409 ``grant_not_open`` when nothing is left."""
    return await call.run(
        call.services.ledger.revoke_grant,
        id,
        reason=body.reason,
        actor=call.actor,
    )
