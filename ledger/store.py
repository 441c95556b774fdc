"""The statements of the money paths, as fixed SQL run on the transaction's own cursor.

Building a SQLAlchemy statement costs more than running it: on the authorize/capture path
that construction was most of the time. These statements are written once, in both
parameter styles, and run on the DBAPI cursor of the unit of work's connection: same
transaction, same locks, same commit. The read side and the rare use cases keep using
SQLAlchemy Core.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.db import BEFORE_STATEMENT, BEGIN_PENDING, json_dumps
from ledger.models import QUANTITY_COLUMNS

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
_WRITE = re.compile(r"(INSERT INTO|UPDATE|DELETE FROM) (\w+)")


class Sql:
    """One statement, written with ``:name`` parameters, in both drivers' styles."""

    __slots__ = ("sqlite", "postgresql", "table", "_values")

    def __init__(self, text: str, *, postgresql_suffix: str = "") -> None:
        self.sqlite = text
        self.postgresql = _PARAM.sub(r"%(\1)s", text) + postgresql_suffix
        write = _WRITE.match(text)
        table = write[2] if write is not None else None
        #: The table a write whose only result is its row count, and which reads no
        #: other table, writes to: in a PostgreSQL batch it may go combined with other
        #: writes (see ``Store``), whose effects it would not see.
        self.table = (
            table
            if "RETURNING" not in text and "SELECT" not in text and not postgresql_suffix
            else None
        )
        # Where the row of a plain INSERT ... VALUES (...) starts (-1: not such an insert).
        self._values = (
            text.find(" VALUES (") + len(" VALUES ")
            if self.table is not None
            and text.startswith("INSERT INTO")
            and text.endswith(")")
            and text.count(" VALUES (") == 1
            and "ON CONFLICT" not in text
            else -1
        )

    @property
    def multirow(self) -> bool:
        """Whether several rows can go in one statement (a plain INSERT ... VALUES)."""
        return self._values >= 0

    def member(self, index: int, rows: int = 1) -> str:
        """The PostgreSQL text for ``rows`` rows (one, unless ``multirow``), with the
        parameters of row ``r`` renamed ``p<index>_<r>_<name>``."""
        if rows == 1:
            return _PARAM.sub(rf"%(p{index}_0_\1)s", self.sqlite)
        head, row = self.sqlite[: self._values], self.sqlite[self._values :]
        return head + ", ".join(_PARAM.sub(rf"%(p{index}_{r}_\1)s", row) for r in range(rows))


