"""Benchmark: ledger authorize+capture pairs per second vs. a raw transfer transaction.

    .venv/bin/python -m tests.benchmarks.ledger [--pairs 300] [--rounds 5] [--db sqlite,postgresql]

For each database, in the same run and against the same database:

* **ledger** -- ``Ledger.authorize`` then ``Ledger.capture`` of a Cosmic text request with
  the provider's usage object, each its own transaction (idempotency, locking, metering,
  rollup, grants and all), one client, in-process;
* **raw** -- the plain driver (``sqlite3`` / ``psycopg``) running a transfer-shaped
  transaction: two balance UPDATEs and one INSERT, committed.

SQLite runs in WAL mode with ``synchronous=FULL`` for both; PostgreSQL is a fresh local
server with its durable defaults (fsync on), started from the installed binaries. Rounds
alternate ledger and raw; the figures are medians. The issue's target: ledger pairs per
second at least 25% of the raw transactions per second on each database.

Beside the rates, what each writes, which timing noise does not blur: SQLite, the WAL
pages (frames) an authorize, a capture and a raw transaction append, each a page written
and checksummed at its commit; PostgreSQL, the WAL bytes per pair and per raw transaction.
And where the time goes: the CPU time this process spent per pair and per raw
transaction (on SQLite, the database's own work included), and on PostgreSQL the CPU
time the server's processes spent. Both sides are CPU-bound here, so a pair's CPU time
against four raw transactions' says how far the ratio is from its target, and which
side (client or server) stands in the way.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ledger.db import Database
from ledger.services import Ledger
from pricing import default_catalogs
from tests.benchmarks.proc import tree_cpu
from tests.pg import TempPostgres, find_bin

REQUEST = {
    "catalog": "cosmic",
    "operation": "text",
    "params": {"prompt": "Write a product description for a coffee mug", "max_tokens": 500},
}
USAGE = {"input_tokens": 10, "output_tokens": 89}
#: Who captures, as the HTTP API names a service key (kept with the capture's entry).
ACTOR = "key:0123456789abcdef"


class Keys:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"bench-{self.n}"


def ledger_round(ledger: Ledger, keys: Keys, pairs: int) -> float:
    start = time.perf_counter()
    for _ in range(pairs):
        hold = ledger.authorize("bench", REQUEST, idempotency_key=keys())
        ledger.capture(
            hold.id, status="COMPLETED", usage=USAGE, idempotency_key=keys(), actor=ACTOR
        )
    return pairs / (time.perf_counter() - start)


RAW_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS raw_accounts (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS raw_transfers (id BIGINT PRIMARY KEY, debit INTEGER NOT NULL,"
    " credit INTEGER NOT NULL, amount BIGINT NOT NULL)",
]


def sqlite_frames(path: Path, operation: Callable[[], object], times: int) -> float:
    """WAL frames (pages) appended per call of ``operation`` to the SQLite file ``path``.

    The WAL is emptied first and counted by its size after. That count holds only while
    no checkpoint restarted the WAL, which the writers (at SQLite's default threshold)
    do once it reaches the threshold: a WAL that did is an error (measure fewer calls).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        threshold = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            raise RuntimeError(f"{path}: the WAL could not be emptied (a transaction is open)")
        for _ in range(times):
            operation()
        size = Path(f"{path}-wal").stat().st_size
    finally:
        conn.close()
    # The WAL's header (none while nothing was written), then each frame's and its page.
    frames = max(0, size - 32) // (24 + page)
    if frames >= threshold:
        raise RuntimeError(f"{path}: {frames} frames reach the checkpoint threshold")
    return frames / times


def postgres_wal(conn: psycopg.Connection[Any]) -> Callable[[], int]:
    """The server's WAL insert position in bytes (what was written so far), read on
    ``conn`` (in autocommit mode)."""

    def position() -> int:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')").fetchone()
        assert row is not None
        return int(row[0])

    return position


def raw_sqlite(path: Path) -> Callable[[int], float]:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    for statement in RAW_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT OR IGNORE INTO raw_accounts VALUES (1, 1000000000), (2, 0)")
    counter = [int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM raw_transfers").fetchone()[0])]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            counter[0] += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE raw_accounts SET balance = balance - 1 WHERE id = 1")
            conn.execute("UPDATE raw_accounts SET balance = balance + 1 WHERE id = 2")
            conn.execute("INSERT INTO raw_transfers VALUES (?, 1, 2, 1)", (counter[0],))
            conn.execute("COMMIT")
        return n / (time.perf_counter() - start)

    return run


def raw_postgres(dsn: str) -> Callable[[int], float]:
    conn = psycopg.connect(dsn, autocommit=True)
    for statement in RAW_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO raw_accounts VALUES (1, 1000000000), (2, 0) ON CONFLICT DO NOTHING")
    last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM raw_transfers").fetchone()
    counter = [int(last[0]) if last else 0]
    conn.autocommit = False

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            counter[0] += 1
            with conn.transaction():
                conn.execute("UPDATE raw_accounts SET balance = balance - 1 WHERE id = 1")
                conn.execute("UPDATE raw_accounts SET balance = balance + 1 WHERE id = 2")
                conn.execute("INSERT INTO raw_transfers VALUES (%s, 1, 2, 1)", (counter[0],))
        return n / (time.perf_counter() - start)

    return run


def measure(
    name: str,
    db: Database,
    raw: Callable[[int], float],
    pairs: int,
    rounds: int,
    *,
    wal: Callable[[], int] | None = None,
    frames: tuple[Path, Path] | None = None,
    server_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """The rates and this process's CPU time per pair and per raw transaction; with
    ``wal`` (PostgreSQL's WAL position) the WAL bytes of the rounds, with ``frames`` (the
    ledger's and the raw SQLite files) the WAL pages per operation, with ``server_cpu``
    (the CPU seconds a database server's processes used so far) the server's CPU time
    per pair and per raw transaction."""
    db.migrate()
    ledger = Ledger(db, default_catalogs())
    keys = Keys()
    ledger.open_account("bench", "token", idempotency_key=keys())
    ledger.top_up("bench", 10**15, idempotency_key=keys())
    ledger_round(ledger, keys, 20)  # warm-up: connections, compiled statements
    raw(50)
    ledger_rates, raw_rates, ledger_bytes, raw_bytes = [], [], [], []
    # CPU milliseconds per pair and per raw transaction: this process's, the server's.
    cpu: dict[str, list[float]] = {"pair": [], "raw": [], "server_pair": [], "server_raw": []}

    def mark() -> tuple[float, float, int, float]:
        """This process's CPU time, the server's, the WAL position, then this process's
        CPU time again: what lies between the two is the marking's own cost."""
        before = time.process_time()
        server = server_cpu() if server_cpu else 0.0
        position = wal() if wal else 0
        return before, server, position, time.process_time()

    for _ in range(rounds):
        start = mark()
        ledger_rates.append(ledger_round(ledger, keys, pairs))
        middle = mark()
        raw_rates.append(raw(pairs * 2))
        end = mark()
        cpu["pair"].append((middle[0] - start[3]) * 1000 / pairs)
        cpu["raw"].append((end[0] - middle[3]) * 1000 / (pairs * 2))
        cpu["server_pair"].append((middle[1] - start[1]) * 1000 / pairs)
        cpu["server_raw"].append((end[1] - middle[1]) * 1000 / (pairs * 2))
        ledger_bytes.append((middle[2] - start[2]) / pairs)
        raw_bytes.append((end[2] - middle[2]) / (pairs * 2))
    pairs_per_s = statistics.median(ledger_rates)
    raw_per_s = statistics.median(raw_rates)
    result: dict[str, Any] = {
        "database": name,
        "ledger_pairs_per_s": round(pairs_per_s, 1),
        "raw_transactions_per_s": round(raw_per_s, 1),
        "ratio": round(pairs_per_s / raw_per_s, 3),
        "ledger_rounds": [round(r, 1) for r in ledger_rates],
        "raw_rounds": [round(r, 1) for r in raw_rates],
        "cpu_ms_per_pair": round(statistics.median(cpu["pair"]), 3),
        "cpu_ms_per_raw_transaction": round(statistics.median(cpu["raw"]), 3),
    }
    if server_cpu:
        result["server_cpu_ms_per_pair"] = round(statistics.median(cpu["server_pair"]), 3)
        result["server_cpu_ms_per_raw_transaction"] = round(statistics.median(cpu["server_raw"]), 3)
    if wal:
        result["wal_bytes_per_pair"] = round(statistics.median(ledger_bytes))
        result["wal_bytes_per_raw_transaction"] = round(statistics.median(raw_bytes))
    if frames:
        path, raw_path = frames
        holds: list[str] = []

        def authorize() -> None:
            holds.append(ledger.authorize("bench", REQUEST, idempotency_key=keys()).id)

        def capture() -> None:
            ledger.capture(
                holds.pop(), status="COMPLETED", usage=USAGE, idempotency_key=keys(), actor=ACTOR
            )

        result["wal_pages_per_authorize"] = round(sqlite_frames(path, authorize, 20), 1)
        result["wal_pages_per_capture"] = round(sqlite_frames(path, capture, 20), 1)
        result["wal_pages_per_raw_transaction"] = round(
            sqlite_frames(raw_path, lambda: raw(1), 50), 1
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300, help="authorize+capture pairs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="creditledger-bench-") as folder:
        if "sqlite" in args.db:
            path, raw_path = Path(folder) / "bench.db", Path(folder) / "raw.db"
            db = Database.from_url(f"sqlite:///{path}")
            results.append(
                measure(
                    "sqlite (WAL, synchronous=FULL)",
                    db,
                    raw_sqlite(raw_path),
                    args.pairs,
                    args.rounds,
                    frames=(path, raw_path),
                )
            )
            db.dispose()
        if "postgresql" in args.db:
            bindir = find_bin()
            if bindir is None:
                print("postgresql: no server binaries installed (apt-get install postgresql)")
            else:
                server = TempPostgres(bindir, durable=True).start()
                try:
                    db = Database.from_url(server.url())
                    dsn = server.url().replace("postgresql+psycopg", "postgresql")
                    with psycopg.connect(dsn, autocommit=True) as wal:
                        results.append(
                            measure(
                                "postgresql (durable, local)",
                                db,
                                raw_postgres(dsn),
                                args.pairs,
                                args.rounds,
                                wal=postgres_wal(wal),
                                server_cpu=lambda: tree_cpu(server.pid()),
                            )
                        )
                    db.dispose()
                finally:
                    server.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{args.rounds} rounds of {args.pairs} authorize+capture pairs; medians; "
        "target ratio >= 0.25"
    )
    print(f"{'database':32} {'ledger pairs/s':>15} {'raw txn/s':>12} {'ratio':>7}")
    for r in results:
        print(
            f"{r['database']:32} {r['ledger_pairs_per_s']:15.1f} "
            f"{r['raw_transactions_per_s']:12.1f} {r['ratio']:7.3f}"
        )
    for r in results:
        line = (
            f"{r['database']}: CPU ms per pair {r['cpu_ms_per_pair']:.3f}, "
            f"per raw transaction {r['cpu_ms_per_raw_transaction']:.3f} (this process)"
        )
        if "server_cpu_ms_per_pair" in r:
            line += (
                f"; the server's: per pair {r['server_cpu_ms_per_pair']:.3f}, "
                f"per raw transaction {r['server_cpu_ms_per_raw_transaction']:.3f}"
            )
        print(line)
        if "wal_pages_per_authorize" in r:
            print(
                f"{r['database']}: WAL pages per authorize {r['wal_pages_per_authorize']}, "
                f"per capture {r['wal_pages_per_capture']}, "
                f"per raw transaction {r['wal_pages_per_raw_transaction']}"
            )
        if "wal_bytes_per_pair" in r:
            print(
                f"{r['database']}: WAL bytes per pair {r['wal_bytes_per_pair']} (median), "
                f"per raw transaction {r['wal_bytes_per_raw_transaction']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
