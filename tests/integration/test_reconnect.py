"""A PostgreSQL connection lost under a use case (the server restarted, crashed or ended
the session, or the network cut it) does not fail the call when the database is there
again: the use case runs once more on a new connection, its idempotency key making that
safe even when the loss came while its COMMIT was in flight and the server had
committed. The losses are real: sessions ended by the server, and a proxy that closes
the connection at the COMMIT (``tests/netcut.py``), after the server reported it done or
before the server got it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.db import Database, connection_lost
from ledger.services import Ledger
from ledger.verify import verify
from pricing.catalog import CatalogSet
from tests import factories as f
from tests.factories import Clock, key
from tests.netcut import CuttingProxy
from tests.pg import end_sessions

VEO_FAST = f.veo3_video(video_model="veo3_fast")  # 240 credits
VEO_USAGE = {"videos": 1}
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def cut(proxy: CuttingProxy, database_url: str, catalogs: CatalogSet) -> Iterator[Ledger]:
    """A ledger whose connections go through ``proxy``, with a wallet of 1,000 credits."""
    db = Database.from_url(proxy.url(database_url))
    ledger = Ledger(db, catalogs, clock=Clock())
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 1_000, idempotency_key=key())
    try:
        yield ledger
        assert verify(db) == []
    finally:
        db.dispose()


def _money(ledger: Ledger) -> tuple[int, int]:
    view = ledger.balance("wallet")
    return view.balance, view.pending


def _held(ledger: Ledger) -> str:
    return ledger.authorize("wallet", VEO_FAST, idempotency_key=key()).id


#: A use case of the wallet, made ready on a ledger: called with an idempotency key.
UseCase = Callable[[str], Any]


def _top_up(ledger: Ledger) -> UseCase:
    return lambda k: ledger.top_up("wallet", 5, idempotency_key=k)


def _authorize(ledger: Ledger) -> UseCase:
    return lambda k: ledger.authorize("wallet", VEO_FAST, idempotency_key=k)


def _capture(ledger: Ledger) -> UseCase:
    hold = _held(ledger)
    return lambda k: ledger.capture(hold, status="COMPLETED", usage=VEO_USAGE, idempotency_key=k)


def _charge(ledger: Ledger) -> UseCase:
    return lambda k: ledger.charge("wallet", VEO_FAST, idempotency_key=k)


#: Each use case and the (balance, pending) it leaves, run once.
CASES: dict[str, tuple[Callable[[Ledger], UseCase], tuple[int, int]]] = {
    "top-up": (_top_up, (1_005, 0)),
    "authorize": (_authorize, (1_000, 240)),
    "capture": (_capture, (760, 0)),
    "charge": (_charge, (760, 0)),
}


def _cut_once(
    cut: Ledger, proxy: CuttingProxy, case: str, *, replayed: bool, **moment: bool
) -> None:
    """Run the use case ``case`` with the proxy armed to cut its COMMIT at ``moment``
    (``CuttingProxy.arm``): it is answered, by a second run on a new connection that
    found the first run's commit (``replayed``) or did the work anew; asked again with
    its key, it answers the same, and the wallet holds what one run leaves."""
    ready, after = CASES[case]
    use_case = ready(cut)
    request_key = key(case)
    proxy.arm(**moment)
    answer = use_case(request_key)
    assert proxy.cuts == 1
    assert cut.db.reruns() == {"read": 0, "write": 1}
    assert answer.replayed is replayed
    assert use_case(request_key).model_dump() == answer.model_dump()
    assert _money(cut) == after


@postgresql_only
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_commit_whose_answer_was_lost_is_answered_by_running_again(
    cut: Ledger, proxy: CuttingProxy, case: str
) -> None:
    """The server commits; the connection is cut before the client hears it (where a
    client of any database cannot tell whether it committed). The use case runs again on
    a new connection and finds its own commit: the caller gets that answer, once."""
    _cut_once(cut, proxy, case, replayed=True)  # the second run found the first's commit


@postgresql_only
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_commit_the_server_never_got_runs_again_afresh(
    cut: Ledger, proxy: CuttingProxy, case: str
) -> None:
    """The other side of the same uncertainty: the connection is cut as the COMMIT is
    sent, the server never gets it and rolls back. The second run does the work anew,
    once."""
    _cut_once(cut, proxy, case, replayed=False, before=True)  # nothing had committed


@postgresql_only
@pytest.mark.parametrize("case", ["authorize", "capture", "charge"])
def test_a_session_the_server_ended_after_a_pipelined_commit_is_answered_by_running_again(
    cut: Ledger, proxy: CuttingProxy, case: str
) -> None:
    """A use case that sends its last writes and its COMMIT in one pipeline: the server
    commits, then ends the session (a restart, ``pg_terminate_backend``) before the
    pipeline's Sync, and the driver reads why before it reads the end of the connection
    (on a loaded machine, about one ended session in ten did). It cannot leave pipeline
    mode with the Sync unanswered, and nothing runs on the connection any more: closed,
    it counts as lost, and the use case runs again on a new connection and finds its own
    commit. It used to fail instead (503 over HTTP), SQLAlchemy's ROLLBACK refused with
    "PQsendQuery not allowed in pipeline mode", which it does not take for a lost
    connection."""
    _cut_once(cut, proxy, case, replayed=True, ended=True)


@postgresql_only
def test_a_connection_lost_on_the_second_run_too_is_an_error_the_same_key_settles(
    cut: Ledger, proxy: CuttingProxy
) -> None:
    """Lost twice in a row: the database is really going away, and the caller is told
    (a 503 over HTTP), as before. The first run had committed; the caller's retry with the
    same key gets its answer, and the hold is there once."""
    request_key = key("auth")
    proxy.arm(2)
    with pytest.raises(sa.exc.OperationalError) as failure:
        cut.authorize("wallet", VEO_FAST, idempotency_key=request_key)
    assert connection_lost(failure.value)
    assert proxy.cuts == 2
    answer = cut.authorize("wallet", VEO_FAST, idempotency_key=request_key)
    assert answer.replayed
    assert _money(cut) == (1_000, 240)


@postgresql_only
@pytest.mark.parametrize("call", ["write", "read"])
def test_sessions_the_server_ended_do_not_fail_the_call_after_it(
    database_url: str, catalogs: CatalogSet, call: str
) -> None:
    """Every pooled connection dead (a restart, a failover, ``pg_terminate_backend``):
    the next write or read finds its connection lost before anything was sent to commit,
    and runs again on a new one, from scratch."""
    db = Database.from_url(database_url)
    ledger = Ledger(db, catalogs, clock=Clock())
    try:
        ledger.open_account("wallet", "credit", idempotency_key=key())
        ledger.top_up("wallet", 1_000, idempotency_key=key())
        warm = [db.submit_read(ledger.balance, "wallet") for _ in range(8)]
        assert all(f.result().balance == 1_000 for f in warm)
        assert end_sessions(database_url) >= 1
        if call == "write":
            hold = db.submit(ledger.authorize, "wallet", VEO_FAST, idempotency_key=key())
            assert not hold.result().replayed  # run afresh
            assert _money(ledger) == (1_000, 240)
        else:
            assert db.submit_read(ledger.balance, "wallet").result().balance == 1_000
        assert verify(db) == []
    finally:
        db.dispose()


def test_only_a_postgresql_connection_counts_as_lost(tmp_path: Path) -> None:
    """On SQLite, whose connection is a file, no error counts as a lost connection, so no
    use case runs again: a commit that failed fails its whole group (``CommitFailed``)."""
    lost = sa.exc.OperationalError("COMMIT", None, Exception("gone"), connection_invalidated=True)
    sqlite = Database.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    postgres = Database.from_url("postgresql+psycopg://nobody@127.0.0.1:9/none")
    try:
        assert connection_lost(lost)
        assert not sqlite.lost(lost)
        assert postgres.lost(lost)
        assert not postgres.lost(sa.exc.OperationalError("COMMIT", None, Exception("busy")))
    finally:
        sqlite.dispose()
        postgres.dispose()


def test_only_a_lost_connection_runs_work_again_and_only_once() -> None:
    """A read or a repeatable write runs once more after its connection was lost, and
    is counted; any other database error (a lock wait, a constraint) is the caller's at
    once: running it again would only wait or fail again."""
    lost = sa.exc.OperationalError("SELECT", None, Exception("gone"), connection_invalidated=True)
    busy = sa.exc.OperationalError("SELECT", None, Exception("lock timeout"))
    db = Database.from_url("postgresql+psycopg://nobody@127.0.0.1:9/none")

    def failing(*errors: Exception) -> tuple[Callable[[], str], list[int]]:
        calls = [0]

        def work() -> str:
            calls[0] += 1
            if calls[0] <= len(errors):
                raise errors[calls[0] - 1]
            return "done"

        return work, calls

    try:
        work, calls = failing(busy)
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            db.reading(work)
        assert calls == [1]
        assert db.reruns() == {"read": 0, "write": 0}

        work, calls = failing(lost)
        assert db.repeatable(work) == "done"
        assert calls == [2]
        assert db.reruns() == {"read": 0, "write": 1}

        work, calls = failing(lost, lost)
        with pytest.raises(sa.exc.OperationalError, match="gone"):
            db.reading(work)
        assert calls == [2]
        assert db.reruns() == {"read": 1, "write": 1}
    finally:
        db.dispose()
