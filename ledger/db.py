"""Database engines, the unit of work, and migrations.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` (a committed
transaction survives a power cut) and foreign keys on. Every writing transaction starts
with ``BEGIN IMMEDIATE``: writers are serialized at the start, so a balance read inside
the transaction cannot go stale before the write. PostgreSQL uses psycopg 3 at READ
COMMITTED; the use cases lock the wallet row (``SELECT ... FOR UPDATE``) before reading
its balance.

SQLite commits writers in groups: writers of this process that queue for the one write
connection while another runs join its transaction, each in a savepoint of its own, and
the last of them commits for all, one fsync for the group. A writer returns only once
the commit covering its work is durable; a write that fails rolls back its savepoint and
nothing else; a commit that fails fails every writer of the group (none was answered).

A serving process hands whole use cases to the database (``Database.submit``) and its
reads (``Database.submit_read``) rather than running them on dozens of request threads.
On SQLite a write thread runs the use cases one after another, each transaction joining
the open group while more use cases wait in its queue, and answers each (a ``Future``)
only once the commit covering its work is durable, as above; the reads go to a couple of
read threads. On PostgreSQL both go to a few worker threads, each with its own
transaction. A use case that waited in the queue longer than the lock timeout is refused
unrun. Few threads spare the hand-offs of the interpreter's lock, which the drivers
release at every statement, between dozens of request threads, and of the locks the
transactions take: on SQLite authorize+capture pairs over HTTP cost about a quarter less
CPU per request that way (``tests/benchmarks/http.py``), and a wallet's balance read at
32 connections about half; on PostgreSQL, where 32 connections on one wallet otherwise
queue on its row lock while the transaction holding it waits for its thread's turn at
the interpreter, the pairs went from about 130-200 to about 290-360 a second.

PostgreSQL write transactions send their own ``BEGIN``, with their first statement. The
driver's implicit one is synced alone when a transaction starts in a pipeline (psycopg
must see the transaction open before it queues more), a round trip of its own per
transaction. So a write connection runs in the driver's autocommit mode, and its unit of
work marks ``BEGIN`` as pending (``BEGIN_PENDING``): whatever sends the first statement
sends ``BEGIN`` before it, the ledger's store (queued with its first reads) or SQLAlchemy
(``_before_statement``). Every statement of the unit of work thus runs inside the one
transaction that the unit of work commits or rolls back (the driver's ``commit()`` and
``rollback()`` act on an open transaction in autocommit mode too; with nothing sent
there is nothing to end).

No wait is unbounded (``Timeouts``). A lock held by another transaction is waited for at
most ``lock`` seconds: on PostgreSQL a row lock (``lock_timeout``: a wallet, a key being
written), on SQLite the database's write lock (the busy timeout for another process; the
queue of this process's writers). Then the transaction fails with ``is_lock_timeout``
true, having changed nothing. A PostgreSQL connection is made within ``connect`` seconds,
and the server ends a session left idle inside a transaction for ``idle_in_transaction``
seconds (a client that died or hung mid-transaction), releasing its locks.
"""

from __future__ import annotations

import functools
import glob
import importlib.resources
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from ledger import inuse

if TYPE_CHECKING:
    from alembic.config import Config

    from ledger.settings import Settings

_WRITE = "creditledger_write"
#: ``conn.info`` key: this PostgreSQL write transaction's BEGIN is still to be sent.
BEGIN_PENDING = "creditledger_begin_pending"
#: ``conn.info`` key: what must be sent before SQLAlchemy sends a statement on this
#: PostgreSQL connection (a callable; the ledger's store puts its held-back writes here).
BEFORE_STATEMENT = "creditledger_before_statement"

#: At most this many writers share one SQLite commit.
GROUP_LIMIT = 64
#: The worker threads of a serving process's database work by default (``submit_read``;
#: on PostgreSQL ``submit`` too): the ``database_threads`` setting.
THREADS = 2
T = TypeVar("T")
#: PostgreSQL's URL schemes, as libpq takes them (``postgres://`` is what many hosts
#: hand out); without a driver they mean psycopg 3, whatever SQLAlchemy's default.
POSTGRESQL_SCHEMES = ("postgresql", "postgres")
_SAVEPOINT = "creditledger_writer"
#: In a SQLite connection's pool record: (path, device, inode) of the file it opened.
_OPENED = "creditledger_opened"
#: Times a PostgreSQL use case or read runs again after its connection was lost
#: (``Database.lost``).
RECONNECTS = 1

#: The PostgreSQL advisory lock a migration holds (``Database.migrate``): any constant
#: no other advisory lock of the database uses ("clmigrat").
MIGRATION_LOCK = 0x636C6D6967726174
#: The PostgreSQL advisory lock under which a first admin key is made
#: (``Keys.bootstrap_admin``; "clkeyadm"). Each advisory lock the ledger takes is here.
BOOTSTRAP_LOCK = 0x636C6B657961646D
#: How long a migration waits for another process's migration, or for locks, in seconds.
MIGRATION_WAIT = 600.0

log = logging.getLogger("creditledger.db")


class CommitFailed(sa.exc.OperationalError):
    """The write group this transaction joined did not commit: nothing of it was
    committed, so retrying with the same idempotency key is safe. A database error like
    any other (HTTP 503, CLI exit 6); ``orig`` is the driver's error that ended the group.
    """

    def __init__(self, cause: BaseException) -> None:
        orig = cause.orig if isinstance(cause, sa.exc.DBAPIError) else cause
        super().__init__("COMMIT", None, orig if isinstance(orig, Exception) else cause)


class LockTimeout(sa.exc.OperationalError):
    """A transaction of this process queued longer than the lock timeout, for SQLite's
    write lock or for a thread of the database (``Database.submit``): it did not start,
    nothing of it was written."""

    def __init__(self, seconds: float, waited_for: str = "the write lock") -> None:
        super().__init__(
            "BEGIN", None, TimeoutError(f"{waited_for} was not free within {seconds:g} s")
        )


class Refused(Exception):
    """The database is refused as it is; the message says what the operator must do (no
    hint to add)."""


class FileRefused(Refused):
    """The SQLite file at the database's path is refused."""


class ReplacedFile(FileRefused):
    """The SQLite file at the database's path is not the one this process opened."""


