"""Request and response bodies of the HTTP API (the edge's schemas).

Requests are strict: unknown fields are refused, amounts are JSON integers of the unit's
minor units within 64 bits (no floats, no strings, no booleans). Responses reuse the
ledger's result models where they already are the public shape.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
)
from pydantic_core import PydanticCustomError

from ledger.kernel import account_id_problem
from ledger.keys import CreatedKey, KeyPage, KeyView
from ledger.results import (
    AccountChangeView,
    AdjustmentResult,
    CaptureResult,
    ChargeResult,
    EntryPage,
    GrantView,
    HoldPage,
    HoldView,
    ReversalResult,
    RevocationResult,
    TopUpResult,
    UsageLine,
    UsageRecordPage,
    UsageRecordView,
    UsageReportResult,
    UsageTotals,
)
from reports.jobs import JobView

MAX_AMOUNT = 2**63 - 1

Amount = Annotated[
    int,
    Field(strict=True, ge=1, le=MAX_AMOUNT, description="Minor units of the account's unit."),
]
NonNegativeAmount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
SignedAmount = Annotated[
    int,
    Field(
        strict=True,
        ge=-MAX_AMOUNT,
        le=MAX_AMOUNT,
        description="Signed minor units: positive credits the wallet, negative debits it.",
    ),
]


#: A header value of one token: printable ASCII without spaces (the Idempotency-Key).
HEADER_TOKEN = r"^[\x21-\x7e]+$"
#: Each pattern of a request field, as a refusal says what it allows.
PATTERN_TEXTS = {HEADER_TOKEN: "printable ASCII without spaces or control characters (! to ~)"}


DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day_text(value: object) -> object:
    """Only YYYY-MM-DD: not a timestamp (``0``) and not an instant with a time."""
    if not isinstance(value, str) or not DAY.fullmatch(value):
        raise PydanticCustomError("day", "give a day as YYYY-MM-DD, such as 2026-11-01")
    return value


#: A calendar day written YYYY-MM-DD (query parameters).
Day = Annotated[date, BeforeValidator(_day_text)]


INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _instant_text(value: object) -> object:
    """Only an ISO 8601 date and time: not a Unix timestamp (``-1515``, ``1.5e9``), which
    pydantic would otherwise read as seconds or milliseconds since 1970."""
    if isinstance(value, str) and INSTANT.match(value):
        return value
    raise PydanticCustomError(
        "instant", "give an ISO 8601 instant with a timezone, such as 2026-11-01T00:00:00Z"
    )


#: An instant written in ISO 8601 with a timezone (bodies and query parameters).
Instant = Annotated[AwareDatetime, BeforeValidator(_instant_text)]


AccountId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="The operator's id for the wallet (a bucket slug, a user id).",
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=64)]


def _new_account_id(value: str) -> str:
    problem = account_id_problem(value)
    if problem is not None:
        raise PydanticCustomError("account_id", problem)
    return value


#: A new wallet's id: also one path segment, printing as it reads (the ledger's rule).
NewAccountId = Annotated[
    AccountId,
    AfterValidator(_new_account_id),
    Field(
        description="The operator's id for the new wallet (a user id, an e-mail, a bucket "
        "slug): one segment of the API's paths, so no '/' and not '.' or '..'; no white "
        "space around it, no control or invisible characters; not starting with 'system:'."
    ),
]

Reason = Annotated[str, Field(min_length=1, max_length=500)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PricedRequest(_Request):
    """The envelope a gateway sends: the provider's own request body under ``params``."""

    catalog: Name = Field(description="A price catalog, e.g. cosmic, veo3, pixazo.")
    operation: Name = Field(description="An operation of the catalog, e.g. text, video.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The provider's request body, as the provider takes it."
    )

    def envelope(self) -> dict[str, Any]:
        return {"catalog": self.catalog, "operation": self.operation, "params": self.params}


class EstimateCreate(PricedRequest):
    account_id: AccountId | None = Field(
        default=None, description="Also say whether this wallet can afford the request now."
    )
    at: Instant | None = Field(
        default=None,
        description="Price with the catalog versions in force at this instant (default: "
        "now); not with account_id, whose answer is for now.",
    )


class AuthorizationCreate(PricedRequest):
    account_id: AccountId
    request_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="The gateway's id of the request, kept on the metering record."
    )
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=7 * 24 * 3600)] | None = Field(
        default=None, description="How long to hold; default: the server's hold TTL."
    )