_WALLET_COLUMNS = (
    "SELECT a.id, a.external_id, a.unit, u.scale, a.overdraft_limit, a.timezone, a.balance, "
    "a.pending, a.blocked, a.monthly_spend_limit FROM accounts a JOIN units u ON u.code = a.unit "
)
LOCK_WALLET = Sql(
    _WALLET_COLUMNS + "WHERE a.external_id = :external_id AND a.kind = 'wallet'",
    postgresql_suffix=" FOR UPDATE OF a",
)
LOCK_WALLET_BY_ID = Sql(
    _WALLET_COLUMNS + "WHERE a.id = :id AND a.kind = 'wallet'", postgresql_suffix=" FOR UPDATE OF a"
)
# The wallet of a hold, locked; then the hold, read by a statement of its own. In
# PostgreSQL's READ COMMITTED each statement sees what was committed when it began, so the
# hold is read as the last resolver (which held this lock) left it. Resolving stays
# conditional on status = 'pending' all the same.
LOCK_WALLET_OF_HOLD = Sql(
    _WALLET_COLUMNS + "JOIN holds h ON h.account_id = a.id WHERE h.id = :id AND a.kind = 'wallet'",
    postgresql_suffix=" FOR UPDATE OF a",
)
_HOLD_COLUMNS = (
    "SELECT id, amount, status, expires_at, metering_id, catalog, catalog_version, operation, "
    "model, request FROM holds "
)
HOLD = Sql(_HOLD_COLUMNS + "WHERE id = :id")
# A wallet's holds past their expiry that no sweeper has released yet (read under the
# wallet's lock): they hold nothing any more.
EXPIRED_HOLDS_OF_WALLET = Sql(
    _HOLD_COLUMNS + "WHERE account_id = :account_id AND status = 'pending' "
    "AND expires_at <= :now ORDER BY expires_at, id"
)
EXPIRED_HELD_OF_WALLET = Sql(
    "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE account_id = :account_id "
    "AND status = 'pending' AND expires_at <= :now"
)
REPLAY = Sql("SELECT operation, request_hash, response FROM idempotency_keys WHERE key = :key")
REMEMBER = Sql(
    "INSERT INTO idempotency_keys (key, operation, request_hash, response, created_at) "
    "VALUES (:key, :operation, :request_hash, :response, :created_at)"
)
_GRANT_COLUMNS = "SELECT g.id, g.remaining, g.priority, g.expires_at, g.effective_at FROM grants g "
OPEN_GRANTS = Sql(_GRANT_COLUMNS + "WHERE g.account_id = :account_id AND g.remaining > 0")
# The same, sent in one round trip with the lock of the wallet (by its external id, or by
# a hold of it): the server runs them in order, so the grants are read under the lock.
OPEN_GRANTS_OF_WALLET = Sql(
    _GRANT_COLUMNS + "JOIN accounts a ON a.id = g.account_id "
    "WHERE a.external_id = :external_id AND a.kind = 'wallet' AND g.remaining > 0"
)
OPEN_GRANTS_OF_HOLD = Sql(
    _GRANT_COLUMNS + "JOIN holds h ON h.account_id = g.account_id "
    "WHERE h.id = :id AND g.remaining > 0"
)
INSERT_POSTING = Sql(
    "INSERT INTO postings (entry_id, account_id, unit, amount, posted_at) "
    "VALUES (:entry_id, :account_id, :unit, :amount, :posted_at)"
)
INSERT_ENTRY = Sql(
    "INSERT INTO entries (id, kind, account_id, posted_at, memo, reverses_id, hold_id, actor) "
    "VALUES (:id, :kind, :account_id, :posted_at, :memo, :reverses_id, :hold_id, :actor)"
)
MOVE_ACCOUNT = Sql(
    "UPDATE accounts SET balance = balance + :balance, pending = pending + :pending WHERE id = :id"
)
MOVE_GRANT = Sql("UPDATE grants SET remaining = remaining + :delta WHERE id = :id")
INSERT_MOVEMENT = Sql(
    "INSERT INTO grant_movements (entry_id, grant_id, amount) "
    "VALUES (:entry_id, :grant_id, :amount)"
)
INSERT_GRANT = Sql(
    "INSERT INTO grants (id, account_id, kind, amount, remaining, priority, effective_at, "
    "expires_at, period, reference, entry_id) VALUES (:id, :account_id, :kind, :amount, "
    ":remaining, :priority, :effective_at, :expires_at, :period, :reference, :entry_id)"
)
INSERT_HOLD = Sql(
    "INSERT INTO holds (id, account_id, amount, status, created_at, expires_at, metering_id, "
    "catalog, catalog_version, operation, model, request) VALUES (:id, :account_id, :amount, "
    "'pending', :created_at, :expires_at, :metering_id, :catalog, :catalog_version, :operation, "
    ":model, :request)"
)
RESOLVE_HOLD = Sql(
    "UPDATE holds SET status = :status, resolved_at = :now, captured = :captured, "
    "entry_id = :entry_id WHERE id = :id AND status = 'pending'"
)
_USAGE = (*QUANTITY_COLUMNS, "seconds")
INSERT_METERING = Sql(
    "INSERT INTO metering_records (id, account_id, kind, hold_id, entry_id, catalog, "
    "catalog_version, operation, model, unit, status, held, charged, request_id, created_at, "
    f"{', '.join(_USAGE)}) VALUES (:id, :account_id, :kind, :hold_id, NULL, :catalog, "
    ":catalog_version, :operation, :model, :unit, :status, :held, 0, :request_id, :created_at, "
    f"{', '.join(':' + u for u in _USAGE)})"
)
CLOSE_METERING = Sql(
    "UPDATE metering_records SET status = :status, charged = :charged, entry_id = :entry_id, "
    f"completed_at = :now, {', '.join(f'{u} = :{u}' for u in _USAGE)} WHERE id = :id"
)
EXPIRE_METERING = Sql(
    "UPDATE metering_records SET status = 'expired', completed_at = :now WHERE id = :id"
)
_DAILY = ("requests", "amount", *_USAGE)
UPSERT_DAILY = Sql(
    "INSERT INTO daily_usage (account_id, unit, catalog, operation, model, day, "
    f"{', '.join(_DAILY)}) VALUES (:account_id, :unit, :catalog, :operation, :model, :day, "
    f"{', '.join(':' + d for d in _DAILY)}) "
    "ON CONFLICT (account_id, unit, catalog, operation, model, day) DO UPDATE SET "
    + ", ".join(f"{d} = daily_usage.{d} + excluded.{d}" for d in _DAILY if d != "seconds")
    # SQLite keeps NUMERIC seconds as a binary float, whose sums drift from the exact
    # microseconds (3 us in 100 clips of a third of a second, past 10^9 s): rounded
    # back to the microsecond each time, the sum is the float nearest the exact one (a
    # no-op on PostgreSQL's exact NUMERIC).
    + ", seconds = round(daily_usage.seconds + excluded.seconds, 6)"
)