class FileReplaced(sa.exc.OperationalError):
    """The SQLite database file was deleted, moved or replaced (a backup put in its
    place) while this process had it open. Its connections still reach the file they
    opened, gone from the path: what they wrote would be lost when the process restarts,
    and a new connection would find another file. Every transaction is refused, nothing
    of it written, until the process is restarted (HTTP 503, CLI exit 6)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            "BEGIN",
            None,
            ReplacedFile(
                f"the SQLite database file {path} {reason} since this process opened it: "
                "nothing was written; restart the process (the server) to open the file "
                "now at that path"
            ),
        )


class SavedBeside(FileRefused):
    """A SQLite file that holds no ledger, beside copies saved of one found gone."""


class LedgerSavedBeside(sa.exc.OperationalError):
    """``migrate`` on a SQLite file that holds no ledger yet, beside copies saved of the
    ledger a process found gone from the same path (``Database._gone``): most likely the
    empty file SQLite made at the path after the ledger was deleted under a running
    server. A new, empty ledger made there would be served in its place, every wallet
    missing. Refused, nothing created, until the operator puts the right copy back at the
    path, or moves the copies away to start a new ledger (CLI exit 6)."""

    def __init__(self, path: str, saved: list[str]) -> None:
        if len(saved) == 1:
            found = (
                "a copy of the ledger once at that path lies beside it: put it back "
                f"(mv {saved[0]} {path})"
            )
        else:
            found = (
                f"{len(saved)} copies of ledgers once at that path lie beside it (the newest: "
                f"{saved[-1]}): put the right one back (mv it to {path})"
            )
        super().__init__(
            "migrate",
            None,
            SavedBeside(
                f"the SQLite database file {path} holds no ledger, and {found}, or move the "
                f"{path}.gone-* files away to start a new, empty ledger; nothing was created"
            ),
        )


class UnknownRevision(Refused):
    """A schema revision none of this version's migrations made."""


class SchemaFromNewer(sa.exc.OperationalError):
    """A database whose schema a newer creditledger upgraded (a deployment rolled back
    after its migration ran): its Alembic revision is none of this version's. There is no
    way up from it, and running on it is unsafe (this version knows neither the tables nor
    the rules the newer one keeps), so ``migrate`` refuses it (and ``serve`` does not
    start), as does every CLI command that reads or writes the ledger: nothing changed,
    CLI exit 6. (Alembic's own error was a traceback.)"""

    def __init__(self, found: Sequence[str], newest: str) -> None:
        revisions = ", ".join(found)
        super().__init__(
            "migrate",
            None,
            UnknownRevision(
                f"the database's schema is at revision {revisions}, which this creditledger "
                f"does not know (its newest is {newest}): a newer creditledger upgraded it. "
                "Run that version (or a later one) on it, or take the schema back to "
                f"{newest} with it first (`creditledger migrate --to {newest} --yes`); "
                "nothing was changed"
            ),
        )


class DowngradeNotConfirmed(Exception):
    """``Database.migrate_to`` would take the schema down, undoing revisions (and what
    they keep), and was not told to (``down``): nothing was changed."""

    def __init__(
        self,
        current: str,
        target: str,
        undone: Sequence[str],
        losses: dict[str, str],
        in_use: Sequence[str] = (),
    ) -> None:
        super().__init__(
            f"the schema is at revision {current}: going to {target} undoes "
            f"{', '.join(undone)}, newest first"
        )
        self.current = current
        self.target = target
        self.undone = tuple(undone)
        #: What undoing each revision would take from this database (``downgrade_losses``).
        self.losses = losses
        #: The other processes or sessions on the ledger, to stop first (``LedgerInUse``).
        self.in_use = tuple(in_use)


class LedgerInUse(Exception):
    """``Database.migrate_to`` was to take the schema down while other processes have the
    ledger open (``ledger.inuse``): they would go on running the newer version's
    statements on the older tables. Nothing was changed."""

    def __init__(self, target: str, in_use: Sequence[str], *, sessions: bool) -> None:
        found = (
            f"{len(in_use)} other session(s) are on the ledger"
            if sessions
            else f"{len(in_use)} other process(es) have the ledger open"
        )
        super().__init__(
            f"not taking the schema down to {target}: {found} ({'; '.join(in_use)}). Stop "
            "them (every server on it), then run this again; nothing was changed"
        )
        self.target = target
        self.in_use = tuple(in_use)
        #: What else may hold a PostgreSQL session of that name.
        self.hint = (
            "a pooler such as PgBouncer keeps its idle server connections under the name "
            "of the last client that used them: run this on PostgreSQL directly"
            if sessions
            else None
        )


@dataclass(frozen=True)
class Migration:
    """What ``Database.migrate_to`` did: the revision the schema was at (None: there was
    no schema), the one it is at now, and the revisions it applied (oldest first) or
    undid (newest first), in the order it ran them."""

    before: str | None
    after: str
    applied: tuple[str, ...] = ()
    undone: tuple[str, ...] = ()
    #: What undoing each revision took from the database, by revision (none: nothing).
    losses: dict[str, str] = field(default_factory=dict)


#: Where Alembic keeps the revision a database is at (its default name).
VERSION_TABLE = "alembic_version"


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """This version's schema revisions, oldest first: each migration's revision is the
    number its file's name begins with (``0018_sealed_entries.py``: ``0018``), as a test
    holds it to Alembic's own reading. Listed from the file names, not by loading the
    migrations (which takes Alembic a fifth of a second), so a CLI command asks cheaply."""
    folder = importlib.resources.files("ledger.migrations") / "versions"
    names = (entry.name for entry in folder.iterdir())
    return tuple(sorted(n[:4] for n in names if re.fullmatch(r"\d{4}_\w+\.py", n)))


def revision_titles() -> dict[str, str]:
    """Each of this version's revisions, oldest first, with its title (the first line of
    its migration's docstring, on one line): what it adds, so what undoing it takes away.
    (Loads the migrations: a fifth of a second.)"""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return {r: " ".join(script.get_revision(r).doc.split()) for r in known_revisions()}


def downgrade_losses(conn: Connection, revisions: Sequence[str]) -> dict[str, str]:
    """What undoing each of ``revisions`` would take from ``conn``'s database (a schema at
    or above them): each migration that drops what only it keeps says so, counted, in
    its ``dropped_by_downgrade``; one that takes nothing, or nothing here, is left out."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    losses = {}
    for revision in revisions:
        count = getattr(script.get_revision(revision).module, "dropped_by_downgrade", None)
        said = count(conn) if count is not None else None
        if said:
            losses[revision] = said
    return losses


def _current_revision(conn: Connection) -> str | None:
    """The revision ``conn``'s database is at, or None if it has no schema yet."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars().all()
    return max(found, default=None)


def _refuse_unknown_revision(conn: Connection) -> None:
    """``SchemaFromNewer``: the revision ``conn``'s database is at is none of this
    version's migrations. A database with no schema yet passes. (Read without Alembic,
    whose import would take a CLI command a tenth of a second more.)"""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return
    found = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars().all()
    known = known_revisions()
    unknown = sorted(set(found) - set(known))
    if unknown:
        raise SchemaFromNewer(unknown, known[-1])


