"""The ledger's tables (SQLModel). Every money column is a BIGINT of the unit's minor units.

The journal (``entries`` and ``postings``) is append-only: database triggers refuse any
UPDATE or DELETE, a posting added to an entry already written, a posting in another unit
than its account's, and an entry whose postings do not sum to zero per unit (see the
initial migration and 0018). Accounts carry materialized ``balance`` and ``pending`` columns,
updated in the same transaction as the postings and holds they summarize; ``verify()``
recomputes both from the journal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """An instant, stored in UTC, always read back timezone-aware.

    SQLite has no time zones: it stores the UTC wall time, which sorts correctly as text.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the ledger stores instants only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def money(*, nullable: bool = False, default: int | None = 0, **kw: Any) -> Any:
    """A BIGINT column of minor units."""
    return Field(
        default=default,
        sa_column=sa.Column(
            sa.BigInteger,
            nullable=nullable,
            server_default=None if default is None else str(default),
        ),
        **kw,
    )


def instant(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None if nullable else ...,
        sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index),
    )


WALLET = "wallet"
SYSTEM_KINDS = ("funding", "revenue", "expired", "promotions")
ACCOUNT_KINDS = (WALLET, *SYSTEM_KINDS)
GRANT_KINDS = ("allocation", "pack", "promo", "adjustment")
HOLD_STATUSES = ("pending", "captured", "voided", "expired")
ENTRY_KINDS = ("topup", "adjustment", "capture", "charge", "expiry", "reversal", "allocation")
#: The kinds of entry a request makes, many per wallet; the others (top-ups, allocations,
#: expiries, adjustments, reversals) are a handful a month.
REQUEST_ENTRY_KINDS = ("capture", "charge")
#: What ``ix_entries_account_occasional`` and ``ix_entries_occasional`` hold: the entries
#: of the few kinds.
OCCASIONAL_ENTRY = "kind NOT IN ({})".format(", ".join(f"'{k}'" for k in REQUEST_ENTRY_KINDS))
#: What ``ix_grants_expiring`` holds: the grants with credits left that expire.
EXPIRING_GRANT = "remaining > 0 AND expires_at IS NOT NULL"
#: A metering record's status: its hold's outcome (the capture's provider status), the
#: provider status of usage reported after the fact, or CHARGED for an immediate charge.
METERING_STATUSES = ("pending", "COMPLETED", "FAILED", "ERROR", "CHARGED", "voided", "expired")
#: What a metering record meters: an authorization (and its capture), an immediate
#: charge, or usage reported after the fact.
METERING_KINDS = ("authorization", "charge", "usage")
KEY_ROLES = ("admin", "service", "customer")
#: The flows of a wallet's journal: a top-up's grant kind, ``refund`` for a reversal of a
#: capture or charge, else the entry's kind.
FLOWS = (
    "pack",
    "promo",
    "allocation",
    "adjustment",
    "capture",
    "charge",
    "expiry",
    "reversal",
    "refund",
)
#: The entry kinds whose reversal is a refund (flow ``refund``).
REFUNDABLE = ("capture", "charge")
REPORT_STATUSES = ("queued", "running", "succeeded", "failed")
REPORT_FORMATS = ("csv", "json", "parquet", "html")
REPORT_ORIGINS = ("request", "month_end")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _where(predicate: str) -> dict[str, Any]:
    """The options of a partial index: keys only for the rows where ``predicate`` holds."""
    return {"sqlite_where": sa.text(predicate), "postgresql_where": sa.text(predicate)}


class Unit(SQLModel, table=True):
    """A unit of account: a code and its number of decimal places (minor units)."""

    __tablename__ = "units"
    __table_args__ = (sa.CheckConstraint("scale >= 0 AND scale <= 18", name="ck_units_scale"),)

    code: str = Field(primary_key=True, max_length=16)
    scale: int