UPSERT_FLOW = Sql(
    "INSERT INTO daily_flows (account_id, day, flow, credits, debits, entries) "
    "VALUES (:account_id, :day, :flow, :credits, :debits, 1) "
    "ON CONFLICT (account_id, day, flow) DO UPDATE SET "
    "credits = daily_flows.credits + excluded.credits, "
    "debits = daily_flows.debits + excluded.debits, entries = daily_flows.entries + 1"
)


#: What a wallet spent in a period: what captures and charges debited it on the period's
#: days (``first <= day < after``, local dates as the rollup names them), less what refunds
#: of the period's own captures and charges (entries posted from ``start`` to ``end``, the
#: same days as instants) gave back. A refund counts in the period of the charge it undoes:
#: refunding an earlier period's charge makes no room in this one, so the period's usage
#: never passes its limit, and refunding a later one's (dated there by a server whose clock
#: runs ahead) takes nothing off this one. The refunds are read from ``since`` on: a day
#: before the period, as a refund may be dated before its charge by a slower clock.
#: The reversals come from their own index (``ix_entries_account_reversals``); each one's
#: postings by their entry: the unary ``+`` keeps SQLite, which has no statistics to tell,
#: from reading them by the wallet's index, through every posting the wallet ever had.
SPENT = Sql(
    "SELECT (SELECT COALESCE(SUM(debits), 0) FROM daily_flows WHERE account_id = :account_id "
    "AND day >= :first AND day < :after AND flow IN ('capture', 'charge')) - "
    "(SELECT COALESCE(SUM(p.amount), 0) FROM entries r "
    "JOIN entries o ON o.id = r.reverses_id "
    "JOIN postings p ON p.entry_id = r.id AND +p.account_id = :account_id "
    "WHERE r.account_id = :account_id AND r.kind = 'reversal' AND r.posted_at >= :since "
    "AND o.kind IN ('capture', 'charge') AND o.posted_at >= :start AND o.posted_at < :end)"
)
#: How far before its period ``SPENT`` reads refunds (``since``): more than any two servers'
#: clocks may differ.
REFUND_SKEW = timedelta(days=1)