def is_file_replaced(exc: BaseException) -> bool:
    """Whether ``exc`` (as raised, or as a failed group's ``CommitFailed``) is
    ``FileReplaced``."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return isinstance(orig, ReplacedFile)


def _refuse_new_beside_saved(conn: Connection) -> None:
    """``LedgerSavedBeside``: the SQLite file ``conn`` has is empty (no table at all),
    and copies saved of a ledger found gone from its path lie beside it."""
    path = next(row[2] for row in conn.exec_driver_sql("PRAGMA database_list") if row[1] == "main")
    if not path:
        return  # in memory: no path, nothing saved
    saved = sorted(glob.glob(f"{glob.escape(path)}.gone-*"))
    if saved and not conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar_one():
        raise LedgerSavedBeside(path, saved)


def _sqlite_file(conn: Connection) -> str:
    """The path of the file of ``conn``'s SQLite database, as SQLite opened it."""
    raw: Any = conn.connection.driver_connection
    return str(next(row[2] for row in raw.execute("PRAGMA database_list") if row[1] == "main"))


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's or the driver's) is a lock wait that ran out
    (``Timeouts.lock``): nothing was committed, and the request may be retried."""
    if isinstance(exc, LockTimeout):
        return True
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return isinstance(orig, psycopg.errors.LockNotAvailable) or (
        isinstance(orig, sqlite3.OperationalError)
        # The extended code's low byte is the primary code (SQLITE_BUSY_SNAPSHOT too).
        and getattr(orig, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
    )


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` ended a transaction because its connection was lost: the server
    restarted, crashed or ended the session, or the network cut it. SQLAlchemy found the
    connection gone and invalidated it, and with it every connection its pool had handed
    out by then, so the next transaction connects anew. Nothing of the transaction was
    committed, unless the loss came while its COMMIT was in flight: then the server may
    have committed it, and no client can tell which."""
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


#: What PostgreSQL (or libpq) says when it refuses a login for good: the credentials, the
#: role or the database named, a line of ``pg_hba.conf``, or encryption the server does
#: not offer. Waiting does not change that answer. A connection error carries no SQLSTATE
#: (psycopg has only libpq's message), so the message is read; a server whose messages
#: are in another language is then waited for, as before.
_REFUSED_LOGIN = (
    "authentication failed",  # password, SCRAM, md5, peer, ident...
    "no password supplied",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects connection",  # a ``reject`` line
    "but SSL was required",  # sslmode=require (or stricter) and a server without SSL
    "does not exist",  # role or database
    "is not permitted to log in",
    "permission denied for database",
)


def refused_login(exc: BaseException) -> bool:
    """Whether ``exc`` is a PostgreSQL server refusing the login itself (see
    ``_REFUSED_LOGIN``), rather than not being there to answer."""
    text = str(getattr(exc, "orig", None) or exc)
    return any(said in text for said in _REFUSED_LOGIN)


