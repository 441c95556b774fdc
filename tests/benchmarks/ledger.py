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
from tests.pg import TempPostgres, find_bin

REQUEST = {
    "catalog": "cosmic",
    "operation": "text",
    "params": {"prompt": "Write a product description for a coffee mug", "max_tokens": 500},
}
USAGE = {"input_tokens": 10, "output_tokens": 89}


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
        ledger.capture(hold.id, status="COMPLETED", usage=USAGE, idempotency_key=keys())
    return pairs / (time.perf_counter() - start)


RAW_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS raw_accounts (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS raw_transfers (id BIGINT PRIMARY KEY, debit INTEGER NOT NULL,"
    " credit INTEGER NOT NULL, amount BIGINT NOT NULL)",
]


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
    name: str, db: Database, raw: Callable[[int], float], pairs: int, rounds: int
) -> dict[str, Any]:
    db.migrate()
    ledger = Ledger(db, default_catalogs())
    keys = Keys()
    ledger.open_account("bench", "token", idempotency_key=keys())
    ledger.top_up("bench", 10**15, idempotency_key=keys())
    ledger_round(ledger, keys, 20)  # warm-up: connections, compiled statements
    raw(50)
    ledger_rates, raw_rates = [], []
    for _ in range(rounds):
        ledger_rates.append(ledger_round(ledger, keys, pairs))
        raw_rates.append(raw(pairs * 2))
    pairs_per_s = statistics.median(ledger_rates)
    raw_per_s = statistics.median(raw_rates)
    return {
        "database": name,
        "ledger_pairs_per_s": round(pairs_per_s, 1),
        "raw_transactions_per_s": round(raw_per_s, 1),
        "ratio": round(pairs_per_s / raw_per_s, 3),
        "ledger_rounds": [round(r, 1) for r in ledger_rates],
        "raw_rounds": [round(r, 1) for r in raw_rates],
    }


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
            path = Path(folder) / "bench.db"
            db = Database.from_url(f"sqlite:///{path}")
            results.append(
                measure(
                    "sqlite (WAL, synchronous=FULL)",
                    db,
                    raw_sqlite(Path(folder) / "raw.db"),
                    args.pairs,
                    args.rounds,
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
                    raw = raw_postgres(server.url().replace("postgresql+psycopg", "postgresql"))
                    results.append(
                        measure("postgresql (durable, local)", db, raw, args.pairs, args.rounds)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
