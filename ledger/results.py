"""What the use cases return: JSON-ready pydantic models (stored for idempotent replay).

Amounts are integers of the account unit's minor units, with ``unit`` and ``scale``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr


class Result(BaseModel):
    """An answer of the ledger: immutable; a use case's may be a replay (``replayed``)."""

    model_config = ConfigDict(frozen=True)

    # Set on the answer a use case gives back for an idempotency key it already answered.
    _replayed: bool = PrivateAttr(default=False)
    # How many holds past their expiry the use case released on the way (see below).
    _holds_expired: int = PrivateAttr(default=0)

    @property
    def replayed(self) -> bool:
        """Whether this is the stored answer of an earlier request with the same
        idempotency key, given back again: this request had no effect of its own. Not
        part of the answer: a replay equals the answer it replays."""
        return self._replayed

    @property
    def holds_expired(self) -> int:
        """How many of the wallet's holds past their expiry, not yet released by a
        sweeper, this use case released before it could go ahead (an authorization or a
        charge the held credits would have refused). Not part of the answer: a replay
        released none."""
        return self._holds_expired

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (
            type(self) is type(other)
            and self.__dict__ == other.__dict__
            and self.__pydantic_extra__ == other.__pydantic_extra__
        )


class GrantView(Result):
    id: str
    kind: str
    amount: int
    remaining: int
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    period: str | None = None
    reference: str | None = None


class BalanceView(Result):
    """A wallet's money. available = balance - pending + overdraft_limit."""

    account_id: str
    unit: str
    scale: int
    balance: int
    pending: int
    available: int
    overdraft_limit: int
    #: Posted beyond the overdraft limit (capture overage); blocks authorizations.
    debt: int
    as_of: datetime | None = None


class AccountSummary(BalanceView):
    """A wallet without its grants (as listed)."""

    monthly_allocation: int | None
    #: Minor units it may spend per period (captures, charges, open holds); None: no
    #: limit. Default: results stored for replay before wallets had spend limits.
    monthly_spend_limit: int | None = None
    timezone: str
    #: Refused new authorizations and charges (403 account_blocked). Default: results
    #: stored for replay before wallets could be blocked.
    blocked: bool = False
    created_at: datetime


class AccountView(AccountSummary):
    #: What captures and charges debited it this period (its month, in its timezone),
    #: less what refunds of those gave back (a refund counts in its charge's period).
    spent_this_month: int | None = None
    #: What its spend limit leaves this period, after open holds; None: no limit.
    spend_remaining: int | None = None
    grants: list[GrantView]


class AccountPage(Result):
    """Wallets in order of their ids; ``next_cursor`` reads on (None: no more)."""

    items: list[AccountSummary]
    next_cursor: str | None


class AccountChangeView(Result):
    """A change of a wallet's setting: from ``old_value`` to ``new_value`` (minor units;
    null: no monthly allocation; ``blocked``: true or false)."""

    id: str
    setting: str
    old_value: bool | int | None
    new_value: bool | int | None
    reason: str | None
    changed_at: datetime
    #: Who changed it, as ``EntryView.actor``.
    actor: str | None = None


class AccountChangePage(Result):
    """A wallet's changes, newest first; ``next_cursor`` reads on (None: no more)."""

    items: list[AccountChangeView]
    next_cursor: str | None


class UsageTotals(Result):
    """What was metered: requests, their usage, and the minor units charged for them. A
    refund is a credit in the journal (an entry of kind ``reversal``), not less usage."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    videos: int = 0
    candidates: int = 0
    #: Video seconds, exact to the microsecond.
    seconds: Decimal = Decimal(0)
    amount: int = 0


class _UsageKey(Result):
    day: date
    catalog: str
    operation: str
    model: str


class UsageLine(UsageTotals, _UsageKey):
    """One day's usage of one model, by catalog and operation (the key comes first)."""


class UsageView(Result):
    """A wallet's usage from ``first_day`` to ``last_day`` (days in its timezone)."""

    account_id: str
    unit: str
    scale: int
    timezone: str
    first_day: date
    last_day: date
    items: list[UsageLine]
    totals: UsageTotals


class PostingView(Result):
    account_id: str
    amount: int


