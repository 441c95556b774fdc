"""A SQLite ledger file deleted, moved or replaced while a process has it open.

The process's connections keep the file they opened, gone from its path: a write to it
would be answered as done and lost when the process restarts, and a new connection would
open (or create) whatever file is at the path now. Every transaction is refused instead
(``FileReplaced``, a database error: HTTP 503), nothing written, until the process
restarts; a retry with the same idempotency key then has its one effect.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.db import CommitFailed, Database, FileReplaced, LedgerSavedBeside, is_file_replaced
from ledger.services import Ledger
from ledger.verify import verify
from pricing import default_catalogs


@pytest.fixture
def path(sqlite_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    shutil.copyfile(sqlite_template, path)
    return path


@pytest.fixture
def db(path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{path}")
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def ledger(db: Database) -> Ledger:
    ledger = Ledger(db, default_catalogs())
    ledger.open_account("acme", "credit", idempotency_key="open")
    ledger.top_up("acme", 100, idempotency_key="first")
    return ledger


def _keep(path: Path) -> Path:
    """A second name of ``path``'s file, holding all of it (its WAL checkpointed and
    emptied first): the file to put back, as an operator would a backup."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    kept = path.with_name("kept.db")
    os.link(path, kept)
    return kept


def _put_back(kept: Path, path: Path) -> None:
    """``kept`` at ``path`` again, as a stopped server's file is restored: with no WAL or
    shared-memory file of another beside it."""
    for name in (f"{path.name}-wal", f"{path.name}-shm"):
        path.with_name(name).unlink(missing_ok=True)
    os.replace(kept, path)


def _refused(exc: pytest.ExceptionInfo[sa.exc.OperationalError]) -> None:
    assert is_file_replaced(exc.value), exc.value
    said = str(exc.value.orig)
    assert "was deleted, moved or replaced since this process opened it" in said, said
    assert "nothing was written; restart the process" in said, said


def _refuses(call: Callable[[], object]) -> None:
    """``call`` (a read or a write of the ledger) is refused as ``FileReplaced``."""
    with pytest.raises(sa.exc.OperationalError) as caught:
        call()
    _refused(caught)


def _saved(path: Path) -> list[Path]:
    """The copies the process saved of its file, found gone from ``path``."""
    return sorted(path.parent.glob(f"{path.name}.gone-*"))


def test_a_deleted_file_refuses_writes_and_reads_and_is_saved_whole(
    path: Path, db: Database, ledger: Ledger
) -> None:
    """``rm ledger.db*`` under a running process: it holds the last link of the file
    (the wallet and its top-up are in the WAL, deleted too). Found gone, a copy of it is
    saved beside the path, once; everything is refused, and the copy, put back, is the
    ledger as it was."""
    assert path.with_name(f"{path.name}-wal").stat().st_size > 0
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        path.with_name(name).unlink()
    _refuses(lambda: ledger.top_up("acme", 50, idempotency_key="second"))
    _refuses(lambda: ledger.balance("acme"))
    # Asked again, and by a connection opened since (which found no file, so SQLite
    # made an empty one): still refused, not an empty ledger.
    _refuses(lambda: ledger.top_up("acme", 50, idempotency_key="second"))
    saved = _saved(path)
    assert len(saved) == 1, saved
    assert re.fullmatch(rf"{path.name}\.gone-\d{{8}}T\d{{6}}Z-{os.getpid()}", saved[0].name)
    db.dispose()
    with closing(sqlite3.connect(path)) as made:  # by SQLite, for the new connection
        assert made.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    # The copy put at the path and the process restarted: the ledger as it was, the
    # top-up refused never written, and its retry has its one effect.
    _put_back(saved[0], path)
    again = Database.from_url(f"sqlite:///{path}")
    try:
        restarted = Ledger(again, default_catalogs())
        assert restarted.balance("acme").balance == 100
        assert verify(again) == []
        restarted.top_up("acme", 50, idempotency_key="second")
        restarted.top_up("acme", 50, idempotency_key="second")
        assert restarted.balance("acme").balance == 150
    finally:
        again.dispose()


def test_a_file_put_in_its_place_is_refused_and_neither_file_written(
    path: Path, db: Database, ledger: Ledger, sqlite_template: Path
) -> None:
    """A backup (here an empty ledger) moved into the path of a running server's file:
    neither the file the server has open nor the one now at its path is written."""
    kept = _keep(path)
    other = path.with_name("other.db")
    shutil.copyfile(sqlite_template, other)
    os.link(other, path.with_name("other-kept.db"))
    os.replace(other, path)
    _refuses(lambda: ledger.top_up("acme", 50, idempotency_key="second"))
    _refuses(lambda: ledger.balance("acme"))
    _refuses(lambda: ledger.open_account("other", "credit", idempotency_key="open-other"))
    assert len(_saved(path)) == 1  # the file the process had, kept as well
    # The first file back at its path, as a file made there since may come with its
    # device and inode numbers (freed once no connection had it open): found gone once,
    # it is gone until the restart.
    os.link(kept, path.with_name("back.db"))
    os.replace(path.with_name("back.db"), path)
    _refuses(lambda: ledger.top_up("acme", 50, idempotency_key="second"))
    _refuses(lambda: ledger.balance("acme"))
    db.dispose()
    # The file put in place is as it was: no wallet was opened in it.
    moved = Database.from_url(f"sqlite:///{path.with_name('other-kept.db')}")
    try:
        with moved.transaction(write=False) as conn:
            wallets = "SELECT count(*) FROM accounts WHERE external_id IN ('acme', 'other')"
            assert conn.exec_driver_sql(wallets).scalar() == 0
    finally:
        moved.dispose()
    # The file opened first, back at its path after a restart: the top-up refused was
    # never written.
    _put_back(kept, path)
    again = Database.from_url(f"sqlite:///{path}")
    try:
        restarted = Ledger(again, default_catalogs())
        assert restarted.balance("acme").balance == 100
        restarted.top_up("acme", 50, idempotency_key="second")
        assert restarted.balance("acme").balance == 150
        assert verify(again) == []
    finally:
        again.dispose()


