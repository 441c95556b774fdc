"""The database's worker threads: where a serving process runs its ledger reads, and on
PostgreSQL its gateway's use cases too (``Database.submit_read``, ``Database.submit``).

A few threads, as many as configured, each use case its own transaction: answered once
committed, a failure taking back its own work only, one that queued past the lock timeout
refused unrun. (SQLite's write thread, which groups commits, is in ``test_group_commit``.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.db import THREADS, Database, LockTimeout, Timeouts
from ledger.settings import Settings
from tests.conftest import _postgres_database, postgres_or_skip

SCRATCH = "CREATE TABLE scratch (who VARCHAR(40) PRIMARY KEY)"


def scratch_db(url: str, **kwargs: Any) -> Database:
    db = Database.from_url(url, **kwargs)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(SCRATCH)
    return db


@pytest.fixture
def three(database_url: str) -> Iterator[Database]:
    """A database with three worker threads, and a scratch table."""
    db = scratch_db(database_url, threads=3)
    yield db
    db.dispose()


@pytest.fixture
def postgresql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty PostgreSQL ledger database (SQLite runs use cases on its write
    thread instead: ``test_group_commit``)."""
    with _postgres_database(postgres_or_skip(request)) as url:
        yield url


def committed(db: Database) -> set[str]:
    """What another connection sees: committed rows only."""
    with db.transaction(write=False) as conn:
        return {row[0] for row in conn.execute(sa.text("SELECT who FROM scratch"))}


def inserting(db: Database, who: str, then: Callable[[], object] = lambda: None) -> Any:
    """A use case: insert ``who`` in a transaction, then ``then`` inside it."""

    def use_case() -> str:
        with db.transaction() as conn:
            conn.execute(sa.text("INSERT INTO scratch (who) VALUES (:who)"), {"who": who})
            then()
        return who

    return use_case


def worker_prefix(db: Database) -> str:
    return "creditledger-reader" if db.is_sqlite else "creditledger-worker"


def test_reads_run_on_as_many_worker_threads_as_configured_which_dispose_ends(
    three: Database,
) -> None:
    db = three
    inserting(db, "row")()
    started = threading.Barrier(3, timeout=30)
    names: list[str] = []

    def read(fail: bool = False) -> set[str]:
        names.append(threading.current_thread().name)
        if fail:
            raise LookupError("a read's own failure")
        started.wait()  # three reads at once: every worker thread busy
        return committed(db)

    futures = [db.submit_read(read) for _ in range(9)]
    assert [f.result(30) for f in futures] == [{"row"}] * 9
    assert isinstance(db.submit_read(read, fail=True).exception(30), LookupError)
    assert len(set(names)) == 3
    assert all(name.startswith(worker_prefix(db)) for name in names)
    db.dispose()
    assert not [t for t in threading.enumerate() if t.name.startswith(worker_prefix(db))]
    assert db.submit_read(committed, db).result(30) == {"row"}  # others start


def test_on_postgresql_use_cases_run_on_the_worker_threads_each_its_own_transaction(
    postgresql_url: str,
) -> None:
    db = scratch_db(postgresql_url, threads=3)
    inside = threading.Barrier(3, timeout=30)
    names: list[str] = []

    def together() -> None:  # three transactions open at once, one per worker thread
        names.append(threading.current_thread().name)
        inside.wait()

    def fail() -> None:
        raise ValueError("this use case's own failure")

    try:
        futures = [db.submit(inserting(db, f"w{i}", together)) for i in range(3)]
        assert [f.result(30) for f in futures] == ["w0", "w1", "w2"]
        assert len(set(names)) == 3
        assert all(name.startswith("creditledger-worker") for name in names)
        # A use case's failure is its own: the others of the moment commit.
        bad = db.submit(inserting(db, "bad", fail))
        ok = db.submit(inserting(db, "ok"))
        assert isinstance(bad.exception(30), ValueError)
        assert ok.result(30) == "ok"
        assert committed(db) == {"w0", "w1", "w2", "ok"}
    finally:
        db.dispose()


def test_on_postgresql_a_use_case_queued_past_the_lock_timeout_is_not_run(
    postgresql_url: str,
) -> None:
    db = scratch_db(postgresql_url, threads=1, timeouts=Timeouts(lock=1.0))
    try:
        started, release = threading.Event(), threading.Event()

        def hold() -> None:  # until "late" has waited in the queue past the timeout
            started.set()
            assert release.wait(30)

        slow = db.submit(inserting(db, "slow", hold))
        assert started.wait(30)
        late = db.submit(inserting(db, "late"))
        time.sleep(1.2)
        release.set()
        assert slow.result(30) == "slow"
        error = late.exception(30)
        assert isinstance(error, LockTimeout)
        assert "a database thread was not free within 1 s" in str(error)
        assert committed(db) == {"slow"}
        assert db.submit(inserting(db, "on time")).result(30) == "on time"
    finally:
        db.dispose()


def test_the_worker_threads_come_from_the_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDITLEDGER_DATABASE_URL", database_url)
    assert Settings().database_threads == THREADS
    monkeypatch.setenv("CREDITLEDGER_DATABASE_THREADS", "5")
    db = Database.from_settings(Settings())
    try:
        assert db.threads == 5
    finally:
        db.dispose()
    for wrong in ("0", "-1", "1000", "two"):
        monkeypatch.setenv("CREDITLEDGER_DATABASE_THREADS", wrong)
        with pytest.raises(ValueError, match="database_threads"):
            Settings()
    with pytest.raises(ValueError, match="threads must be at least 1, not 0"):
        Database.from_url(database_url, threads=0)
