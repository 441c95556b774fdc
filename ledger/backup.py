"""Online backup of the embedded SQLite ledger: one consistent copy, taken while the
server keeps writing, and checked before it is kept.

Copying the files of a running server (``cp ledger.db``) can catch the database file
between two checkpoints and miss what its ``-wal`` file holds, or tear a page. This copy
goes through SQLite's backup API in a single step, which is one read transaction: the
snapshot of one instant, every committed transaction before it and none after, while
writers go on (WAL mode does not block them). The copy is then proven before it takes
its name:

1. SQLite's ``integrity_check`` of every page and index (a failure: the copy is deleted);
2. ``verify()``, every ledger invariant over the copy (a violation is the source's own,
   so the copy is kept, and the violations are reported);
3. it is made one self-contained file (rollback journal, no ``-wal``), flushed to disk,
   and renamed into place, so a crash never leaves a half-written file under the name.

PostgreSQL is backed up with its own tools (``pg_dump``, or base backups with WAL
archiving), which this does not replace.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from ledger.db import Database
from ledger.errors import BackupExists, BackupFailed, InvalidInput
from ledger.results import Violation
from ledger.verify import verify


class BackupView(BaseModel):
    """A backup taken: where, how big, at which schema revision, and what ``verify()``
    found in it (nothing, unless the source itself breaks an invariant)."""

    path: str
    bytes: int
    revision: str | None
    integrity: str
    violations: list[Violation]
    seconds: float


def source_path(db: Database) -> Path:
    """The file of the SQLite database ``db``, or InvalidInput (PostgreSQL, in memory)."""
    if not db.is_sqlite:
        raise InvalidInput(
            "backup copies the embedded SQLite file; back up PostgreSQL with pg_dump, or "
            "with base backups and WAL archiving",
            field="CREDITLEDGER_DATABASE_URL",
        )
    name = db.engine.url.database
    # (No database in memory gets here: the settings refuse one, Database cannot pool one.)
    if not name or name.startswith("file:"):
        raise InvalidInput(
            "backup needs the database as a file path (sqlite:///path/to/ledger.db)",
            field="CREDITLEDGER_DATABASE_URL",
        )
    path = Path(name)
    if not path.is_file():
        raise InvalidInput(f"no database file at {path}", field="CREDITLEDGER_DATABASE_URL")
    return path


def backup(db: Database, destination: Path, *, replace: bool = False) -> BackupView:
    """Copy the SQLite ledger ``db`` to ``destination`` as one consistent, checked,
    self-contained file. An existing destination is BackupExists unless ``replace``."""
    started = time.monotonic()
    source = source_path(db)
    destination = destination.expanduser()
    if destination.is_dir():
        raise InvalidInput(f"{destination} is a directory: name the file", field="destination")
    if not destination.parent.is_dir():
        raise InvalidInput(f"no directory {destination.parent}", field="destination")
    if destination.exists():
        if destination.resolve() == source.resolve():
            raise InvalidInput("the destination is the database itself", field="destination")
        if not replace:
            raise BackupExists(f"{destination} exists", field="destination")
    if any(side.exists() for side in _sidecars(destination)):
        # SQLite would replay such a -wal (or roll back a -journal) onto the new copy.
        raise InvalidInput(
            f"{destination} has a -wal, -shm or -journal file beside it (it is, or was, "
            "open as a database): close what has it open and remove them, or choose "
            "another destination",
            field="destination",
        )
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.partial")
    try:
        _copy(source, partial, timeout=db.timeouts.lock)
        integrity = _integrity(partial)
        if integrity != "ok":
            raise BackupFailed(
                f"the copy failed SQLite's integrity check: {integrity}", field="destination"
            )
        copy = Database.from_url(f"sqlite:///{partial}")
        try:
            violations = verify(copy)
            revision = _revision(copy)
        finally:
            copy.dispose()
        _seal(partial)
        _rename(partial, destination, replace=replace)
        _fsync_directory(destination.parent)
    finally:
        for leftover in (partial, *_sidecars(partial)):
            leftover.unlink(missing_ok=True)
    return BackupView(
        path=str(destination),
        bytes=destination.stat().st_size,
        revision=revision,
        integrity=integrity,
        violations=violations,
        seconds=round(time.monotonic() - started, 3),
    )


def _copy(source: Path, target: Path, *, timeout: float) -> None:
    """SQLite's online backup in one step: a single read transaction of ``source``."""
    reader = sqlite3.connect(source, timeout=timeout)
    try:
        writer = sqlite3.connect(target)
        try:
            reader.backup(writer, pages=-1)
        finally:
            writer.close()
    finally:
        reader.close()


def _integrity(path: Path) -> str:
    """``ok``, or what SQLite found wrong (a page it cannot even read, too)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


def _revision(db: Database) -> str | None:
    with db.transaction(write=False) as conn:
        found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return None if found is None else str(found)


def _seal(path: Path) -> None:
    """Fold any WAL into the file, leave it in rollback-journal mode (one file holds it
    all: the server turns WAL back on when it opens it), and flush it to disk."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        if mode is None or str(mode[0]).lower() != "delete":
            raise BackupFailed("the copy could not leave WAL mode", field="destination")
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(partial: Path, destination: Path, *, replace: bool) -> None:
    """Give the checked copy its name: in one step, and without replacing a file that
    appeared meanwhile unless ``replace`` (a hard link fails if the name is taken)."""
    if replace:
        os.replace(partial, destination)
        return
    try:
        os.link(partial, destination)
    except FileExistsError:
        raise BackupExists(f"{destination} exists", field="destination") from None
    except OSError:  # a file system without hard links: the check above stands
        if destination.exists():
            raise BackupExists(f"{destination} exists", field="destination") from None
        os.replace(partial, destination)
    # The partial name, if still there, is removed by the caller.


def _sidecars(path: Path) -> tuple[Path, ...]:
    return tuple(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))


def _fsync_directory(folder: Path) -> None:
    """Make the rename durable (POSIX: the directory entry is flushed with it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
