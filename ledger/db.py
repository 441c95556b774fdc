"""Database engines, the unit of work, and migrations.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` (a committed
transaction survives a power cut) and foreign keys on. Every writing transaction starts
with ``BEGIN IMMEDIATE``: writers are serialized at the start, so a balance read inside
the transaction cannot go stale before the write. PostgreSQL uses psycopg 3 at READ
COMMITTED; the use cases lock the wallet row (``SELECT ... FOR UPDATE``) before reading
its balance.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

_WRITE = "creditledger_write"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_dumps(value: Any) -> str:
    """JSON for the JSON columns: Decimals (never floats) become numbers or strings."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` configured for the ledger's locking and durability."""
    kwargs.setdefault("json_serializer", json_dumps)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
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
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return sa.create_engine(
        url,
        pool_size=kwargs.pop("pool_size", 16),
        max_overflow=kwargs.pop("max_overflow", 48),
        # No pre-ping: it costs a round trip per transaction. Connections are recycled
        # hourly; a connection that died meanwhile fails its transaction, which changes
        # nothing and can be retried with the same idempotency key.
        pool_recycle=3600,
        **kwargs,
    )


class Database:
    """An engine and the way the use cases open transactions on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite has one writer at a time. Threads of this process queue here for it
        # instead of polling SQLite's busy handler, whose back-off sleeps (up to 100 ms
        # each) would make the tail latency of concurrent writers; other processes (the
        # CLI) still meet the busy timeout. The writers share one connection: its page
        # cache stays warm, where a connection that did not write last must re-read every
        # page another connection changed.
        self._writer = threading.Lock() if self.is_sqlite else None
        self._write_engine = (
            make_engine(
                engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0
            )
            if self.is_sqlite
            else engine
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        return cls(make_engine(url, **kwargs))

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One unit of work: commits once on success, rolls back on any exception."""
        if write and self._writer is not None:
            with self._writer, self._connect(write=True) as conn:
                yield conn
            return
        with self._connect(write=write) as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one consistent state of the whole database
        (PostgreSQL: REPEATABLE READ; SQLite: a read transaction is one snapshot)."""
        with self.transaction(write=False) as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Connection]:
        with (self._write_engine if write else self.engine).connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (Alembic)."""
        with self.engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)

    def downgrade(self, revision: str = "base") -> None:
        with self.engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._write_engine is not self.engine:
            self._write_engine.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, pointing at ``ledger/migrations`` inside the package."""
    config = Config()
    config.set_main_option("script_location", "ledger:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config
