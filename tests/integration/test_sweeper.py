"""The sweeper's rounds: a backlog is worked off a batch at a time, and a round that fails
(a database that is away, said in one line per round; a bug, with its traceback) is
followed by the next."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from ledger import sweeper
from ledger.db import Database, Timeouts
from ledger.models import holds, idempotency
from ledger.services import Ledger
from ledger.sweeper import Periodic, Sweeper
from ledger.verify import verify
from pricing.catalog import CatalogSet
from tests import factories as f
from tests.factories import Clock, key


def _rounds(periodic: Periodic, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The sweeper's records of at least two rounds."""
    with caplog.at_level(logging.WARNING, logger="creditledger.sweeper"):
        periodic.start()
        deadline = time.monotonic() + 30
        while len(caplog.records) < 2:
            assert time.monotonic() < deadline, "the rounds did not run"
            time.sleep(0.02)
        periodic.stop()
    return list(caplog.records)


def test_a_database_that_is_away_is_one_line_per_round(
    catalogs: CatalogSet, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on the discard port: each round's connection is refused.
    db = Database.from_url(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", timeouts=Timeouts(connect=2)
    )
    try:
        records = _rounds(Sweeper(Ledger(db, catalogs, clock=Clock()), 0.05), caplog)
    finally:
        db.dispose()
    for record in records:
        assert record.levelno == logging.WARNING
        assert record.exc_info is None
        message = record.getMessage()
        assert "the database is unavailable" in message
        assert "\n" not in message  # the driver's first line, not the statement after


class _Broken(Periodic):
    name = "broken"

    def run_once(self) -> object:
        raise ValueError("a bug")


def test_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in _rounds(_Broken(0.05), caplog):
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)


class _Counted(Periodic):
    name = "counted"

    def __init__(self, interval: float) -> None:
        super().__init__(interval)
        self.rounds = 0

    def run_once(self) -> object:
        self.rounds += 1
        return self.rounds


def _until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, "the rounds did not run"
        time.sleep(0.01)


def test_a_job_stopped_and_started_again_runs_its_rounds_again() -> None:
    """A stop ends the thread (stopping twice is harmless); a start after it runs the
    rounds again rather than a thread that sees the old stop and ends at once."""
    periodic = _Counted(0.01)
    periodic.start()
    _until(lambda: periodic.rounds >= 2)
    periodic.stop()
    periodic.stop()
    stopped_at = periodic.rounds
    time.sleep(0.05)
    assert periodic.rounds == stopped_at
    periodic.start()
    _until(lambda: periodic.rounds >= stopped_at + 2)
    periodic.stop()


def test_rounds_are_an_interval_apart_and_a_stop_ends_the_wait() -> None:
    """After a round the job waits its interval before the next one (not a busy loop over
    the database), and a stop during that wait ends it at once rather than at its end."""
    periodic = _Counted(3600)
    periodic.start()
    _until(lambda: periodic.rounds >= 1)
    time.sleep(0.2)
    assert periodic.rounds == 1
    started = time.monotonic()
    periodic.stop(timeout=60)
    assert time.monotonic() - started < 30  # not the hour's wait
    assert periodic._thread is None
    assert periodic.rounds == 1


class _Slow(Periodic):
    """A round that takes a while: it ends only once told to, and says so."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__(3600)
        self.started = threading.Event()
        self.may_end = threading.Event()
        self.ended = False

    def run_once(self) -> object:
        self.started.set()
        self.may_end.wait(30)
        time.sleep(0.2)
        self.ended = True
        return None


def test_a_stop_waits_for_the_round_in_flight() -> None:
    """A stop returns once the round under way has ended, so that a server shutting down
    has no round still writing to the database when its process exits."""
    periodic = _Slow()
    periodic.start()
    assert periodic.started.wait(30)
    thread = periodic._thread
    assert thread is not None
    periodic.may_end.set()
    periodic.stop()
    assert periodic.ended
    assert not thread.is_alive()


def test_a_round_works_off_a_backlog_a_batch_at_a_time(
    db: Database, catalogs: CatalogSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More holds due than a batch holds are all expired in the one round; idempotency
    keys past their retention are deleted at most ``PRUNE_BATCHES`` batches a round (so a
    backlog never delays hold expiry), the rest in the rounds after."""
    monkeypatch.setattr(sweeper, "BATCH", 2)
    monkeypatch.setattr(sweeper, "PRUNE_BATCHES", 2)
    clock = Clock()
    ledger = Ledger(db, catalogs, clock=clock)
    ledger.idempotency_retention = timedelta(hours=1)
    ledger.open_account("busy", "credit", idempotency_key=key())
    ledger.top_up("busy", 5_000, idempotency_key=key())
    for _ in range(5):
        ledger.authorize("busy", f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
    with db.transaction(write=False) as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(idempotency)).scalar_one()
    assert stored == 7  # the opening, the top-up and the five authorizations
    clock.advance(hours=2)  # every hold past its 15 minutes, every key past its hour
    rounds = Sweeper(ledger, 60)
    first = rounds.run_once()
    assert (first.holds_expired, first.keys_pruned) == (5, 4)
    assert ledger.account("busy").pending == 0
    with db.transaction(write=False) as conn:
        statuses = conn.execute(sa.select(holds.c.status)).scalars().all()
    assert statuses == ["expired"] * 5
    second = rounds.run_once()
    assert (second.holds_expired, second.keys_pruned) == (0, 3)
    assert rounds.run_once().keys_pruned == 0
    assert verify(db) == []


def test_a_round_that_did_something_says_what_in_one_line(
    db: Database, catalogs: CatalogSet, caplog: pytest.LogCaptureFixture
) -> None:
    """For the operator's log: what a round released, expired, granted and deleted, as
    text and as fields (a JSON log); a round with nothing to do says nothing."""
    clock = Clock()
    ledger = Ledger(db, catalogs, clock=clock)
    ledger.open_account("quiet", "credit", idempotency_key=key())
    ledger.top_up("quiet", 1_000, idempotency_key=key())
    ledger.authorize("quiet", f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
    rounds = Sweeper(ledger, 60)
    with caplog.at_level(logging.INFO, logger="creditledger.sweeper"):
        rounds.run_once()  # nothing due yet
        assert caplog.records == []
        clock.advance(hours=1)
        rounds.run_once()
    [line] = caplog.records
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        "swept: 1 lapsed hold(s) released, 0 grant(s) expired, 0 monthly allocation(s) "
        "granted, 0 idempotency key(s) deleted"
    )
    counts = ("holds_expired", "grants_expired", "allocations_granted", "keys_pruned")
    assert [getattr(line, name, None) for name in counts] == [1, 0, 0, 0]