class ChargeCreate(PricedRequest):
    account_id: AccountId
    request_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class UsageReportCreate(PricedRequest):
    """Usage reported after the request ran (post-paid: no authorization before it)."""

    account_id: AccountId
    status: Literal["COMPLETED", "FAILED", "ERROR"] = Field(
        description="The provider's outcome. ERROR is never charged; FAILED follows the "
        "catalog version's policy."
    )
    usage: dict[str, Any] | None = Field(
        default=None,
        description="What the request used: the provider's usage object (input_tokens, "
        "output_tokens, images, videos, seconds, candidates...).",
    )
    request_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="The gateway's id of the request, kept on the usage record."
    )
    occurred_at: Instant | None = Field(
        default=None,
        description="When the request ran (default: now; not later than now): it is priced "
        "with the catalog versions in force then.",
    )


class ExtensionCreate(_Request):
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=7 * 24 * 3600)] = Field(
        description="Keep the hold this long from now (at most 7 days from its authorization)."
    )


class CaptureCreate(_Request):
    status: Literal["COMPLETED", "FAILED", "ERROR"] = Field(
        description="The provider's outcome. ERROR is never charged."
    )
    usage: dict[str, Any] | None = Field(
        default=None,
        description="What the request used: the provider's usage object (input_tokens, "
        "output_tokens, images, videos, seconds, candidates...).",
    )


class AccountCreate(_Request):
    id: NewAccountId
    unit: Annotated[str, Field(min_length=1, max_length=16)] = Field(
        description="The unit the wallet counts in: token, credit or usd."
    )
    overdraft_limit: NonNegativeAmount = 0
    monthly_allocation: Amount | None = None
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    monthly_spend_limit: NonNegativeAmount | None = Field(
        default=None,
        description="The most the wallet may spend per month (in its timezone): what "
        "captures and charges debited plus its open holds; null: no limit.",
    )


class AccountUpdate(_Request):
    """The settings to change; those left out stay as they are. The unit and the
    timezone are fixed at opening."""

    overdraft_limit: NonNegativeAmount | None = Field(
        default=None, description="The new overdraft limit; it applies at once."
    )
    monthly_allocation: Amount | None = Field(
        default=None,
        description="The new monthly allocation, from the next period (at once in a "
        "period that had none); null stops it.",
    )
    blocked: StrictBool | None = Field(
        default=None,
        description="true: refuse new authorizations and charges at once (403 "
        "account_blocked); false: allow them again.",
    )
    monthly_spend_limit: NonNegativeAmount | None = Field(
        default=None,
        description="The new monthly spend limit, at once (this month's spending counts); "
        "null removes it.",
    )
    reason: Reason | None = Field(default=None, description="Why, kept with the change.")


class AccountChangesPublic(BaseModel):
    """A wallet's setting changes, newest first; ``next_cursor`` reads on (null: no more)."""

    items: list[AccountChangeView]
    next_cursor: str | None


class TopUpCreate(_Request):
    amount: Amount
    kind: Literal["pack", "allocation", "promo"] = "pack"
    expires_at: Instant | None = None
    priority: Annotated[int, Field(strict=True, ge=-1_000_000, le=1_000_000)] = 0
    reference: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class AdjustmentCreate(_Request):
    amount: SignedAmount
    reason: Reason


class ReversalCreate(_Request):
    reason: Reason


class RevocationCreate(_Request):
    reason: Reason = Field(description="Why the grant is taken back, kept in the entry's memo.")


class KeyCreate(_Request):
    role: Literal["admin", "service", "customer"]
    name: Annotated[str, Field(max_length=200)] = ""
    account_id: AccountId | None = Field(
        default=None, description="The one wallet a customer key may see (customer keys only)."
    )
    expires_at: Instant | None = Field(
        default=None, description="From this instant the key is refused (default: never)."
    )


# ------------------------------------------------------------------------------ responses


class LinePublic(BaseModel):
    description: str
    quantity: int | str
    unit_price: str
    amount: str


class QuotePublic(BaseModel):
    """A quote: ``cost`` as requested, ``max_cost`` the most it can cost (what is held)."""

    catalog: str
    catalog_version: str
    operation: str
    model: str
    unit: str
    scale: int
    cost: int
    max_cost: int
    lines: list[LinePublic]
    defaults_applied: dict[str, Any]
    estimated_usage: dict[str, int | str]


class EstimatePublic(QuotePublic):
    #: With ``account_id``: whether available covers ``max_cost`` now (authorize decides).
    affordable: bool | None = None
    #: With ``account_id``: the wallet's available credits (where its holds past their
    #: expiry, not yet released, would leave ``max_cost`` short: without them, as the
    #: authorization, which releases them, will see it).
    credits_balance: int | None = None
    #: With ``account_id``: the wallet is blocked (then nothing is affordable).
    blocked: bool | None = None
    #: With ``account_id``: what the wallet's monthly spend limit leaves this period
    #: (null: no limit).
    spend_remaining: int | None = None


