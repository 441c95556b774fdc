"""``creditledger report`` as real processes, and the report worker of ``serve``."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from ledger.db import Database
from ledger.models import accounts, flows, report_jobs
from pricing.money import major_text
from reports.jobs import Reports
from tests.e2e.forked import PROGRAM, environment, run
from tests.e2e.test_admin_cli import server  # noqa: F401 (a fixture)
from tests.e2e.test_cli import _cells
from tests.factories import Traffic


@pytest.fixture
def env(database_url: str, traffic: Traffic) -> dict[str, str]:
    """A ledger holding October 2026's traffic (a SQLite file, then PostgreSQL)."""
    # The commands run by the real clock, which may be within the close delay of a
    # month's turn: last month is then not closed yet (that delay is tested with a test
    # clock, in tests/integration/test_reports.py).
    return {
        "CREDITLEDGER_DATABASE_URL": database_url,
        "CREDITLEDGER_REPORT_CLOSE_DELAY_SECONDS": "0",
    }


def test_monthly_report_in_every_format(env: dict[str, str], tmp_path: Path) -> None:
    page = tmp_path / "october.html"
    # Piped, with no COLUMNS (xdist's workers set 80): each table row on one line.
    made = run(
        "report", "monthly", "2026-10", "--format", "html", "--out", str(page),
        env={**env, "COLUMNS": ""},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "reconciled" in made.stdout
    assert "<svg" in page.read_text()
    # The table's totals are the job's, in major units (the job's are minor units).
    again = run(
        "report", "monthly", "2026-10", "--format", "html", "--out", str(page), "--json", env=env
    )
    totals = json.loads(again.stdout)["summary"]["totals"]
    amounts = ("opening", "credits", "debits", "closing", "usage_amount")
    rows = [
        [cell.strip() for cell in line.split("\u2502")[1:-1]] for line in made.stdout.splitlines()
    ]
    assert [row for row in rows if row] == [
        [t["unit"], str(t["accounts"]), *(major_text(t[k], t["scale"]) for k in amounts)]
        for t in totals
    ]
    usd = next(row for row in rows if row and row[0] == "usd")
    assert usd[2] == "20.000000"  # $20 opening, not 20,000,000 (micro-dollars)

    one = run(
        "report",
        "monthly",
        "2026-10",
        "--account",
        "tokyo",
        "--format",
        "json",
        "--out",
        "-",
        env=env,
    )
    assert one.returncode == 0, one.stderr
    body = json.loads(one.stdout)
    assert [a["account_id"] for a in body["accounts"]] == ["tokyo"]
    assert body["accounts"][0]["open_holds"] == {"count": 1, "amount": 500}

    berlin = run(
        "report", "monthly", "2026-10", "--tz", "Europe/Berlin", "--format", "parquet",
        "--json", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert berlin.returncode == 0, berlin.stderr
    written = Path(json.loads(berlin.stdout)["path"])
    assert written.name == "statement-2026-10.parquet"
    table = pd.read_parquet(tmp_path / written)
    assert set(table["account_id"]) == {"acme", "berlin", "tokyo", "studio"}

    csv = run("report", "monthly", "2026-10", "--out", "-", env=env)
    lines = pd.read_csv(io.StringIO(csv.stdout))
    assert set(lines["section"]) >= {"balance", "credit", "debit", "usage", "usage_daily"}


def test_account_usage_over_a_month_is_the_reports_usage(env: dict[str, str]) -> None:
    month = ("--from", "2026-10-01", "--to", "2026-10-31", "--json")
    wallets = json.loads(run("account", "list", "--json", env=env).stdout)["items"]
    assert len(wallets) == 4
    for wallet in wallets:
        name, zone = wallet["account_id"], wallet["timezone"]
        # The wallet's statement in its own timezone: its month is the same days.
        report = run(
            "report", "monthly", "2026-10", "--account", name, "--tz", zone,
            "--format", "json", "--out", "-", env=env,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        (statement,) = json.loads(report.stdout)["accounts"]
        got = run("account", "usage", name, *month, env=env)
        assert got.returncode == 0, got.stderr
        usage = json.loads(got.stdout)
        by_model: dict[tuple[str, str, str], list[int]] = {}
        for item in usage["items"]:
            sums = by_model.setdefault((item["catalog"], item["operation"], item["model"]), [0, 0])
            sums[0] += item["requests"]
            sums[1] += item["amount"]
        assert by_model == {
            (u["catalog"], u["operation"], u["model"]): [u["requests"], u["amount"]]
            for u in statement["usage"]
        }, name
        assert usage["totals"]["amount"] == sum(sums[1] for sums in by_model.values())
    table = run("account", "usage", "tokyo", "--from", "2026-10-01", "--to", "2026-10-31", env=env)
    assert table.returncode == 0, table.stderr
    assert "veo3_fast" in table.stdout
    assert "total" in table.stdout
    for args, code, field in (
        (["tokyo", "--from", "2026-10"], 2, "from"),
        (["tokyo", "--from", "2026-10-31", "--to", "2026-10-01"], 2, "from"),
        (["tokyo", "--from", "2024-10-01", "--to", "2026-10-01"], 2, "to"),
        (["ghost"], 7, "account_id"),
    ):
        bad = run("account", "usage", *args, env=env)
        assert bad.returncode == code, bad.stderr
        assert json.loads(bad.stderr)["field"] == field


@pytest.mark.parametrize(
    ("args", "code", "field"),
    [
        (["2026-13"], 2, "month"),
        (["2099-01"], 2, "month"),
        (["2026-10", "--format", "xlsx"], 2, "format"),
        (["2026-10", "--tz", "Nowhere/Special"], 2, "timezone"),
        (["2026-10", "--account", "ghost"], 7, "account_id"),
    ],
)
def test_report_errors_exit_with_meaningful_codes(
    env: dict[str, str], args: list[str], code: int, field: str
) -> None:
    result = run("report", "monthly", *args, env=env)
    assert result.returncode == code, result.stderr
    assert json.loads(result.stderr)["field"] == field


def _break_acmes_october(env: dict[str, str]) -> None:
    """Count 5 more debits in acme's daily flows than its journal holds."""
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    with db.transaction() as conn:
        acme = conn.execute(
            sa.select(accounts.c.id).where(accounts.c.external_id == "acme")
        ).scalar_one()
        conn.execute(
            flows.update()
            .where(
                flows.c.account_id == acme, flows.c.day == "2026-10-03", flows.c.flow == "capture"
            )
            .values(debits=flows.c.debits + 5)
        )
    db.dispose()


def test_a_statement_that_does_not_reconcile_fails_naming_the_account(
    env: dict[str, str],
) -> None:
    _break_acmes_october(env)
    result = run("report", "monthly", "2026-10", "--out", "-", env=env)
    assert result.returncode == 9, result.stderr
    failure = json.loads(result.stderr)
    assert failure["error"] == "report_failed"
    assert "[acme]" in failure["message"]
    assert "closing_balance" in failure["message"]
    assert result.stdout == ""


def test_report_run_lists_the_jobs_it_ran_and_exits_9_when_one_failed(
    env: dict[str, str],
) -> None:
    """A cron job runs 'report run': a statement that failed must not pass as done."""
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    try:
        good, _ = Reports(db).request("2026-10", "csv", account_id="tokyo")
        bad, _ = Reports(db).request("2026-10", "json", account_id="acme")
    finally:
        db.dispose()
    _break_acmes_october(env)
    listed = run("report", "run", "--json", env=env)
    assert listed.returncode == 9, listed.stderr
    jobs = {job["id"]: job for job in json.loads(listed.stdout)["jobs"]}
    assert (jobs[good.id]["status"], jobs[bad.id]["status"]) == ("succeeded", "failed")
    failure = json.loads(listed.stderr)
    assert failure["error"] == "report_failed"
    assert bad.id in failure["ids"]
    assert good.id not in failure["ids"]
    assert "[acme]" in failure["message"]
    # Nothing left to run: nothing failed this time.
    again = run("report", "run", env={**env, "COLUMNS": ""})
    assert again.returncode == 0, again.stderr
    assert "0 report job(s) run" in again.stdout
    # The table names each job and how it ended.
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    try:
        retry, _ = Reports(db).request("2026-10", "html", account_id="acme")
    finally:
        db.dispose()
    shown = run("report", "run", env={**env, "COLUMNS": ""})
    assert shown.returncode == 9
    cells = _cells(shown.stdout, retry.id)
    assert cells[:5] == ["failed", "2026-10 (UTC)", "acme", "html", "1"], shown.stdout
    assert "[acme]" in cells[5]  # why it failed
    assert "1 report job(s) run" in shown.stdout


def test_report_monthly_waits_for_the_identical_report_another_worker_is_making(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The same statement, already running in another worker, is not made twice: the
    command follows it until it is done, then writes its file. The worker finishes only
    once the command shows it is following the job (its progress bar, drawn as on a
    terminal, names the job's stage), however slowly the command starts."""
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    try:
        worker = Reports(db)
        job, _ = worker.request("2026-10", "csv")
        claimed = worker.claim(job.id)
        assert claimed is not None
        out = tmp_path / "october.csv"
        terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"}
        with subprocess.Popen(
            [PROGRAM, "report", "monthly", "2026-10", "--out", str(out), "--json"],
            env=environment({**env, **terminal}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: a read gives what the command has written so far
        ) as command:
            shown = bytearray()
            marker = b"statement 2026-10: claimed"  # the job's stage, as the command follows it
            seen = threading.Event()  # the marker, or the command's end

            def watch() -> None:
                assert command.stderr is not None
                while chunk := command.stderr.read(4096):
                    shown.extend(chunk)
                    if marker in shown:
                        seen.set()
                seen.set()

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                assert seen.wait(timeout=120)
                assert marker in shown, shown.decode(errors="replace")
                assert command.poll() is None
                assert not out.exists()
            finally:
                finished = worker.run(claimed)
                try:
                    command.wait(timeout=120)
                finally:
                    if command.poll() is None:
                        command.kill()
                        command.wait()
                    watcher.join(timeout=60)
            assert finished.status == "succeeded"
            assert command.returncode == 0, shown.decode(errors="replace")
            assert command.stdout is not None
            made = json.loads(command.stdout.read())
        assert (made["id"], made["attempts"], made["status"]) == (job.id, 1, "succeeded")
        assert out.read_bytes() == b"".join(worker.output(job.id).chunks())
    finally:
        db.dispose()


def test_report_run_resumes_an_interrupted_job(env: dict[str, str]) -> None:
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    now = datetime.now(UTC)
    ten_minutes_ago = now - timedelta(minutes=10)
    # The last closed month by the real clock (the command's), whatever day the tests run.
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    crashed = Reports(db, clock=lambda: ten_minutes_ago)
    job, _ = crashed.request(last_month, "json")
    assert crashed.claim() is not None  # ...and the worker died with it
    db.dispose()
    done = run("report", "run", env=env)
    assert done.returncode == 0, done.stderr
    # The month-end report 'report run' queues is the very report interrupted: it is not
    # made twice.
    assert "1 report job(s) run" in done.stdout
    shown = json.loads(run("report", "show", job.id, "--json", env=env).stdout)
    assert shown["status"] == "succeeded"
    assert shown["attempts"] == 2
    # For people: a report of every wallet, which ended without an error.
    table = run("report", "show", job.id, env={**env, "COLUMNS": ""}).stdout
    shown_rows = [_cells(table, row) for row in ("status", "account", "attempts", "error")]
    assert shown_rows == [["succeeded"], ["all"], ["2"], [""]], table


def test_report_run_makes_last_months_statement_once(env: dict[str, str]) -> None:
    """With nothing queued, 'report run' makes the month-end statement of the last closed
    month (by the real clock) of every wallet; run again, it makes nothing more."""
    first = run("report", "run", env=env)
    assert first.returncode == 0, first.stderr
    assert "1 report job(s) run" in first.stdout
    assert "0 report job(s) run" in run("report", "run", env=env).stdout
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    try:
        with db.engine.connect() as conn:
            made = conn.execute(sa.select(report_jobs.c.origin, report_jobs.c.status)).all()
    finally:
        db.dispose()
    assert [tuple(row) for row in made] == [("month_end", "succeeded")]


def test_serve_runs_reports_asked_for_over_http(
    server: tuple[str, str, subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    """The server runs on ``env``'s ledger file, which holds October's traffic."""
    url, admin, _ = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as http:
        job = http.post("/v1/reports", json={"month": "2026-10", "format": "html"}).json()
        deadline = time.monotonic() + 60
        while (state := http.get(f"/v1/reports/{job['id']}").json())["status"] != "succeeded":
            assert state["status"] in ("queued", "running"), state
            assert time.monotonic() < deadline, "the server's worker never ran the report"
            time.sleep(0.2)
        page = http.get(state["download_url"])
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<svg" in page.text
