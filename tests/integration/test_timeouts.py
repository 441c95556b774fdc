"""No wait on the database is unbounded: a lock held too long, a writer queue that does not
move, a session left idle inside a transaction, a server that never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.db import Database, LockTimeout, Timeouts, is_lock_timeout
from ledger.results import HoldView
from ledger.services import Ledger
from ledger.verify import verify
from pricing.catalog import CatalogSet
from reports import jobs, statement
from reports.jobs import Reports
from tests import factories as f
from tests.factories import Clock, Traffic, key
from tests.waits import timed, wallet_locked

VEO_FAST = f.veo3_video(video_model="veo3_fast")
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@contextmanager
def _funded(database_url: str, catalogs: CatalogSet, clock: Clock, lock: float) -> Iterator[Ledger]:
    """A ledger whose lock waits last at most ``lock`` seconds, with a wallet of 1,000."""
    db = Database.from_url(database_url, timeouts=Timeouts(lock=lock))
    ledger = Ledger(db, catalogs, clock=clock)
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 1_000, idempotency_key=key())
    try:
        yield ledger
    finally:
        db.dispose()


@pytest.fixture
def funded(database_url: str, catalogs: CatalogSet, clock: Clock) -> Iterator[Ledger]:
    """A funded ledger whose lock waits last at most half a second."""
    with _funded(database_url, catalogs, clock, lock=0.5) as ledger:
        yield ledger


@pytest.fixture
def patient(database_url: str, catalogs: CatalogSet, clock: Clock) -> Iterator[Ledger]:
    """A funded ledger whose lock waits last up to 10 s: far more than a test holds a
    lock, however slow the machine, so a wait it sees end is one the lock's release
    ended, never its timeout."""
    with _funded(database_url, catalogs, clock, lock=10) as ledger:
        yield ledger


def test_a_lock_held_past_the_timeout_fails_the_request_and_changes_nothing(
    funded: Ledger, database_url: str
) -> None:
    request_key = key("auth")
    with wallet_locked(database_url, "wallet"):
        failure, waited = timed(
            lambda: funded.authorize("wallet", VEO_FAST, idempotency_key=request_key)
        )
    assert isinstance(failure, Exception), repr(failure)
    assert is_lock_timeout(failure), repr(failure)
    assert waited >= 0.4, waited
    view = funded.balance("wallet")
    assert (view.balance, view.pending) == (1_000, 0)
    assert verify(funded.db) == []
    # Retried as it was, once the lock is free: one hold, for the same key.
    hold = funded.authorize("wallet", VEO_FAST, idempotency_key=request_key)
    again = funded.authorize("wallet", VEO_FAST, idempotency_key=request_key)
    assert again.id == hold.id
    view = funded.balance("wallet")
    assert (view.balance, view.pending) == (1_000, 240)
    assert verify(funded.db) == []


def test_a_lock_freed_within_the_timeout_is_waited_for(patient: Ledger, database_url: str) -> None:
    def free_soon() -> None:
        with wallet_locked(database_url, "wallet"):
            locked.set()
            time.sleep(0.3)

    locked = threading.Event()
    holder = threading.Thread(target=free_soon)
    holder.start()
    try:
        assert locked.wait(10)
        hold, waited = timed(
            lambda: patient.authorize("wallet", VEO_FAST, idempotency_key=key()), limit=15
        )
    finally:
        holder.join(10)
    assert isinstance(hold, HoldView), repr(hold)
    assert hold.held == 240
    # It waited for the lock's release (0.3 s after it was taken), not past a timeout.
    assert waited >= 0.2, waited


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_writers_queue_for_the_write_lock_no_longer_than_the_timeout(
    database_url: str,
) -> None:
    db = Database.from_url(database_url, timeouts=Timeouts(lock=0.3))
    inside, release = threading.Event(), threading.Event()

    def stuck_writer() -> None:
        with db.transaction() as conn:
            conn.exec_driver_sql("CREATE TABLE scratch (n INTEGER)")
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=stuck_writer)
    writer.start()
    try:
        assert inside.wait(10)

        def second_writer() -> None:
            with db.transaction():
                pass

        failure, waited = timed(second_writer)
        assert isinstance(failure, LockTimeout), repr(failure)
        assert is_lock_timeout(failure)
        assert waited >= 0.25, waited
    finally:
        release.set()
        writer.join(10)
    # The writer that timed out left the queue: the stuck one committed and returned,
    # and the next writer runs.
    assert not writer.is_alive()
    with db.transaction() as conn:
        conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
    with db.transaction(write=False) as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM scratch").scalar() == 1
    db.dispose()


@postgresql_only
def test_postgresql_sessions_start_with_the_timeouts_unless_the_url_sets_them(
    database_url: str,
) -> None:
    def show(db: Database) -> tuple[str, str]:
        with db.transaction(write=False) as conn:
            lock = conn.exec_driver_sql("SHOW lock_timeout").scalar()
            idle = conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
        db.dispose()
        return str(lock), str(idle)

    assert show(Database.from_url(database_url)) == ("10s", "5min")
    configured = Timeouts(lock=1.5, idle_in_transaction=0)
    assert show(Database.from_url(database_url, timeouts=configured)) == ("1500ms", "0")
    # A setting the URL gives wins; the others still apply.
    own = database_url + "?options=-c%20lock_timeout%3D7s"
    assert show(Database.from_url(own, timeouts=configured)) == ("7s", "0")


@postgresql_only
def test_a_postgresql_connection_is_made_within_the_connect_timeout_unless_the_url_sets_it(
    database_url: str,
) -> None:
    def connect_timeout(db: Database) -> str | None:
        with db.transaction(write=False) as conn:
            raw: Any = conn.connection.driver_connection
            value: str | None = raw.info.get_parameters().get("connect_timeout")
        db.dispose()
        return value

    assert connect_timeout(Database.from_url(database_url)) == "10"
    assert connect_timeout(Database.from_url(database_url, timeouts=Timeouts(connect=3))) == "3"
    # The URL's own wins over the setting.
    own = database_url + "?connect_timeout=7"
    assert connect_timeout(Database.from_url(own, timeouts=Timeouts(connect=3))) == "7"


@postgresql_only
def test_a_transaction_left_idle_is_ended_by_the_server_and_its_locks_freed(
    funded: Ledger, database_url: str
) -> None:
    stuck = Database.from_url(database_url, timeouts=Timeouts(idle_in_transaction=1))
    waiting = Database.from_url(database_url, timeouts=Timeouts(lock=30))
    ledger = Ledger(waiting, funded.catalogs, clock=funded.clock)
    asked: list[tuple[object, float]] = []

    def stop_midway() -> None:
        with stuck.transaction() as conn:
            # A client that stops in the middle of a transaction, holding a wallet ...
            conn.exec_driver_sql("SELECT id FROM accounts WHERE external_id = 'wallet' FOR UPDATE")
            # ... while another asks for the same wallet.
            asked.append(
                timed(lambda: ledger.authorize("wallet", VEO_FAST, idempotency_key=key()), 15)
            )
        # When it wakes up, its commit fails: the server ended its session.

    try:
        with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction"):
            stop_midway()
        hold, waited = asked[0]
        assert isinstance(hold, HoldView), repr(hold)
        assert hold.held == 240
        assert waited >= 0.8, waited
        # The ended session's connection is not handed out again.
        with stuck.transaction(write=False) as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        stuck.dispose()
        waiting.dispose()
    assert funded.balance("wallet").pending == 240


@postgresql_only
@pytest.mark.parametrize("write", [True, False])
def test_a_session_the_server_ends_is_the_database_gone_not_a_bug(
    funded: Ledger, database_url: str, write: bool
) -> None:
    """A session ended under a transaction (a restart, a failover, an operator's
    ``pg_terminate_backend``) fails it with the driver's disconnect error, which the API
    answers 503 and the CLI exit 6: not with SQLAlchemy's refusal to touch the invalidated
    connection (``PendingRollbackError``, a 500) on the way out. Nothing is kept, and the
    next transaction gets a new connection."""
    admin = sa.create_engine(database_url, poolclass=sa.pool.NullPool)

    def ended_midway() -> None:
        with funded.db.transaction(write=write) as conn:
            conn.exec_driver_sql(
                "UPDATE accounts SET overdraft_limit = 5 WHERE external_id = 'wallet'"
                if write
                else "SELECT 1"
            )
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(str(pid))})")
            conn.exec_driver_sql("SELECT 1")

    try:
        with pytest.raises(sa.exc.OperationalError, match="terminating connection"):
            ended_midway()
    finally:
        admin.dispose()
    assert funded.account("wallet").overdraft_limit == 0
    assert funded.balance("wallet").balance == 1_000


def test_a_postgresql_server_that_never_answers_fails_the_connection_in_time() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts the connection; nothing ever answers
        port = silent.getsockname()[1]
        db = Database.from_url(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/ledger",
            timeouts=Timeouts(connect=2),
        )

        def connect() -> None:
            with db.transaction(write=False) as conn:
                conn.exec_driver_sql("SELECT 1")

        failure, waited = timed(connect, 20)
        db.dispose()
    assert isinstance(failure, sa.exc.OperationalError), repr(failure)
    assert waited >= 1.5, waited


@pytest.mark.parametrize(
    "timeouts",
    [{"lock": 0}, {"lock": -1}, {"connect": 0}, {"idle_in_transaction": -1}],
)
def test_timeouts_that_make_no_sense_are_refused(timeouts: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid timeouts"):
        Timeouts(**timeouts)  # type: ignore[arg-type]


#: The idle-in-transaction limit the report tests set: short, but long enough that no
#: other transaction of theirs (requesting, claiming, storing) outlasts it on a busy
#: host (0.5 s did, once, in CI). Their data is the ``traffic`` fixture's, written
#: before the limit is set.
IDLE_LIMIT = 2.0


def _batches_taking(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Report jobs read one wallet per batch, and reconcile and render each for
    ``seconds`` (sleeping) before reading the next."""
    monkeypatch.setattr(jobs, "BATCH", 1)
    build = statement.build

    def slow(*args: Any, **kwargs: Any) -> statement.Statement:
        time.sleep(seconds)
        return build(*args, **kwargs)

    monkeypatch.setattr(statement, "build", slow)