class Account(SQLModel, table=True):
    """A customer wallet (``kind = 'wallet'``) or a system account of a unit."""

    __tablename__ = "accounts"
    __table_args__ = (
        sa.CheckConstraint(_in("kind", ACCOUNT_KINDS), name="ck_accounts_kind"),
        sa.CheckConstraint("overdraft_limit >= 0", name="ck_accounts_overdraft"),
        sa.CheckConstraint("pending >= 0", name="ck_accounts_pending"),
        sa.CheckConstraint(
            "monthly_allocation IS NULL OR monthly_allocation > 0", name="ck_accounts_allocation"
        ),
        sa.CheckConstraint(
            "monthly_spend_limit IS NULL OR monthly_spend_limit >= 0",
            name="ck_accounts_spend_limit",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: The operator's id for the account (a bucket slug, a user id); system accounts are
    #: named ``system:<kind>:<unit>``.
    external_id: str = Field(max_length=200, sa_column_kwargs={"unique": True})
    kind: str = Field(max_length=16)
    unit: str = Field(foreign_key="units.code", max_length=16)
    #: Minor units the wallet may go below zero by.
    overdraft_limit: int = money()
    #: Minor units granted at each period start (in ``timezone``), or NULL.
    monthly_allocation: int | None = money(nullable=True, default=None)
    #: Minor units the wallet may spend per period (in ``timezone``): what captures and
    #: charges debited this period plus its open holds; NULL: no limit.
    monthly_spend_limit: int | None = money(nullable=True, default=None)
    timezone: str = Field(default="UTC", max_length=64)
    #: A blocked wallet is refused new authorizations and charges (403); what it already
    #: holds can still be captured or voided, and it can still be topped up.
    blocked: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean(), nullable=False, server_default=sa.false())
    )
    #: Minor units: the sum of this account's postings (materialized).
    balance: int = money()
    #: Minor units: the sum of this account's pending holds (materialized).
    pending: int = money()
    created_at: datetime = instant()


class Entry(SQLModel, table=True):
    """A journal entry: the header of two or more postings that sum to zero per unit."""

    __tablename__ = "entries"
    __table_args__ = (
        sa.Index("ix_entries_account_posted", "account_id", "posted_at", "id"),
        # A wallet's reversals alone: the refunds a period's spend counts (``store.SPENT``).
        sa.Index(
            "ix_entries_account_reversals", "account_id", "posted_at", **_where("kind = 'reversal'")
        ),
        # A wallet's entries of one of the few kinds (its top-ups: a billing page's list),
        # without stepping over the captures and charges of every request it made.
        sa.Index(
            "ix_entries_account_occasional",
            "account_id",
            "posted_at",
            "id",
            **_where(OCCASIONAL_ENTRY),
        ),
        # Every wallet's entries of one of those kinds (the month's top-ups, for finance).
        sa.Index("ix_entries_occasional", "posted_at", "id", **_where(OCCASIONAL_ENTRY)),
    )

    id: str = Field(primary_key=True, max_length=32)
    #: topup, adjustment, capture, charge, expiry, reversal, allocation.
    kind: str = Field(max_length=16)
    #: The customer wallet the entry concerns.
    account_id: int = Field(foreign_key="accounts.id")
    posted_at: datetime = instant()
    memo: str = Field(default="", max_length=500)
    #: The entry this one reverses; unique, so an entry is reversed at most once.
    reverses_id: str | None = Field(
        default=None, foreign_key="entries.id", max_length=32, sa_column_kwargs={"unique": True}
    )
    hold_id: str | None = Field(default=None, max_length=32)
    #: What made it: ``key:<api key id>``, ``cli:<user>`` or ``system`` (null: unknown:
    #: written before migration 0012, or by a caller that named none).
    actor: str | None = Field(default=None, max_length=80)


