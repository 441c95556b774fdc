"""Who else has a ledger open: what ``migrate --to`` asks before it takes a schema down.

A server (or any process) still running on a ledger whose schema was taken back to an
older revision runs the newer version's statements against the older tables: every
request that touches what the undone revisions kept fails, until it is stopped. So a
rollback refuses to start while one is there, naming it.

SQLite: a connection to a database in WAL mode, once it has read from it, holds a shared
lock on its file and one on its ``-shm`` file for as long as it is open, idle or not (a
server's pooled connections: its sweepers read every few seconds). Linux lists the locks
of every process of this PID namespace in ``/proc/locks``; elsewhere nobody can be found
this way.

PostgreSQL: the other sessions on the database that bear this session's
``application_name`` (``creditledger``, or what the database URL or ``PGAPPNAME`` names
it), from ``pg_stat_activity``: they come from processes configured as this one is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.kernel import utc_text

#: Linux's table of the file locks every process holds.
PROC_LOCKS = Path("/proc/locks")
#: How much of a process's command line a description keeps.
COMMAND_LIMIT = 200


def lock_holders(table: str, files: Iterable[tuple[int, int, int]], own: int) -> list[int]:
    """The processes other than ``own`` that hold a lock, or wait for one, on any of
    ``files`` (device major, device minor, inode), from a ``/proc/locks`` text. Its lines
    read ``1: POSIX  ADVISORY  READ 2331 fe:00:2146556 128 128`` (a waiter's with ``->``
    after the number); an open file description lock has no process (-1)."""
    wanted = set(files)
    found: set[int] = set()
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1] == "->":
            del fields[1]
        if len(fields) < 6:
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            file = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if file in wanted and pid > 0 and pid != own:
            found.add(pid)
    return sorted(found)


def describe_process(pid: int) -> str:
    """``process PID (its command line)``, as far as this process may read it."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"process {pid}"
    command = " ".join(arg.decode(errors="replace") for arg in args if arg)
    if len(command) > COMMAND_LIMIT:
        command = command[: COMMAND_LIMIT - 3] + "..."
    return f"process {pid} ({command})" if command else f"process {pid}"


def sqlite_users(path: str) -> list[str]:
    """The other processes that have the SQLite database at ``path`` open, described;
    none where the system does not say (no ``/proc/locks``)."""
    try:
        table = PROC_LOCKS.read_text()
    except OSError:
        return []
    files = []
    for name in (path, f"{path}-shm"):
        try:
            found = os.stat(name)
        except OSError:
            continue
        files.append((os.major(found.st_dev), os.minor(found.st_dev), found.st_ino))
    return [describe_process(pid) for pid in lock_holders(table, files, os.getpid())]


def postgresql_users(conn: Connection) -> list[str]:
    """The other sessions on ``conn``'s database named as ``conn``'s is, described."""
    rows = conn.execute(
        sa.text(
            "SELECT pid, client_addr, backend_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = current_setting('application_name') "
            "ORDER BY backend_start, pid"
        )
    ).all()
    return [
        f"session {pid} from {client or 'a local socket'}, connected {utc_text(since)}"
        for pid, client, since in rows
    ]
