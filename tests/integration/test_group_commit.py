"""SQLite's group commit: writers queued behind a running writer share its commit.

Each writer's work is all or nothing and is durable when its transaction returns: a
writer that fails takes only its own work back, and a group whose commit fails fails
every writer in it, leaving nothing behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.db import CommitFailed, Database, LockTimeout, Timeouts


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'group.db'}")
    with database.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
    yield database
    database.dispose()


def committed(db: Database) -> set[str]:
    """What another connection sees: committed rows only."""
    with db.transaction(write=False) as conn:
        return {row[0] for row in conn.exec_driver_sql("SELECT who FROM scratch")}


def commits(db: Database) -> list[int]:
    """A counter of the write connection's commits."""
    seen = [0]

    @sa.event.listens_for(db._write_engine, "commit")
    def _count(_conn: Any) -> None:
        seen[0] += 1

    return seen


def writer(db: Database, who: str, then: Callable[[Any], None] = lambda conn: None) -> Any:
    """A write transaction inserting ``who``, then doing ``then`` inside it."""

    def run() -> str:
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES (?)", (who,))
            then(conn)
        # Returned: the row must already be durable and visible to everyone.
        assert who in committed(db), f"{who} returned before its commit"
        return who

    return run


def behind_a_slow_writer(
    db: Database,
    followers: list[Callable[[], Any]],
    then: Callable[[Any], None] = lambda conn: None,
) -> list[Any]:
    """Start a first writer (doing ``then`` after its insert); once it is inside its
    transaction start the followers, and let it finish only when every follower queues
    behind it. The outcomes, first's first."""
    inside = threading.Event()

    def wait_for_followers(conn: Any) -> None:
        then(conn)
        inside.set()
        deadline = time.monotonic() + 30
        while db._queued < len(followers):
            assert time.monotonic() < deadline, "the followers never queued"
            time.sleep(0.005)

    with ThreadPoolExecutor(max_workers=1 + len(followers)) as pool:
        first = pool.submit(outcome, writer(db, "first", wait_for_followers))
        assert inside.wait(30)
        rest = [pool.submit(outcome, follower) for follower in followers]
        return [first.result(), *(f.result() for f in rest)]


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
        return exc


def test_writers_queued_behind_a_writer_share_its_commit(db: Database) -> None:
    count = commits(db)
    followers = [writer(db, f"w{i}") for i in range(8)]
    outcomes = behind_a_slow_writer(db, followers)
    assert outcomes == ["first", *(f"w{i}" for i in range(8))]
    assert committed(db) == {"first", *(f"w{i}" for i in range(8))}
    # Not one commit per writer: the eight followers queued while the first ran.
    assert count[0] == 1, count


def traced(db: Database) -> list[str]:
    """Every statement the write connection runs, the driver's own included."""
    statements: list[str] = []

    @sa.event.listens_for(db._write_engine, "connect")
    def _trace(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(statements.append)

    return statements


def test_a_lone_writer_commits_at_once_without_a_savepoint(db: Database) -> None:
    statements = traced(db)
    assert writer(db, "alone")() == "alone"
    assert any(s.startswith("INSERT INTO scratch") for s in statements), statements
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements


def test_followers_each_run_in_a_savepoint(db: Database) -> None:
    statements = traced(db)
    behind_a_slow_writer(db, [writer(db, "w0"), writer(db, "w1")])
    assert len([s for s in statements if s.startswith("SAVEPOINT")]) == 2, statements
    assert len([s for s in statements if s.startswith("RELEASE")]) == 2, statements


def test_a_failing_writer_takes_back_only_its_own_work(db: Database) -> None:
    def fail(_conn: Any) -> None:
        raise ValueError("this writer's own failure")

    followers = [writer(db, "ok-1"), writer(db, "bad", fail), writer(db, "ok-2")]
    outcomes = behind_a_slow_writer(db, followers)
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failures) == 1, outcomes
    assert isinstance(failures[0], ValueError)
    assert committed(db) == {"first", "ok-1", "ok-2"}


def test_a_failing_first_writer_rolls_back_and_the_next_commits(db: Database) -> None:
    def fail(_conn: Any) -> None:
        raise ValueError("first writer fails")

    with pytest.raises(ValueError, match="first writer fails"):
        writer(db, "first", fail)()
    assert writer(db, "next")() == "next"
    assert committed(db) == {"next"}


def fail_first_commit(db: Database, error: BaseException) -> None:
    """Make the write connection's next commit raise ``error`` (before SQLite commits)."""
    pending = [True]

    @sa.event.listens_for(db._write_engine, "commit")
    def _fail(_conn: Any) -> None:
        if pending[0]:
            pending[0] = False
            raise error


