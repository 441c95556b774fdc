"""The ledger's use cases. Each public method is one unit of work: it opens a transaction,
locks what it reads (the wallet row), checks idempotency, writes, and commits once.

Amounts are integers of the account unit's minor units. A rejected operation raises a
``ledger.errors`` or ``pricing.errors`` exception and changes nothing (its transaction
rolls back).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ledger import kernel
from ledger import store as sql
from ledger.db import RECONNECTS, Database, is_overflow
from ledger.errors import (
    AccountBlocked,
    AccountExists,
    AlreadyReversed,
    BalanceOverflow,
    CatalogChanged,
    GrantNotOpen,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    NotReversible,
    SpendLimitReached,
)
from ledger.ids import new_id
from ledger.kernel import Leg
from ledger.models import (
    ACCOUNT_SETTINGS,
    ENTRY_KINDS,
    EXPIRING,
    HOLD_STATUSES,
    METERING_KINDS,
    METERING_STATUSES,
    OCCASIONAL,
    PENDING_HOLD,
    REFUNDABLE,
    REQUEST_ENTRY_KINDS,
    SYSTEM_KINDS,
    WALLET,
    accounts,
    changes,
    daily,
    entries,
    flows,
    grants,
    holds,
    idempotency,
    metering,
    movements,
    occasional,
    periods,
    postings,
    price_versions,
    seconds_micros,
    unindexed,
    units,
    wide,
    wide_sum,
)
from ledger.results import (
    AccountChangePage,
    AccountChangeView,
    AccountPage,
    AccountSummary,
    AccountView,
    AdjustmentResult,
    BalanceView,
    CaptureResult,
    ChargeResult,
    EntryPage,
    EntryView,
    GrantView,
    HoldPage,
    HoldView,
    PostingView,
    RecordedUsage,
    Result,
    ReversalResult,
    RevocationResult,
    TopUpResult,
    UsageLine,
    UsageRecordPage,
    UsageRecordView,
    UsageReportResult,
    UsageTotals,
    UsageView,
)
from ledger.settings import Settings
from ledger.store import Json, JsonText, Sql, Store
from pricing import CatalogSet, estimate, load_catalogs, price_usage
from pricing.engine import STATUSES, Charge, Quote, error_charge, resolve_operation
from pricing.errors import InvalidUsage, NoVersionInForce, PricingError

Clock = Callable[[], datetime]
R = TypeVar("R", bound=Result)

TOPUP_KINDS = ("pack", "allocation", "promo")
REVERSIBLE = ("topup", "adjustment", "capture", "charge")
MAX_KEY = 255
#: The actor of what the ledger does by itself (expiries, monthly allocations).
SYSTEM_ACTOR = "system"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Unset(enum.Enum):
    """A setting left as it is, where ``None`` is a value ("no monthly allocation")."""

    UNSET = "unset"


UNSET = Unset.UNSET


def _setting_value(value: int | bool | None) -> int | None:
    """A setting's value as the change log keeps it: minor units, None, or 0/1 for a flag."""
    return int(value) if isinstance(value, bool) else value


def _setting_read(setting: str, value: int | None) -> int | bool | None:
    """A kept value as the setting's own type (``blocked``: true or false)."""
    return bool(value) if setting == "blocked" and value is not None else value


def _refuse_unstorable_id(account_id: str) -> None:
    """NotFound for an account id with NUL or a lone surrogate: never stored (see _text),
    and the database cannot even compare it."""
    if kernel.text_problem(account_id) is not None:
        raise NotFound(f"no account {account_id!r}", field="account_id")


def wallet_id(conn: Connection, account_id: str) -> int:
    """The internal id of the wallet the operator calls ``account_id``, or NotFound."""
    _refuse_unstorable_id(account_id)
    found = conn.execute(
        sa.select(accounts.c.id).where(
            accounts.c.external_id == account_id, accounts.c.kind == WALLET
        )
    ).scalar()
    if found is None:
        raise NotFound(f"no account {account_id!r}", field="account_id")
    return int(found)


def _amount(value: Any, field: str, *, minimum: int = 1) -> int:
    """An integer of minor units within 64 bits (bools, floats and strings refused)."""
    if type(value) is not int or not minimum <= value <= kernel.MAX_AMOUNT:
        raise InvalidInput(
            f"{field} must be a whole number of minor units from {minimum} to {kernel.MAX_AMOUNT}",
            field=field,
            allowed={"min": minimum, "max": kernel.MAX_AMOUNT},
        )
    return value


def _text(value: Any, field: str, *, required: bool = True, most: int = 200) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > most:
        raise InvalidInput(
            f"{field} must be a non-empty string of at most {most} characters",
            field=field,
            allowed={"max_length": most},
        )
    problem = kernel.text_problem(value)
    if problem is not None:  # no database can store it (NUL: PostgreSQL; alike on SQLite)
        raise InvalidInput(f"{field} {problem}", field=field)
    return value


def aware_instant(value: datetime | None, field: str) -> datetime | None:
    """An instant with a timezone that is also a date in UTC (years 1 to 9999), or an error.

    ``9999-12-31T23:59:59-05:00`` is a valid local time but no UTC datetime: SQLite's
    column could not take it, and PostgreSQL would store a year 10000 that no one can
    read back.
    """
    if value is None:
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInput(f"{field} must be an instant with a timezone", field=field)
    if not kernel.in_utc_range(value):
        raise InvalidInput(
            f"{field} must fall between {datetime.min.isoformat()} and "
            f"{datetime.max.isoformat()} in UTC",
            field=field,
            allowed={"min": f"{datetime.min.isoformat()}Z", "max": f"{datetime.max.isoformat()}Z"},
        )
    return value


log = logging.getLogger("creditledger.ledger")