class EntryView(Result):
    id: str
    kind: str
    account_id: str
    unit: str
    posted_at: datetime
    memo: str
    reverses_id: str | None
    hold_id: str | None
    #: What made it: ``key:<api key id>``, ``cli:<user>`` or ``system`` (expiries,
    #: allocations); null when unknown (before migration 0012, or a caller that named
    #: none), and as customer keys see it.
    actor: str | None = None
    postings: list[PostingView]


class RecordedUsage(Result):
    """The usage a metering record holds: what the provider reported at the capture; for
    an immediate charge, what it was priced on; while pending, and after a void or an
    expiry, the estimate the hold was sized on."""

    input_tokens: int
    output_tokens: int
    images: int
    videos: int
    candidates: int
    #: Video seconds, exact to the microsecond.
    seconds: Decimal


class UsageRecordView(Result):
    """One authorization, immediate charge or usage reported after the fact (``kind``:
    authorization, charge, usage), as metered: what was asked (catalog, version,
    operation, model), held and charged, its usage, and the gateway's ``request_id``.
    ``entry_id`` is the capture or charge entry (None when nothing was charged);
    ``reversed_by`` the entry that refunded it, if one did."""

    id: str
    account_id: str
    kind: str
    status: str
    catalog: str
    catalog_version: str
    operation: str
    model: str
    unit: str
    scale: int
    held: int
    charged: int
    usage: RecordedUsage
    request_id: str | None
    hold_id: str | None
    entry_id: str | None
    reversed_by: str | None
    created_at: datetime
    completed_at: datetime | None


class UsageRecordPage(Result):
    """A wallet's usage records, newest first; ``next_cursor`` reads on (None: no more)."""

    items: list[UsageRecordView]
    next_cursor: str | None


class TopUpResult(Result):
    entry: EntryView
    grant: GrantView | None
    balance: BalanceView


class AdjustmentResult(Result):
    entry: EntryView
    balance: BalanceView


class HoldView(Result):
    id: str
    account_id: str
    status: str
    held: int
    unit: str
    scale: int
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None
    captured: int | None
    entry_id: str | None
    catalog: str
    catalog_version: str
    operation: str
    model: str
    metering_id: str
    #: Available after this operation.
    credits_remaining: int
    quote: dict[str, Any] | None = None


class HoldPage(Result):
    """A wallet's authorizations, newest first; ``next_cursor`` reads on (None: no more)."""

    items: list[HoldView]
    next_cursor: str | None


class CaptureResult(Result):
    id: str
    status: str
    outcome: str
    charged: int
    released: int
    #: Charged beyond the hold (text whose real input exceeded the estimate).
    overage: int
    credits_used: int
    credits_remaining: int
    unit: str
    scale: int
    entry_id: str | None
    #: The priced usage (pricing.Charge.to_dict()).
    charge: dict[str, Any]


class ChargeResult(Result):
    id: str
    account_id: str
    entry_id: str | None
    credits_used: int
    credits_remaining: int
    unit: str
    scale: int
    quote: dict[str, Any]


class UsageReportResult(Result):
    """Usage reported after the fact (post-paid), priced and charged: ``id`` is its
    usage record. What the wallet could not cover is owed as ``debt``, which blocks its
    new authorizations and charges until a top-up repays it."""

    id: str
    account_id: str
    #: The provider's outcome: COMPLETED, FAILED or ERROR (ERROR is never charged).
    status: str
    catalog: str
    catalog_version: str
    operation: str
    model: str
    charged: int
    credits_used: int
    #: Available after the charge: balance - pending + overdraft limit (negative in debt).
    credits_remaining: int
    #: What the wallet owes beyond its overdraft limit after the charge (0: none).
    debt: int
    unit: str
    scale: int
    entry_id: str | None
    #: The priced usage (pricing.Charge.to_dict()).
    charge: dict[str, Any]


class ReversalResult(Result):
    entry: EntryView
    balance: BalanceView


class RevocationResult(Result):
    """A grant revoked: the grant (nothing left; it expired at the revocation), the
    expiry entry that moved its remainder out, and the wallet's money after."""

    grant: GrantView
    entry: EntryView
    balance: BalanceView


class EntryPage(Result):
    items: list[EntryView]
    next_cursor: str | None


class Violation(Result):
    """One broken invariant found by ``verify()``."""

    check: str
    detail: str
