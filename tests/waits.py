"""Waits in tests: another client holding a wallet's lock, and calls that must not wait
for ever."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest


@contextmanager
def wallet_locked(database_url: str, account_id: str) -> Iterator[None]:
    """Another client holds the lock a use case on ``account_id`` needs, until the block
    ends: PostgreSQL, the wallet's row lock; SQLite, the database's write lock (taken by
    another connection, as another process would)."""
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        lite = sqlite3.connect(path, isolation_level=None)
        try:
            lite.execute("BEGIN IMMEDIATE")
            yield
            lite.execute("ROLLBACK")
        finally:
            lite.close()
        return
    dsn = database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn) as pg:
        pg.execute("SELECT id FROM accounts WHERE external_id = %s FOR UPDATE", (account_id,))
        yield
        pg.rollback()


def timed(call: Callable[[], object], limit: float = 8) -> tuple[object, float]:
    """What ``call`` returned or raised, and how long it took; a call still waiting after
    ``limit`` seconds (an unbounded wait) fails the test instead of hanging it."""
    outcome: list[tuple[object, float]] = []

    def run() -> None:
        start = time.monotonic()
        try:
            result: object = call()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            result = exc
        outcome.append((result, time.monotonic() - start))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    if not outcome:
        pytest.fail(f"still waiting after {limit} s: the wait is not bounded")
    return outcome[0]
