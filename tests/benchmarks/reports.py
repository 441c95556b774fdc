"""Benchmark: a monthly report over 10 million usage events vs. the same over 1 million.

    .venv/bin/python -m tests.benchmarks.reports [--small 1000000] [--large 10000000]
        [--wallets 1000] [--rounds 3] [--formats json,csv,parquet,html] [--dir DIR]

Builds two SQLite ledgers (WAL, the embedded default) of October 2026, identical but for
the number of usage events, then times the whole report job of each, in alternating
rounds, in the same run: claim, read, reconcile, render, store. The figures are medians.
The issue's targets: the 10M report in at most 5 s, and at most 1.5x the 1M report.

Each usage event is what an authorize+capture leaves behind: a captured hold, a metering
record, a capture entry with its two postings (the wallet's debit, usage revenue's
credit), and its share of the daily rollups. They are written in bulk by SQL inside SQLite
(``INSERT ... SELECT`` over a counter) through the ledger's own tables, indexes and
triggers, so the journal has the real size; the wallets, their top-ups and the system
accounts come from the ledger's use cases. Not written: grant movements of each capture
(the report does not read grants), so ``verify`` would flag the grants of these databases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from ledger.db import Database
from ledger.services import Ledger
from pricing import default_catalogs
from reports.jobs import Reports

MODELS = [("cosmic", "text", f"model-{i}") for i in range(6)] + [
    ("cosmic", "image", "gemini-image"),
    ("cosmic", "video", "veo"),
]
MONTH_SECONDS = 31 * 24 * 3600
TOPUP = 10**15


def build(path: Path, events: int, wallets: int) -> Path:
    """A SQLite ledger with ``wallets`` wallets and ``events`` usage events in October."""
    url = f"sqlite:///{path}"
    db = Database.from_url(url)
    db.migrate()
    clock_at = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)
    ledger = Ledger(db, default_catalogs(), clock=lambda: clock_at)
    for w in range(wallets):
        ledger.open_account(f"w{w:05d}", "token", idempotency_key=f"open-{w}")
        ledger.top_up(f"w{w:05d}", TOPUP, idempotency_key=f"top-{w}")
    db.dispose()

    started = time.perf_counter()
    raw = sa.create_engine(url)
    with raw.begin() as conn:
        first = conn.execute(
            sa.text("SELECT MIN(id) FROM accounts WHERE kind = 'wallet'")
        ).scalar_one()
        revenue = conn.execute(
            sa.text("SELECT id FROM accounts WHERE external_id = 'system:revenue:token'")
        ).scalar_one()
        conn.execute(
            sa.text("CREATE TEMP TABLE models (i INTEGER PRIMARY KEY, catalog, operation, model)")
        )
        conn.execute(
            sa.text("INSERT INTO models VALUES (:i, :c, :o, :m)"),
            [{"i": i, "c": c, "o": o, "m": m} for i, (c, o, m) in enumerate(MODELS)],
        )
        # One row per event: who, when, what and how much, computed once.
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE ev AS WITH RECURSIVE seq(n) AS "
                "(SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < :events - 1) "
                "SELECT n, :first + (n % :wallets) AS account_id, "
                "(n / :wallets) % :models AS m, 100 + (n * 7919) % 900 AS amount, "
                "strftime('%Y-%m-%d %H:%M:%S', '2026-10-01', "
                "'+' || (n * :seconds / :events) || ' seconds') || '.000000' AS at "
                "FROM seq"
            ),
            {
                "events": events,
                "first": first,
                "wallets": wallets,
                "models": len(MODELS),
                "seconds": MONTH_SECONDS,
            },
        )
        steps = [
            # Postings first: the entry's insert checks they balance (a trigger).
            "INSERT INTO postings (entry_id, account_id, unit, amount, posted_at) "
            "SELECT printf('e%015d', n), account_id, 'token', -amount, at FROM ev",
            "INSERT INTO postings (entry_id, account_id, unit, amount, posted_at) "
            f"SELECT printf('e%015d', n), {revenue}, 'token', amount, at FROM ev",
            "INSERT INTO entries (id, kind, account_id, posted_at, memo, hold_id) "
            "SELECT printf('e%015d', n), 'capture', account_id, at, '', printf('h%015d', n) "
            "FROM ev",
            "INSERT INTO holds (id, account_id, amount, status, created_at, expires_at, "
            "resolved_at, captured, entry_id, metering_id, catalog, catalog_version, "
            "operation, model, request) "
            "SELECT printf('h%015d', n), account_id, amount + 100, 'captured', at, at, at, "
            "amount, printf('e%015d', n), printf('m%015d', n), catalog, 'seed-000', "
            "operation, model, '{}' FROM ev JOIN models ON models.i = ev.m",
            "INSERT INTO metering_records (id, account_id, kind, hold_id, entry_id, catalog, "
            "catalog_version, operation, model, unit, status, held, charged, input_tokens, "
            "output_tokens, images, videos, candidates, seconds, created_at, completed_at) "
            "SELECT printf('m%015d', n), account_id, 'authorization', printf('h%015d', n), "
            "printf('e%015d', n), catalog, 'seed-000', operation, model, 'token', "
            "'COMPLETED', amount + 100, amount, amount / 4, amount - amount / 4, "
            "operation = 'image', operation = 'video', 0, "
            "CASE WHEN operation = 'video' THEN 8 ELSE 0 END, at, at "
            "FROM ev JOIN models ON models.i = ev.m",
            # The rollups the ledger keeps in the same transaction as each capture.
            "INSERT INTO daily_usage (account_id, unit, catalog, operation, model, day, "
            "requests, input_tokens, output_tokens, images, videos, candidates, amount, "
            "seconds) SELECT account_id, 'token', catalog, operation, model, "
            "substr(completed_at, 1, 10), COUNT(*), SUM(input_tokens), SUM(output_tokens), "
            "SUM(images), SUM(videos), SUM(candidates), SUM(charged), SUM(seconds) "
            "FROM metering_records WHERE status = 'COMPLETED' "
            "GROUP BY account_id, catalog, operation, model, substr(completed_at, 1, 10)",
            "INSERT INTO daily_flows (account_id, day, flow, credits, debits, entries) "
            "SELECT account_id, substr(at, 1, 10), 'capture', 0, SUM(amount), COUNT(*) "
            "FROM ev GROUP BY account_id, substr(at, 1, 10)",
            "CREATE TEMP TABLE spent AS SELECT account_id, SUM(amount) AS amount FROM ev "
            "GROUP BY account_id",
            "CREATE UNIQUE INDEX temp.ix_spent ON spent (account_id)",
            "UPDATE accounts SET balance = balance - "
            "COALESCE((SELECT amount FROM spent WHERE spent.account_id = accounts.id), 0) "
            "WHERE kind = 'wallet'",
            f"UPDATE accounts SET balance = balance + (SELECT SUM(amount) FROM ev) "
            f"WHERE id = {revenue}",
        ]
        for step in steps:
            conn.execute(sa.text(step))
    raw.dispose()
    print(
        f"  built {events:,} events in {time.perf_counter() - started:.0f} s: "
        f"{path.stat().st_size / 2**30:.1f} GiB"
    )
    return path


def time_report(path: Path, fmt: str) -> tuple[float, dict[str, object]]:
    """Seconds for one whole report job of October (all wallets, UTC) in ``fmt``."""
    db = Database.from_url(f"sqlite:///{path}")
    now = datetime(2026, 11, 2, tzinfo=UTC)
    reports = Reports(db, clock=lambda: now)
    job, _ = reports.request("2026-10", fmt)
    started = time.perf_counter()
    claimed = reports.claim(job.id)
    assert claimed is not None
    done = reports.run(claimed)
    elapsed = time.perf_counter() - started
    db.dispose()
    if done.status != "succeeded":
        raise SystemExit(f"report failed: {done.error}")
    return elapsed, done.summary or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="json,csv,parquet,html")
    parser.add_argument("--dir", type=Path, default=None, help="Keep the databases here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sizes = {"small": args.small, "large": args.large}
        paths = {}
        for name, events in sizes.items():
            path = folder / f"report-bench-{events}.db"
            if not path.exists():
                print(f"building {name}: {events:,} usage events, {args.wallets:,} wallets")
                build(path, events, args.wallets)
            paths[name] = path
        results: dict[str, dict[str, list[float]]] = {}
        for fmt in args.formats.split(","):
            results[fmt] = {"small": [], "large": []}
            time_report(paths["small"], fmt)  # warm: imports, page cache
            for _ in range(args.rounds):
                for name in ("small", "large"):
                    seconds, summary = time_report(paths[name], fmt)
                    results[fmt][name].append(seconds)
            requests = summary["totals"][0]["requests"]  # type: ignore[index]
            assert requests == sizes["large"], summary
        report = {}
        for fmt, runs in results.items():
            small = statistics.median(runs["small"])
            large = statistics.median(runs["large"])
            report[fmt] = {
                "small_s": round(small, 3),
                "large_s": round(large, 3),
                "ratio": round(large / small, 2),
                "target_met": large <= 5.0 and large <= 1.5 * small,
            }
            print(
                f"{fmt:8} {sizes['small']:>11,} events: {small:6.2f} s   "
                f"{sizes['large']:>11,} events: {large:6.2f} s   ratio {large / small:4.2f}"
            )
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
