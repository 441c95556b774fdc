"""The sweeper's rounds when they fail: a database that is away (a restart, an outage) is
said in one line per round, a bug with its traceback; either way the next round runs."""

from __future__ import annotations

import logging
import time

import pytest

from ledger.db import Database, Timeouts
from ledger.services import Ledger
from ledger.sweeper import Periodic, Sweeper
from pricing.catalog import CatalogSet
from tests.factories import Clock


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
