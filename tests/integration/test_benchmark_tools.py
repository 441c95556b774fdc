"""The benchmarks' measuring tools (their figures are never asserted: only that they
measure what they say)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.ledger import sqlite_frames
from tests.benchmarks.proc import process_cpu, tree_cpu


def _wal_file(path: Path, tables: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for i in range(tables):
        conn.execute(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, n INTEGER)")
        conn.execute(f"INSERT INTO t{i} VALUES (1, 0)")
    return conn


def test_sqlite_frames_counts_the_pages_each_commit_writes(tmp_path: Path) -> None:
    path = tmp_path / "frames.db"
    conn = _wal_file(path, 3)

    def touch(tables: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for i in range(tables):
            conn.execute(f"UPDATE t{i} SET n = n + 1 WHERE id = 1")
        conn.execute("COMMIT")

    # Each table is a single page: a transaction writes one page per table it changes.
    assert sqlite_frames(path, lambda: touch(1), 10) == 1
    assert sqlite_frames(path, lambda: touch(3), 100) == 3  # 300 frames: headers count
    assert sqlite_frames(path, lambda: None, 5) == 0  # nothing written: not even a header


def test_sqlite_frames_refuses_a_count_a_checkpoint_may_have_cut(tmp_path: Path) -> None:
    path = tmp_path / "restarted.db"
    conn = _wal_file(path, 1)
    conn.execute("PRAGMA synchronous=OFF")

    def grow() -> None:  # a row of 4 MiB: more pages than SQLite's threshold of 1000
        conn.execute("UPDATE t0 SET n = zeroblob(4 * 1024 * 1024) WHERE id = 1")

    with pytest.raises(RuntimeError, match="checkpoint threshold"):
        sqlite_frames(path, grow, 1)


#: Spins for 0.5 s of CPU, says so, then waits (alive, to be read) until its input ends.
_SPIN = (
    "import sys, time\n"
    "start = time.process_time()\n"
    "while time.process_time() - start < 0.5: sum(range(100000))\n"
    "print('spun', flush=True)\n"
    "sys.stdin.read()"
)


def _spun(code: str) -> subprocess.Popen[str]:
    """``python -c code``, once it said it spun."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "spun\n"
    return proc


def test_process_cpu_reads_what_a_process_spent_whatever_its_name() -> None:
    # Named with a parenthesis and spaces: the name comes before the counters in
    # /proc/<pid>/stat.
    child = _spun("open('/proc/self/comm', 'w').write('a) (b c')\n" + _SPIN)
    try:
        assert Path(f"/proc/{child.pid}/comm").read_text() == "a) (b c\n"
        user, system = process_cpu(child.pid)
        assert 0.5 <= user + system < 5
        assert user > system
        user_later, system_later = process_cpu(child.pid)  # counters only grow
        assert user_later >= user
        assert system_later >= system
    finally:
        child.communicate("")


def test_tree_cpu_counts_the_children_a_server_process_started() -> None:
    # A parent that spends almost nothing starts the spinning child (which inherits its
    # pipes): the parent alone shows little, its tree the child's time.
    parent = _spun(
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {_SPIN!r}]).wait()"
    )
    try:
        assert sum(process_cpu(parent.pid)) < 0.5
        assert 0.5 <= tree_cpu(parent.pid) < 5
    finally:
        parent.communicate("")