def test_a_commit_that_fails_fails_every_writer_of_the_group(db: Database) -> None:
    fail_first_commit(db, sa.exc.OperationalError("COMMIT", None, Exception("disk I/O error")))

    followers = [writer(db, f"w{i}") for i in range(4)]
    outcomes = behind_a_slow_writer(db, followers)
    assert all(isinstance(o, CommitFailed) for o in outcomes), outcomes
    assert "disk I/O error" in str(outcomes[0])
    assert committed(db) == set()
    # The write connection recovers: the next group commits.
    assert writer(db, "after")() == "after"
    assert committed(db) == {"after"}


class Interrupted(BaseException):
    """Not an Exception: what a KeyboardInterrupt or SystemExit is to the group."""


def test_a_commit_interrupted_by_a_base_exception_fails_every_writer(db: Database) -> None:
    fail_first_commit(db, Interrupted("interrupted during COMMIT"))

    def guarded(call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            try:
                return call()
            except Interrupted as exc:  # the writer that was committing for the group
                return exc

        return run

    followers = [guarded(writer(db, f"w{i}")) for i in range(4)]
    outcomes = behind_a_slow_writer(db, followers)
    # Nobody is told its work is committed: the committing writer sees the interruption,
    # every other writer of the group CommitFailed.
    assert all(isinstance(o, CommitFailed | Interrupted) for o in outcomes), outcomes
    assert sum(isinstance(o, Interrupted) for o in outcomes) == 1, outcomes
    assert committed(db) == set()
    assert writer(db, "after")() == "after"
    assert committed(db) == {"after"}


def _rollback_everything(conn: Any) -> None:
    conn.exec_driver_sql("ROLLBACK")


def _release_then_fail(conn: Any) -> None:
    conn.exec_driver_sql("RELEASE creditledger_writer")
    raise ValueError("failed after releasing its savepoint")


@pytest.mark.parametrize(
    "misbehave", [_rollback_everything, _release_then_fail], ids=["rollback", "release-then-fail"]
)
def test_a_writer_whose_work_cannot_be_taken_back_alone_fails_the_whole_group(
    db: Database, misbehave: Callable[[Any], None]
) -> None:
    """A writer that ended the group's transaction (a stray ROLLBACK), or that released
    its own savepoint and then failed (its work merged into the group's transaction):
    the group must not commit, nor report as committed what it lost."""
    followers = [writer(db, "ok"), writer(db, "rogue", misbehave)]
    first, ok, rogue = behind_a_slow_writer(db, followers)
    assert isinstance(first, CommitFailed)
    assert isinstance(rogue, Exception)
    # "ok" shared the lost group (failed) or queued after it (committed): never reported
    # committed without being so.
    assert (ok == "ok") == ("ok" in committed(db)), ok
    assert committed(db) <= {"ok"}
    assert writer(db, "after")() == "after"


def _cap_pages(conn: Any, more: int) -> None:
    """Hold the file to ``more`` pages beyond its size now, as a full disk would."""
    raw = conn.connection.driver_connection
    (pages,) = raw.execute("PRAGMA page_count").fetchone()
    raw.execute(f"PRAGMA max_page_count = {pages + more}")


def test_a_writer_that_fills_the_disk_fails_alone_or_with_its_whole_group(
    db: Database,
) -> None:
    """SQLite's own "database or disk is full" (not a simulated error) in a writer that
    shares a group: SQLite undoes that statement or the whole transaction, as it sees
    fit. Either way no writer is told its work committed unless it did, the full one's
    work is gone, and once there is room the write connection commits again."""

    def fill(conn: Any) -> None:
        conn.exec_driver_sql("INSERT INTO scratch (who) VALUES (?)", ("x" * 1_000_000,))

    followers = [writer(db, "ok-1"), writer(db, "full", fill), writer(db, "ok-2")]
    outcomes = behind_a_slow_writer(db, followers, then=lambda conn: _cap_pages(conn, 2))
    full = outcomes[2]
    assert isinstance(full, sa.exc.OperationalError), outcomes
    # Each writer that failed is told why: the disk, not a savepoint SQLite took back
    # with the transaction.
    for failed in (o for o in outcomes if isinstance(o, Exception)):
        assert "database or disk is full" in str(failed), outcomes
    kept = committed(db)
    for who, result in zip(["first", "ok-1", "ok-2"], outcomes[:2] + outcomes[3:], strict=True):
        assert (result == who) == (who in kept), (who, result, kept)
    assert "x" * 1_000_000 not in kept
    assert writer(db, "after", lambda conn: _cap_pages(conn, 100_000))() == "after"
    assert "after" in committed(db)


def test_a_lone_writer_that_ends_the_transaction_is_not_told_it_committed(db: Database) -> None:
    """Its insert went with the ROLLBACK: a COMMIT now would commit nothing and succeed."""
    with pytest.raises(CommitFailed, match="ended before its commit"):
        writer(db, "rogue", _rollback_everything)()
    assert committed(db) == set()
    assert writer(db, "after")() == "after"
    assert committed(db) == {"after"}


def test_groups_are_bounded(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.db.GROUP_LIMIT", 2)
    count = commits(db)
    followers = [writer(db, f"w{i}") for i in range(5)]
    outcomes = behind_a_slow_writer(db, followers)
    assert outcomes == ["first", *(f"w{i}" for i in range(5))]
    assert count[0] == 3, count  # six writers, two per commit


def checkouts(db: Database) -> list[int]:
    """A counter of the write connection's checkouts from its pool."""
    seen = [0]

    @sa.event.listens_for(db._write_engine, "checkout")
    def _count(*_args: Any) -> None:
        seen[0] += 1

    return seen


def test_the_write_connection_is_kept_from_one_group_to_the_next(db: Database) -> None:
    count = checkouts(db)
    for i in range(5):
        assert writer(db, f"w{i}")() == f"w{i}"
    assert count[0] == 1
    assert committed(db) == {f"w{i}" for i in range(5)}


def connections(db: Database) -> list[Any]:
    """Every DBAPI connection the write engine opens."""
    opened: list[Any] = []

    @sa.event.listens_for(db._write_engine, "connect")
    def _opened(dbapi_conn: Any, _record: Any) -> None:
        opened.append(dbapi_conn)

    return opened


def test_a_failed_commit_replaces_the_write_connection(db: Database) -> None:
    count, opened = checkouts(db), connections(db)
    fail_first_commit(db, sa.exc.OperationalError("COMMIT", None, Exception("disk I/O error")))

    with pytest.raises(CommitFailed):
        writer(db, "lost")()
    # Its state unknown, the connection was discarded; the next group opens another
    # and keeps that one.
    assert writer(db, "after")() == "after"
    assert writer(db, "again")() == "again"
    assert (count[0], len(opened)) == (2, 2)
    assert committed(db) == {"after", "again"}


def test_a_failed_begin_replaces_the_write_connection(db: Database) -> None:
    """A BEGIN that fails leaves the kept connection in a state no one knows: discarded,
    so that the next group does not fail on it too, and every group after."""
    count, opened = checkouts(db), connections(db)
    assert writer(db, "before")() == "before"
    assert db._writer_conn is not None
    # Left inside a transaction behind SQLAlchemy's back: its next BEGIN fails.
    raw: Any = db._writer_conn.connection.driver_connection
    raw.execute("BEGIN")
    with pytest.raises(sa.exc.OperationalError, match="within a transaction"):
        writer(db, "refused")()
    assert writer(db, "after")() == "after"
    assert (count[0], len(opened)) == (2, 2)
    assert committed(db) == {"before", "after"}


@pytest.mark.parametrize("end", ["close", "invalidate"])
def test_a_write_connection_a_writer_closed_is_replaced(db: Database, end: str) -> None:
    """A writer that closed or invalidated the group's connection (a bug, or a driver
    error SQLAlchemy takes for a disconnect) fails alone: the next group opens on a new
    connection rather than failing on that one, and every group after."""

    def end_it(conn: Any) -> None:
        getattr(conn, end)()

    with pytest.raises(sa.exc.SQLAlchemyError):
        writer(db, "ended", end_it)()
    assert writer(db, "after")() == "after"
    assert committed(db) == {"after"}


def test_dispose_closes_the_kept_write_connection(db: Database) -> None:
    opened = connections(db)
    assert writer(db, "w")() == "w"
    db.dispose()
    with pytest.raises(Exception, match="closed"):
        opened[0].execute("SELECT 1")


# The write thread (``Database.submit``): whole use cases queued for one thread, whose
# transactions share a group while more wait, each answered once its commit is durable.


def inserting(db: Database, who: str, then: Callable[[Any], object] = lambda conn: None) -> Any:
    """A use case for the write thread: insert ``who`` in a transaction, then ``then``."""

    def use_case() -> str:
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES (?)", (who,))
            then(conn)
        return who

    return use_case


def queued_behind(db: Database, use_cases: list[Callable[[], Any]]) -> list[Future[Any]]:
    """Queue ``use_cases`` on the write thread while a first use case holds it, then let
    that one finish; the futures of the first ("first") and of ``use_cases``."""
    release = threading.Event()

    def hold(_conn: Any) -> None:
        assert release.wait(30)

    futures = [db.submit(inserting(db, "first", hold))]
    futures += [db.submit(use_case) for use_case in use_cases]
    release.set()
    return futures


def outcomes_of(futures: list[Future[Any]]) -> list[Any]:
    return [f.exception(30) or f.result() for f in futures]


def test_the_write_thread_answers_use_cases_once_their_shared_commit_is_durable(
    db: Database,
) -> None:
    count = commits(db)
    seen_at_answer: list[set[str]] = []
    futures = queued_behind(db, [inserting(db, f"q{i}") for i in range(8)])
    for future in futures:
        future.add_done_callback(lambda _f: seen_at_answer.append(committed(db)))
    assert outcomes_of(futures) == ["first", *(f"q{i}" for i in range(8))]
    # A future's callbacks run just after its result is set: wait for the last ones.
    deadline = time.monotonic() + 30
    while len(seen_at_answer) < 9 and time.monotonic() < deadline:
        time.sleep(0.001)
    # One commit for the nine, and none of them answered before it.
    assert count[0] == 1, count
    everyone = {"first", *(f"q{i}" for i in range(8))}
    assert seen_at_answer == [everyone] * 9


def test_a_use_case_failing_on_the_write_thread_takes_back_only_its_own_work(
    db: Database,
) -> None:
    def fail(_conn: Any) -> None:
        raise ValueError("this use case's own failure")

    futures = queued_behind(db, [inserting(db, "ok-1"), inserting(db, "bad", fail)])
    futures.append(db.submit(lambda: (_ for _ in ()).throw(KeyError("before any write"))))
    futures.append(db.submit(inserting(db, "ok-2")))
    first, ok1, bad, early, ok2 = outcomes_of(futures)
    assert (first, ok1, ok2) == ("first", "ok-1", "ok-2")
    assert isinstance(bad, ValueError)
    assert isinstance(early, KeyError)
    assert committed(db) == {"first", "ok-1", "ok-2"}


def test_a_failed_commit_fails_every_use_case_of_the_write_threads_group(db: Database) -> None:
    fail_first_commit(db, sa.exc.OperationalError("COMMIT", None, Exception("disk I/O error")))
    outcomes = outcomes_of(queued_behind(db, [inserting(db, f"q{i}") for i in range(4)]))
    assert all(isinstance(o, CommitFailed) for o in outcomes), outcomes
    assert "disk I/O error" in str(outcomes[0])
    assert committed(db) == set()
    assert db.submit(inserting(db, "after")).result(30) == "after"
    assert committed(db) == {"after"}


def test_a_commit_interrupted_on_the_write_thread_fails_every_use_case_waiting_on_it(
    db: Database,
) -> None:
    """The group's commit, made once the queue ran dry (after a use case that wrote
    nothing), interrupted by a BaseException: every use case waiting on it is told it
    failed, none is left unanswered, and the thread goes on."""
    fail_first_commit(db, Interrupted("interrupted during COMMIT"))
    futures = queued_behind(db, [inserting(db, "q0"), inserting(db, "q1"), lambda: "no write"])
    outcomes = outcomes_of(futures)
    assert all(isinstance(o, CommitFailed) for o in outcomes), outcomes
    assert committed(db) == set()
    assert db.submit(inserting(db, "after")).result(30) == "after"
    assert committed(db) == {"after"}


def test_a_use_case_of_several_transactions_is_answered_once_the_last_is_durable(
    db: Database,
) -> None:
    """A use case whose first transaction committed at once (nothing else queued) and
    whose second joined a group left open (another use case queued meanwhile): answered
    once that group commits, not when the first did."""
    between, resume = threading.Event(), threading.Event()
    seen_at_answer: list[set[str]] = []

    def use_case() -> str:
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('alone')")
        between.set()
        assert resume.wait(30)
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('grouped')")
        return "both"

    future = db.submit(use_case)
    future.add_done_callback(lambda _f: seen_at_answer.append(committed(db)))
    assert between.wait(30)
    assert committed(db) == {"alone"}
    after = db.submit(inserting(db, "after"))
    resume.set()
    assert [future.result(30), after.result(30)] == ["both", "after"]
    deadline = time.monotonic() + 30
    while not seen_at_answer and time.monotonic() < deadline:
        time.sleep(0.001)
    assert seen_at_answer == [{"alone", "grouped", "after"}]


def test_a_use_case_whose_later_transaction_fails_to_commit_is_told_so(db: Database) -> None:
    """Its first transaction committed at once (nothing else queued), its second's
    commit failed: the use case is answered with that failure, not with its result, though
    its first group did commit."""

    def use_case() -> str:
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('one')")
        fail_first_commit(db, sa.exc.OperationalError("COMMIT", None, Exception("disk full")))
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('two')")
        return "both"

    failed = db.submit(use_case).exception(30)
    assert isinstance(failed, CommitFailed), failed
    assert "disk full" in str(failed)
    assert committed(db) == {"one"}


def test_a_use_case_its_caller_gave_up_on_before_it_started_is_not_run(db: Database) -> None:
    """Cancelled while queued (a client that went away): nothing of it is written, and
    the thread goes on with the rest."""
    release = threading.Event()
    first = db.submit(inserting(db, "first", lambda _conn: release.wait(30)))
    given_up = db.submit(inserting(db, "given up"))
    rest = db.submit(inserting(db, "rest"))
    assert given_up.cancel()
    release.set()
    assert [first.result(30), rest.result(30)] == ["first", "rest"]
    assert given_up.cancelled()
    assert committed(db) == {"first", "rest"}
    assert db.submit(inserting(db, "after")).result(30) == "after"


def test_a_settled_transaction_commits_before_it_returns_on_the_write_thread(
    db: Database,
) -> None:
    def use_case() -> tuple[set[str], set[str]]:
        with db.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('deferred')")
        deferred = committed(db)
        with db.transaction(settle=True) as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('settled')")
        return deferred, committed(db)

    release = threading.Event()
    blocker = db.submit(inserting(db, "first", lambda _conn: release.wait(30)))
    future = db.submit(use_case)
    db.submit(inserting(db, "later"))  # queued: the group would stay open for it
    release.set()
    assert blocker.result(30) == "first"
    deferred, settled = future.result(30)
    assert "deferred" not in deferred  # returned before its group committed...
    assert {"deferred", "settled"} <= settled  # ...which the settled one committed


def test_a_settled_transaction_whose_commit_fails_raises_there_on_the_write_thread(
    db: Database,
) -> None:
    """What follows a settled transaction relies on its commit (the ledger remembers the
    ids of the system accounts it made, which a rolled-back insert would hand to the next
    rows). So a failed commit is raised where the transaction ends: nothing after it runs."""
    fail_first_commit(db, sa.exc.OperationalError("COMMIT", None, Exception("disk I/O error")))
    reached: list[set[str]] = []

    def use_case() -> str:
        with db.transaction(settle=True) as conn:
            conn.exec_driver_sql("INSERT INTO scratch (who) VALUES ('settled')")
        reached.append(committed(db))
        return "went on"

    failed = db.submit(use_case).exception(30)
    assert isinstance(failed, CommitFailed), failed
    assert "disk I/O error" in str(failed)
    assert reached == []
    assert committed(db) == set()
    assert db.submit(use_case).result(30) == "went on"
    assert reached == [{"settled"}]


def test_a_use_case_queued_past_the_lock_timeout_is_not_run(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'slow.db'}", timeouts=Timeouts(lock=1.0))
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
    try:
        started = threading.Event()

        def hold(_conn: Any) -> None:  # until "late" has waited past the timeout
            started.set()
            time.sleep(1.5)

        slow = db.submit(inserting(db, "slow", hold))
        assert started.wait(30)
        late = db.submit(inserting(db, "late"))
        assert slow.result(30) == "slow"
        assert isinstance(late.exception(30), LockTimeout)
        assert committed(db) == {"slow"}
    finally:
        db.dispose()


def test_dispose_answers_what_is_queued_and_stops_the_write_thread(db: Database) -> None:
    release = threading.Event()
    futures = [db.submit(inserting(db, "first", lambda _conn: release.wait(30)))]
    futures += [db.submit(inserting(db, f"q{i}")) for i in range(3)]
    threading.Timer(0.2, release.set).start()
    db.dispose()
    assert outcomes_of(futures) == ["first", "q0", "q1", "q2"]
    assert not [t for t in threading.enumerate() if t.name == "creditledger-writer"]
    # Disposed, the database can still be used: a new write thread starts.
    assert db.submit(inserting(db, "again")).result(30) == "again"
    assert committed(db) == {"first", "q0", "q1", "q2", "again"}