class _Money(BaseModel):
    id: str
    unit: str
    scale: int
    balance: int
    pending: int
    available: int
    overdraft_limit: int
    debt: int


class BalancePublic(_Money):
    """A wallet's money now (``as_of`` null), or at ``as_of``: what had been posted by
    then, the holds open then, and the overdraft limit in force then."""

    as_of: datetime | None


class UsagePublic(BaseModel):
    """A wallet's usage from ``from`` to ``to`` (days in its ``timezone``, both included):
    one item per day, catalog, operation and model, and their totals. ``amount`` is in
    minor units of ``unit`` as charged (refunds are reversal entries in the journal);
    ``seconds`` are video seconds (exact)."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    unit: str
    scale: int
    timezone: str
    from_: date = Field(alias="from")
    to: date
    items: list[UsageLine]
    totals: UsageTotals


class AccountSummaryPublic(_Money):
    monthly_allocation: int | None
    #: The most it may spend per month (captures, charges, open holds); null: no limit.
    monthly_spend_limit: int | None
    timezone: str
    #: Refused new authorizations and charges (403 account_blocked).
    blocked: bool
    created_at: datetime


class AccountPublic(AccountSummaryPublic):
    #: What captures and charges debited it this month (in its timezone), less what
    #: refunds of those gave back (a refund counts in its charge's month); null only in a
    #: response replayed from before spend limits.
    spent_this_month: int | None
    #: What its spend limit leaves this month after its open holds; null: no limit.
    spend_remaining: int | None
    grants: list[GrantView]


class AccountPagePublic(BaseModel):
    """Wallets in the order they were opened; ``next_cursor`` reads on (null: no more)."""

    items: list[AccountSummaryPublic]
    next_cursor: str | None


class CatalogsPublic(BaseModel):
    catalogs: list[dict[str, Any]]


class HealthPublic(BaseModel):
    status: Literal["ok"]
    database: str


class ErrorPublic(BaseModel):
    error: str
    message: str
    field: str | None = None
    allowed: Any = None
    errors: list[dict[str, Any]] | None = None
    #: 500: the request's id (as in its X-Request-ID header and the server's log).
    request_id: str | None = None


class InsufficientCreditsPublic(ErrorPublic):
    """402: ``insufficient_credits``, or ``spend_limit_reached`` with the spend fields."""

    credits_needed: int
    credits_balance: int
    unit: str
    scale: int
    #: spend_limit_reached: the wallet's monthly spend limit, what it leaves, and when
    #: the month ends (the next starts).
    spend_limit: int | None = None
    spend_remaining: int | None = None
    resets_at: datetime | None = None


__all__ = [
    "AccountCreate",
    "AccountPagePublic",
    "AccountPublic",
    "AccountSummaryPublic",
    "AdjustmentCreate",
    "AdjustmentResult",
    "AuthorizationCreate",
    "CaptureCreate",
    "CaptureResult",
    "CatalogsPublic",
    "ChargeCreate",
    "ChargeResult",
    "CreatedKey",
    "EntryPage",
    "ErrorPublic",
    "EstimateCreate",
    "EstimatePublic",
    "HealthPublic",
    "HoldPage",
    "HoldView",
    "InsufficientCreditsPublic",
    "KeyCreate",
    "KeyPage",
    "KeyView",
    "ReversalCreate",
    "ReversalResult",
    "RevocationCreate",
    "RevocationResult",
    "TopUpCreate",
    "TopUpResult",
    "UsageRecordPage",
    "UsageRecordView",
    "UsageReportCreate",
    "UsageReportResult",
]


class ReportCreate(_Request):
    """A monthly statement: for one wallet or all, in a timezone, in a format."""

    month: Annotated[str, Field(max_length=7, examples=["2026-10"])] = Field(
        description="A closed calendar month, YYYY-MM."
    )
    format: Literal["csv", "json", "parquet", "html"] = "json"
    account_id: AccountId | None = Field(
        default=None, description="One wallet (a customer key: its own, the default)."
    )
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        default="UTC", description="The IANA timezone the month and its days are cut in."
    )


class ReportPublic(JobView):
    """A report job: queued -> running -> succeeded | failed, with progress."""

    download_url: str | None = Field(
        default=None, description="Where the file is, once the job has succeeded."
    )
