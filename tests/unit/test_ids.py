"""Row ids and random tokens (``ledger.ids``), and the SQLite text of an instant
(``ledger.store.sqlite_instant``), which must be what SQLAlchemy stores."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ledger import ids
from ledger.ids import Entropy, new_id
from ledger.models import UTCDateTime
from ledger.store import sqlite_instant


def test_entropy_hands_out_each_byte_once_and_reads_a_new_block_when_one_runs_out() -> None:
    entropy = Entropy(block=16)
    first = entropy.take(10)
    second = entropy.take(6)  # the rest of the first block
    third = entropy.take(10)  # does not fit: a new block
    assert (len(first), len(second), len(third)) == (10, 6, 10)
    assert entropy._bytes[:16] != first + second  # the first block was replaced
    assert entropy._bytes[:10] == third
    for bad in (0, -1, 17):
        with pytest.raises(ValueError, match="between 1 and 16"):
            entropy.take(bad)


def test_entropy_uses_a_block_to_its_last_byte_and_never_hands_out_a_short_draw() -> None:
    entropy = Entropy(block=16)
    entropy.take(10)
    block = entropy._bytes
    assert entropy.take(6) == block[10:]  # exactly the rest, not a new block
    assert entropy._bytes is block
    entropy = Entropy(block=16)
    entropy.take(10)
    drawn = entropy.take(7)  # one more than is left: a new block, all 7 of it
    assert drawn == entropy._bytes[:7]


def test_entropy_never_gives_two_threads_the_same_bytes() -> None:
    entropy = Entropy(block=64)
    taken: list[bytes] = []

    def work() -> None:
        mine = [entropy.take(8) for _ in range(2000)]
        taken.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 16,000 draws of 64 random bits: a repeat would be a byte handed out twice.
    assert len(taken) == len(set(taken)) == 16000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    # In a fresh interpreter, single-threaded (forking this multi-threaded test process
    # is what Python 3.12+ warns against): the parent holds a block with bytes left,
    # forks, and each side then takes 16 bytes.
    script = (
        "import os\n"
        "from ledger.ids import random_hex\n"
        "random_hex(1)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print('child', random_hex(16), flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)  # one line after the other\n"
        "print('parent', random_hex(16), flush=True)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    taken = dict(line.split() for line in ran.stdout.splitlines())
    assert set(taken) == {"parent", "child"}
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in taken.values())
    assert taken["parent"] != taken["child"]


def test_ids_sort_by_time_across_restarts_and_differ_at_the_same_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The time comes first (a process started later makes later ids, though its counter
    starts again), the counter next (ids of one instant in creation order), and random
    bits last (two processes at the same instant and count still differ)."""
    clock = iter([2_000, 2_000, 2_000, 1_000_000, 1_000_000])
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    monkeypatch.setattr(ids, "_sequence", itertools.count())
    same = [new_id(), new_id(), new_id()]
    assert same == sorted(same)
    assert len(set(same)) == 3
    monkeypatch.setattr(ids, "_sequence", itertools.count())  # a restart
    later = new_id()
    assert later > max(same)
    monkeypatch.setattr(ids, "_sequence", itertools.count())  # another process, same instant
    assert new_id() != later


def test_new_ids_are_32_hex_digits_unique_and_sorted_by_creation() -> None:
    ids = [new_id() for _ in range(10000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    "instant",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 12, 2, 19, 0, 26, 672606, tzinfo=UTC),
        datetime(2026, 12, 2, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 3, 1, 0, 0, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_an_instant_is_bound_on_sqlite_as_sqlalchemy_stores_it(instant: datetime) -> None:
    engine = sa.create_engine("sqlite://")
    table = sa.Table("t", sa.MetaData(), sa.Column("at", UTCDateTime()))
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(table.insert().values(at=instant))
        stored = conn.exec_driver_sql("SELECT at FROM t").scalar_one()
    assert sqlite_instant(instant) == stored
    assert sqlite_instant(instant) == stored  # the kept text, asked again


def test_the_kept_text_belongs_to_the_instant_asked_for() -> None:
    a = datetime(2026, 1, 1, tzinfo=UTC)
    b = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))  # equal to a - 1 h
    assert [sqlite_instant(x) for x in (a, b, a, b)] == [
        "2026-01-01 00:00:00.000000",
        "2025-12-31 23:00:00.000000",
    ] * 2