class Posting(SQLModel, table=True):
    """One leg of an entry: a signed amount of minor units on one account."""

    __tablename__ = "postings"
    __table_args__ = (
        sa.CheckConstraint("amount <> 0", name="ck_postings_amount_nonzero"),
        sa.Index("ix_postings_account_posted", "account_id", "posted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Deferred: postings are written before their entry, whose insert checks the sum.
    entry_id: str = Field(
        sa_column=sa.Column(
            sa.String(32),
            sa.ForeignKey("entries.id", deferrable=True, initially="DEFERRED"),
            nullable=False,
            index=True,
        )
    )
    account_id: int = Field(foreign_key="accounts.id")
    unit: str = Field(max_length=16)
    #: Signed minor units: positive credits the account, negative debits it.
    amount: int = money(default=None)
    posted_at: datetime = instant()


class Grant(SQLModel, table=True):
    """Credits inside a wallet: where they came from, how many remain, when they expire."""

    __tablename__ = "grants"
    __table_args__ = (
        sa.CheckConstraint(_in("kind", GRANT_KINDS), name="ck_grants_kind"),
        sa.CheckConstraint("amount > 0", name="ck_grants_amount"),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_grants_remaining"),
        sa.Index("ix_grants_account_remaining", "account_id", "remaining"),
        # The top-ups of one payment (``reference``: an invoice, a payment's id), found
        # from it; partial: the grants without one (allocations, most adjustments) write
        # no key.
        sa.Index("ix_grants_reference", "reference", **_where("reference IS NOT NULL")),
        # The grants the sweeper has yet to expire, found by their expiry: only those that
        # hold credits and expire at all, a few per wallet, rather than every grant ever
        # made (a scan of 230 ms a round with a million); written as ``EXPIRING`` is.
        sa.Index("ix_grants_expiring", "expires_at", **_where(EXPIRING_GRANT)),
    )

    id: str = Field(primary_key=True, max_length=32)
    account_id: int = Field(foreign_key="accounts.id")
    kind: str = Field(max_length=16)
    #: Minor units granted.
    amount: int = money(default=None)
    #: Minor units not yet spent or expired.
    remaining: int = money(default=None)
    #: Lower burns first.
    priority: int = 0
    effective_at: datetime = instant()
    expires_at: datetime | None = instant(nullable=True)
    #: The allocation period ("2026-11") of an allocation grant.
    period: str | None = Field(default=None, max_length=7)
    reference: str | None = Field(default=None, max_length=200)
    entry_id: str = Field(foreign_key="entries.id", max_length=32)


class GrantMovement(SQLModel, table=True):
    """A change of a grant's remaining credits by an entry (+ granted/restored, - spent)."""

    __tablename__ = "grant_movements"

    entry_id: str = Field(primary_key=True, foreign_key="entries.id", max_length=32)
    grant_id: str = Field(primary_key=True, foreign_key="grants.id", max_length=32)
    #: Signed minor units.
    amount: int = money(default=None)


class Hold(SQLModel, table=True):
    """An authorization: credits reserved until captured, voided or expired (once)."""

    __tablename__ = "holds"
    __table_args__ = (
        sa.CheckConstraint(_in("status", HOLD_STATUSES), name="ck_holds_status"),
        sa.CheckConstraint("amount >= 0", name="ck_holds_amount"),
        # By wallet, so that one wallet's holds are read without all it ever had
        # (migration 0023). A wallet's authorizations, newest first:
        sa.Index("ix_holds_account_created", "account_id", "created_at", "id"),
        # Partial indexes: a key only for the rows their queries read (migration 0004).
        # A wallet's pending holds by expiry; the hold sweeper walks it whole (the holds
        # open now).
        sa.Index(
            "ix_holds_account_pending", "account_id", "expires_at", **_where("status = 'pending'")
        ),
        # Holds open at an instant (balances then, reports): pending, or resolved after it.
        sa.Index(
            "ix_holds_account_resolved",
            "account_id",
            "resolved_at",
            **_where("resolved_at IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    account_id: int = Field(foreign_key="accounts.id")
    #: Minor units reserved (the quote's max_cost).
    amount: int = money(default=None)
    status: str = Field(default="pending", max_length=16)
    created_at: datetime = instant()
    expires_at: datetime = instant()
    resolved_at: datetime | None = instant(nullable=True)
    #: Minor units charged at capture (may exceed ``amount``: text overage).
    captured: int | None = money(nullable=True, default=None)
    entry_id: str | None = Field(default=None, foreign_key="entries.id", max_length=32)
    metering_id: str = Field(max_length=32)
    catalog: str = Field(max_length=64)
    catalog_version: str = Field(max_length=64)
    operation: str = Field(max_length=64)
    model: str = Field(max_length=200)
    #: The pricing request ({catalog, operation, params}) the hold was quoted for.
    request: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))


class MeteringRecord(SQLModel, table=True):
    """One authorization, immediate charge or usage reported after the fact: what was
    asked, used and charged."""

    __tablename__ = "metering_records"
    __table_args__ = (
        sa.Index("ix_metering_account_created", "account_id", "created_at"),
        # Usage by completion (reports for a timezone other than the wallet's).
        sa.Index(
            "ix_metering_account_completed",
            "account_id",
            "completed_at",
            **_where("completed_at IS NOT NULL"),
        ),
        # A wallet's records of a gateway request id, newest first as they are listed
        # (records without one write no key).
        sa.Index(
            "ix_metering_account_request",
            "account_id",
            "request_id",
            "created_at",
            "id",
            **_where("request_id IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    account_id: int = Field(foreign_key="accounts.id")
    #: One of METERING_KINDS.
    kind: str = Field(max_length=16)
    hold_id: str | None = Field(default=None, max_length=32)
    entry_id: str | None = Field(default=None, max_length=32)
    catalog: str = Field(max_length=64)
    catalog_version: str = Field(max_length=64)
    operation: str = Field(max_length=64)
    model: str = Field(max_length=200)
    unit: str = Field(max_length=16)
    #: One of METERING_STATUSES.
    status: str = Field(max_length=16)
    #: Minor units held by the authorization (0 for an immediate charge).
    held: int = money()
    #: Minor units charged.
    charged: int = money()
    input_tokens: int = money()
    output_tokens: int = money()
    images: int = money()
    videos: int = money()
    candidates: int = money()
    seconds: Decimal = Field(
        default=Decimal(0),
        sa_column=sa.Column(sa.Numeric(24, 6), nullable=False, server_default="0"),
    )
    request_id: str | None = Field(default=None, max_length=200)
    created_at: datetime = instant()
    completed_at: datetime | None = instant(nullable=True)


class DailyUsage(SQLModel, table=True):
    """Usage per account, catalog, operation, model and day (in the account's timezone)."""

    __tablename__ = "daily_usage"

    account_id: int = Field(primary_key=True, foreign_key="accounts.id")
    unit: str = Field(primary_key=True, max_length=16)
    catalog: str = Field(primary_key=True, max_length=64)
    operation: str = Field(primary_key=True, max_length=64)
    model: str = Field(primary_key=True, max_length=200)
    day: str = Field(primary_key=True, max_length=10)
    requests: int = money()
    input_tokens: int = money()
    output_tokens: int = money()
    images: int = money()
    videos: int = money()
    candidates: int = money()
    seconds: Decimal = Field(
        default=Decimal(0),
        sa_column=sa.Column(sa.Numeric(24, 6), nullable=False, server_default="0"),
    )
    #: Minor units charged (a refund is a reversal entry in the journal, not less usage).
    amount: int = money()


class DailyFlow(SQLModel, table=True):
    """A wallet's journal per day (in its timezone) and flow, updated with each entry.

    The statement's opening balance and its credits and debits come from here, so a
    monthly report reads a few rows per wallet and day instead of every posting.
    ``verify()`` recomputes it from the postings.
    """

    __tablename__ = "daily_flows"
    __table_args__ = (
        sa.CheckConstraint(_in("flow", FLOWS), name="ck_daily_flows_flow"),
        sa.CheckConstraint("credits >= 0 AND debits >= 0", name="ck_daily_flows_signs"),
        sa.Index("ix_daily_flows_day", "day"),
    )

    account_id: int = Field(primary_key=True, foreign_key="accounts.id")
    day: str = Field(primary_key=True, max_length=10)
    flow: str = Field(primary_key=True, max_length=16)
    #: Minor units credited to the wallet by entries of this flow on this day.
    credits: int = money()
    #: Minor units debited from the wallet (a positive number).
    debits: int = money()
    entries: int = money()


class IdempotencyKey(SQLModel, table=True):
    """A mutating request's key, its hash and its result, written with its effects.

    Kept for the retention the operator sets (``idempotency_retention_hours``); the
    sweeper deletes older ones, oldest first, by ``ix_idempotency_keys_created_at``.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (sa.Index("ix_idempotency_keys_created_at", "created_at"),)

    key: str = Field(primary_key=True, max_length=255)
    operation: str = Field(max_length=32)
    request_hash: str = Field(max_length=64)
    response: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    created_at: datetime = instant()


class AllocationPeriod(SQLModel, table=True):
    """A monthly allocation granted: one row per account and period, so at most once."""

    __tablename__ = "allocation_periods"

    account_id: int = Field(primary_key=True, foreign_key="accounts.id")
    period: str = Field(primary_key=True, max_length=7)
    grant_id: str = Field(foreign_key="grants.id", max_length=32)
    created_at: datetime = instant()


#: The settings of a wallet that can change after it was opened. Its unit and timezone
#: cannot: its amounts, periods and daily rollups are counted and cut in them.
ACCOUNT_SETTINGS = ("overdraft_limit", "monthly_allocation", "blocked", "monthly_spend_limit")


class AccountChange(SQLModel, table=True):
    """A change of a wallet's setting (its overdraft limit, its monthly allocation, whether
    it is blocked, its monthly spend limit): from what to what, why, and when. Written with
    the change, never updated."""

    __tablename__ = "account_changes"
    __table_args__ = (
        sa.CheckConstraint(_in("setting", ACCOUNT_SETTINGS), name="ck_account_changes_setting"),
        sa.Index("ix_account_changes_account", "account_id", "changed_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    account_id: int = Field(foreign_key="accounts.id")
    setting: str = Field(max_length=32)
    #: Minor units before and after; null: no monthly allocation or spend limit;
    #: ``blocked``: 0 or 1.
    old_value: int | None = money(nullable=True, default=None)
    new_value: int | None = money(nullable=True, default=None)
    reason: str | None = Field(default=None, max_length=500)
    changed_at: datetime = instant()
    #: Who changed it, as ``Entry.actor``.
    actor: str | None = Field(default=None, max_length=80)


class PriceVersion(SQLModel, table=True):
    """A catalog version as it was when it took effect: the digest of what it charges
    (``pricing.catalog.digest``). Once in force a version is history (quotes, holds,
    metering records and statements name it), so catalogs whose version differs from
    the one kept are refused. Written once per version, never updated."""

    __tablename__ = "price_versions"

    catalog: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=64)
    #: SHA-256, hex.
    digest: str = Field(max_length=64)
    effective_from: datetime = instant()
    #: When a process first found it in force.
    recorded_at: datetime = instant()


class ApiKey(SQLModel, table=True):
    """An API key: its role, and for a customer key the one wallet it may see.

    Only a SHA-256 digest of the secret is stored. The secret is 256 random bits, so a
    fast digest is enough: there is nothing to brute-force, and a dump of this table
    holds no usable key.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        sa.CheckConstraint(_in("role", KEY_ROLES), name="ck_api_keys_role"),
        sa.CheckConstraint(
            "(role = 'customer') = (account_id IS NOT NULL)", name="ck_api_keys_customer_account"
        ),
        # The pages of the keys, in the order they were made; and of one wallet's.
        sa.Index("ix_api_keys_created", "created_at", "id"),
        sa.Index(
            "ix_api_keys_account",
            "account_id",
            "created_at",
            "id",
            **_where("account_id IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    role: str = Field(max_length=16)
    account_id: int | None = Field(default=None, foreign_key="accounts.id")
    #: Hex SHA-256 of the secret part of the key.
    secret_sha256: str = Field(max_length=64)
    created_at: datetime = instant()
    revoked_at: datetime | None = instant(nullable=True)
    #: From this instant the key is refused, as if revoked; null: it does not expire.
    expires_at: datetime | None = instant(nullable=True)
    #: Who made it and who revoked it, as ``Entry.actor`` names who made an entry
    #: (``key:<id>``, ``cli:<user>``, ``system``); null for keys older than revision 0020.
    created_by: str | None = Field(default=None, max_length=80)
    revoked_by: str | None = Field(default=None, max_length=80)


class ReportJob(SQLModel, table=True):
    """A monthly report: a durable job (queued -> running -> succeeded | failed).

    ``dedupe`` identifies the report asked for; a partial unique index lets one identical
    job at a time be queued or running. A running job whose heartbeat is older than the
    lease was interrupted (a crash) and is claimed again.
    """

    __tablename__ = "report_jobs"
    __table_args__ = (
        sa.CheckConstraint(_in("status", REPORT_STATUSES), name="ck_report_jobs_status"),
        sa.CheckConstraint(_in("format", REPORT_FORMATS), name="ck_report_jobs_format"),
        sa.CheckConstraint(_in("origin", REPORT_ORIGINS), name="ck_report_jobs_origin"),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_report_jobs_progress"),
        sa.Index(
            "ux_report_jobs_active",
            "dedupe",
            unique=True,
            **_where("status IN ('queued', 'running')"),
        ),
        sa.Index(
            "ux_report_jobs_month_end",
            "month",
            "timezone",
            unique=True,
            **_where("origin = 'month_end'"),
        ),
        sa.Index("ix_report_jobs_status_created", "status", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    month: str = Field(max_length=7)
    timezone: str = Field(max_length=64)
    #: The one wallet reported on, or NULL for all of them.
    account_id: int | None = Field(default=None, foreign_key="accounts.id")
    format: str = Field(max_length=8)
    origin: str = Field(default="request", max_length=16)
    dedupe: str = Field(max_length=64)
    status: str = Field(default="queued", max_length=16)
    progress: int = 0
    stage: str = Field(default="", max_length=64)
    error: str | None = Field(default=None, max_length=4000)
    attempts: int = 0
    requested_by: str | None = Field(default=None, max_length=32)
    created_at: datetime = instant()
    started_at: datetime | None = instant(nullable=True)
    heartbeat_at: datetime | None = instant(nullable=True)
    finished_at: datetime | None = instant(nullable=True)
    #: What the finished report found: wallets, totals per unit, reconciliation.
    summary: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON))


class ReportOutput(SQLModel, table=True):
    """The rendered file of a succeeded report job, kept with the job."""

    __tablename__ = "report_outputs"

    job_id: str = Field(primary_key=True, foreign_key="report_jobs.id", max_length=32)
    content_type: str = Field(max_length=100)
    filename: str = Field(max_length=200)
    #: SHA-256 of the file (as rendered, not as stored).
    sha256: str = Field(max_length=64)
    content: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    #: How ``content`` is stored: "gzip", or NULL for the file as rendered.
    content_encoding: str | None = Field(default=None, max_length=16)


metadata = SQLModel.metadata


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core table of a model, for the statements of the hot paths."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


# The Core tables, for statements written without the ORM (services, verify, reports).
accounts = table_of(Account)
units = table_of(Unit)
entries = table_of(Entry)
postings = table_of(Posting)
grants = table_of(Grant)
movements = table_of(GrantMovement)
holds = table_of(Hold)
metering = table_of(MeteringRecord)
daily = table_of(DailyUsage)
flows = table_of(DailyFlow)
report_jobs = table_of(ReportJob)
report_outputs = table_of(ReportOutput)
idempotency = table_of(IdempotencyKey)
periods = table_of(AllocationPeriod)
changes = table_of(AccountChange)
api_keys = table_of(ApiKey)
price_versions = table_of(PriceVersion)


#: The pending holds, written as ``ix_holds_account_pending`` is: the value in the SQL
#: text, never a bound parameter, so that every plan can use that partial index (a plan
#: PostgreSQL caches for any parameter value could not).
PENDING_HOLD: sa.ColumnElement[bool] = holds.c.status == sa.literal_column("'pending'")
#: The grants ``ix_grants_expiring`` holds, written as it is (values in the SQL text).
EXPIRING: sa.ColumnElement[bool] = sa.and_(
    grants.c.remaining > sa.literal_column("0"), grants.c.expires_at.is_not(None)
)


def occasional(kind: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """Whether an entry (of ``entries`` or an alias of it, by its ``kind``) is of the few
    kinds, written as ``ix_entries_account_occasional`` and ``ix_entries_occasional``
    are (values in the SQL text), so that every plan can use them."""
    return kind.not_in([sa.literal_column(f"'{k}'") for k in REQUEST_ENTRY_KINDS])


def wide_sum(value: sa.ColumnElement[Any], label: str) -> list[sa.Label[Any]]:
    """SUM(value) as the sums of its high and low 32-bit halves (read back by ``wide``).

    A sum over a wallet's whole history (its postings, its flows, its metering) may pass
    64 bits on the way although each row and the true total fit: credits moved in and out
    again. SQLite's SUM then fails ("integer overflow"), in whatever order it meets the
    rows; each half's sum fits for any table of fewer than 2**31 rows, on both databases.
    """
    # Literals in the SQL text: PostgreSQL shifts a bigint by an integer, not a bigint.
    return [
        sa.func.sum(value.op(">>")(sa.literal_column("32"))).label(f"{label}_hi"),
        sa.func.sum(value.op("&")(sa.literal_column("4294967295"))).label(f"{label}_lo"),
    ]


def wide(row: Any, label: str) -> int:
    """The exact sum ``wide_sum`` selected as ``label`` (0 for no rows)."""
    hi, lo = row._mapping[f"{label}_hi"], row._mapping[f"{label}_lo"]
    return 0 if hi is None else (int(hi) << 32) + int(lo)


class unindexed(FunctionElement[Any]):  # noqa: N801 (a SQL construct, named as one)
    """A column's value, written so that SQLite's planner will not look it up by an index
    (a unary ``+``, a no-op on any value): for a condition that one index would serve
    worse than another the statement has. SQLite keeps no statistics to tell; PostgreSQL
    plans by its own and is given the plain column."""

    inherit_cache = True

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


#: The entries of the few kinds (``occasional``).
OCCASIONAL: sa.ColumnElement[bool] = occasional(entries.c.kind)


def entry_flow() -> sa.ColumnElement[str]:
    """The flow of an ``entries`` row as ``daily_flows`` counts it: a top-up's grant kind,
    ``refund`` for a reversal of a capture or charge, otherwise the entry's kind (SQL, for
    reading the journal the way it was rolled up)."""
    # Among the grants of the entry's wallet (``ix_grants_account_remaining``): no index
    # has every grant by its entry.
    grant_kind = (
        sa.select(sa.func.min(grants.c.kind))
        .where(grants.c.account_id == entries.c.account_id, grants.c.entry_id == entries.c.id)
        .scalar_subquery()
    )
    original = entries.alias("reversed")
    refunds = (
        sa.select(original.c.id)
        .where(original.c.id == entries.c.reverses_id, original.c.kind.in_(REFUNDABLE))
        .exists()
    )
    return sa.case(
        (entries.c.kind == "topup", grant_kind),
        (sa.and_(entries.c.kind == "reversal", refunds), sa.literal("refund")),
        else_=entries.c.kind,
    )


#: The whole-number quantities a metering record and a daily rollup keep (video seconds
#: are their NUMERIC ``seconds``).
QUANTITY_COLUMNS = ("input_tokens", "output_tokens", "images", "videos", "candidates")


def seconds_micros(column: sa.ColumnElement[Decimal]) -> sa.Label[int]:
    """Video seconds (NUMERIC, six decimals) as whole microseconds (``seconds_us``): exact
    integers on both databases, where SQLite would sum the NUMERIC column as floats."""
    return sa.cast(sa.func.round(column * 1_000_000), sa.BigInteger).label("seconds_us")
