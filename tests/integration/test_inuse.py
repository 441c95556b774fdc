"""Reading Linux's ``/proc/locks`` for the processes that have a SQLite ledger open."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import inuse
from ledger.inuse import describe_process, lock_holders

#: Another process: opens the ledger, reads once, says so, and waits for its stdin to end.
HOLDER = """
import sqlite3, sys
ledger = sqlite3.connect(sys.argv[1])
ledger.execute("SELECT count(*) FROM t").fetchone()
print("open", flush=True)
sys.stdin.read()
"""
#: Another process: says it runs, and waits for its stdin to end.
WAITING = "import sys; print('running', flush=True); sys.stdin.read()"
LEDGER = (0xFE, 0x00, 2146556)  # device fe:00, the ledger's inode
TABLE = """\
1: POSIX  ADVISORY  READ 2331 fe:00:2146556 128 128
1: -> POSIX  ADVISORY  WRITE 4410 fe:00:2146556 128 128
2: POSIX  ADVISORY  READ 2331 fe:00:2146554 1073741826 1073742335
3: OFDLCK ADVISORY  READ -1 fe:00:2146556 0 EOF
4: POSIX  ADVISORY  READ 777 fe:00:2146556 120 120
5: FLOCK  ADVISORY  WRITE 5120 fe:01:2146556 0 EOF
6: POSIX  ADVISORY  READ 6001 08:10:2146556 128 128
7: LEASE  ACTIVE    READ 6002 fe:00:not-a-number 0 EOF
bad line
"""


def test_the_holders_of_the_ledgers_files_are_read_from_the_lock_table() -> None:
    """Readers and waiters on the ledger's inode count, once each; this process, locks
    without a process (open file description locks), the same inode on another device
    and lines of another shape do not."""
    assert lock_holders(TABLE, [LEDGER], own=777) == [2331, 4410]
    assert lock_holders(TABLE, [LEDGER, (0xFE, 0x00, 2146554)], own=1) == [777, 2331, 4410]
    assert lock_holders(TABLE, [(0x08, 0x10, 2146556)], own=1) == [6001]
    assert lock_holders(TABLE, [], own=1) == []
    assert lock_holders("", [LEDGER], own=1) == []


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="no /proc (not Linux)")
def test_a_process_is_described_by_its_command_line_as_far_as_it_can_be_read() -> None:
    for tail, shown in (
        (["serve", "--port", "8931"], "serve --port 8931)"),
        (["x" * 500], "x...)"),  # a command line that long is cut
    ):
        waiting = [sys.executable, "-c", WAITING, *tail]
        child = subprocess.Popen(waiting, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            # Once it runs: while its exec is under way, its command line reads empty.
            assert child.stdout is not None
            assert child.stdout.readline() == b"running\n"
            said = describe_process(child.pid)
        finally:
            child.communicate(timeout=30)
        assert said.startswith(f"process {child.pid} ({sys.executable} -c import sys;"), said
        assert said.endswith(shown), said
        assert len(said) <= len(f"process {child.pid} ()") + inuse.COMMAND_LIMIT
    assert describe_process(child.pid) == f"process {child.pid}"  # ended: nothing to read


@pytest.mark.skipif(not inuse.PROC_LOCKS.exists(), reason="no /proc/locks (not Linux)")
def test_a_sqlite_ledger_open_in_another_process_is_found(tmp_path: Path) -> None:
    """A connection in WAL mode holds its locks while open, idle or not; this process's
    own are not counted, and none is left once the connection is closed."""
    path = str(tmp_path / "ledger.db")
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (n INTEGER)")
    setup.commit()
    assert inuse.sqlite_users(path) == []  # its own connection only
    setup.close()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"open\n"
        (found,) = inuse.sqlite_users(path)
        assert found.startswith(f"process {child.pid} (")
        assert "sqlite3.connect" in found  # its command line
    finally:
        child.communicate(timeout=30)  # closes its stdin: it ends
    assert inuse.sqlite_users(path) == []
