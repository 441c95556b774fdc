"""A SQLite ledger whose disk fills up: SQLite's own "database or disk is full", not a
simulated error. Each use case is then all or nothing: one refused leaves no trace, one
answered is kept, and retrying the refused ones with their keys once there is room again
applies each exactly once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.db import Database
from ledger.services import Ledger
from ledger.verify import verify

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def cap_pages(db: Database) -> list[int | None]:
    """Hold the write connection's file to at most ``cap[0]`` pages from its next
    transaction on (None: no cap), as a full disk would."""
    cap: list[int | None] = [None]

    @sa.event.listens_for(db._write_engine, "begin")
    def _cap(conn: sa.Connection) -> None:
        raw: Any = conn.connection.driver_connection
        raw.execute(f"PRAGMA max_page_count = {cap[0] or 1_073_741_823}")

    return cap


def pages(db: Database) -> int:
    with db.transaction(write=False) as conn:
        return int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())


def outcomes(calls: list[Callable[[], Any]]) -> list[Any]:
    """Each call's result or exception, the calls racing on 8 threads (so that SQLite's
    writers share commits, and a full disk can fail a group of them)."""

    def run(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(run, calls))


def test_a_full_disk_refuses_whole_use_cases_and_a_retry_applies_each_once(
    db: Database, ledger: Ledger
) -> None:
    ledger.open_account("u", "credit", idempotency_key="open")
    cap = cap_pages(db)
    cap[0] = pages(db) + 12
    n = 300

    def top_up(i: int) -> Callable[[], Any]:
        return lambda: ledger.top_up("u", i + 1, idempotency_key=f"t{i}", reference="r" * 190)

    first = outcomes([top_up(i) for i in range(n)])
    refused = [i for i, o in enumerate(first) if isinstance(o, Exception)]
    kept = [i for i in range(n) if i not in refused]
    assert refused, "the cap should refuse some top-ups"
    assert kept, "the cap should let some top-ups in"
    for i in refused:
        assert "database or disk is full" in str(first[i]), first[i]
    # What was answered is there, and nothing of what was refused.
    assert ledger.balance("u").balance == sum(i + 1 for i in kept)
    assert verify(db) == []

    # Room again: the same requests, with their keys, apply the refused ones once and
    # give back the kept ones as they were.
    cap[0] = None
    second = outcomes([top_up(i) for i in range(n)])
    assert not [o for o in second if isinstance(o, Exception)], second
    for i in kept:
        assert second[i].entry.id == first[i].entry.id
    assert ledger.balance("u").balance == sum(i + 1 for i in range(n))
    assert verify(db) == []