@postgresql_only
def test_a_report_working_between_its_reads_outlasts_the_idle_in_transaction_timeout(
    database_url: str, traffic: Traffic, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement job holds one snapshot and reconciles and renders each batch of wallets
    between its reads: with a short idle timeout set, that time must not end its session
    (a snapshot holds no lock for the timeout to free), while a write transaction left
    idle is still ended."""
    # The connection a transaction returned is the next one handed out (LIFO).
    limited = Timeouts(idle_in_transaction=IDLE_LIMIT)
    db = Database.from_url(database_url, timeouts=limited, pool_use_lifo=True)
    try:
        _batches_taking(monkeypatch, IDLE_LIMIT + 0.5)  # longer than the idle timeout
        reports = Reports(db, clock=clock, lease=timedelta(seconds=60))
        job, _ = reports.request(traffic.month, "csv")
        claimed = reports.claim(job.id)
        assert claimed is not None
        done = reports.run(claimed)
        assert (done.status, done.error) == ("succeeded", None)
        assert reports.output(job.id).content.count(b"\n") > len(traffic.wallets)
        show = "SELECT pg_backend_pid(), current_setting('idle_in_transaction_session_timeout')"
        with db.snapshot(idle=60) as conn:
            pid, idle = conn.exec_driver_sql(show).one()
        assert idle == "1min"
        # The longer limit was the snapshot's alone: the connection's next transaction has
        # the session's again, and a write transaction left idle is still ended.
        with db.transaction(write=False) as conn:
            assert tuple(conn.exec_driver_sql(show).one()) == (pid, "2s")

        def left_idle() -> None:
            with db.transaction() as conn:
                conn.exec_driver_sql("SELECT id FROM accounts FOR UPDATE").all()
                time.sleep(IDLE_LIMIT + 1)

        with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction"):
            left_idle()
    finally:
        db.dispose()
    # A snapshot gets no limit where the session has none (0), nor a shorter one.
    for configured, expected in ((0, "0"), (120, "2min")):
        other = Database.from_url(database_url, timeouts=Timeouts(idle_in_transaction=configured))
        try:
            with other.snapshot(idle=60) as conn:
                assert conn.exec_driver_sql(show).one()[1] == expected
        finally:
            other.dispose()


@postgresql_only
def test_a_report_idle_past_its_lease_too_is_ended_and_claimed_again(
    database_url: str, traffic: Traffic, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the job's lease as well, the server ends the snapshot's session: the job is
    left running for another worker to claim, as when the database goes away, not
    failed for good."""
    db = Database.from_url(database_url, timeouts=Timeouts(idle_in_transaction=IDLE_LIMIT))
    # A lease longer than the session's limit: the snapshot waits that long, no longer.
    lease = IDLE_LIMIT + 1
    try:
        _batches_taking(monkeypatch, lease + 1)  # past both the limit and the lease
        reports = Reports(db, clock=clock, lease=timedelta(seconds=lease))
        job, _ = reports.request(traffic.month, "json")
        claimed = reports.claim(job.id)
        assert claimed is not None
        with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction"):
            reports.run(claimed)
        assert (reports.get(job.id).status, reports.get(job.id).error) == ("running", None)
        monkeypatch.undo()
        clock.advance(seconds=lease + 1)
        again = reports.claim()
        assert again is not None
        assert (again.id, again.attempts) == (job.id, 2)
        assert reports.run(again).status == "succeeded"
    finally:
        db.dispose()
