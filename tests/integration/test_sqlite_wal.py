"""SQLite's WAL file after a long read: a report job's snapshot, held for a minute while
the gateway writes, keeps the WAL from starting over, so it grows by every write meanwhile
(about 150 KB per authorize + capture). SQLite keeps the file at its longest for reuse;
the ledger's connections cut it back to ``WAL_SIZE_LIMIT`` once it starts over."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import db as db_module
from ledger.db import Database
from ledger.services import Ledger
from ledger.verify import verify
from pricing import default_catalogs

LIMIT = 1024 * 1024


@pytest.fixture
def small_limit_db(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Database, Path]]:
    monkeypatch.setattr(db_module, "WAL_SIZE_LIMIT", LIMIT)
    path = tmp_path / "ledger.db"
    shutil.copyfile(sqlite_template, path)
    database = Database.from_url(f"sqlite:///{path}")
    try:
        yield database, path.with_name(f"{path.name}-wal")
    finally:
        database.dispose()


def test_the_wal_a_long_snapshot_lengthened_is_cut_back_once_it_starts_over(
    small_limit_db: tuple[Database, Path],
) -> None:
    db, wal = small_limit_db
    ledger = Ledger(db, default_catalogs())
    ledger.open_account("w", "credit", idempotency_key="open")
    written: list[int] = []

    def write() -> None:
        written.append(1)
        ledger.top_up("w", 1, idempotency_key=f"k{len(written)}")

    with db.snapshot() as conn:
        seen = conn.exec_driver_sql("SELECT count(*) FROM entries").scalar_one()
        # Past SQLite's checkpoint threshold (1,000 pages, 4 MB): only the snapshot held
        # the WAL from starting over.
        while wal.stat().st_size <= 6 * LIMIT:
            write()
        assert wal.stat().st_size > 4 * 1024 * 1024
        # The snapshot still sees what it saw.
        assert conn.exec_driver_sql("SELECT count(*) FROM entries").scalar_one() == seen
    longest = wal.stat().st_size
    for _ in range(5):  # a checkpoint, then the WAL starts over
        write()
    assert wal.stat().st_size <= LIMIT < longest
    # Nothing written while the WAL was long was lost in cutting it back.
    assert ledger.balance("w").balance == len(written)
    assert verify(db) == []


def test_every_connection_is_durable_checks_foreign_keys_and_waits_its_lock_timeout(
    tmp_path: Path,
) -> None:
    """Each connection the ledger opens on SQLite, for reading or for its writes: WAL,
    ``synchronous=FULL`` (NORMAL would lose the last commits to a power cut, though
    each was answered), foreign keys enforced, the lock timeout as its busy timeout."""
    database = Database.from_url(
        f"sqlite:///{tmp_path / 'ledger.db'}", timeouts=db_module.Timeouts(lock=2.5)
    )
    try:
        seen = []
        for write in (False, True):
            with database.transaction(write=write) as conn:
                seen.append(
                    tuple(
                        conn.exec_driver_sql(f"PRAGMA {pragma}").scalar_one()
                        for pragma in (
                            "journal_mode",
                            "synchronous",
                            "foreign_keys",
                            "busy_timeout",
                            "journal_size_limit",
                        )
                    )
                )
    finally:
        database.dispose()
    assert seen == [("wal", 2, 1, 2500, db_module.WAL_SIZE_LIMIT)] * 2