def _insert_ghost(db: Database, then: Callable[[], None]) -> None:
    with db.transaction() as conn:
        conn.exec_driver_sql("INSERT INTO units (code, scale) VALUES ('ghost', 0)")
        then()


def _ghosts(db: Database) -> int:
    with db.transaction(write=False) as conn:
        return int(
            conn.exec_driver_sql("SELECT count(*) FROM units WHERE code = 'ghost'").scalar_one()
        )


def test_a_file_replaced_during_a_write_is_not_committed(
    path: Path, db: Database, ledger: Ledger
) -> None:
    """Found at the commit: the write transaction began on the right file, which was
    replaced before it committed. Nothing of it is committed."""
    kept = _keep(path)
    other = path.with_name("other.db")
    shutil.copyfile(kept, other)
    with pytest.raises(CommitFailed) as caught:
        _insert_ghost(db, lambda: os.replace(other, path))
    assert isinstance(caught.value.__cause__, FileReplaced)
    _refused(caught)
    db.dispose()
    _put_back(kept, path)
    again = Database.from_url(f"sqlite:///{path}")
    try:
        assert _ghosts(again) == 0
        _insert_ghost(again, lambda: None)
        assert _ghosts(again) == 1
    finally:
        again.dispose()


def test_a_file_moved_aside_keeps_everything_committed_to_it(
    path: Path, db: Database, ledger: Ledger
) -> None:
    """Its WAL is named after the path, so the file moved aside would lack whatever of
    it was not yet checkpointed (the wallet, here), and a file put at the path would be
    read with it. Found moved, the file is checkpointed and the WAL emptied."""
    wal = path.with_name(f"{path.name}-wal")
    assert wal.stat().st_size > 0  # the wallet and its top-up, not yet in the file
    aside = path.with_name("aside.db")
    os.replace(path, aside)
    _refuses(lambda: ledger.top_up("acme", 50, idempotency_key="second"))
    assert wal.stat().st_size == 0
    db.dispose()
    assert len(_saved(path)) == 1
    moved = Database.from_url(f"sqlite:///{aside}")
    try:
        assert Ledger(moved, default_catalogs()).balance("acme").balance == 100
        assert verify(moved) == []
    finally:
        moved.dispose()


def test_no_new_ledger_is_made_at_the_path_beside_copies_saved_of_the_one_found_gone(
    path: Path, db: Database, ledger: Ledger
) -> None:
    """After ``rm ledger.db*`` under a process, SQLite has made an empty file at the path:
    ``migrate`` (run by ``serve`` as it starts) would make a new, empty ledger of it and
    the restarted server would serve that, every wallet missing. It refuses while the
    copies saved of the ledger lie beside it, naming them; a ledger put back at the path
    migrates (an older copy beside it or not), and with the copies moved away the path
    may hold a new ledger."""
    assert path.with_name(f"{path.name}-wal").stat().st_size > 0  # the top-up
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        path.with_name(name).unlink()
    # Read on a connection opened since, which has the empty file: it cannot save the
    # ledger; the process does as it ends, through its write connection.
    _refuses(lambda: ledger.balance("acme"))
    assert _saved(path) == []
    db.dispose()
    (saved,) = _saved(path)
    older = path.with_name(f"{path.name}.gone-20260101T000000Z-1")
    shutil.copyfile(saved, older)
    again = Database.from_url(f"sqlite:///{path}")
    try:
        with pytest.raises(LedgerSavedBeside) as refused:
            again.migrate()
        said = str(refused.value.orig)
        assert f"2 copies of ledgers once at that path lie beside it (the newest: {saved})" in said
        assert f"put the right one back (mv it to {path})" in said, said
        older.unlink()
        with pytest.raises(LedgerSavedBeside) as refused:
            again.migrate()
        said = str(refused.value.orig)
        assert f"lies beside it: put it back (mv {saved} {path})" in said, said
        with closing(sqlite3.connect(path)) as empty:  # nothing was created
            assert empty.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
        shutil.copyfile(saved, older)
    finally:
        again.dispose()
    _put_back(saved, path)
    restored = Database.from_url(f"sqlite:///{path}")
    try:
        restored.migrate()  # a ledger at the path: the older copy beside it is no matter
        assert Ledger(restored, default_catalogs()).balance("acme").balance == 100
    finally:
        restored.dispose()
    # The copies moved away, the path may hold a new ledger.
    older.unlink()
    path.unlink()
    fresh = Database.from_url(f"sqlite:///{path}")
    try:
        fresh.migrate()
        assert Ledger(fresh, default_catalogs()).accounts().items == []
    finally:
        fresh.dispose()
