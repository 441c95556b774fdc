"""The database layer's small decisions: a lock timeout is never "no limit", a lock wait
SQLite reports with an extended code is still a lock wait, and a Decimal is stored in a
JSON column exactly."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

import pytest

from ledger.db import Timeouts, is_lock_timeout, json_dumps


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
