"""The database layer's small decisions: a lock timeout is never "no limit", a lock wait
SQLite reports with an extended code is still a lock wait, and a Decimal is stored in a
JSON column exactly."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from ledger.db import (
    OVERFLOW_TAG,
    Timeouts,
    first_line,
    is_lock_timeout,
    is_overflow,
    json_dumps,
    make_engine,
)


@pytest.mark.parametrize(("lock", "ms"), [(0.0001, 1), (0.0015, 2), (10.0, 10_000)])
def test_a_lock_timeout_below_a_millisecond_is_one_not_none(lock: float, ms: int) -> None:
    """PostgreSQL reads ``lock_timeout=0`` as no limit at all: the shortest wait a
    setting above zero gives is one millisecond."""
    options = Timeouts(lock=lock, idle_in_transaction=0).postgresql_options()
    assert options == f"-c lock_timeout={ms} -c idle_in_transaction_session_timeout=0"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (sqlite3.SQLITE_BUSY, True),
        (517, True),  # SQLITE_BUSY_SNAPSHOT: a snapshot too old to write from
        (261, True),  # SQLITE_BUSY_RECOVERY
        (sqlite3.SQLITE_LOCKED, False),  # a table lock of this very connection
        (sqlite3.SQLITE_IOERR, False),
    ],
)
def test_every_sqlite_busy_code_is_a_lock_wait_and_nothing_else(code: int, expected: bool) -> None:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = code
    assert is_lock_timeout(error) is expected


def test_decimals_are_stored_exactly_in_json_whole_ones_as_numbers() -> None:
    values = {"whole": Decimal("5"), "zeros": Decimal("5.000"), "big": Decimal("1E+3")}
    fraction = {"seconds": Decimal("5.125"), "tiny": Decimal("1E-30")}
    assert json_dumps(values) == '{"whole":5,"zeros":5,"big":1000}'
    assert json_dumps(fraction) == '{"seconds":"5.125","tiny":"1E-30"}'
    with pytest.raises(TypeError, match="complex is not JSON serializable"):
        json_dumps({"x": 1.5j})


def test_only_the_overflow_triggers_refusal_is_an_overflow_not_any_constraint() -> None:
    """A SQLite constraint failure is an overflow only when migration 0006's trigger says
    so: a unique key taken is a conflict, never a 422 ``amount_overflow``."""
    tagged = sqlite3.IntegrityError(f"{OVERFLOW_TAG}: a sum in accounts beyond 64 bits")
    assert is_overflow(tagged)
    assert is_overflow(sa.exc.IntegrityError("UPDATE accounts", None, tagged))
    unique = sqlite3.IntegrityError("UNIQUE constraint failed: idempotency_keys.key")
    assert not is_overflow(unique)
    assert not is_overflow(sa.exc.IntegrityError("INSERT", None, unique))
    assert is_overflow(psycopg.errors.NumericValueOutOfRange("bigint out of range"))
    assert not is_overflow(psycopg.errors.UniqueViolation("duplicate key value"))


def test_a_log_line_about_the_database_is_the_first_line_of_what_the_driver_said() -> None:
    """SQLAlchemy's own text adds the statement and its parameters, and libpq's may run to
    several lines (one per address tried): the log line takes the driver's first."""
    said = psycopg.OperationalError(
        'connection to server at "10.0.0.1", port 5432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    wrapped = sa.exc.OperationalError("SELECT 1", {"secret": "s3cret"}, said)
    line = 'connection to server at "10.0.0.1", port 5432 failed: Connection refused'
    assert first_line(wrapped) == line
    assert first_line(said) == line
    assert first_line(RuntimeError()) == "RuntimeError"


@pytest.mark.parametrize(("lock", "ms"), [(0.0004, 1), (2.5, 2_500)])
def test_a_sqlite_connection_waits_for_the_write_lock_as_long_as_the_lock_timeout(
    tmp_path: Path, lock: float, ms: int
) -> None:
    """Another process's write lock is waited for ``lock`` seconds, and never not at all:
    the driver's own ``timeout`` keeps whole milliseconds only, and 0 is no wait."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}", timeouts=Timeouts(lock=lock))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == ms
    finally:
        engine.dispose()