def first_line(exc: BaseException) -> str:
    """What the driver said, first line only (SQLAlchemy adds the statement and its
    parameters after it): for a log line about a database that is away."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


#: The text of the SQLite triggers that refuse a sum beyond 64 bits (migration 0006).
OVERFLOW_TAG = "amount_overflow"


def is_overflow(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's or the driver's) is a sum that left the signed 64-bit
    range of a money or quantity column: PostgreSQL's ``bigint out of range`` (or a
    ``numeric`` one), or on SQLite one of migration 0006's triggers (SQLite itself would
    store the sum as an inexact float). The transaction is rolled back with nothing done."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return isinstance(orig, psycopg.errors.NumericValueOutOfRange) or (
        isinstance(orig, sqlite3.IntegrityError) and str(orig).startswith(OVERFLOW_TAG)
    )


@dataclass(frozen=True)
class Timeouts:
    """The bounds of the database's waits, in seconds (the settings of the same names,
    ``CREDITLEDGER_*_TIMEOUT_SECONDS``, give them)."""

    #: A lock held by another transaction (see the module's documentation).
    lock: float = 10.0
    #: PostgreSQL: making a connection (libpq's ``connect_timeout``, whole seconds, at
    #: least 2).
    connect: int = 10
    #: PostgreSQL: a session idle inside a transaction (0: no limit).
    idle_in_transaction: float = 300.0

    def __post_init__(self) -> None:
        if not self.lock > 0 or self.connect < 1 or not self.idle_in_transaction >= 0:
            raise ValueError(f"invalid timeouts: {self}")

    def postgresql_options(self) -> str:
        """The server settings a PostgreSQL session starts with (libpq ``options``)."""
        lock_ms = max(1, round(self.lock * 1000))  # 0 would be no limit
        idle_ms = round(self.idle_in_transaction * 1000)
        return f"-c lock_timeout={lock_ms} -c idle_in_transaction_session_timeout={idle_ms}"


#: PostgreSQL sessions run in UTC (libpq ``options``, given last so that nothing else
#: sets it). The server sends a ``timestamptz`` as the session's local time: in
#: Asia/Kolkata an instant stored as 9999-12-31T23:59:59.999999Z (the latest the ledger
#: takes, a grant that never expires in practice) comes back as year 10000, which no
#: Python datetime holds, so every read of its row failed; and the instants the ledger's
#: own SQL reads back kept the server's offset rather than UTC's.
SESSION_TIMEZONE = "-c TimeZone=UTC"
#: The names the server reports (``ParameterStatus``) for a session already in UTC.
UTC_NAMES = frozenset({"UTC", "Etc/UTC"})
#: What a PostgreSQL session of the ledger's is named (its ``application_name``), unless
#: the database URL or ``PGAPPNAME`` names it.
APPLICATION_NAME = "creditledger"


#: The database URL's query parameter (psycopg's own name) for how many runs of a statement
#: on a connection make psycopg prepare it on the server (5 by default); ``none``: never.
PREPARE_THRESHOLD = "prepare_threshold"


def prepare_threshold(value: str | tuple[str, ...]) -> int | None:
    """A ``prepare_threshold`` of a database URL's query (a tuple where it is given more
    than once): a whole number of runs, or ``none`` for no prepared statement at all, as
    a pooler that shares server sessions between transactions needs (PgBouncer's
    transaction pooling before 1.21, or without ``max_prepared_statements``): there a
    statement prepared by one client is missing from the session another transaction
    runs on, or there under another's name."""
    if not isinstance(value, str):
        raise ValueError(f"{PREPARE_THRESHOLD} is given more than once")
    text = value.strip()
    if text.lower() == "none":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValueError(
            f"{PREPARE_THRESHOLD} must be a whole number of runs (0 to 999999999) or "
            "none (never prepare: behind a pooler such as PgBouncer in transaction mode)"
        )
    return int(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_dumps(value: Any) -> str:
    """JSON for the JSON columns: Decimals (never floats) become numbers or strings."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


#: SQLite: the most bytes the WAL file keeps once a checkpoint let it start over (its
#: length while a long read holds it back is not bounded by this).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def make_engine(url: str, *, timeouts: Timeouts | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` configured for the ledger's locking, durability and
    ``timeouts``."""
    timeouts = timeouts or Timeouts()
    kwargs.setdefault("json_serializer", json_dumps)
    if url.startswith("sqlite"):
        busy_ms = max(1, round(timeouts.lock * 1000))  # 0 would be no wait at all
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": timeouts.lock},
            pool_size=kwargs.pop("pool_size", 16),
            max_overflow=kwargs.pop("max_overflow", 48),
            **kwargs,
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy's begin event issue BEGIN (the driver's own is DEFERRED).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            # A reader's snapshot held long (a report job's, for a minute) keeps the WAL
            # from starting over, so every write meanwhile lengthens it: hundreds of MB.
            # SQLite keeps the file at its longest for reuse; past this size it is cut
            # back once the WAL starts over, so the disk it took is given back.
            cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(_WRITE, False)
            # On the driver's connection: SQLAlchemy's execution path (cursor, result,
            # events) costs far more than the statement, on every transaction.
            raw: Any = conn.connection.driver_connection
            statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
            try:
                raw.execute(statement)
            except sqlite3.Error as exc:
                # Wrapped as SQLAlchemy wraps its own statements' errors (a write lock
                # another process held past the busy timeout: OperationalError).
                raise sa.exc.DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

        return engine
    # What the URL sets itself wins: its ``options`` go after these (the server applies
    # the last of a setting given twice), its ``connect_timeout`` is kept. But not the
    # time zone: the sessions read instants in UTC whatever the server's, the database's,
    # the role's or the URL's ``TimeZone`` (``SESSION_TIMEZONE``).
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in POSTGRESQL_SCHEMES and driver in ("", "psycopg"):
        # psycopg 3, the one driver installed: SQLAlchemy before 2.1 would take psycopg2
        # for a URL that names none, and knows no "postgres" scheme at all.
        parsed = parsed.set(drivername="postgresql+psycopg")
    query = parsed.query
    given = query.get("options")
    options = timeouts.postgresql_options()
    if isinstance(given, str):
        options = f"{options} {given}"
    connect_args: dict[str, Any] = {
        "options": f"{options} {SESSION_TIMEZONE}",
        # Named in pg_stat_activity for the operator who asks whose sessions these are.
        # libpq's fallback: an application_name in the URL or PGAPPNAME in the
        # environment names them instead.
        "fallback_application_name": APPLICATION_NAME,
    }
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = timeouts.connect
    threshold = query.get(PREPARE_THRESHOLD)
    if threshold is not None:
        # psycopg's, not libpq's: a keyword of the connection, not of its conninfo.
        connect_args[PREPARE_THRESHOLD] = prepare_threshold(threshold)
        parsed = parsed.difference_update_query([PREPARE_THRESHOLD])
    engine = sa.create_engine(
        parsed,
        connect_args=connect_args,
        pool_size=kwargs.pop("pool_size", 16),
        max_overflow=kwargs.pop("max_overflow", 48),
        # No pre-ping: it costs a round trip per transaction. Connections are recycled
        # hourly; a connection that died meanwhile fails its transaction, which changes
        # nothing and can be retried with the same idempotency key.
        pool_recycle=3600,
        **kwargs,
    )

    unbounded: list[bool] = []  # said once per engine

    @sa.event.listens_for(engine, "connect")
    def _in_utc(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        zoned = dbapi_conn.info.parameter_status("TimeZone") not in UTC_NAMES
        if zoned:
            # The startup options did not set it (a pooler such as PgBouncer dropped
            # them): set it now. PgBouncer tracks TimeZone, so it stays set on whichever
            # server connection the session's later transactions run.
            dbapi_conn.execute("SET TimeZone TO 'UTC'")
        # The options set a lock timeout of a millisecond at least. Dropped, and with
        # neither the role nor the database setting one, a transaction waiting for a
        # wallet another holds would wait without end: said once, with the cure. Asked of
        # every new connection (a round trip each, on a pool's connections that live for
        # an hour): behind a pooler, a server whose own zone is UTC shows nothing else of
        # the options dropped.
        lock = dbapi_conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
        if zoned:
            dbapi_conn.commit()  # a SET lasts once committed
        else:
            dbapi_conn.rollback()  # only read: nothing to commit
        if lock == "0" and not unbounded:
            unbounded.append(True)
            log.warning(
                "database: the sessions have no lock timeout (lock_timeout is 0): their "
                "startup options were dropped, as a pooler such as PgBouncer does. Set the "
                "timeouts on the database role instead: ALTER ROLE %s SET lock_timeout = "
                "'%gs' (and idle_in_transaction_session_timeout)",
                dbapi_conn.info.user,
                timeouts.lock,
            )

    return engine


def _before_statement(conn: Connection, *_: Any) -> None:
    """Before SQLAlchemy runs a statement on PostgreSQL: the BEGIN of a write transaction
    that nothing has sent yet (see the module's documentation), then what the connection
    asks to go first (``BEFORE_STATEMENT``)."""
    info = conn.info
    if info.pop(BEGIN_PENDING, False):
        raw: Any = conn.connection.driver_connection
        raw.execute("BEGIN", prepare=False)
    first = info.get(BEFORE_STATEMENT)
    if first is not None:
        first()


class Database:
    """An engine and the way the use cases open transactions on it."""

    def __init__(
        self, engine: Engine, *, timeouts: Timeouts | None = None, threads: int = THREADS
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.engine = engine
        self.dialect = engine.dialect.name
        self.timeouts = timeouts or Timeouts()
        #: The worker threads (``submit_read``; on PostgreSQL ``submit`` too).
        self.threads = threads
        event = "before_cursor_execute"
        if not self.is_sqlite and not sa.event.contains(engine, event, _before_statement):
            # Listened to before any use case runs: adding a listener while another
            # thread runs a statement changes the list that thread is going through.
            sa.event.listen(engine, event, _before_statement)
        # SQLite has one writer at a time. Threads of this process queue here for it
        # instead of polling SQLite's busy handler, whose back-off sleeps (up to 100 ms
        # each) would make the tail latency of concurrent writers; other processes (the
        # CLI, another serve) still meet the busy timeout. The writers share one
        # connection: its page cache stays warm, where a connection that did not write
        # last must re-read every page another connection changed.
        self._writer = threading.Lock() if self.is_sqlite else None
        self._queue = threading.Lock()
        self._queued = 0  # writers waiting for ``_writer``
        self._group: _Group | None = None  # the open write transaction, under ``_writer``
        # The write connection, kept from one group to the next (under ``_writer``):
        # checking a connection out of the pool and back in costs more than a small
        # transaction. Discarded (the next group opens a new one) when a BEGIN, a commit
        # or a rollback fails, since its state is then unknown.
        self._writer_conn: Connection | None = None
        # Work run again after its connection was lost (``rerun``), by kind.
        self._reruns: Counter[str] = Counter()
        self._reruns_lock = threading.Lock()
        self._local = threading.local()  # the write thread's groups (``_grouped``)
        self._thread: _WriteThread | None = None  # started by the first ``submit``
        # SQLite: (path, device, inode) of the file the first transaction found, which
        # every later one must find at that path too (``_same_file``).
        self._file: tuple[str, int, int] | None = None
        self._lost = False  # that file found gone from its path: every transaction refused
        self._emptied = False  # that file gone, saved and its WAL moved in (``_gone``)
        self._workers: ThreadPoolExecutor | None = None  # started by the first use
        self._write_engine = (
            make_engine(
                engine.url.render_as_string(hide_password=False),
                timeouts=self.timeouts,
                pool_size=1,
                max_overflow=0,
            )
            if self.is_sqlite
            else engine
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeouts: Timeouts | None = None,
        threads: int = THREADS,
        **kwargs: Any,
    ) -> Database:
        engine = make_engine(url, timeouts=timeouts, **kwargs)
        return cls(engine, timeouts=timeouts, threads=threads)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database the operator configured, with the configured timeouts and
        worker threads."""
        return cls.from_url(
            settings.database_url,
            timeouts=settings.timeouts(),
            threads=settings.database_threads,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def transaction(self, *, write: bool = True, settle: bool = False) -> Iterator[Connection]:
        """One unit of work: commits once on success, rolls back on any exception.

        On the write thread (``submit``) a SQLite write transaction returns before its
        group commits, the use case being answered only after that; ``settle`` commits it
        before returning all the same, for work that what follows in the process relies on.
        """
        if write and self._writer is not None:
            with self._grouped(settle=settle) as conn:
                yield conn
            return
        with self._connect(write=write) as conn:
            yield conn

    @contextmanager
    def _grouped(self, *, settle: bool = False) -> Iterator[Connection]:
        """A SQLite write transaction that commits together with the writers queued
        behind it (see the module's documentation)."""
        assert self._writer is not None
        # On the write thread: the groups of the use case it runs, answered once done.
        deferred: list[_Group] | None = None if settle else self._local.__dict__.get("groups")
        with self._queue:
            self._queued += 1
        acquired = self._writer.acquire(timeout=self.timeouts.lock)
        with self._queue:
            self._queued -= 1
        if not acquired:
            raise LockTimeout(self.timeouts.lock)
        try:
            group = self._group or self._open_group()
            # The first writer runs without a savepoint: when it fails, the transaction
            # holds nothing else and is rolled back whole.
            first = group.size == 0
            failure: BaseException | None = None
            try:
                if first:
                    yield group.conn
                else:
                    with group.savepoint():
                        yield group.conn
            except BaseException as exc:
                failure = exc
            if failure is None:
                group.size += 1
            elif first or group.broken or not group.in_transaction():
                # Nothing to keep, or SQLite rolled the whole transaction back (I/O
                # error, disk full): the group ends here, failing any writer in it.
                self._close_group(group, failure)
            thread = self._thread  # read once: ``dispose`` may drop it meanwhile
            if self._group is group and (
                group.size >= GROUP_LIMIT
                or settle
                or (self._queued == 0 and (thread is None or thread.idle()))
            ):
                self._close_group(group, None)
        finally:
            self._writer.release()
        if failure is not None:
            raise failure
        if deferred is not None:
            deferred.append(group)
            return
        group.wait()

    def submit(self, use_case: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``use_case(*args, **kwargs)``, one transaction, off the caller's thread: a
        future of its result. On SQLite the write thread runs it, the future set once the
        commit covering its work is durable; on PostgreSQL a worker thread. A use case
        that waited in the queue longer than the lock timeout is not run (LockTimeout)."""
        with self._queue:  # queued before any stop that ``dispose`` queues
            if self._writer is None:
                now = time.monotonic()
                return self._pool().submit(self._unless_late, now, use_case, args, kwargs)
            if self._thread is None:
                self._thread = _WriteThread(self)
            return self._thread.submit(use_case, args, kwargs)

    def submit_read(self, read: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``read(*args, **kwargs)`` on one of the worker threads (``threads`` of
        them), as ``reading`` does: reads queue for a few threads rather than each taking
        one of many, whose hand-offs of Python's interpreter lock at every statement would
        cost more than the reads."""
        with self._queue:  # queued before any shutdown that ``dispose`` starts
            return self._pool().submit(self.reading, read, *args, **kwargs)

    def lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a PostgreSQL connection lost under a transaction
        (``connection_lost``), after which the work may run again on a new connection: a
        read at any rate, a write when an idempotency key makes a second run replay what
        a first one committed. On SQLite nothing is ever run again: its connection is a
        file, and a commit that failed fails its whole group (``CommitFailed``)."""
        return not self.is_sqlite and connection_lost(exc)

    def rerun(self, work: str, what: str, exc: sa.exc.DBAPIError) -> None:
        """Count (``reruns``) and log one more run of ``what``, a ``work`` ("read" or
        "write"), after ``exc`` lost its connection."""
        with self._reruns_lock:
            self._reruns[work] += 1
        log.warning("connection to the database lost; %s runs again: %s", what, exc.orig)

    def reruns(self) -> dict[str, int]:
        """How many reads and writes ran again after their connection was lost, since
        this database was opened (the metric ``creditledger_database_reruns_total``)."""
        with self._reruns_lock:
            return {work: self._reruns[work] for work in ("read", "write")}

    def reading(self, read: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``read(*args, **kwargs)``, which only reads; on PostgreSQL run again on a new
        connection when its connection was lost (a restart or failover of the server
        finds the pool's connections dead: the first read after it need not fail)."""
        return self._again("read", read, *args, **kwargs)

    def repeatable(self, write: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``write(*args, **kwargs)``, a write that leaves things as they were the first
        time when it runs twice (revoking a key revokes it once; asking again for a report
        returns the job the first asking queued), run again as ``reading`` runs a read.
        A connection lost during its commit then gives the caller what was committed."""
        return self._again("write", write, *args, **kwargs)

    def _again(self, work: str, run: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        for again in range(RECONNECTS + 1):
            try:
                return run(*args, **kwargs)
            except sa.exc.DBAPIError as exc:
                if again == RECONNECTS or not self.lost(exc):
                    raise
                self.rerun(work, getattr(run, "__name__", f"a {work}"), exc)
        raise AssertionError("unreachable")

    def _pool(self) -> ThreadPoolExecutor:
        """The worker threads (under ``_queue``): on SQLite they only read."""
        if self._workers is None:
            name = "creditledger-reader" if self._writer is not None else "creditledger-worker"
            self._workers = ThreadPoolExecutor(self.threads, name)
        return self._workers

    def _late(self, queued_at: float, waited_for: str) -> LockTimeout | None:
        """The refusal of a use case queued since ``queued_at`` (``time.monotonic()``)
        longer than the lock timeout, as a transaction waiting for a lock that long: not
        run, nothing done. None while it is in time."""
        lock = self.timeouts.lock
        return LockTimeout(lock, waited_for) if time.monotonic() - queued_at > lock else None

    def _unless_late(
        self, queued_at: float, use_case: Callable[..., T], args: Any, kwargs: Any
    ) -> T:
        late = self._late(queued_at, "a database thread")
        if late is not None:
            raise late
        return use_case(*args, **kwargs)

    def _settle(self) -> None:
        """Commit the open group, if any (the write thread, its queue empty)."""
        assert self._writer is not None
        with self._writer:
            if self._group is not None:
                self._close_group(self._group, None)

    def _open_group(self) -> _Group:
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer_conn = self._write_engine.connect()
            conn.execution_options(**{_WRITE: True})
        try:
            conn.begin()
            self._same_file(conn)
        except BaseException:
            self._drop_writer()
            raise
        self._group = _Group(conn)
        return self._group

    def _same_file(self, conn: Connection) -> None:
        """SQLite: raise ``FileReplaced`` unless ``conn`` has the database file open that
        this process's first transaction found, and that file is still at its path.

        A file deleted or replaced under a running process goes on living for the
        connections that have it open: writes to it would report success and be lost at
        the next start, and a new connection would open (or create) another file. A stat
        per transaction, against an fsync per commit."""
        info = conn.connection.info  # as long as the driver's connection lives
        opened: tuple[str, int, int] | None = info.get(_OPENED)
        if opened is None:
            path = _sqlite_file(conn)
            try:
                found = os.stat(path)
            except OSError as exc:
                raise FileReplaced(path, f"cannot be read ({exc.strerror})") from exc
            opened = (path, found.st_dev, found.st_ino)
            info[_OPENED] = opened
            with self._queue:
                if self._file is None:
                    self._file = opened
        path = opened[0]
        gone = "was deleted, moved or replaced"
        if opened != self._file:  # opened since, on the file now at the path
            self._lost = True
            raise FileReplaced(path, gone)
        if not self._lost:
            try:
                found = os.stat(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise FileReplaced(path, f"cannot be read ({exc.strerror})") from exc
            else:
                if (found.st_dev, found.st_ino) == opened[1:]:
                    return
        # Found gone once, the file is gone for good: a file made at the path since may
        # even have its device and inode numbers, freed when its last connection closed.
        self._lost = True
        raise self._gone(conn, path, gone)

    def _gone(self, conn: Connection, path: str, reason: str) -> FileReplaced:
        """The refusal of ``conn``'s transaction on the first file, gone from ``path``;
        the first time, that file is saved and its WAL moved into it first.

        Saved: a copy of it as this process sees it (``VACUUM INTO``) beside the path,
        named ``<path>.gone-<UTC time>-<pid>``, so that a file deleted by mistake loses
        nothing committed to it (the process holds its last link).

        The WAL is named after the path, so it would be read as part of whatever file is
        at the path next (a backup put there: the restarted server would see pages of
        the other file in it), and SQLite does not move it on closing a file that was
        moved. Moved now (a checkpoint, the WAL emptied), it leaves the first file whole
        wherever it went (a file moved aside holds everything committed) and the file at
        the path as it is."""
        with self._queue:
            first, self._emptied = not self._emptied, True
        if not first:
            return FileReplaced(path, reason)
        raw: Any = conn.connection.driver_connection
        saved = f"{path}.gone-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        try:
            raw.rollback()  # refused anyway: both run outside a transaction
            raw.execute("VACUUM INTO ?", (saved,))
        except sqlite3.Error as exc:
            log.error(
                "database: the SQLite file %s %s; it could not be saved: %s", path, reason, exc
            )
        else:
            log.error(
                "database: the SQLite file %s %s; everything committed to it is saved in %s",
                path,
                reason,
                saved,
            )
        try:
            busy, frames, moved = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.error("database: the WAL of %s could not be moved into it: %s", path, exc)
        else:
            if busy:
                log.error(
                    "database: the WAL of %s was moved into it only in part (%d of %d "
                    "pages): before the server starts again, delete %s-wal",
                    path,
                    moved,
                    frames,
                    path,
                )
        return FileReplaced(path, reason)

    def _save_if_lost(self) -> None:
        """The file found gone by a connection opened since (on the file now at the
        path), which could not save it: saved now, as the process ends, through the write
        connection if that still has it (``_gone``). Else what was committed to it since
        it was last saved would go with the process."""
        conn, file = self._writer_conn, self._file
        if not self._lost or self._emptied or conn is None or file is None:
            return
        if conn.closed or conn.invalidated or conn.connection.info.get(_OPENED) != file:
            return
        self._gone(conn, file[0], "was deleted, moved or replaced")

    def _drop_writer(self) -> None:
        """Discard the write connection. Not back to the pool: it may still hold the
        transaction whose commit failed (SQLAlchemy's reset-on-return skips the rollback
        after a failed commit), and the next BEGIN on it would fail, group after group."""
        conn, self._writer_conn = self._writer_conn, None
        if conn is None:
            return
        try:
            conn.invalidate()
        except Exception:
            pass  # already unusable: closing it below is all there is to do
        try:
            conn.close()
        except Exception:
            pass

    def _close_group(self, group: _Group, failure: BaseException | None) -> None:
        """Commit the group (roll it back on ``failure``) and wake its writers."""
        self._group = None
        conn = group.conn
        if failure is None and not group.in_transaction():
            # A writer ended the transaction behind the group's back (a bare ROLLBACK):
            # committing now would commit nothing and report success.
            failure = RuntimeError("the write transaction ended before its commit")
        if failure is None:
            try:
                self._same_file(conn)
            except FileReplaced as exc:
                failure = exc
        try:
            if failure is None:
                conn.commit()
            else:
                conn.rollback()
                if isinstance(failure, FileReplaced):
                    self._drop_writer()  # it holds the file gone from the path
        except Exception as exc:
            failure = failure or exc
            try:
                conn.rollback()
            except Exception:
                pass  # the connection is discarded below
            self._drop_writer()
        except BaseException as exc:
            failure = failure or exc
            self._drop_writer()
            raise
        finally:
            group.finish(failure)

    @contextmanager
    def snapshot(self, *, idle: float | None = None) -> Iterator[Connection]:
        """A read-only transaction that sees one consistent state of the whole database
        (PostgreSQL: REPEATABLE READ; SQLite: a read transaction is one snapshot).

        ``idle`` (PostgreSQL): how long the snapshot may wait between its statements when
        that is longer than the session's idle-in-transaction limit, for a reader that
        works between its reads (a report job reconciles and renders each batch of
        wallets before it reads the next). That limit is there to free the locks of a
        client that died or hung; a snapshot holds none, and ending it would throw its
        work away. A session without a limit keeps none; the next transaction on the
        connection has the session's limit again (``SET LOCAL``).
        """
        with self.transaction(write=False) as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if idle is not None:
                    # The session's limit as in force (the URL's options or the role's
                    # own setting may have replaced the configured one), in milliseconds.
                    conn.execute(
                        sa.text(
                            "SELECT set_config(name, CAST(:ms AS text), true) FROM pg_settings "
                            "WHERE name = 'idle_in_transaction_session_timeout' "
                            "AND setting::bigint BETWEEN 1 AND :ms - 1"
                        ),
                        {"ms": max(1, round(idle * 1000))},
                    )
            yield conn

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Connection]:
        with (self._write_engine if write else self.engine).connect() as conn:
            lazy = write and not self.is_sqlite
            if lazy:
                # The BEGIN goes with the first statement (see the module's documentation).
                conn.execution_options(isolation_level="AUTOCOMMIT", **{_WRITE: True})
            elif write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if self.is_sqlite:
                    self._same_file(conn)
                if not lazy:
                    yield conn
                    return
                conn.info[BEGIN_PENDING] = True
                try:
                    yield conn
                finally:
                    # Sent or not, it belongs to this transaction only. A connection the
                    # server cut off is invalidated, its DBAPI connection and info gone
                    # (and asking for them would raise over the disconnect error).
                    if not conn.invalidated:
                        conn.info.pop(BEGIN_PENDING, None)

    def reach(self, wait: float) -> None:
        """Connect once, waiting up to ``wait`` seconds for a PostgreSQL server that does
        not take connections yet: one starting up or recovering (``the database system is
        starting up``), not listening yet (a container started beside its database), or
        whose host name is not known yet. Each new reason is logged once, as a warning; the
        last failure is raised when the wait runs out. A server that refused the login
        (``refused_login``) has answered: that is raised at once. A SQLite file needs no
        server: it is opened at once, and a failure is raised as it comes."""
        deadline = time.monotonic() + wait
        delay = 0.1
        said = ""
        while True:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                left = deadline - time.monotonic()
                if self.is_sqlite or left <= 0 or refused_login(exc):
                    raise
                reason = first_line(exc)
                if reason != said:
                    said = reason
                    log.warning(
                        "database: not reachable (%s); trying again for up to %.0f s",
                        reason,
                        left,
                    )
                time.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)

    def migrate(self, revision: str = "head", *, wait: float = MIGRATION_WAIT) -> None:
        """Upgrade the schema to ``revision`` (Alembic), one process at a time (see
        ``_migrating``)."""
        from alembic import command  # only here: most processes never migrate

        def upgrade(conn: Connection) -> None:
            self._refuse_to_migrate(conn)
            command.upgrade(alembic_config(conn), revision)

        self._migrating(upgrade, wait)

    def _refuse_to_migrate(self, conn: Connection) -> None:
        """What no migration runs on: a schema a newer version made (``SchemaFromNewer``),
        or an empty SQLite file beside the saved copies of a ledger found gone
        (``LedgerSavedBeside``)."""
        if self.is_sqlite:
            _refuse_new_beside_saved(conn)
        _refuse_unknown_revision(conn)

    def refuse_newer_schema(self) -> None:
        """``SchemaFromNewer`` if a newer creditledger has migrated this database: the CLI's
        commands ask before they read or write it, as ``migrate`` does. (This version
        knows neither the tables nor the rules the newer one keeps: what it wrote could
        break them, and what it read could leave out what they hold.)"""
        with self.engine.connect() as conn:
            _refuse_unknown_revision(conn)

    def migrate_to(
        self,
        target: str = "head",
        *,
        down: bool = False,
        alone: bool = False,
        wait: float = MIGRATION_WAIT,
    ) -> Migration:
        """Take the schema to ``target``, one of ``known_revisions()`` or ``head`` (the
        newest): up, applying the revisions after the one it is at, or, only with
        ``down``, down, undoing those after ``target``, newest first, each with what it
        keeps (a rollback to an older creditledger, whose newest revision ``target`` is).
        In one transaction under the migration lock (``_migrating``), as ``migrate``:
        whatever fails, nothing changed. ``DowngradeNotConfirmed`` when it would go down
        without ``down``; ``SchemaFromNewer`` when the schema is at a revision this version
        does not know. With ``alone`` (the CLI: this process uses the ledger for nothing
        else), ``LedgerInUse`` when it would go down while other processes have the ledger
        open; the refusal without ``down`` names them too."""
        from alembic import command

        known = known_revisions()
        goal = known[-1] if target == "head" else target
        if goal not in known:
            raise ValueError(f"no revision {target!r}: this version's are {', '.join(known)}")
        if alone:
            # PostgreSQL: close this process's pooled sessions (``reach``'s), so that the
            # migration's is its only one and none is taken for another process's.
            self.engine.dispose()
        done: list[Migration] = []

        def run(conn: Connection) -> None:
            self._refuse_to_migrate(conn)
            before = _current_revision(conn)
            if before is not None and goal < before:
                undone = tuple(r for r in reversed(known) if goal < r <= before)
                losses = downgrade_losses(conn, undone)
                in_use = self._others(conn) if alone else []
                if not down:
                    raise DowngradeNotConfirmed(before, goal, undone, losses, in_use)
                if in_use:
                    raise LedgerInUse(goal, in_use, sessions=not self.is_sqlite)
                command.downgrade(alembic_config(conn), goal)
                done.append(Migration(before, goal, undone=undone, losses=losses))
                return
            applied = tuple(r for r in known if (before is None or before < r) and r <= goal)
            command.upgrade(alembic_config(conn), goal)
            done.append(Migration(before, goal, applied=applied))

        self._migrating(run, wait)
        return done[-1]

    def _others(self, conn: Connection) -> list[str]:
        """The other processes (SQLite) or sessions (PostgreSQL) that have the ledger
        open, described (``ledger.inuse``); none found where the system cannot tell."""
        if not self.is_sqlite:
            return inuse.postgresql_users(conn)
        return inuse.sqlite_users(_sqlite_file(conn))

    def downgrade(self, revision: str = "base", *, wait: float = MIGRATION_WAIT) -> None:
        from alembic import command

        self._migrating(lambda conn: command.downgrade(alembic_config(conn), revision), wait)

    def _migrating(self, run: Callable[[Connection], object], wait: float) -> None:
        """Run a migration in one transaction that holds the migration lock from its
        start: on SQLite the write lock (``BEGIN IMMEDIATE``), on PostgreSQL an advisory
        lock (``MIGRATION_LOCK``). Processes that migrate together (replicas of ``serve``
        started at once) thus run one after another; the later ones then find the schema
        at its revision and do nothing, where they used to fail on tables another was
        creating. A lock wait that runs out (another process's long migration, a table a
        running server holds) rolls the whole migration back, DDL included, and it runs
        again, for up to ``wait`` seconds in all."""
        deadline = time.monotonic() + wait
        waiting = False
        while True:
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(**{_WRITE: True})  # SQLite: BEGIN IMMEDIATE
                    with conn.begin():
                        if not self.is_sqlite:
                            conn.exec_driver_sql(
                                "SELECT pg_advisory_xact_lock(%(key)s)", {"key": MIGRATION_LOCK}
                            )
                        run(conn)
                return
            except sa.exc.OperationalError as exc:
                if not is_lock_timeout(exc) or time.monotonic() >= deadline:
                    raise
                if not waiting:
                    waiting = True
                    log.warning("migration: waiting for a lock another process holds")
                time.sleep(0.1)

    def dispose(self) -> None:
        # The write and worker threads answer what was queued, then end (a later
        # ``submit`` or ``submit_read`` starts others).
        with self._queue:
            thread, self._thread = self._thread, None
            workers, self._workers = self._workers, None
            if thread is not None:
                thread.stop()
            if workers is not None:
                workers.shutdown(wait=False)  # what is queued still runs
        if thread is not None:
            thread.join()
        if workers is not None:
            workers.shutdown(wait=True)
        if self._writer is not None:
            with self._writer:
                self._save_if_lost()
                self._drop_writer()
        self.engine.dispose()
        if self._write_engine is not self.engine:
            self._write_engine.dispose()


class _Group:
    """One SQLite write transaction and the writers whose work it holds."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.size = 0  # writers whose work succeeded and awaits the commit
        self.broken = False  # a failed writer's work could not be rolled back alone
        self._done = threading.Event()
        self._failure: BaseException | None = None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A writer's work, undone alone when it fails. Plain SQL on the driver's
        connection (SQLAlchemy's nested transactions cost more than the work); nested
        ``begin_nested()`` savepoints inside it stay balanced."""
        raw: Any = self.conn.connection.driver_connection
        raw.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            yield
        except BaseException:
            if not self.in_transaction():
                # SQLite rolled the whole transaction back itself (a full disk, an I/O
                # error): no savepoint is left to roll back to, and the group is lost.
                # The writer's own error says why, to it and to the group's writers; a
                # ROLLBACK TO would only fail with "no such savepoint" in its place.
                self.broken = True
                raise
            self._end_savepoint(raw, f"ROLLBACK TO {_SAVEPOINT}", f"RELEASE {_SAVEPOINT}")
            raise
        self._end_savepoint(raw, f"RELEASE {_SAVEPOINT}")

    def _end_savepoint(self, raw: Any, *statements: str) -> None:
        try:
            for statement in statements:
                raw.execute(statement)
        except Exception:
            # The writer's work cannot be kept or undone alone: the whole group must go
            # (the writer itself sees this error as its failure).
            self.broken = True
            raise

    def in_transaction(self) -> bool:
        """Whether SQLite still holds the group's transaction (an I/O error, a full
        disk or a broken connection ends it: then the whole group is lost)."""
        try:
            raw: Any = self.conn.connection.driver_connection
            return bool(raw.in_transaction)
        except Exception:
            return False

    def finish(self, failure: BaseException | None) -> None:
        self._failure = failure
        self._done.set()

    def done(self) -> bool:
        """Whether the group has committed or failed."""
        return self._done.is_set()

    @property
    def failure(self) -> BaseException | None:
        """Why the group failed (once ``done``), or None."""
        return self._failure

    def wait(self) -> None:
        """Return once the group committed; raise CommitFailed if it did not."""
        self._done.wait()
        if self._failure is not None:
            raise CommitFailed(self._failure) from self._failure


_STOP = object()
#: A use case run on the write thread, its answer waiting for its groups' commit:
#: (future, result, error, groups).
_Waiting = tuple[Future[Any], Any, BaseException | None, list["_Group"]]


class _WriteThread:
    """The thread that runs the use cases ``Database.submit`` queues, one at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: list[_Waiting] = []
        self._thread = threading.Thread(target=self._run, name="creditledger-writer", daemon=True)
        self._thread.start()

    def idle(self) -> bool:
        """Whether no use case waits in the queue (then the open group may commit)."""
        return self._queue.empty()

    def submit(self, use_case: Callable[..., T], args: Any, kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, use_case, args, kwargs, time.monotonic()))
        return future

    def stop(self) -> None:
        """Answer what is queued so far, then end the thread (``join`` waits for it)."""
        self._queue.put(_STOP)

    def join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is _STOP
            try:
                if not stop:
                    self._one(*item)
                if stop or self._queue.empty():
                    self.db._settle()
            except BaseException as exc:  # the commit was interrupted: nothing is known done
                for future, _, _, _ in self._waiting:
                    future.set_exception(CommitFailed(exc))
                self._waiting = []
            self._answer()
            if stop:
                return

    def _one(
        self,
        future: Future[Any],
        use_case: Callable[..., Any],
        args: Any,
        kwargs: Any,
        queued_at: float,
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return  # its caller gave up before it started
        late = self.db._late(queued_at, "the write lock")
        if late is not None:
            future.set_exception(late)
            return
        groups: list[_Group] = []
        self.db._local.groups = groups
        result: Any = None
        error: BaseException | None = None
        try:
            result = use_case(*args, **kwargs)
        except BaseException as exc:
            error = exc
        finally:
            self.db._local.groups = None
        self._waiting.append((future, result, error, groups))

    def _answer(self) -> None:
        """Answer each use case whose groups have all committed (or failed)."""
        still: list[_Waiting] = []
        for future, result, error, groups in self._waiting:
            if error is not None:
                # Its own failure, answered at once: a failure inside its transaction
                # took back that transaction's work, whatever its group does.
                future.set_exception(error)
            elif all(group.done() for group in groups):
                failed = next((g.failure for g in groups if g.failure is not None), None)
                if failed is not None:
                    future.set_exception(CommitFailed(failed))
                else:
                    future.set_result(result)
            else:
                still.append((future, result, error, groups))
        self._waiting = still


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, pointing at ``ledger/migrations`` inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "ledger:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config