def usage_values(usage: Mapping[str, Any]) -> dict[str, Any]:
    """The metering columns of a usage mapping (absent quantities are zero)."""
    values: dict[str, Any] = {u: int(usage.get(u) or 0) for u in _USAGE[:-1]}
    # Seconds of video are a quantity, not money: kept to the microsecond, rounded up.
    values["seconds"] = Decimal(str(usage.get("seconds") or 0)).quantize(
        Decimal("0.000001"), rounding=ROUND_CEILING
    )
    return values


_PLAIN = frozenset({int, str, type(None), bool})


def sqlite_instant(value: datetime) -> str:
    """An instant as SQLAlchemy's ``UTCDateTime`` stores it on SQLite: the UTC wall time,
    ``YYYY-MM-DD HH:MM:SS.ffffff``, four-digit years included (text that sorts as time).
    Of a use case's instants most are its ``now``, bound again and again: the last one
    formatted is kept (one tuple, replaced whole, so threads never mix two)."""
    global _last_instant
    last = _last_instant
    if last[0] is value:
        return last[1]
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    _last_instant = (value, text)
    return text


_last_instant: tuple[datetime | None, str] = (None, "")

#: The SQLSTATE of ``ledger_expect_rows`` (migration 0005): a write changed another
#: number of rows than expected; the error's detail is the tag its statement gave.
EXPECT_ROWS_FAILED = "CL001"

#: Constraint violations as the drivers raise them on the store's cursor.
DRIVER_INTEGRITY_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    psycopg.errors.IntegrityError,
)
#: A database gone, busy or cut off, as the drivers raise it on the store's cursor (or at
#: a commit sent in a pipeline): nothing was committed (SQLAlchemy's own wrapping of
#: these is ``sqlalchemy.exc.OperationalError``/``InterfaceError``).
DRIVER_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.OperationalError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    # The server ended the session, idle inside its transaction for longer than
    # idle_in_transaction_session_timeout (an InternalError by its SQLSTATE class).
    psycopg.errors.IdleInTransactionSessionTimeout,
)


#: The same as SQLAlchemy raises them, or the driver on the store's cursor.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    *DRIVER_UNAVAILABLE_ERRORS,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database unreachable, busy or cut off, whatever class
    SQLAlchemy wrapped the driver's error in (an ended session is an ``InternalError``):
    nothing of the transaction it ended was committed (but for a connection lost during
    the COMMIT, ``ledger.db.connection_lost``), and the work may be retried."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return isinstance(exc, UNAVAILABLE_ERRORS) or isinstance(orig, DRIVER_UNAVAILABLE_ERRORS)