def _hash(operation: str, payload: Mapping[str, Any]) -> str:
    canonical = json.dumps([operation, payload], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: A unique or foreign-key violation, from SQLAlchemy or from the store's cursor.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (IntegrityError, *sql.DRIVER_INTEGRITY_ERRORS)


#: The request field that carries the amount of each use case, named when the amount
#: would take a sum beyond 64 bits.
_AMOUNT_FIELD = {
    "topup": "amount",
    "adjustment": "amount",
    "authorize": "params",
    "charge": "params",
    "capture": "usage",
    "report_usage": "usage",
    "reverse": "id",
}


@contextmanager
def _refusing_overflow(operation: str) -> Iterator[None]:
    """Turn the database's refusal of a sum beyond 64 bits (``is_overflow``) into
    :class:`BalanceOverflow`, naming the field of ``operation`` that carried the amount.
    The transaction it interrupted has rolled back."""
    field = _AMOUNT_FIELD.get(operation)
    try:
        yield
    except BalanceOverflow as exc:
        if exc.field is None:
            exc.field = field
        raise
    except Exception as exc:
        if not is_overflow(exc):
            raise
        raise BalanceOverflow(
            f"this {operation.replace('_', ' ')} would take a balance or a running total "
            f"beyond the 64-bit minor units the ledger keeps (at most {kernel.MAX_AMOUNT}); "
            "nothing was changed",
            field=field,
            allowed={"max": kernel.MAX_AMOUNT},
        ) from exc


def _violated(exc: Exception, name: str) -> bool:
    """Whether the integrity error names ``name`` (a table or a column)."""
    return name in str(getattr(exc, "orig", exc))


class _Work:
    """The open unit of work of one mutating use case."""

    def __init__(
        self,
        conn: Connection,
        store: Store,
        operation: str,
        key: str,
        request_hash: str,
        now: datetime,
        actor: str | None = None,
    ):
        self.conn = conn
        self.store = store
        self.operation = operation
        self.key = key
        self.request_hash = request_hash
        self.now = now
        #: Who asked (``Entry.actor``): not part of the request, so a retry by another
        #: key of the same scope replays the first answer, which names the first actor.
        self.actor = actor
        #: Holds past their expiry that this work released (``Result.holds_expired``).
        self.holds_expired = 0

    def replay(self) -> dict[str, Any] | None:
        """The stored result of this key, or None. Call after locking the wallet."""
        return self.replayed(self.store.one(sql.REPLAY, {"key": self.key}))

    @property
    def replay_query(self) -> tuple[Sql, dict[str, Any]]:
        """The read of ``replay``, to send along with the lock (``Store.reads``)."""
        return sql.REPLAY, {"key": self.key}

    def replayed(self, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
        """The stored result in ``row`` (as ``replay_query`` reads it), or None."""
        if row is None:
            return None
        operation, request_hash, response = row
        if operation != self.operation or request_hash != self.request_hash:
            raise IdempotencyConflict(
                f"this idempotency key was used for a different {operation} request; "
                "a new request needs a new key",
                field="idempotency_key",
            )
        stored: dict[str, Any] = self.store.document(response)
        return stored

    def remember(self, result: BaseModel) -> None:
        self.store.run(
            sql.REMEMBER,
            {
                "key": self.key,
                "operation": self.operation,
                "request_hash": self.request_hash,
                "response": JsonText(result.model_dump_json()),
                "created_at": self.now,
            },
        )


@dataclass(frozen=True)
class _Wallet:
    """A locked wallet, with its balance and pending as read under the lock."""

    id: int
    external_id: str
    unit: str
    scale: int
    overdraft_limit: int
    timezone: str
    balance: int = 0
    pending: int = 0
    #: Refused new authorizations and charges (SQLite reads it as 0 or 1).
    blocked: bool = False
    #: Minor units it may spend per period (captures, charges and open holds), or None.
    spend_limit: int | None = None


class _Priced(Protocol):
    """What a quote and a priced charge both tell: where the price came from."""

    @property
    def catalog(self) -> str: ...
    @property
    def catalog_version(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def unit(self) -> str: ...


@dataclass(frozen=True)
class ChangedVersion:
    """A catalog version whose content differs from the one the ledger kept when it took
    effect (at ``recorded_at``): ``file`` changed it in place."""

    catalog: str
    version: str
    file: str
    recorded_at: datetime


def changed_text(changed: Sequence[ChangedVersion], *, files: bool = True) -> str:
    """What is wrong, for the operator (``files``: naming each file, which an API's
    caller is not shown)."""
    return "; ".join(
        f"catalog '{c.catalog}' version '{c.version}'{f' ({c.file})' if files else ''} is "
        f"not the one in force since {kernel.utc_text(c.recorded_at)}: its prices were "
        "changed in place"
        for c in changed
    )


@dataclass(frozen=True)
class Unpriceable:
    """Pending holds quoted with a catalog version the loaded catalogs no longer price
    (their captures are refused, ``CatalogChanged``): ``holds`` of them, the last
    expiring at ``until``, and why."""

    catalog: str
    catalog_version: str
    operation: str
    holds: int
    until: datetime
    reason: str


@dataclass(frozen=True)
class Affordability:
    """What an estimate tells of a wallet: whether it could pay ``max_cost`` now."""

    affordable: bool
    available: int
    blocked: bool
    #: What the monthly spend limit leaves this period; None: no limit.
    spend_remaining: int | None


@dataclass(frozen=True)
class _HoldRow:
    id: str
    account_id: int
    amount: int
    status: str
    expires_at: datetime
    metering_id: str
    catalog: str
    catalog_version: str
    operation: str
    model: str
    request: dict[str, Any]


@dataclass(frozen=True)
class _LockedHold:
    """What ``_lock_hold`` read under the wallet's lock."""

    wallet: _Wallet
    hold: _HoldRow
    #: The idempotency key's stored result (a replay), or None.
    stored: dict[str, Any] | None
    #: The wallet's open grants, when asked for.
    grant_rows: list[tuple[Any, ...]] | None


class Ledger:
    """The system of record: every use case, each in its own transaction."""

    def __init__(
        self,
        db: Database,
        catalogs: CatalogSet,
        *,
        clock: Clock = utcnow,
        hold_ttl: timedelta = timedelta(minutes=15),
        idempotency_retention: timedelta | None = None,
    ) -> None:
        self.db = db
        self.catalogs = catalogs
        self.clock = clock
        self.hold_ttl = hold_ttl
        #: Idempotency keys older than this are deleted by the sweeper (None: never).
        self.idempotency_retention = idempotency_retention
        self.units = self._catalog_units(catalogs)
        self._system: dict[tuple[str, str], int] = {}
        #: Versions in force whose digest the ledger keeps and matches (``pin_catalogs``),
        #: those whose kept digest differs, and when the next one takes effect.
        self._pinned: set[tuple[str, str]] = set()
        self._changed: list[ChangedVersion] = []
        self._pin_due = min(
            (v.effective_from for c in catalogs for v in c.versions),
            default=datetime.max.replace(tzinfo=UTC),
        )

    @staticmethod
    def _catalog_units(catalogs: CatalogSet) -> dict[str, int]:
        found: dict[str, int] = {}
        for catalog in catalogs:
            if found.setdefault(catalog.unit, catalog.scale) != catalog.scale:
                raise InvalidInput(
                    f"unit {catalog.unit} has two scales in the catalogs", field="unit"
                )
        return found

    # ------------------------------------------------------------------ infrastructure

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the ledger clock must be timezone-aware")
        return now.astimezone(UTC)

    def _mutate(
        self,
        operation: str,
        key: Any,
        payload: Mapping[str, Any],
        work: Callable[[_Work], R | dict[str, Any]],
        result: type[R],
        *,
        batch: bool = False,
        actor: str | None = None,
    ) -> R:
        """Run ``work`` in one transaction with the idempotency protocol around it."""
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
            raise InvalidInput(
                f"an idempotency key (1 to {MAX_KEY} characters) is required",
                field="idempotency_key",
            )
        problem = kernel.text_problem(key)
        if problem is not None:
            raise InvalidInput(f"idempotency_key {problem}", field="idempotency_key")
        if actor is not None:
            _text(actor, "actor", most=80)
        request_hash = _hash(operation, payload)
        self._ensure_system()
        self._ensure_versions()
        conflicts = reconnects = 0
        while True:
            try:
                with _refusing_overflow(operation), self.db.transaction() as conn:
                    store = Store.of(conn)
                    w = _Work(conn, store, operation, key, request_hash, self._now(), actor)
                    # PostgreSQL: the batch ends with the commit, sent with its last
                    # writes; the transaction's own commit then has nothing left to do.
                    with store.batch(commit=True) if batch else nullcontext():
                        out = work(w)
                        if isinstance(out, dict):
                            replay = result.model_validate(out)
                            replay._replayed = True
                            return replay
                        w.remember(out)
                    out._holds_expired = w.holds_expired
                    return out
            except INTEGRITY_ERRORS as exc:
                # Another transaction stored this key first (PostgreSQL): replay it.
                conflicts += 1
                if not _violated(exc, "idempotency_keys") or conflicts == 3:
                    raise
            except sa.exc.DBAPIError as exc:
                # The PostgreSQL connection was lost (a restart, a failover, a session
                # ended, the network): run again on a new one. The key makes it safe
                # even when the loss came during the COMMIT and the server did commit:
                # the second run then replays the first's answer.
                if reconnects == RECONNECTS or not self.db.lost(exc):
                    raise
                reconnects += 1
                self.db.rerun("write", operation, exc)

    def _insert_ignore(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
    ) -> None:
        dialect_insert = postgresql.insert if not self.db.is_sqlite else sqlite.insert
        conn.execute(dialect_insert(table).values(rows).on_conflict_do_nothing(index_elements=keys))

    def _ensure_versions(self) -> None:
        """Before a write: each catalog version in force is kept (``pin_catalogs``), and
        none differs from the one kept. A comparison of instants, but when a version has
        taken effect since the last write."""
        if self._now() >= self._pin_due:
            self.pin_catalogs()
        if self._changed:
            raise CatalogChanged(
                f"{changed_text(self._changed, files=False)}; nothing was written. The "
                "operator must restore it, and put new prices in a new version with a later "
                "effective_from",
                catalog=self._changed[0].catalog,
                catalog_version=self._changed[0].version,
            )

    def pin_catalogs(self) -> list[ChangedVersion]:
        """Keep each catalog version now in force that is not kept yet, with its digest
        (``pricing.catalog.digest``), and return those whose kept digest differs from
        this ledger's: a version changed in place since it took effect. Idempotent, and
        safe from processes at once (the first to keep a version keeps it)."""
        now = self._now()
        due = [
            (catalog, version)
            for catalog in self.catalogs
            for version in catalog.versions
            if version.effective_from <= now and (catalog.name, version.id) not in self._pinned
        ]
        if due:
            with self.db.transaction(settle=True) as conn:
                self._insert_ignore(
                    conn,
                    price_versions,
                    [
                        {
                            "catalog": catalog.name,
                            "version": version.id,
                            "digest": version.digest,
                            "effective_from": version.effective_from,
                            "recorded_at": now,
                        }
                        for catalog, version in due
                    ],
                    ["catalog", "version"],
                )
                kept = {
                    (row.catalog, row.version): row
                    for row in conn.execute(
                        sa.select(
                            price_versions.c.catalog,
                            price_versions.c.version,
                            price_versions.c.digest,
                            price_versions.c.recorded_at,
                        ).where(price_versions.c.catalog.in_(sorted({c.name for c, _ in due})))
                    )
                }
            changed = list(self._changed)
            for catalog, version in due:
                row = kept[(catalog.name, version.id)]
                if row.digest == version.digest:
                    self._pinned.add((catalog.name, version.id))
                elif not any((c.catalog, c.version) == (catalog.name, version.id) for c in changed):
                    changed.append(
                        ChangedVersion(catalog.name, version.id, version.file, row.recorded_at)
                    )
            self._changed = changed
        known = {(c.catalog, c.version) for c in self._changed} | self._pinned
        self._pin_due = min(
            (
                version.effective_from
                for catalog in self.catalogs
                for version in catalog.versions
                if (catalog.name, version.id) not in known
            ),
            default=datetime.max.replace(tzinfo=UTC),
        )
        return list(self._changed)

    def _ensure_system(self) -> None:
        """Create every catalog unit and its system accounts, in a committed transaction.

        Done once, before the first mutation, so that no use case's rollback can take
        with it rows that later ones rely on.
        """
        if len(self._system) == len(self.units) * len(SYSTEM_KINDS):
            return
        now = self._now()
        # Settled: committed before the accounts are remembered below, on the write
        # thread too (``Database.submit``), where a transaction may return before it.
        with self.db.transaction(settle=True) as conn:
            self._insert_ignore(
                conn, units, [{"code": u, "scale": s} for u, s in self.units.items()], ["code"]
            )
            self._insert_ignore(
                conn,
                accounts,
                [
                    {
                        "external_id": f"system:{kind}:{unit}",
                        "kind": kind,
                        "unit": unit,
                        "timezone": "UTC",
                        "created_at": now,
                        "overdraft_limit": 0,
                        "balance": 0,
                        "pending": 0,
                    }
                    for unit in self.units
                    for kind in SYSTEM_KINDS
                ],
                ["external_id"],
            )
            # By their names (the unique index), not their kind: no index has that, and
            # the wallets are many.
            names = [f"system:{kind}:{unit}" for unit in self.units for kind in SYSTEM_KINDS]
            rows = conn.execute(
                sa.select(accounts.c.id, accounts.c.kind, accounts.c.unit).where(
                    accounts.c.external_id.in_(names), accounts.c.kind.in_(SYSTEM_KINDS)
                )
            ).all()
        self._system = {(row.unit, row.kind): row.id for row in rows}

    def _system_account(self, unit: str, kind: str) -> int:
        return self._system[(unit, kind)]

    def _lock_wallet(self, conn: Connection, external_id: Any) -> _Wallet:
        """Lock a wallet (PostgreSQL: FOR UPDATE; SQLite: the writer lock is already held)."""
        return self._lock_wallet_with(Store.of(conn), external_id)[0]

    @staticmethod
    def _lock_wallet_with(
        store: Store, external_id: Any, *also: tuple[Sql, Mapping[str, Any]]
    ) -> tuple[_Wallet, list[list[tuple[Any, ...]]]]:
        """Lock a wallet, then run the reads ``also`` under that lock (one round trip on
        PostgreSQL); the wallet and their rows."""
        if not isinstance(external_id, str):
            raise InvalidInput("account_id must be a string", field="account_id")
        _refuse_unstorable_id(external_id)
        locked, *rows = store.reads((sql.LOCK_WALLET, {"external_id": external_id}), *also)
        if not locked:
            raise NotFound(f"no account '{external_id}'", field="account_id")
        return _Wallet(*locked[0]), rows

    def _lock_wallet_by_id(self, conn: Connection, account_id: int) -> _Wallet:
        row = Store.of(conn).one(sql.LOCK_WALLET_BY_ID, {"id": account_id})
        if row is None:
            raise NotFound(f"no account {account_id}", field="account_id")
        return _Wallet(*row)

    def _money(self, conn: Connection, wallet: _Wallet) -> tuple[int, int]:
        row = conn.execute(
            sa.select(accounts.c.balance, accounts.c.pending).where(accounts.c.id == wallet.id)
        ).one()
        return int(row.balance), int(row.pending)

    def _balance_view(self, conn: Connection, wallet: _Wallet) -> BalanceView:
        balance, pending = self._money(conn, wallet)
        return _balances(wallet, balance, pending)

    # -------------------------------------------------------------------- the journal

    def _post(
        self,
        conn: Connection,
        now: datetime,
        kind: str,
        wallet: _Wallet,
        legs: Sequence[Leg],
        memo: str = "",
        *,
        actor: str | None,
        reverses_id: str | None = None,
        hold_id: str | None = None,
        pending: int = 0,
        flow: str | None = None,
    ) -> str:
        """Write one balanced entry and move the materialized balances (and ``pending``
        of the wallet, when a hold resolves with it) and the wallet's daily flows.

        ``flow`` names the entry in the daily rollup of the journal; it defaults to the
        entry's kind (a top-up passes its grant kind)."""
        kernel.check_balanced(legs)
        store = Store.of(conn)
        entry_id = new_id()
        # Postings first: the entry's insert is what checks them (SQLite), and on
        # PostgreSQL a deferred trigger checks them at commit.
        store.many(
            sql.INSERT_POSTING,
            [
                {
                    "entry_id": entry_id,
                    "account_id": leg.account_id,
                    "unit": leg.unit,
                    "amount": leg.amount,
                    "posted_at": now,
                }
                for leg in legs
            ],
        )
        store.run(
            sql.INSERT_ENTRY,
            {
                "id": entry_id,
                "kind": kind,
                "account_id": wallet.id,
                "posted_at": now,
                "memo": memo,
                "reverses_id": reverses_id,
                "hold_id": hold_id,
                "actor": actor,
            },
        )
        deltas: dict[int, int] = {wallet.id: 0}
        for leg in legs:
            deltas[leg.account_id] = deltas.get(leg.account_id, 0) + leg.amount
        for account_id in sorted(deltas):  # one lock order for every transaction
            moved = pending if account_id == wallet.id else 0
            if deltas[account_id] or moved:
                store.run(
                    sql.MOVE_ACCOUNT,
                    {"balance": deltas[account_id], "pending": moved, "id": account_id},
                )
        if deltas[wallet.id]:
            store.run(
                sql.UPSERT_FLOW,
                {
                    "account_id": wallet.id,
                    "day": kernel.day_of(now, wallet.timezone),
                    "flow": flow or kind,
                    "credits": max(deltas[wallet.id], 0),
                    "debits": max(-deltas[wallet.id], 0),
                },
            )
        return entry_id

    def _move_pending(self, conn: Connection, account_id: int, delta: int) -> None:
        Store.of(conn).run(sql.MOVE_ACCOUNT, {"balance": 0, "pending": delta, "id": account_id})

    def _entry_view(self, conn: Connection, entry_id: str) -> EntryView:
        (view,) = self._entry_views(conn, [entry_id])
        return view

    def _entry_views(self, conn: Connection, entry_ids: Sequence[str]) -> list[EntryView]:
        """The entries ``entry_ids``, in that order, with their postings: two queries for
        a page of them, not two per entry."""
        if not entry_ids:
            return []
        wallet_alias = accounts.alias("wallet")
        rows = {
            row.id: row
            for row in conn.execute(
                sa.select(entries, wallet_alias.c.external_id, wallet_alias.c.unit)
                .join(wallet_alias, wallet_alias.c.id == entries.c.account_id)
                .where(entries.c.id.in_(entry_ids))
            )
        }
        legs: dict[str, list[PostingView]] = {entry_id: [] for entry_id in entry_ids}
        for leg in conn.execute(
            sa.select(postings.c.entry_id, accounts.c.external_id, postings.c.amount)
            .join(accounts, accounts.c.id == postings.c.account_id)
            .where(postings.c.entry_id.in_(entry_ids))
            .order_by(postings.c.id)
        ):
            legs[leg.entry_id].append(PostingView(account_id=leg.external_id, amount=leg.amount))
        return [
            EntryView(
                id=row.id,
                kind=row.kind,
                account_id=row.external_id,
                unit=row.unit,
                posted_at=row.posted_at,
                memo=row.memo,
                reverses_id=row.reverses_id,
                hold_id=row.hold_id,
                actor=row.actor,
                postings=legs[row.id],
            )
            for row in (rows[entry_id] for entry_id in entry_ids)
        ]

    # ------------------------------------------------------------------------- grants

    def _debit_grants(
        self,
        conn: Connection,
        wallet: _Wallet,
        entry_id: str,
        amount: int,
        *,
        first: str | None = None,
        live: list[kernel.GrantState] | None = None,
    ) -> None:
        """Burn ``amount`` from the wallet's grants in burn order (``first`` first)."""
        store = Store.of(conn)
        states = live if live is not None else self._grant_states(conn, wallet)
        plan: list[tuple[str, int]] = []
        if first is not None:
            plan = kernel.plan_debit([g for g in states if g.id == first], amount)
            states = [g for g in states if g.id != first]
        taken = sum(take for _, take in plan)
        plan += kernel.plan_debit(states, amount - taken)
        for grant_id, take in plan:
            store.run(sql.MOVE_GRANT, {"delta": -take, "id": grant_id})
        if plan:
            store.many(
                sql.INSERT_MOVEMENT,
                [
                    {"entry_id": entry_id, "grant_id": grant_id, "amount": -take}
                    for grant_id, take in plan
                ],
            )

    def _grant_states(
        self, conn: Connection, wallet: _Wallet, rows: list[tuple[Any, ...]] | None = None
    ) -> list[kernel.GrantState]:
        """The wallet's open grants (from ``rows`` when they were read already)."""
        store = Store.of(conn)
        if rows is None:
            rows = store.all(sql.OPEN_GRANTS, {"account_id": wallet.id})
        return [
            kernel.GrantState(
                gid,
                int(remaining),
                int(priority),
                store.instant(expires),
                store.instant(effective) or datetime.min.replace(tzinfo=UTC),
            )
            for gid, remaining, priority, expires, effective in rows
        ]

    def _live_grants(
        self,
        conn: Connection,
        wallet: _Wallet,
        now: datetime,
        rows: list[tuple[Any, ...]] | None = None,
    ) -> tuple[list[kernel.GrantState], int]:
        """The wallet's spendable grants, after expiring those past due (one read, or
        none when the open grants' ``rows`` were read with the lock).

        Returns the live grants and the credits expired just now.
        """
        states = self._grant_states(conn, wallet, rows)
        due = [g for g in states if g.expires_at is not None and g.expires_at <= now]
        if not due:
            return states, 0
        expired = self._expire(conn, wallet, now, [(g.id, g.remaining) for g in due])
        return [g for g in states if g not in due], expired

    def _credit_grants(
        self,
        conn: Connection,
        wallet: _Wallet,
        entry_id: str,
        amount: int,
        balance_before: int,
        now: datetime,
        *,
        restorable: Sequence[tuple[str, int]] = (),
        kind: str = "adjustment",
        expires_at: datetime | None = None,
        priority: int = 0,
        period: str | None = None,
        reference: str | None = None,
        always_grant: bool = False,
    ) -> str | None:
        """Place credits: repay debt, refill burned grants, then one new grant."""
        store = Store.of(conn)
        plan = kernel.plan_credit(balance_before, amount, restorable)
        for grant_id, give in plan.restores:
            store.run(sql.MOVE_GRANT, {"delta": give, "id": grant_id})
            store.run(
                sql.INSERT_MOVEMENT, {"entry_id": entry_id, "grant_id": grant_id, "amount": give}
            )
        if plan.new_grant == 0 and not always_grant:
            return None
        grant_id = new_id()
        store.run(
            sql.INSERT_GRANT,
            {
                "id": grant_id,
                "account_id": wallet.id,
                "kind": kind,
                "amount": amount if always_grant else plan.new_grant,
                "remaining": plan.new_grant,
                "priority": priority,
                "effective_at": now,
                "expires_at": expires_at,
                "period": period,
                "reference": reference,
                "entry_id": entry_id,
            },
        )
        if plan.new_grant:
            store.run(
                sql.INSERT_MOVEMENT,
                {"entry_id": entry_id, "grant_id": grant_id, "amount": plan.new_grant},
            )
        return grant_id

    def _expire(
        self, conn: Connection, wallet: _Wallet, now: datetime, due: Sequence[tuple[str, int]]
    ) -> int:
        """Move the remainder of the ``due`` grants to the expired-credits account; how
        many credits."""
        self._expiry_entry(conn, wallet, now, due, actor=SYSTEM_ACTOR)
        return sum(remaining for _, remaining in due)

    def _expiry_entry(
        self,
        conn: Connection,
        wallet: _Wallet,
        now: datetime,
        due: Sequence[tuple[str, int]],
        memo: str | None = None,
        *,
        actor: str | None,
    ) -> str | None:
        """The entry of ``_expire`` (None: nothing to move)."""
        total = sum(remaining for _, remaining in due)
        if total == 0:
            return None
        store = Store.of(conn)
        expired = self._system_account(wallet.unit, "expired")
        entry_id = self._post(
            conn,
            now,
            "expiry",
            wallet,
            kernel.transfer(wallet.id, expired, wallet.unit, total),
            memo or f"{len(due)} grant(s) expired",
            actor=actor,
        )
        for grant_id, remaining in due:
            store.run(sql.MOVE_GRANT, {"delta": -remaining, "id": grant_id})
        store.many(
            sql.INSERT_MOVEMENT,
            [
                {"entry_id": entry_id, "grant_id": grant_id, "amount": -remaining}
                for grant_id, remaining in due
            ],
        )
        return entry_id

    def _expire_due(self, conn: Connection, wallet: _Wallet, now: datetime) -> int:
        """Expire the wallet's grants past due; how many grants."""
        states = self._grant_states(conn, wallet)
        due = [
            (g.id, g.remaining) for g in states if g.expires_at is not None and g.expires_at <= now
        ]
        self._expire(conn, wallet, now, due)
        return len(due)

    def _grant_views(
        self, conn: Connection, wallet_id: int, *, only_open: bool = True
    ) -> list[GrantView]:
        stmt = sa.select(grants).where(grants.c.account_id == wallet_id)
        if only_open:
            stmt = stmt.where(grants.c.remaining > 0)
        # The id (time-ordered) breaks ties: grants made at one instant list in the order
        # they were made, the same on every read and both databases.
        order = (grants.c.priority, grants.c.effective_at, grants.c.id)
        rows = conn.execute(stmt.order_by(*order)).all()
        return [self._grant_view(r) for r in rows]

    @staticmethod
    def _grant_view(r: Row[Any]) -> GrantView:
        return GrantView(
            id=r.id,
            kind=r.kind,
            amount=r.amount,
            remaining=r.remaining,
            priority=r.priority,
            effective_at=r.effective_at,
            expires_at=r.expires_at,
            period=r.period,
            reference=r.reference,
        )

    # ------------------------------------------------------------------------ accounts

    def open_account(
        self,
        account_id: str,
        unit: str,
        *,
        idempotency_key: str,
        overdraft_limit: int = 0,
        monthly_allocation: int | None = None,
        timezone: str = "UTC",
        monthly_spend_limit: int | None = None,
    ) -> AccountView:
        """Open a customer wallet counted in ``unit``; with a ``monthly_allocation``, the
        period it opens in is granted its allocation at once."""
        external = _text(account_id, "account_id")
        assert external is not None
        problem = kernel.account_id_problem(external)
        if problem is not None:
            raise InvalidInput(problem, field="account_id")
        if unit not in self.units:
            raise InvalidInput(f"unknown unit '{unit}'", field="unit", allowed=sorted(self.units))
        _amount(overdraft_limit, "overdraft_limit", minimum=0)
        if monthly_allocation is not None:
            _amount(monthly_allocation, "monthly_allocation")
        if monthly_spend_limit is not None:
            _amount(monthly_spend_limit, "monthly_spend_limit", minimum=0)
        zone_problem = kernel.timezone_problem(timezone)
        if zone_problem is not None:
            raise InvalidInput(zone_problem, field="timezone")
        payload = {
            "account_id": external,
            "unit": unit,
            "overdraft_limit": overdraft_limit,
            "monthly_allocation": monthly_allocation,
            "timezone": timezone,
        }
        if monthly_spend_limit is not None:  # a key used before spend limits still replays
            payload["monthly_spend_limit"] = monthly_spend_limit

        def work(w: _Work) -> AccountView | dict[str, Any]:
            stored = w.replay()
            if stored is not None:
                return stored
            # The unique external_id decides; a savepoint keeps the transaction usable.
            try:
                with w.conn.begin_nested():
                    w.conn.execute(
                        accounts.insert().values(
                            external_id=external,
                            kind=WALLET,
                            unit=unit,
                            overdraft_limit=overdraft_limit,
                            monthly_allocation=monthly_allocation,
                            monthly_spend_limit=monthly_spend_limit,
                            timezone=timezone,
                            balance=0,
                            pending=0,
                            created_at=w.now,
                        )
                    )
            except IntegrityError:
                # An identical request may have won the race: replay what it stored.
                stored = w.replay()
                if stored is not None:
                    return stored
                raise AccountExists(
                    f"account '{external}' already exists", field="account_id"
                ) from None
            wallet = self._lock_wallet(w.conn, external)
            if monthly_allocation is not None:
                self._allocate_now(w.conn, wallet, w.now)
            return self._account_view(w.conn, wallet)

        return self._mutate("open_account", idempotency_key, payload, work, AccountView)

    def update_account(
        self,
        account_id: str,
        *,
        idempotency_key: str,
        actor: str | None = None,
        overdraft_limit: int | Unset = UNSET,
        monthly_allocation: int | None | Unset = UNSET,
        blocked: bool | Unset = UNSET,
        monthly_spend_limit: int | None | Unset = UNSET,
        reason: str | None = None,
    ) -> AccountView:
        """Change a wallet's overdraft limit, monthly allocation (None: none), whether it
        is blocked or its monthly spend limit (None: none), and keep the change. A new
        limit applies at once: one below what the wallet already owes leaves it in debt,
        which blocks new authorizations until it is topped up. A new allocation applies
        from the next period (at once in a period that had none). A blocked wallet is
        refused new authorizations and charges at once; its pending holds can still be
        captured, voided or extended, and it can still be topped up; unblocked, it is
        granted the allocation of the period it is then in, if that had none. A
        new spend limit applies at once, to this period's spending too: one below what
        was spent refuses new authorizations and charges until the next period. The unit
        and the timezone are fixed at opening."""
        _text(account_id, "account_id")
        given = {
            name: value
            for name, value in (
                ("overdraft_limit", overdraft_limit),
                ("monthly_allocation", monthly_allocation),
                ("blocked", blocked),
                ("monthly_spend_limit", monthly_spend_limit),
            )
            if value is not UNSET
        }
        if not given:
            raise InvalidInput(
                "give a setting to change", allowed=list(ACCOUNT_SETTINGS), field="body"
            )
        if "overdraft_limit" in given:
            _amount(overdraft_limit, "overdraft_limit", minimum=0)
        if given.get("monthly_allocation") is not None:
            _amount(monthly_allocation, "monthly_allocation")
        if given.get("monthly_spend_limit") is not None:
            _amount(monthly_spend_limit, "monthly_spend_limit", minimum=0)
        if "blocked" in given and not isinstance(blocked, bool):
            raise InvalidInput(
                "blocked must be true or false", field="blocked", allowed=[True, False]
            )
        _text(reason, "reason", required=False, most=500)
        payload = {"account_id": account_id, **given, "reason": reason}

        def work(w: _Work) -> AccountView | dict[str, Any]:
            stored = w.replay()
            if stored is not None:
                return stored
            wallet = self._lock_wallet(w.conn, account_id)
            row = w.conn.execute(
                sa.select(
                    accounts.c.balance, *(accounts.c[name] for name in ACCOUNT_SETTINGS)
                ).where(accounts.c.id == wallet.id)
            ).one()
            limit = wallet.overdraft_limit if overdraft_limit is UNSET else overdraft_limit
            kernel.check_overdraft_limit(int(row.balance), limit)
            changed = {name: v for name, v in given.items() if v != row._mapping[name]}
            if changed:
                w.conn.execute(
                    accounts.update().where(accounts.c.id == wallet.id).values(**changed)
                )
                w.conn.execute(
                    changes.insert(),
                    [
                        {
                            "id": new_id(),
                            "account_id": wallet.id,
                            "setting": name,
                            "old_value": _setting_value(row._mapping[name]),
                            "new_value": _setting_value(value),
                            "reason": reason,
                            "changed_at": w.now,
                            "actor": w.actor,
                        }
                        for name, value in changed.items()
                    ],
                )
            wallet = dataclasses.replace(
                wallet,
                overdraft_limit=limit,
                blocked=wallet.blocked if blocked is UNSET else blocked,
            )
            if not wallet.blocked and ("monthly_allocation" in changed or "blocked" in changed):
                # Granted at once if this period has none yet; else from the next one.
                self._allocate_now(w.conn, wallet, w.now)
            return self._account_view(w.conn, wallet)

        return self._mutate(
            "update_account", idempotency_key, payload, work, AccountView, actor=actor
        )

    def account_changes(
        self, account_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> AccountChangePage:
        """The changes of a wallet's settings, newest first, ``limit`` at a time."""
        page_limit(limit)
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
            stmt = sa.select(changes).where(changes.c.account_id == wallet.id)
            page, next_cursor = page_in_order(
                conn, stmt, changes.c.changed_at, changes.c.id, cursor, limit, newest=True
            )
        return AccountChangePage(
            items=[
                AccountChangeView(
                    id=r.id,
                    setting=r.setting,
                    old_value=_setting_read(r.setting, r.old_value),
                    new_value=_setting_read(r.setting, r.new_value),
                    reason=r.reason,
                    changed_at=r.changed_at,
                    actor=r.actor,
                )
                for r in page
            ],
            next_cursor=next_cursor,
        )

    def _account_view(self, conn: Connection, wallet: _Wallet) -> AccountView:
        row = conn.execute(sa.select(accounts).where(accounts.c.id == wallet.id)).one()
        money = self._balance_view(conn, wallet)
        spent = self._spent(conn, wallet, self._now())[0]
        limit = row.monthly_spend_limit
        return AccountView(
            **money.model_dump(),
            monthly_allocation=row.monthly_allocation,
            monthly_spend_limit=limit,
            spent_this_month=spent,
            spend_remaining=None if limit is None else max(0, limit - spent - money.pending),
            timezone=row.timezone,
            blocked=bool(row.blocked),
            created_at=row.created_at,
            grants=self._grant_views(conn, wallet.id),
        )

    def accounts(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        unit: str | None = None,
        blocked: bool | None = None,
        available_below: int | None = None,
        in_debt: bool | None = None,
    ) -> AccountPage:
        """The wallets in the order they were opened, ``limit`` at a time: balances,
        without grants. Given filters narrow them: of one ``unit``; only the blocked or
        the unblocked ones; only those whose available balance is below
        ``available_below`` minor units of ``unit`` (which it needs: those that could not
        pay a request of that price); only those in debt, or only those not.

        The filters other than ``unit`` are read from each wallet's row, not an index:
        on many wallets, a filter few match scans them all (an audit, not a request
        path)."""
        page_limit(limit)
        if unit is not None and unit not in self.units:
            raise InvalidInput(f"unknown unit {unit!r}", field="unit", allowed=sorted(self.units))
        if available_below is not None:
            _amount(available_below, "available_below", minimum=-kernel.MAX_AMOUNT)
            if unit is None:
                raise InvalidInput(
                    "available_below needs unit: it is a number of that unit's minor units",
                    field="unit",
                    allowed=sorted(self.units),
                )
        if in_debt is not None and not isinstance(in_debt, bool):
            raise InvalidInput("in_debt must be true or false", field="in_debt")
        stmt = (
            sa.select(accounts, units.c.scale)
            .join(units, units.c.code == accounts.c.unit)
            .where(accounts.c.kind == WALLET)
        )
        if unit is not None:
            stmt = stmt.where(accounts.c.unit == unit)
        if blocked is not None:
            if not isinstance(blocked, bool):
                raise InvalidInput("blocked must be true or false", field="blocked")
            stmt = stmt.where(accounts.c.blocked == blocked)
        if available_below is not None:
            stmt = stmt.where(_available_below(available_below))
        if in_debt is not None:
            # Debt is what was posted beyond the overdraft limit (kernel.debt).
            room = accounts.c.balance + accounts.c.overdraft_limit
            stmt = stmt.where(room < 0 if in_debt else room >= 0)
        if cursor is not None:
            stmt = stmt.where(accounts.c.id > _decode_account_cursor(cursor))
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(stmt.order_by(accounts.c.id).limit(limit + 1)).all()
        items = [
            AccountSummary(
                **_balances(
                    _Wallet(r.id, r.external_id, r.unit, r.scale, r.overdraft_limit, r.timezone),
                    int(r.balance),
                    int(r.pending),
                ).model_dump(),
                monthly_allocation=r.monthly_allocation,
                monthly_spend_limit=r.monthly_spend_limit,
                timezone=r.timezone,
                blocked=bool(r.blocked),
                created_at=r.created_at,
            )
            for r in rows[:limit]
        ]
        more = len(rows) > limit
        return AccountPage(
            items=items, next_cursor=_encode_account_cursor(rows[limit - 1].id) if more else None
        )

    def account(self, account_id: str) -> AccountView:
        """A wallet: balances and open grants, as they were at one moment (on PostgreSQL
        each statement of a plain transaction sees the commits since the one before)."""
        with self.db.snapshot() as conn:
            wallet = self._wallet(conn, account_id)
            return self._account_view(conn, wallet)

    def _wallet(self, conn: Connection, account_id: Any) -> _Wallet:
        """A wallet read without a lock (read-only use cases)."""
        if not isinstance(account_id, str):
            raise InvalidInput("account_id must be a string", field="account_id")
        _refuse_unstorable_id(account_id)
        row = conn.execute(
            sa.select(
                accounts.c.id,
                accounts.c.external_id,
                accounts.c.unit,
                accounts.c.overdraft_limit,
                accounts.c.timezone,
                accounts.c.blocked,
                accounts.c.monthly_spend_limit,
                units.c.scale,
            )
            .join(units, units.c.code == accounts.c.unit)
            .where(accounts.c.external_id == account_id, accounts.c.kind == WALLET)
        ).first()
        if row is None:
            raise NotFound(f"no account '{account_id}'", field="account_id")
        return _Wallet(
            row.id,
            row.external_id,
            row.unit,
            row.scale,
            row.overdraft_limit,
            row.timezone,
            blocked=bool(row.blocked),
            spend_limit=row.monthly_spend_limit,
        )

    # --------------------------------------------------------------- top-ups, adjustments

    def top_up(
        self,
        account_id: str,
        amount: int,
        *,
        idempotency_key: str,
        actor: str | None = None,
        kind: str = "pack",
        expires_at: datetime | None = None,
        priority: int = 0,
        reference: str | None = None,
    ) -> TopUpResult:
        """Add credits: a grant funded by the funding account (promotions for ``promo``)."""
        _top_up_arguments(amount, kind, expires_at, priority, reference)
        payload = {
            "account_id": account_id,
            "amount": amount,
            "kind": kind,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "priority": priority,
            "reference": reference,
        }

        def work(w: _Work) -> TopUpResult | dict[str, Any]:
            wallet = self._lock_wallet(w.conn, account_id)
            stored = w.replay()
            if stored is not None:
                return stored
            if expires_at is not None and expires_at <= w.now:
                raise InvalidInput("expires_at must be in the future", field="expires_at")
            self._expire_due(w.conn, wallet, w.now)
            balance_before, _ = self._money(w.conn, wallet)
            kernel.check_room(balance_before, wallet.overdraft_limit, amount)
            source = self._system_account(
                wallet.unit, "promotions" if kind == "promo" else "funding"
            )
            entry_id = self._post(
                w.conn,
                w.now,
                "topup",
                wallet,
                kernel.transfer(source, wallet.id, wallet.unit, amount),
                f"{kind} top-up" + (f" ({reference})" if reference else ""),
                actor=w.actor,
                flow=kind,
            )
            grant_id = self._credit_grants(
                w.conn,
                wallet,
                entry_id,
                amount,
                balance_before,
                w.now,
                kind=kind,
                expires_at=expires_at,
                priority=priority,
                reference=reference,
                always_grant=True,
            )
            grant = None
            if grant_id is not None:
                grant = self._grant_view(
                    w.conn.execute(sa.select(grants).where(grants.c.id == grant_id)).one()
                )
            return TopUpResult(
                entry=self._entry_view(w.conn, entry_id),
                grant=grant,
                balance=self._balance_view(w.conn, wallet),
            )

        return self._mutate("topup", idempotency_key, payload, work, TopUpResult, actor=actor)

    def check_top_up(
        self,
        account_id: str,
        amount: int,
        *,
        kind: str = "pack",
        expires_at: datetime | None = None,
        priority: int = 0,
        reference: str | None = None,
    ) -> str:
        """What ``top_up`` with these arguments would refuse now, raised without a change:
        its arguments, an unknown wallet, an expiry already past. Returns the wallet's
        unit. (What depends on the balance when it runs, such as 64-bit room, is left to
        ``top_up``.)"""
        _top_up_arguments(amount, kind, expires_at, priority, reference)
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
        if expires_at is not None and expires_at <= self._now():
            raise InvalidInput("expires_at must be in the future", field="expires_at")
        return wallet.unit

    def adjust(
        self,
        account_id: str,
        amount: int,
        *,
        reason: str,
        idempotency_key: str,
        actor: str | None = None,
    ) -> AdjustmentResult:
        """An admin correction: a signed amount against the funding account."""
        if type(amount) is not int or amount == 0 or abs(amount) > kernel.MAX_AMOUNT:
            raise InvalidInput(
                "amount must be a non-zero whole number of minor units",
                field="amount",
                allowed={"min": -kernel.MAX_AMOUNT, "max": kernel.MAX_AMOUNT},
            )
        _text(reason, "reason", most=500)
        payload = {"account_id": account_id, "amount": amount, "reason": reason}

        def work(w: _Work) -> AdjustmentResult | dict[str, Any]:
            wallet = self._lock_wallet(w.conn, account_id)
            stored = w.replay()
            if stored is not None:
                return stored
            self._expire_due(w.conn, wallet, w.now)
            balance_before, _ = self._money(w.conn, wallet)
            kernel.check_room(balance_before, wallet.overdraft_limit, amount)
            funding = self._system_account(wallet.unit, "funding")
            if amount > 0:
                legs = kernel.transfer(funding, wallet.id, wallet.unit, amount)
            else:
                legs = kernel.transfer(wallet.id, funding, wallet.unit, -amount)
            entry_id = self._post(w.conn, w.now, "adjustment", wallet, legs, reason, actor=w.actor)
            if amount > 0:
                self._credit_grants(
                    w.conn,
                    wallet,
                    entry_id,
                    amount,
                    balance_before,
                    w.now,
                    kind="adjustment",
                    reference=reason[:200],
                )
            else:
                self._debit_grants(w.conn, wallet, entry_id, -amount)
            return AdjustmentResult(
                entry=self._entry_view(w.conn, entry_id), balance=self._balance_view(w.conn, wallet)
            )

        return self._mutate(
            "adjustment", idempotency_key, payload, work, AdjustmentResult, actor=actor
        )

    # ------------------------------------------------------------------ authorizations

    def affordability(self, account_id: str, quote: Quote) -> Affordability:
        """Whether the wallet covers ``quote.max_cost`` now: its available credits, whether
        it is blocked, and what its spend limit leaves this period.

        Advisory (no lock, nothing held): ``authorize`` decides. Answered as it would:
        where the wallet's holds past their expiry, not yet released, would leave it short,
        without them (``authorize`` releases them first).
        """
        now = self._now()
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
            self._check_unit(quote, wallet)
            view = self._balance_view(conn, wallet)

            def look(pending: int) -> tuple[bool, int, int | None]:
                """Affordable, available and the spend limit's room, ``pending`` held."""
                available = view.available + view.pending - pending
                room = None
                if wallet.spend_limit is not None:
                    held = dataclasses.replace(wallet, pending=pending)
                    room = self._spend_room(conn, held, now)[0]
                affordable = (
                    view.debt == 0
                    and available >= quote.max_cost
                    and not wallet.blocked
                    and (room is None or room >= quote.max_cost)
                )
                return affordable, available, room

            affordable, available, room = look(view.pending)
            if not affordable and not wallet.blocked and view.pending:
                stale = Store.of(conn).one(
                    sql.EXPIRED_HELD_OF_WALLET, {"account_id": wallet.id, "now": now}
                )
                assert stale is not None
                if stale[0]:
                    affordable, available, room = look(view.pending - int(stale[0]))
        return Affordability(
            affordable=affordable,
            available=available,
            blocked=wallet.blocked,
            spend_remaining=None if room is None else max(0, room),
        )

    def quote(self, request: Mapping[str, Any], *, at: datetime | None = None) -> Quote:
        """Price a request with the catalog versions in force now (or at ``at``, to see
        what it cost then); changes nothing."""
        return self._quote(request, aware_instant(at, "at") or self._now())

    def _quote(self, request: Any, now: datetime) -> Quote:
        return estimate(request, now, catalogs=self.catalogs)

    def _lock_payer(
        self, w: _Work, account_id: str, priced: _Priced
    ) -> tuple[_Wallet, list[tuple[Any, ...]]] | dict[str, Any]:
        """Lock the wallet that pays for ``priced`` and read, under that lock and in one
        round trip, the key's stored result and the wallet's open grants. Returns the
        stored result (a replay), or the wallet (its unit checked) and its grants' rows."""
        wallet, (replay, grant_rows) = self._lock_wallet_with(
            w.store,
            account_id,
            w.replay_query,
            (sql.OPEN_GRANTS_OF_WALLET, {"external_id": account_id}),
        )
        stored = w.replayed(replay[0] if replay else None)
        if stored is not None:
            return stored
        self._check_unit(priced, wallet)
        return wallet, grant_rows

    def _funds(
        self, w: _Work, account_id: str, quote: Quote, needed: int
    ) -> tuple[_Wallet, list[kernel.GrantState], int] | dict[str, Any]:
        """Lock the wallet, replay a stored result, or check that ``needed`` is available.

        Returns the stored result, or (wallet, its live grants, available). Grants past
        due expire first: expired credits are never spendable. Raises AccountBlocked when
        the wallet is blocked, InsufficientCredits when available is short or the wallet
        is in debt, SpendLimitReached when ``needed`` is more than its spend limit leaves
        this period.
        """
        locked = self._lock_payer(w, account_id, quote)
        if isinstance(locked, dict):
            return locked
        wallet, grant_rows = locked
        if wallet.blocked:
            raise AccountBlocked(
                f"account '{wallet.external_id}' is blocked: no new authorizations or charges",
                field="account_id",
            )
        live, expired = self._live_grants(w.conn, wallet, w.now, grant_rows)
        balance = wallet.balance - expired
        refusal = self._refusal(w, wallet, balance, needed)
        if refusal is not None and wallet.pending:
            # Holds past their expiry hold nothing, though until a sweeper releases them
            # they still count in pending: release them now, and look again. (Only when
            # refused: an authorization that fits anyway reads nothing more.) Refused
            # after all, the transaction rolls back and the sweeper releases them.
            wallet = self._release_expired_holds(w, wallet)
            refusal = self._refusal(w, wallet, balance, needed)
        if refusal is not None:
            raise refusal
        return wallet, live, kernel.available(balance, wallet.pending, wallet.overdraft_limit)

    def _refusal(
        self, w: _Work, wallet: _Wallet, balance: int, needed: int
    ) -> InsufficientCredits | None:
        """Why the wallet (its ``balance`` net of grants expired now) cannot hold or spend
        ``needed``: available is short, it is in debt, or its spend limit leaves less this
        period. None: it can."""
        available = kernel.available(balance, wallet.pending, wallet.overdraft_limit)
        if available < needed or kernel.debt(balance, wallet.overdraft_limit) > 0:
            return InsufficientCredits(needed, available, wallet.unit, wallet.scale)
        if wallet.spend_limit is not None:
            room, resets_at = self._spend_room(w.conn, wallet, w.now)
            if needed > room:
                return SpendLimitReached(
                    needed,
                    available,
                    wallet.unit,
                    wallet.scale,
                    limit=wallet.spend_limit,
                    remaining=max(0, room),
                    resets_at=resets_at,
                )
        return None

    @staticmethod
    def _spent(conn: Connection, wallet: _Wallet, now: datetime) -> tuple[int, datetime]:
        """What the wallet spent in the period of ``now`` (its calendar month, in its
        timezone): what captures and charges debited it in the period less what refunds of
        those gave back (a refund of an earlier period's charge counts in that period, not
        this one), and when the period ends."""
        period = kernel.period_of(now, wallet.timezone)
        first, after = kernel.period_days(period)
        start, end = kernel.period_bounds(period, wallet.timezone)
        row = Store.of(conn).one(
            sql.SPENT,
            {
                "account_id": wallet.id,
                "first": first,
                "after": after,
                "start": start,
                "end": end,
                "since": start - sql.REFUND_SKEW,
            },
        )
        assert row is not None
        # A guard: it cannot go below zero, as a refund counts only where its charge does
        # (the rollup's local days and the period's instants are of the wallet's one
        # timezone, fixed at opening).
        return max(0, int(row[0])), end

    def _spend_room(self, conn: Connection, wallet: _Wallet, now: datetime) -> tuple[int, datetime]:
        """What the wallet may still hold or spend this period under its spend limit (its
        limit less what it spent this period and its open holds; below zero after a
        capture's overage), and when the period ends. Exact only under the wallet's lock
        (``_funds``); an estimate's read is advisory."""
        assert wallet.spend_limit is not None
        spent, resets_at = self._spent(conn, wallet, now)
        return wallet.spend_limit - spent - wallet.pending, resets_at

    @staticmethod
    def _check_unit(quote: _Priced, wallet: _Wallet) -> None:
        if quote.unit != wallet.unit:
            raise InvalidInput(
                f"catalog '{quote.catalog}' bills in {quote.unit}; account '{wallet.external_id}' "
                f"holds {wallet.unit}",
                field="catalog",
            )

    def authorize(
        self,
        account_id: str,
        request: Mapping[str, Any],
        *,
        idempotency_key: str,
        request_id: str | None = None,
        ttl: timedelta | None = None,
    ) -> HoldView:
        """Hold the quote's ``max_cost``, or raise InsufficientCredits (402)."""
        _text(request_id, "request_id", required=False)
        hold_ttl = ttl if ttl is not None else self.hold_ttl
        if not timedelta(seconds=1) <= hold_ttl <= HOLD_LIFETIME:
            raise InvalidInput("ttl must be between 1 second and 7 days", field="ttl")
        quote = self._quote(request, self._now())
        payload = {
            "account_id": account_id,
            "request": request,
            "request_id": request_id,
            "ttl": hold_ttl.total_seconds(),
        }

        def work(w: _Work) -> HoldView | dict[str, Any]:
            funds = self._funds(w, account_id, quote, quote.max_cost)
            if isinstance(funds, dict):
                return funds
            wallet, _live, available = funds
            needed = quote.max_cost
            hold_id, metering_id = new_id(), new_id()
            expires = w.now + hold_ttl
            store = w.store
            store.run(
                sql.INSERT_HOLD,
                {
                    "id": hold_id,
                    "account_id": wallet.id,
                    "amount": needed,
                    "created_at": w.now,
                    "expires_at": expires,
                    "metering_id": metering_id,
                    "catalog": quote.catalog,
                    "catalog_version": quote.catalog_version,
                    "operation": quote.operation,
                    "model": quote.model,
                    "request": Json(dict(request)),
                },
            )
            self._move_pending(w.conn, wallet.id, needed)
            store.run(
                sql.INSERT_METERING,
                {
                    "id": metering_id,
                    "account_id": wallet.id,
                    "kind": "authorization",
                    "hold_id": hold_id,
                    "catalog": quote.catalog,
                    "catalog_version": quote.catalog_version,
                    "operation": quote.operation,
                    "model": quote.model,
                    "unit": quote.unit,
                    "status": "pending",
                    "held": needed,
                    "request_id": request_id,
                    "created_at": w.now,
                    **sql.usage_values(quote.estimated_usage),
                },
            )
            return HoldView(
                id=hold_id,
                account_id=wallet.external_id,
                status="pending",
                held=needed,
                unit=wallet.unit,
                scale=wallet.scale,
                created_at=w.now,
                expires_at=expires,
                resolved_at=None,
                captured=None,
                entry_id=None,
                catalog=quote.catalog,
                catalog_version=quote.catalog_version,
                operation=quote.operation,
                model=quote.model,
                metering_id=metering_id,
                credits_remaining=available - needed,
                quote=quote.to_dict(),
            )

        return self._mutate("authorize", idempotency_key, payload, work, HoldView, batch=True)

    def _lock_hold(
        self, w: _Work, hold_id: Any, *, replay: bool = True, grants: bool = False
    ) -> _LockedHold:
        """Lock the wallet of a hold and read, under that lock and in one round trip, the
        hold, the key's stored result (``replay``) and the wallet's open grants (``grants``)."""
        if not isinstance(hold_id, str):
            raise InvalidInput("hold id must be a string", field="id")
        queries: list[tuple[Sql, Mapping[str, Any]]] = [
            (sql.LOCK_WALLET_OF_HOLD, {"id": hold_id}),
            (sql.HOLD, {"id": hold_id}),
        ]
        if replay:
            queries.append(w.replay_query)
        if grants:
            queries.append((sql.OPEN_GRANTS_OF_HOLD, {"id": hold_id}))
        results = w.store.reads(*queries)
        if not results[0] or not results[1]:
            raise NotFound(f"no authorization '{hold_id}'", field="id")
        stored = w.replayed(results[2][0] if replay and results[2] else None)
        wallet = _Wallet(*results[0][0])
        hold = self._hold_row(w.store, wallet.id, results[1][0])
        return _LockedHold(wallet, hold, stored, results[-1] if grants else None)

    @staticmethod
    def _hold_row(store: Store, account_id: int, row: tuple[Any, ...]) -> _HoldRow:
        """A hold of the wallet ``account_id`` as ``sql.HOLD`` reads it."""
        (
            hid,
            amount,
            status,
            expires_at,
            metering_id,
            catalog,
            version,
            operation,
            model,
            request,
        ) = row
        expires = store.instant(expires_at)
        assert expires is not None
        return _HoldRow(
            hid,
            account_id,
            int(amount),
            status,
            expires,
            metering_id,
            catalog,
            version,
            operation,
            model,
            store.document(request),
        )

    def _expire_hold(self, w: _Work, hold: _HoldRow) -> None:
        """Release a pending hold past its expiry, under its wallet's lock: the sweeper's
        work, and that of an authorization or charge its wallet would otherwise refuse."""
        self._resolve(w, hold, "expired")
        self._move_pending(w.conn, hold.account_id, -hold.amount)
        w.store.run(sql.EXPIRE_METERING, {"id": hold.metering_id, "now": w.now})
        w.holds_expired += 1

    def _release_expired_holds(self, w: _Work, wallet: _Wallet) -> _Wallet:
        """Release the wallet's holds past their expiry that no sweeper has released yet
        (they hold nothing any more), and return the wallet with its pending less them."""
        rows = w.store.all(sql.EXPIRED_HOLDS_OF_WALLET, {"account_id": wallet.id, "now": w.now})
        released = 0
        for row in rows:
            hold = self._hold_row(w.store, wallet.id, row)
            self._expire_hold(w, hold)
            released += hold.amount
        return dataclasses.replace(wallet, pending=wallet.pending - released)

    def _resolve(
        self,
        w: _Work,
        hold: _HoldRow,
        status: str,
        *,
        captured: int | None = None,
        entry_id: str | None = None,
    ) -> None:
        """Resolve a pending hold exactly once (conditional on its status)."""
        w.store.expect(
            sql.RESOLVE_HOLD,
            {
                "status": status,
                "now": w.now,
                "captured": captured,
                "entry_id": entry_id,
                "id": hold.id,
            },
            rows=1,
            failure=lambda: HoldNotPending(
                f"authorization '{hold.id}' is already resolved", field="id", allowed=["pending"]
            ),
        )

    @staticmethod
    def _check_pending(hold: _HoldRow, now: datetime) -> None:
        if hold.status != "pending":
            raise HoldNotPending(
                f"authorization '{hold.id}' is {hold.status}", field="id", allowed=["pending"]
            )
        if hold.expires_at <= now:
            raise HoldNotPending(
                f"authorization '{hold.id}' expired at {kernel.utc_text(hold.expires_at)}",
                field="id",
                allowed=["pending"],
            )

    def capture(
        self,
        hold_id: str,
        *,
        status: str,
        usage: Mapping[str, Any] | None,
        idempotency_key: str,
        actor: str | None = None,
    ) -> CaptureResult:
        """Charge what the request used, release the rest of the hold (ERROR: nothing)."""
        payload = {"id": hold_id, "status": status, "usage": usage}

        def work(w: _Work) -> CaptureResult | dict[str, Any]:
            locked = self._lock_hold(w, hold_id, grants=True)
            if locked.stored is not None:
                return locked.stored
            wallet, hold = locked.wallet, locked.hold
            self._check_pending(hold, w.now)
            charge = self._price_capture(hold, wallet, usage, status)
            amount = charge.amount
            live, expired = self._live_grants(w.conn, wallet, w.now, locked.grant_rows)
            entry_id = None
            if amount > 0:
                entry_id = self._spend(
                    w,
                    wallet,
                    "capture",
                    amount,
                    f"{hold.catalog} {hold.operation} {hold.model}",
                    live,
                    hold_id=hold.id,
                    pending=-hold.amount,
                )
            else:
                self._move_pending(w.conn, wallet.id, -hold.amount)
            # Conditional on 'pending': a hold resolved meanwhile rolls all of this back.
            self._resolve(w, hold, "captured", captured=amount, entry_id=entry_id)
            self._record_usage(
                w,
                wallet,
                hold.metering_id,
                charge.status,
                amount,
                entry_id,
                charge.usage,
                hold.catalog,
                hold.operation,
                hold.model,
            )
            balance = wallet.balance - expired - amount
            pending = wallet.pending - hold.amount
            return CaptureResult(
                id=hold.id,
                status="captured",
                outcome=charge.status,
                charged=amount,
                released=max(0, hold.amount - amount),
                overage=max(0, amount - hold.amount),
                credits_used=amount,
                credits_remaining=kernel.available(balance, pending, wallet.overdraft_limit),
                unit=wallet.unit,
                scale=wallet.scale,
                entry_id=entry_id,
                charge=charge.to_dict(),
            )

        return self._mutate(
            "capture", idempotency_key, payload, work, CaptureResult, batch=True, actor=actor
        )

    def unpriceable_holds(self) -> list[Unpriceable]:
        """The pending holds, by catalog, version and operation, whose catalog version
        this ledger's catalogs no longer hold (a file under CREDITLEDGER_CATALOG_DIR
        removed, or its version renamed): what ``serve`` warns of as it starts."""
        now = self._now()
        with self.db.transaction(write=False) as conn:
            groups = conn.execute(
                sa.select(
                    holds.c.catalog,
                    holds.c.catalog_version,
                    holds.c.operation,
                    sa.func.count(),
                    sa.func.max(holds.c.expires_at),
                )
                .where(PENDING_HOLD, holds.c.expires_at > now)
                .group_by(holds.c.catalog, holds.c.catalog_version, holds.c.operation)
                .order_by(holds.c.catalog, holds.c.catalog_version, holds.c.operation)
            ).all()
        found = []
        for catalog, version, operation, count, until in groups:
            try:
                resolve_operation(self.catalogs, catalog, operation, catalog_version=version)
            except PricingError as exc:
                found.append(
                    Unpriceable(catalog, version, operation, int(count), until, exc.message)
                )
        return found

    def _price_capture(
        self, hold: _HoldRow, wallet: _Wallet, usage: Mapping[str, Any] | None, status: str
    ) -> Charge:
        """What ``usage`` costs under the catalog version ``hold`` was quoted with. Its
        request was priced by that version when authorized: an error other than one of
        the reported usage (or status) means the catalogs changed under the hold. A
        request that ended in ERROR costs nothing by any version, so its hold is
        released even then: the provider's error is never charged, nor held on to."""
        try:
            return price_usage(
                hold.request,
                usage,
                status,
                catalog_version=hold.catalog_version,
                catalogs=self.catalogs,
            )
        except PricingError as exc:
            if isinstance(exc, InvalidUsage) or exc.field == "usage":
                raise
            if status not in STATUSES:  # the caller's error, whatever the catalogs hold
                raise InvalidUsage(
                    f"unknown status {status!r}", field="status", allowed=list(STATUSES)
                ) from None
            if status == "ERROR":
                if usage is not None and not isinstance(usage, Mapping):
                    raise InvalidUsage("usage must be an object", field="usage") from None
                return error_charge(
                    hold.catalog,
                    hold.catalog_version,
                    hold.operation,
                    hold.model,
                    wallet.unit,
                    wallet.scale,
                )
            raise CatalogChanged(
                f"authorization '{hold.id}' was quoted with catalog '{hold.catalog}' version "
                f"'{hold.catalog_version}', by which this server's catalogs can no longer "
                f"price it ({exc.message}): nothing was charged, and the hold stays pending until "
                f"{kernel.utc_text(hold.expires_at)}. The operator must restore that version "
                "(earlier versions stay under CREDITLEDGER_CATALOG_DIR); then retry",
                catalog=hold.catalog,
                catalog_version=hold.catalog_version,
            ) from exc

    def void(self, hold_id: str, *, idempotency_key: str) -> HoldView:
        """Release a pending hold entirely."""
        payload = {"id": hold_id}

        def work(w: _Work) -> HoldView | dict[str, Any]:
            locked = self._lock_hold(w, hold_id)
            if locked.stored is not None:
                return locked.stored
            wallet, hold = locked.wallet, locked.hold
            if hold.status != "pending":
                raise HoldNotPending(
                    f"authorization '{hold.id}' is {hold.status}", field="id", allowed=["pending"]
                )
            self._resolve(w, hold, "voided")
            self._move_pending(w.conn, wallet.id, -hold.amount)
            w.conn.execute(
                metering.update()
                .where(metering.c.id == hold.metering_id)
                .values(status="voided", completed_at=w.now)
            )
            return self._hold_view(w.conn, wallet, hold.id)

        return self._mutate("void", idempotency_key, payload, work, HoldView)

    def extend(self, hold_id: str, *, ttl: timedelta, idempotency_key: str) -> HoldView:
        """Keep a pending hold for ``ttl`` from now (a provider's queue ran long), within
        :data:`HOLD_LIFETIME` of its authorization. A hold already expired, captured or
        voided is not revived: authorize again."""
        if not isinstance(ttl, timedelta) or not timedelta(seconds=1) <= ttl <= HOLD_LIFETIME:
            raise InvalidInput("ttl must be between 1 second and 7 days", field="ttl_seconds")
        payload = {"id": hold_id, "ttl": ttl.total_seconds()}

        def work(w: _Work) -> HoldView | dict[str, Any]:
            locked = self._lock_hold(w, hold_id)
            if locked.stored is not None:
                return locked.stored
            wallet, hold = locked.wallet, locked.hold
            if hold.status != "pending" or hold.expires_at <= w.now:
                state = hold.status if hold.status != "pending" else "expired"
                raise HoldNotPending(
                    f"authorization '{hold.id}' is {state}", field="id", allowed=["pending"]
                )
            created = w.conn.execute(
                sa.select(holds.c.created_at).where(holds.c.id == hold.id)
            ).scalar_one()
            expires = w.now + ttl
            if expires > created + HOLD_LIFETIME:
                most = int((created + HOLD_LIFETIME - w.now).total_seconds())
                raise InvalidInput(
                    f"a hold lives at most {HOLD_LIFETIME.days} days from its authorization: "
                    f"this one may be kept {most} seconds more",
                    field="ttl_seconds",
                    allowed={"max": most},
                )
            w.conn.execute(
                holds.update().where(holds.c.id == hold.id, PENDING_HOLD).values(expires_at=expires)
            )
            return self._hold_view(w.conn, wallet, hold.id)

        return self._mutate("extend", idempotency_key, payload, work, HoldView)

    def _hold_view(self, conn: Connection, wallet: _Wallet, hold_id: str) -> HoldView:
        h = conn.execute(sa.select(holds).where(holds.c.id == hold_id)).one()
        return self._hold_of_row(wallet, h, self._money(conn, wallet))

    @staticmethod
    def _hold_of_row(wallet: _Wallet, h: Row[Any], money: tuple[int, int]) -> HoldView:
        balance, pending = money
        return HoldView(
            id=h.id,
            account_id=wallet.external_id,
            status=h.status,
            held=h.amount,
            unit=wallet.unit,
            scale=wallet.scale,
            created_at=h.created_at,
            expires_at=h.expires_at,
            resolved_at=h.resolved_at,
            captured=h.captured,
            entry_id=h.entry_id,
            catalog=h.catalog,
            catalog_version=h.catalog_version,
            operation=h.operation,
            model=h.model,
            metering_id=h.metering_id,
            credits_remaining=kernel.available(balance, pending, wallet.overdraft_limit),
        )

    def holds_of(
        self,
        account_id: str,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> HoldPage:
        """A wallet's authorizations (of one ``status``, if given), newest first, ``limit``
        at a time. A pending one past its ``expires_at`` can no longer be captured, swept
        or not."""
        page_limit(limit)
        if status is not None and status not in HOLD_STATUSES:
            raise InvalidInput(
                f"unknown status {status!r}", field="status", allowed=list(HOLD_STATUSES)
            )
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
            stmt = sa.select(holds).where(holds.c.account_id == wallet.id)
            # The pending ones (the few open now) by their own index, then sorted; the
            # others by the index of the wallet's holds in their order.
            if status == "pending":
                stmt = stmt.where(PENDING_HOLD)
            elif status is not None:
                stmt = stmt.where(holds.c.status == status)
            page, next_cursor = page_in_order(
                conn,
                stmt,
                holds.c.created_at,
                holds.c.id,
                cursor,
                limit,
                newest=True,
                by_index=status != "pending",
            )
            money = self._money(conn, wallet)
        return HoldPage(
            items=[self._hold_of_row(wallet, h, money) for h in page], next_cursor=next_cursor
        )

    def hold(self, hold_id: str, *, owner: str | None = None) -> HoldView:
        """An authorization; with ``owner``, only if it is that wallet's (else not found)."""
        with self.db.transaction(write=False) as conn:
            account = conn.execute(
                sa.select(holds.c.account_id).where(holds.c.id == hold_id)
            ).scalar()
            external = (
                None
                if account is None
                else conn.execute(
                    sa.select(accounts.c.external_id).where(accounts.c.id == account)
                ).scalar_one()
            )
            if external is None or owner not in (None, external):
                raise NotFound(f"no authorization '{hold_id}'", field="id")
            return self._hold_view(conn, self._wallet(conn, external), hold_id)

    # -------------------------------------------------------------------- usage records

    def usage_records(
        self,
        account_id: str,
        *,
        status: str | None = None,
        kind: str | None = None,
        catalog: str | None = None,
        operation: str | None = None,
        model: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> UsageRecordPage:
        """A wallet's metering records (one per authorization, immediate charge or usage
        reported after the fact), newest first, ``limit`` at a time: of one ``status``,
        ``kind``, catalog, operation, model or gateway ``request_id``, and made at or after
        ``since`` and before ``until``, if given (pass the same with the next page's
        cursor)."""
        page_limit(limit)
        if status is not None and status not in METERING_STATUSES:
            raise InvalidInput(
                f"unknown status {status!r}", field="status", allowed=list(METERING_STATUSES)
            )
        if kind is not None and kind not in METERING_KINDS:
            raise InvalidInput(f"unknown kind {kind!r}", field="kind", allowed=list(METERING_KINDS))
        wanted = {
            metering.c.catalog: _text(catalog, "catalog", required=False, most=64),
            metering.c.operation: _text(operation, "operation", required=False, most=64),
            metering.c.model: _text(model, "model", required=False, most=200),
            metering.c.request_id: _text(request_id, "request_id", required=False, most=200),
            metering.c.status: status,
            metering.c.kind: kind,
        }
        since, until = _window(since, until)
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
            stmt = self._usage_records().where(metering.c.account_id == wallet.id)
            for column, value in wanted.items():
                if value is not None:
                    stmt = stmt.where(column == value)
            if since is not None:
                stmt = stmt.where(metering.c.created_at >= since)
            if until is not None:
                stmt = stmt.where(metering.c.created_at < until)
            page, next_cursor = page_in_order(
                conn, stmt, metering.c.created_at, metering.c.id, cursor, limit, newest=True
            )
        return UsageRecordPage(
            items=[self._usage_record_view(wallet, r) for r in page], next_cursor=next_cursor
        )

    def usage_record(self, record_id: str, *, owner: str | None = None) -> UsageRecordView:
        """One metering record (a charge's id, or an authorization's ``metering_id``);
        with ``owner``, only if it is that wallet's (else not found)."""
        if not isinstance(record_id, str) or kernel.text_problem(record_id) is not None:
            raise NotFound(f"no usage record {record_id!r}", field="id")
        with self.db.transaction(write=False) as conn:
            external = conn.execute(
                sa.select(accounts.c.external_id)
                .join(metering, metering.c.account_id == accounts.c.id)
                .where(metering.c.id == record_id)
            ).scalar()
            if external is None or owner not in (None, external):
                raise NotFound(f"no usage record '{record_id}'", field="id")
            wallet = self._wallet(conn, external)
            row = conn.execute(self._usage_records().where(metering.c.id == record_id)).one()
        return self._usage_record_view(wallet, row)

    @staticmethod
    def _usage_records() -> sa.Select[Any]:
        """Metering records, each with the entry that reversed its charge (if any)."""
        refund = entries.alias("refund")
        return sa.select(
            metering, seconds_micros(metering.c.seconds), refund.c.id.label("reversed_by")
        ).outerjoin(
            refund,
            sa.and_(metering.c.entry_id.is_not(None), refund.c.reverses_id == metering.c.entry_id),
        )

    @staticmethod
    def _usage_record_view(wallet: _Wallet, r: Row[Any]) -> UsageRecordView:
        return UsageRecordView(
            id=r.id,
            account_id=wallet.external_id,
            kind=r.kind,
            status=r.status,
            catalog=r.catalog,
            catalog_version=r.catalog_version,
            operation=r.operation,
            model=r.model,
            unit=wallet.unit,
            scale=wallet.scale,
            held=r.held,
            charged=r.charged,
            usage=RecordedUsage(
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                images=r.images,
                videos=r.videos,
                candidates=r.candidates,
                seconds=kernel.exact_seconds(r.seconds_us),
            ),
            request_id=r.request_id,
            hold_id=r.hold_id,
            entry_id=r.entry_id,
            reversed_by=r.reversed_by,
            created_at=r.created_at,
            completed_at=r.completed_at,
        )

    # ------------------------------------------------------------------------- charges

    def charge(
        self,
        account_id: str,
        request: Mapping[str, Any],
        *,
        idempotency_key: str,
        actor: str | None = None,
        request_id: str | None = None,
    ) -> ChargeResult:
        """Deduct the quote's cost at once ("credits are deducted immediately", seed 003)."""
        _text(request_id, "request_id", required=False)
        quote = self._quote(request, self._now())
        payload = {"account_id": account_id, "request": request, "request_id": request_id}

        def work(w: _Work) -> ChargeResult | dict[str, Any]:
            funds = self._funds(w, account_id, quote, quote.cost)
            if isinstance(funds, dict):
                return funds
            wallet, live, available = funds
            cost = quote.cost
            metering_id, entry_id = self._debit_at_once(
                w,
                wallet,
                live,
                quote,
                kind="charge",
                status="CHARGED",
                amount=cost,
                usage=quote.estimated_usage,
                request_id=request_id,
            )
            return ChargeResult(
                id=metering_id,
                account_id=wallet.external_id,
                entry_id=entry_id,
                credits_used=cost,
                credits_remaining=available - cost,
                unit=wallet.unit,
                scale=wallet.scale,
                quote=quote.to_dict(),
            )

        return self._mutate(
            "charge", idempotency_key, payload, work, ChargeResult, batch=True, actor=actor
        )

    def report_usage(
        self,
        account_id: str,
        request: Mapping[str, Any],
        *,
        status: str,
        usage: Mapping[str, Any] | None,
        idempotency_key: str,
        actor: str | None = None,
        request_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> UsageReportResult:
        """Charge what a request used, reported after it ran (post-paid: no hold before).

        Priced like a capture (``price_usage``: ERROR is never charged, FAILED by the
        catalog's policy, usage held to what the request allowed), with the catalog
        version in force at ``occurred_at`` (default: now; never later than now). The
        provider has done the work, so neither a short balance, a blocked wallet nor the
        spend limit refuses it: what available does not cover becomes recorded debt, as
        a capture's overage does, and the spend limit counts it.
        """
        charge, at = self._price_reported(request, status, usage, request_id, occurred_at)
        payload = {
            "account_id": account_id,
            "request": request,
            "status": status,
            "usage": usage,
            "request_id": request_id,
            "occurred_at": None if at is None else at.astimezone(UTC).isoformat(),
        }

        def work(w: _Work) -> UsageReportResult | dict[str, Any]:
            locked = self._lock_payer(w, account_id, charge)
            if isinstance(locked, dict):
                return locked
            wallet, grant_rows = locked
            live, expired = self._live_grants(w.conn, wallet, w.now, grant_rows)
            amount = charge.amount
            metering_id, entry_id = self._debit_at_once(
                w,
                wallet,
                live,
                charge,
                kind="usage",
                status=charge.status,
                amount=amount,
                usage=charge.usage,
                request_id=request_id,
            )
            balance = wallet.balance - expired - amount
            return UsageReportResult(
                id=metering_id,
                account_id=wallet.external_id,
                status=charge.status,
                catalog=charge.catalog,
                catalog_version=charge.catalog_version,
                operation=charge.operation,
                model=charge.model,
                charged=amount,
                credits_used=amount,
                credits_remaining=kernel.available(balance, wallet.pending, wallet.overdraft_limit),
                debt=kernel.debt(balance, wallet.overdraft_limit),
                unit=wallet.unit,
                scale=wallet.scale,
                entry_id=entry_id,
                charge=charge.to_dict(),
            )

        return self._mutate(
            "report_usage",
            idempotency_key,
            payload,
            work,
            UsageReportResult,
            batch=True,
            actor=actor,
        )

    def check_usage_report(
        self,
        account_id: str,
        request: Mapping[str, Any],
        *,
        status: str,
        usage: Mapping[str, Any] | None,
        request_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Charge:
        """What ``report_usage`` with these arguments would refuse now, raised without a
        change: the request, its usage and outcome, an unknown wallet, another unit.
        Returns what it would charge (64-bit room is left to ``report_usage``)."""
        charge, _ = self._price_reported(request, status, usage, request_id, occurred_at)
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
        self._check_unit(charge, wallet)
        return charge

    def _price_reported(
        self,
        request: Mapping[str, Any],
        status: str,
        usage: Mapping[str, Any] | None,
        request_id: str | None,
        occurred_at: datetime | None,
    ) -> tuple[Charge, datetime | None]:
        """The price of reported usage, by the catalog version in force at ``occurred_at``
        (checked: an instant, not later than now; default now), and that instant."""
        _text(request_id, "request_id", required=False)
        now = self._now()
        at = aware_instant(occurred_at, "occurred_at")
        if at is not None and at > now:
            raise InvalidInput(
                f"occurred_at {kernel.utc_text(at)} is in the future: report usage once the "
                "request has run",
                field="occurred_at",
                allowed={"max": kernel.utc_text(now)},
            )
        try:
            return price_usage(request, usage, status, at=at or now, catalogs=self.catalogs), at
        except NoVersionInForce as exc:
            exc.field = "occurred_at"
            raise

    def _debit_at_once(
        self,
        w: _Work,
        wallet: _Wallet,
        live: list[kernel.GrantState],
        priced: _Priced,
        *,
        kind: str,
        status: str,
        amount: int,
        usage: Mapping[str, Any],
        request_id: str | None,
    ) -> tuple[str, str | None]:
        """Charge ``amount`` without a hold and meter it, in ``w``'s transaction: a
        ``charge`` entry (none for 0) burning the ``live`` grants, a usage record of
        ``kind`` with ``status`` and ``usage``, and the day's rollup. Returns the usage
        record's id and the entry's."""
        metering_id = new_id()
        entry_id = None
        if amount > 0:
            memo = f"{priced.catalog} {priced.operation} {priced.model}"
            entry_id = self._spend(w, wallet, "charge", amount, memo, live)
        w.store.run(
            sql.INSERT_METERING,
            {
                "id": metering_id,
                "account_id": wallet.id,
                "kind": kind,
                "hold_id": None,
                "catalog": priced.catalog,
                "catalog_version": priced.catalog_version,
                "operation": priced.operation,
                "model": priced.model,
                "unit": priced.unit,
                "status": status,
                "held": 0,
                "request_id": request_id,
                "created_at": w.now,
                **sql.usage_values({}),
            },
        )
        self._record_usage(
            w,
            wallet,
            metering_id,
            status,
            amount,
            entry_id,
            usage,
            priced.catalog,
            priced.operation,
            priced.model,
        )
        return metering_id, entry_id

    def _spend(
        self,
        w: _Work,
        wallet: _Wallet,
        kind: str,
        amount: int,
        memo: str,
        live: list[kernel.GrantState],
        *,
        hold_id: str | None = None,
        pending: int = 0,
    ) -> str:
        """Move ``amount`` (> 0) of what a request used from the wallet to usage revenue
        by an entry of ``kind`` (capture or charge) burning its ``live`` grants; a
        capture also releases its hold's ``pending``. What the grants do not cover takes
        the balance below zero (overdraft or debt). Returns the entry's id."""
        revenue = self._system_account(wallet.unit, "revenue")
        entry_id = self._post(
            w.conn,
            w.now,
            kind,
            wallet,
            kernel.transfer(wallet.id, revenue, wallet.unit, amount),
            memo,
            actor=w.actor,
            hold_id=hold_id,
            pending=pending,
        )
        self._debit_grants(w.conn, wallet, entry_id, amount, live=live)
        return entry_id

    def _record_usage(
        self,
        w: _Work,
        wallet: _Wallet,
        metering_id: str,
        status: str,
        amount: int,
        entry_id: str | None,
        usage: Mapping[str, Any],
        catalog: str,
        operation: str,
        model: str,
    ) -> None:
        """Close the metering record and add it to the day's rollup, in this transaction."""
        values = sql.usage_values(usage)
        w.store.run(
            sql.CLOSE_METERING,
            {
                "status": status,
                "charged": amount,
                "entry_id": entry_id,
                "now": w.now,
                "id": metering_id,
                **values,
            },
        )
        w.store.run(
            sql.UPSERT_DAILY,
            {
                "account_id": wallet.id,
                "unit": wallet.unit,
                "catalog": catalog,
                "operation": operation,
                "model": model,
                "day": kernel.day_of(w.now, wallet.timezone),
                "requests": 1,
                "amount": amount,
                **values,
            },
        )

    # ----------------------------------------------------------------------- reversals

    def reverse(
        self, entry_id: str, *, reason: str, idempotency_key: str, actor: str | None = None
    ) -> ReversalResult:
        """Reverse an entry (a refund of a charge, a top-up taken back), at most once."""
        _text(reason, "reason", most=500)
        payload = {"entry_id": entry_id, "reason": reason}

        def work(w: _Work) -> ReversalResult | dict[str, Any]:
            if not isinstance(entry_id, str):
                raise InvalidInput("entry id must be a string", field="id")
            original = w.conn.execute(sa.select(entries).where(entries.c.id == entry_id)).first()
            if original is None:
                raise NotFound(f"no entry '{entry_id}'", field="id")
            wallet = self._lock_wallet_by_id(w.conn, original.account_id)
            stored = w.replay()
            if stored is not None:
                return stored
            if original.kind not in REVERSIBLE:
                raise NotReversible(
                    f"a {original.kind} entry cannot be reversed",
                    field="id",
                    allowed=list(REVERSIBLE),
                )
            done = w.conn.execute(
                sa.select(entries.c.id).where(entries.c.reverses_id == entry_id)
            ).first()
            if done is not None:
                raise AlreadyReversed(f"entry '{entry_id}' was reversed by '{done.id}'", field="id")
            original_legs = [
                Leg(p.account_id, p.unit, p.amount)
                for p in w.conn.execute(
                    sa.select(postings)
                    .where(postings.c.entry_id == entry_id)
                    .order_by(postings.c.id)
                ).all()
            ]
            self._expire_due(w.conn, wallet, w.now)
            # The grant the entry made, if it credited the wallet (a top-up, an adjustment),
            # found among the wallet's grants (no index of every grant by its entry).
            created = w.conn.execute(
                sa.select(grants.c.id).where(
                    grants.c.account_id == wallet.id, grants.c.entry_id == entry_id
                )
            ).scalar()
            legs = kernel.reversal(
                original_legs,
                wallet.id,
                self._system_account(wallet.unit, "expired"),
                self._expired_from(w.conn, wallet.id, created) if created is not None else 0,
            )
            balance_before, _ = self._money(w.conn, wallet)
            delta = sum(leg.amount for leg in legs if leg.account_id == wallet.id)
            kernel.check_room(balance_before, wallet.overdraft_limit, delta)
            reversal = self._post(
                w.conn,
                w.now,
                "reversal",
                wallet,
                legs,
                reason,
                actor=w.actor,
                reverses_id=entry_id,
                # Rolled up apart from other reversals: the statement shows refunds.
                flow="refund" if original.kind in REFUNDABLE else None,
            )
            if delta < 0:
                self._debit_grants(w.conn, wallet, reversal, -delta, first=created)
            elif delta > 0:
                # In burn order; refilled last-burned first.
                burned = w.conn.execute(
                    sa.select(movements.c.grant_id, movements.c.amount)
                    .join(grants, grants.c.id == movements.c.grant_id)
                    .where(movements.c.entry_id == entry_id, movements.c.amount < 0)
                    .order_by(
                        grants.c.priority,
                        sa.case((grants.c.expires_at.is_(None), 1), else_=0),  # never: last
                        grants.c.expires_at,
                        grants.c.effective_at,
                        grants.c.id,
                    )
                ).all()
                # Refill what this entry spent, from grants that have not expired since
                # and whose own top-up (or adjustment) was not taken back since: credits
                # put back into a reversed grant would live on to its expiry, which
                # would then count them among those its reversal did not take back.
                taken_back = entries.alias("taken_back")
                open_ids = (
                    {
                        r.id
                        for r in w.conn.execute(
                            sa.select(grants.c.id).where(
                                grants.c.id.in_([b.grant_id for b in burned]),
                                sa.or_(grants.c.expires_at.is_(None), grants.c.expires_at > w.now),
                                ~sa.exists().where(taken_back.c.reverses_id == grants.c.entry_id),
                            )
                        ).all()
                    }
                    if burned
                    else set()
                )
                restorable = [
                    (b.grant_id, -int(b.amount)) for b in reversed(burned) if b.grant_id in open_ids
                ]
                self._credit_grants(
                    w.conn,
                    wallet,
                    reversal,
                    delta,
                    balance_before,
                    w.now,
                    restorable=restorable,
                    kind="adjustment",
                    reference=f"reversal of {entry_id}",
                )
            return ReversalResult(
                entry=self._entry_view(w.conn, reversal), balance=self._balance_view(w.conn, wallet)
            )

        try:
            return self._mutate(
                "reverse", idempotency_key, payload, work, ReversalResult, actor=actor
            )
        except INTEGRITY_ERRORS as exc:
            if _violated(exc, "reverses_id"):
                raise AlreadyReversed(
                    f"entry '{entry_id}' was already reversed", field="id"
                ) from None
            raise

    @staticmethod
    def _expired_from(conn: Connection, account: int, grant_id: str) -> int:
        """The credits of a grant of wallet ``account`` that expired, or were revoked:
        moved by an expiry entry from the wallet to the expired-credits account (once at
        most: a grant expired holds nothing, and no refund refills it). Read from the
        wallet's few expiry entries (``_expiries_of``), not from every grant's movements,
        which have no index by grant: every capture writes some."""
        gone = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(movements.c.amount), 0))
            .select_from(_expiries_of())
            .where(grants.c.account_id == account, grants.c.id == grant_id)
        ).scalar_one()
        return -int(gone)

    # --------------------------------------------------------------------- revocations

    def revoke_grant(
        self, grant_id: str, *, reason: str, idempotency_key: str, actor: str | None = None
    ) -> RevocationResult:
        """Take back what is left of a grant (a promotion withdrawn, credits granted by
        mistake): it expires now, and its remainder moves to the expired-credits account
        by an expiry entry, as at its expiry. Credits already spent from it stay spent; a
        later refund of them does not refill it. GrantNotOpen (409) when nothing is
        left: spent, expired or revoked already."""
        _text(reason, "reason", most=500)
        payload = {"grant_id": grant_id, "reason": reason}

        def work(w: _Work) -> RevocationResult | dict[str, Any]:
            if not isinstance(grant_id, str) or kernel.text_problem(grant_id) is not None:
                raise NotFound(f"no grant {grant_id!r}", field="id")
            owner = w.conn.execute(
                sa.select(grants.c.account_id).where(grants.c.id == grant_id)
            ).scalar()
            if owner is None:
                raise NotFound(f"no grant '{grant_id}'", field="id")
            wallet = self._lock_wallet_by_id(w.conn, int(owner))
            stored = w.replay()
            if stored is not None:
                return stored
            self._expire_due(w.conn, wallet, w.now)
            remaining = w.conn.execute(
                sa.select(grants.c.remaining).where(grants.c.id == grant_id)
            ).scalar_one()
            if remaining == 0:
                raise GrantNotOpen(
                    f"grant '{grant_id}' has nothing left: spent, expired or revoked",
                    field="id",
                )
            w.conn.execute(grants.update().where(grants.c.id == grant_id).values(expires_at=w.now))
            entry_id = self._expiry_entry(
                w.conn,
                wallet,
                w.now,
                [(grant_id, int(remaining))],
                memo=f"grant {grant_id} revoked: {reason}"[:500],
                actor=w.actor,
            )
            assert entry_id is not None
            row = w.conn.execute(sa.select(grants).where(grants.c.id == grant_id)).one()
            return RevocationResult(
                grant=self._grant_view(row),
                entry=self._entry_view(w.conn, entry_id),
                balance=self._balance_view(w.conn, wallet),
            )

        return self._mutate(
            "revoke_grant", idempotency_key, payload, work, RevocationResult, actor=actor
        )

    # ------------------------------------------------------------------------ sweepers

    def expire_holds(self, *, limit: int = 1000) -> int:
        """Release every pending hold past its expiry. Returns how many."""
        now = self._now()
        with self.db.transaction(write=False) as conn:
            due = (
                conn.execute(
                    sa.select(holds.c.id)
                    .where(PENDING_HOLD, holds.c.expires_at <= now)
                    .order_by(holds.c.expires_at)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
        expired = 0
        for hold_id in due:
            with self.db.transaction() as conn:
                w = _Work(conn, Store.of(conn), "expire_hold", "", "", now)
                hold = self._lock_hold(w, hold_id, replay=False).hold
                # Read again under the lock: resolved, or extended, since it was listed.
                if hold.status != "pending" or hold.expires_at > now:
                    continue
                self._expire_hold(w, hold)
                expired += 1
        return expired

    def prune_idempotency_keys(self, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` idempotency keys older than the retention, oldest first,
        with the responses they would replay. Returns how many.

        Nothing else reads them: a request retried with a deleted key is a new request
        (a hold already resolved or an entry already reversed still refuses a second
        resolution, by its own status).
        """
        if self.idempotency_retention is None:
            return 0
        cutoff = self._now() - self.idempotency_retention
        oldest = (
            sa.select(idempotency.c.key)
            .where(idempotency.c.created_at < cutoff)
            .order_by(idempotency.c.created_at)
            .limit(limit)
        )
        with self.db.transaction() as conn:
            deleted = conn.execute(idempotency.delete().where(idempotency.c.key.in_(oldest)))
            return int(deleted.rowcount)

    def expire_grants(self) -> int:
        """Expire the remainder of every grant past its expiry. Returns how many grants."""
        self._ensure_system()
        now = self._now()
        with self.db.transaction(write=False) as conn:
            wallets = (
                conn.execute(
                    sa.select(grants.c.account_id)
                    .where(EXPIRING, grants.c.expires_at <= now)
                    .distinct()
                )
                .scalars()
                .all()
            )
        count = 0
        for account_id in wallets:
            with self.db.transaction() as conn:
                count += self._expire_due(conn, self._lock_wallet_by_id(conn, int(account_id)), now)
        return count

    def roll_allocations(self) -> int:
        """Grant each wallet's monthly allocation for the current period, exactly once.

        The previous allocations' remainder expires first. Returns how many were granted.
        A wallet whose allocation is refused (it would take the balance beyond 64 bits) is
        logged and skipped; the others are granted, and the next round tries it again. A
        blocked wallet is granted nothing; unblocking it grants the period it is then in
        (not the periods it missed). The change that makes a period's allocation due (an
        opening, an allocation set, an unblocking) grants it at once; the rounds grant
        each period as it begins, and whatever such a change left to them.
        """
        self._ensure_system()
        now = self._now()
        with self.db.transaction(write=False) as conn:
            rows = self._allocations_due(conn, now)
        granted = 0
        for account_id in rows:
            try:
                with _refusing_overflow("allocation"):
                    granted += self._allocate(int(account_id), now)
            except BalanceOverflow as exc:
                log.error("monthly allocation of account %s refused: %s", account_id, exc)
        return granted

    @staticmethod
    def _allocations_due(conn: Connection, now: datetime) -> list[int]:
        """The wallets whose allocation for the period of ``now`` is not granted yet.

        Read in one go, so that a round with nothing to grant writes nothing: the sweeper
        runs every few seconds, and a write transaction per wallet with an allocation
        (thousands of them) would take the write lock that often for nothing. A period is
        a month of the wallet's timezone: each timezone in use is given its period.
        ``_allocate`` checks it all again under the wallet's lock.
        """
        allocating = sa.and_(
            accounts.c.kind == WALLET,
            accounts.c.monthly_allocation.is_not(None),
            accounts.c.blocked.is_(False),
        )
        zones = conn.execute(sa.select(accounts.c.timezone).where(allocating).distinct())
        current = {zone: kernel.period_of(now, zone) for zone in zones.scalars()}
        if not current:
            return []
        # A wallet opened in a timezone since has no period here (NULL): listed as due,
        # and ``_allocate`` finds its own.
        period = sa.case(current, value=accounts.c.timezone)
        granted = sa.select(periods.c.account_id).where(
            periods.c.account_id == accounts.c.id, periods.c.period == period
        )
        due = sa.select(accounts.c.id).where(allocating, ~granted.exists())
        return list(conn.execute(due.order_by(accounts.c.id)).scalars())

    def _allocate(self, account_id: int, now: datetime) -> bool:
        """Grant one wallet its allocation for the period of ``now``, unless done."""
        with self.db.transaction() as conn:
            return self._grant_allocation(conn, self._lock_wallet_by_id(conn, account_id), now)

    def _allocate_now(self, conn: Connection, wallet: _Wallet, now: datetime) -> None:
        """Grant a locked wallet its allocation for the period of ``now`` in the change
        that made it due (a wallet opened with one, an allocation set in a period that
        had none, a wallet unblocked), rather than at the sweeper's next round. One that
        would take the balance beyond 64 bits is left to the sweeper, which logs it and
        tries again each round: the change itself goes through."""
        try:
            with conn.begin_nested(), _refusing_overflow("allocation"):
                self._grant_allocation(conn, wallet, now)
        except BalanceOverflow as exc:
            log.error("monthly allocation of account %s refused: %s", wallet.external_id, exc)

    def _grant_allocation(self, conn: Connection, wallet: _Wallet, now: datetime) -> bool:
        """Grant the locked ``wallet`` its allocation for the period of ``now``, unless
        it was granted already, it has none, or it is blocked (as read under the lock).

        Nor when a later period was granted already: ``now`` is then a clock behind
        another process's at a month's turn. Granting the earlier period would expire
        the later one's allocation, which is on record as granted and never granted
        again: the wallet would go that month without it."""
        allocation = conn.execute(
            sa.select(accounts.c.monthly_allocation).where(accounts.c.id == wallet.id)
        ).scalar_one()
        period = kernel.period_of(now, wallet.timezone)
        # Periods ("2026-11") order as text; a wallet's are all of its one timezone.
        latest = conn.execute(
            sa.select(sa.func.max(periods.c.period)).where(periods.c.account_id == wallet.id)
        ).scalar()
        if (latest is not None and latest >= period) or allocation is None or wallet.blocked:
            return False  # blocked: read again under the lock (blocked meanwhile)
        previous = conn.execute(
            sa.select(grants.c.id, grants.c.remaining).where(
                grants.c.account_id == wallet.id,
                grants.c.remaining > 0,
                sa.or_(
                    grants.c.expires_at <= now,
                    sa.and_(grants.c.kind == "allocation", grants.c.period != period),
                ),
            )
        ).all()
        self._expire(conn, wallet, now, [(g.id, int(g.remaining)) for g in previous])
        _start, end = kernel.period_bounds(period, wallet.timezone)
        balance_before, _ = self._money(conn, wallet)
        kernel.check_room(balance_before, wallet.overdraft_limit, allocation)
        funding = self._system_account(wallet.unit, "funding")
        entry_id = self._post(
            conn,
            now,
            "allocation",
            wallet,
            kernel.transfer(funding, wallet.id, wallet.unit, allocation),
            f"monthly allocation {period}",
            actor=SYSTEM_ACTOR,
        )
        grant_id = self._credit_grants(
            conn,
            wallet,
            entry_id,
            allocation,
            balance_before,
            now,
            kind="allocation",
            expires_at=end,
            period=period,
            always_grant=True,
        )
        conn.execute(
            periods.insert().values(
                account_id=wallet.id, period=period, grant_id=grant_id, created_at=now
            )
        )
        return True

    # -------------------------------------------------------------------------- reading

    def balance(self, account_id: str, *, as_of: datetime | None = None) -> BalanceView:
        """Balances now, or at ``as_of`` (answered in UTC): what was posted by then, the
        holds open then, and the overdraft limit in force then. A later instant than now
        is refused: what will be posted, held or expired by then is not known yet, and
        today's figures labelled with a future instant would pass for a forecast."""
        as_of = aware_instant(as_of, "as_of")
        if as_of is not None:
            as_of = as_of.astimezone(UTC)
            now = self._now()
            if as_of > now:
                latest = kernel.utc_text(now)
                raise InvalidInput(
                    f"as_of must not be later than now ({latest}); omit it for the balances now",
                    field="as_of",
                    allowed={"max": latest},
                )
        # At an instant: its postings, holds and limit read from one state of the ledger
        # (on PostgreSQL each statement of a plain transaction sees the commits since).
        reading = self.db.transaction(write=False) if as_of is None else self.db.snapshot()
        with reading as conn:
            wallet = self._wallet(conn, account_id)
            if as_of is None:
                return self._balance_view(conn, wallet)
            posted = self._posted_by(conn, wallet, as_of)
            # Open then: pending now, or resolved since; made by then. Each part from its
            # own index of the wallet's holds (not by when they were made: all before).
            made = unindexed(holds.c.created_at) <= as_of
            of_wallet = holds.c.account_id == wallet.id
            held = sa.union_all(
                sa.select(holds.c.amount).where(of_wallet, PENDING_HOLD, made),
                sa.select(holds.c.amount).where(of_wallet, holds.c.resolved_at > as_of, made),
            ).subquery()
            pending = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(held.c.amount), 0))
            ).scalar_one()
            then = dataclasses.replace(
                wallet, overdraft_limit=self._overdraft_at(conn, wallet, as_of)
            )
            return _balances(then, posted, int(pending), as_of=as_of)

    @staticmethod
    def _posted_by(conn: Connection, wallet: _Wallet, instant: datetime) -> int:
        """What was posted to the wallet by ``instant``: its daily flows of the dates
        before the instant's (a few rows a date), and its postings since that date began;
        all its postings, where no date near it begins cleanly (``kernel.day_cut``).
        Summed by halves: the flows of a date, by flow and not in the order they were
        posted, may take a running total beyond 64 bits on the way."""
        since: sa.ColumnElement[bool] = sa.true()
        rolled = 0
        cut = kernel.day_cut(instant, wallet.timezone)
        if cut is not None:
            day, start = cut
            row = conn.execute(
                sa.select(*wide_sum(flows.c.credits - flows.c.debits, "net")).where(
                    flows.c.account_id == wallet.id, flows.c.day < day
                )
            ).one()
            rolled = wide(row, "net")
            since = postings.c.posted_at >= start
        recent = conn.execute(
            sa.select(*wide_sum(postings.c.amount, "posted")).where(
                postings.c.account_id == wallet.id, since, postings.c.posted_at <= instant
            )
        ).one()
        return rolled + wide(recent, "posted")

    @staticmethod
    def _overdraft_at(conn: Connection, wallet: _Wallet, instant: datetime) -> int:
        """The wallet's overdraft limit in force at ``instant``, from its kept changes: the
        last one set by then, else the one the first later change replaced, else today's."""
        of_limit = sa.and_(
            changes.c.account_id == wallet.id, changes.c.setting == "overdraft_limit"
        )
        set_by_then = conn.execute(
            sa.select(changes.c.new_value)
            .where(of_limit, changes.c.changed_at <= instant)
            .order_by(changes.c.changed_at.desc(), changes.c.id.desc())
            .limit(1)
        ).first()
        if set_by_then is not None:
            return int(set_by_then.new_value)
        replaced_later = conn.execute(
            sa.select(changes.c.old_value)
            .where(of_limit, changes.c.changed_at > instant)
            .order_by(changes.c.changed_at, changes.c.id)
            .limit(1)
        ).first()
        return wallet.overdraft_limit if replaced_later is None else int(replaced_later.old_value)

    def entries(
        self,
        account_id: str,
        *,
        cursor: str | None = None,
        limit: int = 50,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        reference: str | None = None,
    ) -> EntryPage:
        """The wallet's entries, newest first, ``limit`` at a time: of one ``kind``, made
        by one ``actor``, of one payment (``reference``: the top-ups that carry it, their
        reversals and the expiries of their grants), and posted at or after ``since`` and
        before ``until``, if given (pass the same with the next page's cursor)."""
        wanted = _entry_filters(limit, kind, since, until, actor)
        paid = _text(reference, "reference", required=False)
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
            if paid is None:
                mine = entries.c.account_id == wallet.id
            else:  # the wallet's within the list, not the list within the wallet's
                mine = entries.c.id.in_(_of_reference(paid, wallet.id))
            return self._entry_page(conn, [mine, *wanted], cursor, limit)

    def journal(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        reference: str | None = None,
    ) -> EntryPage:
        """Every wallet's entries, newest first, filtered as ``entries``: what one key or
        user did (``actor``), what one payment credited and took back (``reference``), or
        what was posted in a window. Of one of the few kinds (the month's top-ups) it
        reads those alone (``ix_entries_occasional``), of one reference from
        ``ix_grants_reference``; otherwise it reads the whole journal (no index serves
        it): an audit, not a request path."""
        wanted = _entry_filters(limit, kind, since, until, actor)
        paid = _text(reference, "reference", required=False)
        if paid is not None:
            wanted.append(entries.c.id.in_(_of_reference(paid)))
        with self.db.transaction(write=False) as conn:
            return self._entry_page(conn, wanted, cursor, limit)

    def _entry_page(
        self,
        conn: Connection,
        conditions: Sequence[sa.ColumnElement[bool]],
        cursor: str | None,
        limit: int,
    ) -> EntryPage:
        stmt = sa.select(entries.c.id, entries.c.posted_at).where(sa.true(), *conditions)
        page, next_cursor = page_in_order(
            conn, stmt, entries.c.posted_at, entries.c.id, cursor, limit, newest=True
        )
        items = self._entry_views(conn, [r.id for r in page])
        return EntryPage(items=items, next_cursor=next_cursor)

    def usage(
        self,
        account_id: str,
        *,
        from_day: date | None = None,
        to_day: date | None = None,
    ) -> UsageView:
        """A wallet's metered usage per day, catalog, operation and model, from ``from_day``
        to ``to_day`` (both included; days in the wallet's timezone). Without them: its
        current month up to today. Read from the daily rollup, so it costs the same
        whatever the traffic."""
        for day, field in ((from_day, "from"), (to_day, "to")):
            if day is not None and type(day) is not date:
                raise InvalidInput(f"{field} must be a date (YYYY-MM-DD)", field=field)
        with self.db.transaction(write=False) as conn:
            wallet = self._wallet(conn, account_id)
            today = date.fromisoformat(kernel.day_of(self._now(), wallet.timezone))
            last = to_day or max(today, from_day or today)
            first = from_day or last.replace(day=1)
            if first > last:
                raise InvalidInput("from must not be after to", field="from")
            if (last - first).days >= USAGE_DAYS:
                raise InvalidInput(
                    f"from and to span at most {USAGE_DAYS} days",
                    field="to",
                    allowed={"max_days": USAGE_DAYS},
                )
            rows = conn.execute(
                sa.select(
                    daily.c.day,
                    daily.c.catalog,
                    daily.c.operation,
                    daily.c.model,
                    *(daily.c[name] for name in _USAGE_COUNTS),
                    seconds_micros(daily.c.seconds),
                )
                .where(
                    daily.c.account_id == wallet.id,
                    daily.c.day >= first.isoformat(),
                    daily.c.day <= last.isoformat(),
                )
                .order_by(daily.c.day, daily.c.catalog, daily.c.operation, daily.c.model)
            ).all()
        items = [
            UsageLine(
                day=date.fromisoformat(r.day),
                catalog=r.catalog,
                operation=r.operation,
                model=r.model,
                seconds=kernel.exact_seconds(r.seconds_us),
                **{name: int(r._mapping[name]) for name in _USAGE_COUNTS},
            )
            for r in rows
        ]
        totals = UsageTotals(
            seconds=kernel.exact_seconds(sum(int(r.seconds_us) for r in rows)),
            **{name: sum(getattr(item, name) for item in items) for name in _USAGE_COUNTS},
        )
        return UsageView(
            account_id=wallet.external_id,
            unit=wallet.unit,
            scale=wallet.scale,
            timezone=wallet.timezone,
            first_day=first,
            last_day=last,
            items=items,
            totals=totals,
        )

    def grants_of(self, account_id: str) -> list[GrantView]:
        with self.db.transaction(write=False) as conn:
            return self._grant_views(conn, self._wallet(conn, account_id).id, only_open=False)


def _balances(
    wallet: _Wallet, balance: int, pending: int, *, as_of: datetime | None = None
) -> BalanceView:
    """A wallet's money, with available and debt derived by the kernel's rules."""
    return BalanceView(
        account_id=wallet.external_id,
        unit=wallet.unit,
        scale=wallet.scale,
        balance=balance,
        pending=pending,
        available=kernel.available(balance, pending, wallet.overdraft_limit),
        overdraft_limit=wallet.overdraft_limit,
        debt=kernel.debt(balance, wallet.overdraft_limit),
        as_of=as_of,
    )


#: The longest a hold lives, from its authorization (its TTL, and any extension).
HOLD_LIFETIME = timedelta(days=7)
#: The most days one usage read covers.
USAGE_DAYS = 366
#: The rollup's whole-number columns, as ``UsageTotals`` names them.
_USAGE_COUNTS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "images",
    "videos",
    "candidates",
    "amount",
)


def _top_up_arguments(
    amount: Any, kind: Any, expires_at: Any, priority: Any, reference: Any
) -> None:
    """A top-up's arguments, or InvalidInput naming the first that is wrong."""
    _amount(amount, "amount")
    if kind not in TOPUP_KINDS:
        raise InvalidInput(f"unknown top-up kind {kind!r}", field="kind", allowed=list(TOPUP_KINDS))
    aware_instant(expires_at, "expires_at")
    if type(priority) is not int or not -1_000_000 <= priority <= 1_000_000:
        raise InvalidInput(
            "priority must be a whole number",
            field="priority",
            allowed={"min": -1_000_000, "max": 1_000_000},
        )
    _text(reference, "reference", required=False)


def _entry_filters(
    limit: Any,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
) -> list[sa.ColumnElement[bool]]:
    """The conditions of an entry listing, or InvalidInput naming the wrong argument."""
    page_limit(limit)
    if kind is not None and kind not in ENTRY_KINDS:
        raise InvalidInput(f"unknown kind {kind!r}", field="kind", allowed=list(ENTRY_KINDS))
    since, until = _window(since, until)
    wanted = []
    if kind is not None:
        wanted.append(entries.c.kind == kind)
        if kind not in REQUEST_ENTRY_KINDS:
            # As the partial indexes of the few kinds are written (one per wallet, one of
            # every wallet): their entries are read from those, not found among every
            # request's entry.
            wanted.append(OCCASIONAL)
    if since is not None:
        wanted.append(entries.c.posted_at >= since)
    if until is not None:
        wanted.append(entries.c.posted_at < until)
    if actor is not None:
        wanted.append(entries.c.actor == _text(actor, "actor", most=80))
    return wanted


#: The expiry entries of ``_expiries_of``, named apart from the journal that a query of
#: them may be part of.
_expiry = entries.alias("expiry")


def _expiries_of() -> sa.Join:
    """Grants joined to the expiry entries (``_expiry``: an expiry, a revocation) that
    took their credits back, and to those entries' movements of them. Each grant's
    expiries are found among its wallet's entries of the few kinds
    (``ix_entries_account_occasional``; not narrowed to those posted since the grant was
    made, which a clock set back would miss), each entry's movement of the grant by the
    movements' key: never by stepping over every grant's movements, of which every
    capture writes some."""
    return grants.join(
        _expiry,
        sa.and_(
            _expiry.c.account_id == grants.c.account_id,
            _expiry.c.kind == "expiry",
            occasional(_expiry.c.kind),
        ),
    ).join(
        movements,
        sa.and_(movements.c.entry_id == _expiry.c.id, movements.c.grant_id == grants.c.id),
    )


def _of_reference(reference: str, account: int | None = None) -> sa.CompoundSelect[Any]:
    """The ids of the entries of one payment (of one wallet, if given): the top-ups whose
    grant carries ``reference`` (from ``ix_grants_reference``), the reversals that took
    them back (by the unique index of ``reverses_id``; a reversal is on its entry's
    wallet), and the expiry entries that took back what was left of their grants (an
    expiry, a revocation: ``_expiries_of``). One list of ids, looked up by the entries'
    key: with the wallet as a condition of its own beside it, both databases stepped over
    the wallet's entries in their order instead, testing each against the list."""
    which = [grants.c.reference == reference]
    if account is not None:
        which.append(grants.c.account_id == account)
    paid = sa.select(grants.c.entry_id).where(*which)
    undone = entries.alias("undone")
    return sa.union(
        paid,
        sa.select(undone.c.id).where(undone.c.reverses_id.in_(paid)),
        sa.select(_expiry.c.id).select_from(_expiries_of()).where(*which),
    )


def _window(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """A listing's time window (either end may be open), or InvalidInput."""
    since, until = aware_instant(since, "since"), aware_instant(until, "until")
    if since is not None and until is not None and since >= until:
        raise InvalidInput("since must be before until", field="since")
    return since, until


def page_limit(limit: Any) -> None:
    if type(limit) is not int or not 1 <= limit <= 500:
        raise InvalidInput(
            "limit must be from 1 to 500", field="limit", allowed={"min": 1, "max": 500}
        )


def page_in_order(
    conn: Connection,
    stmt: sa.Select[Any],
    instant: sa.ColumnElement[datetime],
    row_id: sa.ColumnElement[str],
    cursor: str | None,
    limit: int,
    *,
    newest: bool,
    by_index: bool = True,
) -> tuple[list[Row[Any]], str | None]:
    """The page of ``stmt``'s rows after ``cursor``, newest first by (``instant``,
    ``row_id``) or oldest first; and the cursor of the next page (None: no more). Not
    ``by_index``: the rows are not read in that order from an index but sorted
    (``stmt`` selects few, by an index of its own that SQLite would otherwise pass over
    for the order)."""
    at_, id_ = (instant, row_id) if by_index else (unindexed(instant), unindexed(row_id))
    if cursor is not None:
        at, last_id = _decode_cursor(cursor)
        # The instant's bound alone as well (the OR implies it): with it the index is read
        # from the cursor on; without it, neither database found that bound in the OR of
        # parameters, and each page walked the rows of all the pages before.
        if newest:
            stmt = stmt.where(at_ <= at, sa.or_(at_ < at, sa.and_(at_ == at, id_ < last_id)))
        else:
            stmt = stmt.where(at_ >= at, sa.or_(at_ > at, sa.and_(at_ == at, id_ > last_id)))
    order = (at_.desc(), id_.desc()) if newest else (at_, id_)
    rows = conn.execute(stmt.order_by(*order).limit(limit + 1)).all()
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, None
    last = page[-1]._mapping
    return page, _encode_cursor(last[instant], last[row_id])


def _wrap_cursor(first: str, second: str) -> str:
    """An opaque page cursor holding two texts."""
    return base64.urlsafe_b64encode(f"{first}|{second}".encode()).decode().rstrip("=")


def _unwrap_cursor(cursor: str) -> tuple[str, str]:
    """The two texts of a cursor ``_wrap_cursor`` made; ValueError for any other text."""
    padded = cursor + "=" * (-len(cursor) % 4)
    first, second = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
    return first, second


_BAD_CURSOR = "cursor is not one this API returned"


def _encode_cursor(instant: datetime, row_id: str) -> str:
    """Where a page in order ended (entries, authorizations, keys): an instant and an id."""
    return _wrap_cursor(instant.isoformat(), row_id)


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        instant, row_id = _unwrap_cursor(cursor)
        moment = datetime.fromisoformat(instant)
        if moment.tzinfo is None or not kernel.in_utc_range(moment):
            raise ValueError
        if "\x00" in row_id:  # PostgreSQL cannot compare NUL
            raise ValueError
        return moment, row_id
    except ValueError:  # UnicodeDecodeError and binascii.Error are ValueErrors
        raise InvalidInput(_BAD_CURSOR, field="cursor") from None


def _encode_account_cursor(row_id: int) -> str:
    return _wrap_cursor("account", str(row_id))


def _available_below(threshold: int) -> sa.ColumnElement[bool]:
    """Wallets whose available balance (``balance - pending + overdraft_limit``, as
    :func:`kernel.available` has it) is below ``threshold``, in SQL that stays within
    64 bits: ``balance - pending`` alone could pass below the smallest BIGINT (a wallet
    in debt holding near the most), an error on PostgreSQL and a float on SQLite.

    ``balance + overdraft_limit`` is at most ``MAX_AMOUNT`` (:func:`kernel.check_room`)
    and never below the smallest BIGINT (the limit is not negative); so it is compared
    with ``pending + threshold`` instead, which for a threshold above zero could pass
    the largest BIGINT: where it would, the wallet is below the threshold anyway, and
    CASE (unlike OR) tests that first."""
    room = accounts.c.balance + accounts.c.overdraft_limit
    below = room < accounts.c.pending + threshold
    if threshold <= 0:
        return below  # pending + threshold: from -MAX_AMOUNT to MAX_AMOUNT
    beyond = accounts.c.pending > kernel.MAX_AMOUNT - threshold
    return sa.case((beyond, sa.true()), else_=below)


def _decode_account_cursor(cursor: str) -> int:
    try:
        kind, row_id = _unwrap_cursor(cursor)
        if kind != "account" or not (row_id.isascii() and row_id.isdigit() and len(row_id) < 19):
            raise ValueError
        return int(row_id)
    except ValueError:
        raise InvalidInput(_BAD_CURSOR, field="cursor") from None


def ledger_from_settings(settings: Settings) -> Ledger:
    """The ledger the operator configured: database (and its timeouts), catalogs, hold
    lifetime and idempotency retention."""
    return Ledger(
        Database.from_settings(settings),
        load_catalogs(settings.catalog_dirs()),
        hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
        idempotency_retention=settings.idempotency_retention(),
    )