class Store:
    """The unit of work's cursor, speaking its driver's dialect.

    In a PostgreSQL batch, writes whose only result is a row count are held back and sent
    together as one statement (data-modifying ``WITH`` clauses, one per write): each
    statement costs the client and the server far more than its few rows. They go when
    something is read, when the batch ends, or before a second write to a table: the
    writes of one statement share one snapshot and run in no stated order, so each table
    gets at most one of them (the rows of one ``many`` insert go as one multi-row INSERT,
    in order, up to ``MULTIROW`` rows). Then no write misses rows another wrote, no row
    changes twice in a statement, and each table's rows are written and locked in the
    program's order. Foreign keys and triggers check the statement when it ends (the
    deferred ones at the commit), so a row may refer to one inserted beside it.
    """

    #: At most this many rows in one multi-row INSERT (more go one statement each, as
    #: ``executemany`` sends them); the texts of at most ``SHAPES`` combined statements
    #: are kept per connection.
    MULTIROW = 64
    SHAPES = 256

    @classmethod
    def of(cls, conn: Connection) -> Store:
        """The store of this connection's DBAPI connection.

        Cached in ``conn.info``, which lives as long as the DBAPI connection (SQLAlchemy
        clears it when an invalidated or recycled connection is replaced); the identity
        check keeps the cursors bound to the connection they came from regardless.
        """
        store = conn.info.get(_INFO_KEY)
        if not isinstance(store, Store) or store.raw is not conn.connection.driver_connection:
            store = conn.info[_INFO_KEY] = cls(conn, sqlite=conn.dialect.name == "sqlite")
        return store

    def __init__(self, conn: Connection, *, sqlite: bool) -> None:
        self.sqlite = sqlite
        # The DBAPI connection's info, where a PostgreSQL write transaction marks its
        # BEGIN as still to be sent (``ledger.db``): it goes before this store's first
        # statement, in a pipeline queued with it.
        self._info = conn.info
        self.raw: Any = conn.connection.driver_connection
        assert self.raw is not None
        raw: Any = self.raw
        self.cursor: Any = raw.cursor()
        # A cursor of its own for statements whose row count decides (in a pipeline the
        # shared cursor's count belongs to whichever statement ran last).
        self.counted: Any = raw.cursor()
        # Cursors of ``reads``: one per statement, each keeps its own result.
        self._readers: list[Any] = []
        self._pipeline: Any = None
        # Writes held back to go as one statement (PostgreSQL batch): the statements with
        # their parameters, the tables they write, and the one whose row count is checked
        # (its index, the count, the failure). The combined texts are kept by shape.
        self._held: list[tuple[Sql, list[Mapping[str, Any]]]] = []
        self._held_tables: set[str] = set()
        self._held_check: tuple[int, int, Callable[[], Exception]] | None = None
        # The failures of the batch's writes whose counts the server checks, by the tag
        # each statement gives its check.
        self._failures: list[Callable[[], Exception]] = []
        self._combined: dict[tuple[Any, ...], str] = {}
        if not sqlite:
            # A statement SQLAlchemy runs on this connection sees the held-back writes.
            self._info[BEFORE_STATEMENT] = self._send_held

    @contextmanager
    def batch(self, *, commit: bool = False) -> Iterator[None]:
        """PostgreSQL: send writes in a pipeline, waiting only where a result is read.

        Writes are held back and sent combined (see the class). A read (``one``,
        ``all``, ``changed``) syncs the pipeline; errors of queued statements surface at
        the latest when the block ends, before the commit.
        With ``commit``, a block that ends without an exception commits the transaction
        there, its last writes and the COMMIT in one round trip; the unit of work's own
        commit then has nothing left to do. A block that raises commits nothing.
        SQLite runs in-process: nothing to batch.
        """
        if self.sqlite or self._pipeline is not None:
            yield
            return
        try:
            with self.raw.pipeline() as pipeline:
                self._pipeline = pipeline
                try:
                    yield
                    self._send_held()
                    if commit and BEGIN_PENDING not in self._info:
                        # Queued like the writes: the Sync that ends the pipeline sends
                        # it with them, one round trip for all (``raw.commit()`` here
                        # would sync, then leaving the pipeline would sync again).
                        self.cursor.execute("COMMIT", prepare=False)
                finally:
                    self._pipeline = None
                    self._drop_held()
        except Exception as exc:
            # A count the server found wrong, wherever its error surfaced (at a later
            # read, or when the pipeline ended): the failure of that write.
            failure = self._failure_of(exc)
            if failure is None:
                self._close_if_stuck()
                raise
            raise failure() from exc
        finally:
            self._failures = []

    def _close_if_stuck(self) -> None:
        """Close the driver's connection if a failed batch left it in pipeline mode.

        The server ended the session while the pipeline's results came in (a restart, a
        failover, ``pg_terminate_backend``): psycopg raised its error before the driver
        read the end of the connection, and could not leave pipeline mode with commands
        still unanswered. Nothing can run on the connection any more, not even the
        ROLLBACK that follows, whose error ("PQsendQuery not allowed in pipeline mode")
        SQLAlchemy would not take for a lost connection: the use case would fail, where
        run again on a new connection it succeeds (``Database.lost``). Closed, the
        connection is one SQLAlchemy finds gone, and with it every connection its pool
        had handed out by then (the server ended those too, most likely).
        """
        raw = self.raw
        if not raw.closed and raw.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
            raw.close()

    def _failure_of(self, exc: BaseException) -> Callable[[], Exception] | None:
        """The failure of the checked write whose count ``exc`` reports, if it does."""
        orig = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's errors
        if not isinstance(orig, psycopg.Error) or orig.sqlstate != EXPECT_ROWS_FAILED:
            return None
        tag = orig.diag.message_detail or ""
        if not tag.isdigit() or int(tag) >= len(self._failures):
            return None  # not a check of this batch: the error as it is
        return self._failures[int(tag)]

    def expect(
        self, sql: Sql, params: Mapping[str, Any], rows: int, failure: Callable[[], Exception]
    ) -> None:
        """Execute a write that must change exactly ``rows`` rows, else raise ``failure()``.

        In a PostgreSQL batch, a write that can be held back has its count checked by
        the server, inside its statement, without a round trip of its own: a wrong count
        fails the statement, which stops what was queued after it, the COMMIT too, and
        ``batch`` raises the failure. Any other write is counted here (in a pipeline,
        after a sync).
        """
        if self._pipeline is not None and sql.table is not None:
            if self._held_check is not None:
                self._send_held()
            self._hold(sql, params)
            self._held_check = (len(self._held) - 1, rows, failure)
            return
        if self.changed(sql, params) != rows:
            raise failure()

    def _hold(self, sql: Sql, *rows: Mapping[str, Any]) -> None:
        """Hold a write back (its ``rows``, in order: one unless ``sql.multirow``), to go
        in one statement with the writes held with it."""
        assert sql.table is not None
        if sql.table in self._held_tables:
            self._send_held()
        self._held_tables.add(sql.table)
        self._held.append((sql, list(rows)))

    def _send_held(self) -> None:
        """Send the held-back writes, as one statement (queued in the pipeline)."""
        held, check = self._held, self._held_check
        if not held:
            return
        self._drop_held()
        self._begin()
        if len(held) == 1 and len(held[0][1]) == 1 and check is None:
            self.cursor.execute(held[0][0].postgresql, self._bind(held[0][1][0]))
            return
        # The write whose row count is checked (else the last) is the main clause; the
        # server checks its count (``ledger_expect_rows``), so the statement fails, and
        # the transaction with it, before the COMMIT queued after it can run.
        main = check[0] if check is not None else len(held) - 1
        shape = (main, check is not None, *((sql, len(rows)) for sql, rows in held))
        text = self._combined.get(shape, "")
        if not text:
            if len(self._combined) >= self.SHAPES:
                self._combined.clear()
            clauses = [
                f"w{i} AS ({sql.member(i, len(rows))})"
                for i, (sql, rows) in enumerate(held)
                if i != main
            ]
            last = held[main][0].member(main, len(held[main][1]))
            if check is not None:
                clauses.append(f"w{main} AS ({last} RETURNING 1)")
                last = (
                    "SELECT ledger_expect_rows(count(*), %(expect_rows)s, %(expect_tag)s) "
                    f"FROM w{main}"
                )
            text = self._combined[shape] = f"WITH {', '.join(clauses)} {last}" if clauses else last
        values = {
            f"p{i}_{r}_{name}": value
            for i, (_, rows) in enumerate(held)
            for r, params in enumerate(rows)
            for name, value in self._bind(params).items()
        }
        if check is not None:
            values["expect_rows"] = check[1]
            values["expect_tag"] = len(self._failures)
            self._failures.append(check[2])
        self.cursor.execute(text, values)

    def _ready(self) -> None:
        """Before a statement is sent: what must go before it (the transaction's BEGIN,
        the held-back writes)."""
        self._send_held()
        self._begin()

    def _begin(self) -> None:
        """The BEGIN of a PostgreSQL write transaction, if nothing has sent it yet (in a
        pipeline it is queued, to go with the statements after it)."""
        if self._info.pop(BEGIN_PENDING, False):
            self.cursor.execute("BEGIN", prepare=False)

    def _drop_held(self) -> None:
        self._held = []
        self._held_tables = set()
        self._held_check = None

    def reads(self, *queries: tuple[Sql, Mapping[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """The rows of several queries, run in order; in a pipeline one round trip for all."""
        if self._pipeline is None:
            return [self.all(sql, params) for sql, params in queries]
        self._ready()
        while len(self._readers) < len(queries):
            self._readers.append(self.raw.cursor())
        cursors = self._readers[: len(queries)]
        for cursor, (sql, params) in zip(cursors, queries, strict=False):
            cursor.execute(self._sql(sql), self._bind(params))
        return [cursor.fetchall() for cursor in cursors]

    def changed(self, sql: Sql, params: Mapping[str, Any]) -> int:
        """Execute and return how many rows it changed (syncing a pipeline to know)."""
        self._ready()
        self.counted.execute(self._sql(sql), self._bind(params))
        if self._pipeline is not None:
            self._pipeline.sync()
        if self.counted.description is not None:
            # A write with RETURNING: SQLite counts its rows as they are read.
            self.counted.fetchall()
        return int(self.counted.rowcount)

    def _sql(self, sql: Sql) -> str:
        return sql.sqlite if self.sqlite else sql.postgresql

    def run(self, sql: Sql, params: Mapping[str, Any]) -> None:
        """Execute a write (in a PostgreSQL batch, perhaps later: see ``Store``)."""
        if self._pipeline is not None and sql.table is not None:
            self._hold(sql, params)
            return
        self._ready()
        self.cursor.execute(self._sql(sql), self._bind(params))

    def one(self, sql: Sql, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        self._ready()
        self.cursor.execute(self._sql(sql), self._bind(params))
        row: tuple[Any, ...] | None = self.cursor.fetchone()
        return row

    def all(self, sql: Sql, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        self._ready()
        self.cursor.execute(self._sql(sql), self._bind(params))
        rows: list[tuple[Any, ...]] = self.cursor.fetchall()
        return rows

    def many(self, sql: Sql, rows: Iterable[Mapping[str, Any]]) -> None:
        if self._pipeline is not None and sql.table is not None:
            rows = list(rows)
            if sql.multirow and 0 < len(rows) <= self.MULTIROW:
                self._hold(sql, *rows)
            else:
                for row in rows:
                    self._hold(sql, row)
            return
        self._ready()
        self.cursor.executemany(self._sql(sql), [self._bind(r) for r in rows])

    def _bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v if type(v) in _PLAIN else self._value(v) for k, v in params.items()}

    def _value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return sqlite_instant(value) if self.sqlite else value
        if isinstance(value, Decimal) and self.sqlite:
            return str(value)
        if isinstance(value, Json):
            if self.sqlite:
                return json_dumps(value.value)
            from psycopg.types.json import Json as PgJson

            return PgJson(value.value, dumps=json_dumps)
        if isinstance(value, JsonText):
            if self.sqlite:
                return value.text
            from psycopg.types.json import Json as PgJson

            return PgJson(value.text, dumps=_as_is)
        return value

    def instant(self, value: Any) -> datetime | None:
        """A timestamp column read back, timezone-aware."""
        if value is None:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)

    def document(self, value: Any) -> Any:
        """A JSON column read back."""
        return json.loads(value) if isinstance(value, str | bytes) else value


_INFO_KEY = "creditledger_store"


class Json:
    """A value for a JSON column."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class JsonText:
    """A value for a JSON column that is already JSON text (a pydantic model's
    ``model_dump_json``, which serializes in Rust at a fraction of ``json.dumps``' cost)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _as_is(text: str) -> str:
    return text
