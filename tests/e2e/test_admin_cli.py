"""The admin commands (account, topup, keys) and ``serve``, run as real processes."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from ledger.db import Database, known_revisions
from ledger.services import Ledger
from pricing import default_catalogs
from tests import factories as f
from tests.conftest import _postgres_database, postgres_or_skip
from tests.e2e import forked
from tests.e2e.forked import run
from tests.e2e.served import Served, Threads
from tests.e2e.test_cli import _rows
from tests.e2e.test_cli import run as run_process


def _url(path: Path) -> dict[str, str]:
    return {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{path}"}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger file migrated by the CLI once, for each test to copy (each CLI process
    costs a second or more, mostly imports)."""
    path = tmp_path_factory.mktemp("migrated") / "ledger.db"
    assert run("migrate", env=_url(path)).returncode == 0
    # The process closed the file: SQLite checkpointed and removed its WAL.
    assert not path.with_name("ledger.db-wal").exists()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path, migrated: Path) -> Iterator[dict[str, str]]:
    """The environment of a migrated ledger of the test's own: a copy of the migrated
    SQLite file, then a real PostgreSQL database (the same commands run on both)."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        shutil.copyfile(migrated, path)
        yield _url(path)
        return
    with _postgres_database(postgres_or_skip(request)) as url:
        yield {"CREDITLEDGER_DATABASE_URL": url}


def test_account_create_show_and_topup_in_json_and_tables(env: dict[str, str]) -> None:
    made = run("account", "create", "acme", "--unit", "credit", "--json", env=env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["account_id"] == "acme"
    again = run("account", "create", "acme", "--unit", "credit", env=env)
    assert again.returncode == 8
    assert json.loads(again.stderr)["error"] == "account_exists"

    once = ("topup", "acme", "500", "--kind", "promo", "--idempotency-key", "t1")
    top = run(*once, "--json", env=env)
    assert top.returncode == 0, top.stderr
    assert json.loads(top.stdout)["balance"]["balance"] == 500
    assert "already done" not in top.stderr
    replay = run(*once, "--json", env=env)
    assert replay.returncode == 0
    assert json.loads(replay.stdout) == json.loads(top.stdout)  # the first answer, as it was
    assert "already done" in replay.stderr  # ... said to be one
    shown = run("account", "show", "acme", "--json", env=env)
    assert json.loads(shown.stdout)["balance"] == 500  # the replay added nothing
    table = run("account", "show", "acme", env=env)
    assert table.returncode == 0
    assert "available" in table.stdout
    assert "None" not in table.stdout  # a setting not set (a monthly allocation) is blank
    now = json.loads(run("account", "balance", "acme", "--json", env=env).stdout)
    assert (now["balance"], now["available"], now["as_of"]) == (500, 500, None)
    past = ("account", "balance", "acme", "--as-of", "2000-01-01T00:00:00+01:00")
    then = json.loads(run(*past, "--json", env=env).stdout)
    assert (then["balance"], then["as_of"]) == (0, "1999-12-31T23:00:00Z")
    assert "1999-12-31T23:00:00+00:00" in run(*past, env=env).stdout
    line = ("account", "update", "acme", "--overdraft-limit", "50", "--reason", "trusted")
    updated = run(*line, "--idempotency-key", "u1", "--json", env=env)
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["available"] == 550
    assert run(*line, "--idempotency-key", "u1", env=env).returncode == 0  # a replay
    stop = run("account", "update", "acme", "--no-monthly-allocation", env=env)
    assert stop.returncode == 0, stop.stderr
    plan = run("account", "update", "acme", "--monthly-allocation", "1000", env=env)
    assert plan.returncode == 0, plan.stderr
    history = json.loads(run("account", "changes", "acme", "--json", env=env).stdout)
    # The replay added nothing; stopping an allocation the wallet did not have changed nothing.
    assert [(c["setting"], c["old_value"], c["new_value"]) for c in history["items"]] == [
        ("monthly_allocation", None, 1000),
        ("overdraft_limit", 0, 50),
    ]
    assert "trusted" in run("account", "changes", "acme", env=env).stdout

    settings = {"overdraft_limit": 25, "monthly_allocation": 300, "timezone": "Asia/Tokyo"}
    options = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
    zeta = run("account", "create", "zeta", "--unit", "token", *options, "--json", env=env)
    assert zeta.returncode == 0, zeta.stderr
    opened = json.loads(zeta.stdout)
    assert {name: opened[name] for name in settings} == settings
    assert (opened["balance"], opened["available"]) == (300, 325)  # this month's allocation
    listed = run("account", "list", "--limit", "1", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    first = json.loads(listed.stdout)
    assert [a["account_id"] for a in first["items"]] == ["acme"]
    assert first["items"][0]["balance"] == 1500  # 500, and its allocation set just above
    rest = run("account", "list", "--cursor", first["next_cursor"], "--json", env=env)
    assert [a["account_id"] for a in json.loads(rest.stdout)["items"]] == ["zeta"]
    listing = run("account", "list", env=env)
    assert listing.returncode == 0
    assert "acme" in listing.stdout
    assert "zeta" in listing.stdout
    assert run("account", "list", "--unit", "gold", env=env).returncode == 2
    holds = run("account", "holds", "acme", "--json", env=env)
    assert holds.returncode == 0, holds.stderr
    assert json.loads(holds.stdout) == {"items": [], "next_cursor": None}
    assert "authorizations of acme" in run("account", "holds", "acme", env=env).stdout
    assert run("account", "holds", "ghost", env=env).returncode == 7
    assert "promo" in table.stdout
    # On an 80-column terminal a long id, amount or instant folds; it is never cut short.
    big = ("topup", "acme", str(10**17), "--expires-at", "2099-01-01T00:00:00Z")
    topped = run(*big, "--idempotency-key", "t-big", "--json", env=env)
    assert topped.returncode == 0, topped.stderr
    assert json.loads(topped.stdout)["grant"]["expires_at"] == "2099-01-01T00:00:00Z"
    narrow = run("account", "show", "acme", env={**env, "COLUMNS": "80"})
    assert "…" not in narrow.stdout, narrow.stdout


def test_a_piped_table_keeps_each_row_on_one_line(migrated: Path, tmp_path: Path) -> None:
    """Piped (to a file, ``grep`` or ``less``) there is no terminal to fit: rich took 80
    columns and folded a 32-digit entry id over two lines, which no ``grep`` for the id
    found. ``COLUMNS`` still sets a width, as a terminal's does."""
    path = tmp_path / "ledger.db"
    shutil.copyfile(migrated, path)
    env = {**_url(path), "COLUMNS": ""}
    assert run("account", "create", "acme", "--unit", "credit", env=env).returncode == 0
    made = run("topup", "acme", "5000", "--json", env=env)
    entry = json.loads(made.stdout)["entry"]["id"]
    for command in (("account", "entries", "acme"), ("journal", "--kind", "topup")):
        piped = run(*command, env=env)
        assert piped.returncode == 0, piped.stderr
        row = [cells for cells in _rows(piped.stdout) if entry in cells]
        assert len(row) == 1, piped.stdout
        assert row[0][1:4] == ["topup", "acme", "5000"]  # what the wallet got, signed
        narrow = run(*command, env={**env, "COLUMNS": "80"})
        assert max(map(len, narrow.stdout.splitlines())) <= 80
        assert entry not in narrow.stdout  # folded: the terminal's width is kept


def test_account_list_finds_the_wallets_short_of_a_price_or_in_debt(env: dict[str, str]) -> None:
    opened = (
        ("rich", "--unit", "credit"),
        ("held", "--unit", "credit"),
        ("debtor", "--unit", "credit", "--overdraft-limit", "300"),
        ("tokens", "--unit", "token"),
    )
    for args in opened:
        assert run("account", "create", *args, env=env).returncode == 0
    assert run("topup", "rich", "1000", env=env).returncode == 0
    assert run("topup", "held", "100", env=env).returncode == 0
    spent = run("account", "adjust", "debtor", "-240", "--reason", "usage", env=env)
    assert spent.returncode == 0, spent.stderr
    lowered = run("account", "update", "debtor", "--overdraft-limit", "100", "--json", env=env)
    assert json.loads(lowered.stdout)["debt"] == 140

    def listed(*options: str) -> dict[str, int]:
        done = run("account", "list", *options, "--json", env=env)
        assert done.returncode == 0, done.stderr
        return {a["account_id"]: a["available"] for a in json.loads(done.stdout)["items"]}

    assert listed("--unit", "credit", "--available-below", "240") == {"held": 100, "debtor": -140}
    assert listed("--unit", "credit", "--available-below=-140") == {}
    assert listed("--in-debt") == {"debtor": -140}
    assert set(listed("--not-in-debt")) == {"rich", "held", "tokens"}
    table = run("account", "list", "--in-debt", env=env)
    assert "debtor" in table.stdout
    assert "rich" not in table.stdout
    needs_unit = run("account", "list", "--available-below", "240", env=env)
    assert needs_unit.returncode == 2
    assert json.loads(needs_unit.stderr)["field"] == "unit"
    beyond = run("account", "list", "--unit", "credit", "--available-below", str(2**63), env=env)
    assert beyond.returncode == 2
    assert json.loads(beyond.stderr)["field"] == "available_below"


def test_journal_and_entries_find_one_payment_by_its_reference(env: dict[str, str]) -> None:
    for wallet in ("acme", "zeta"):
        assert run("account", "create", wallet, "--unit", "credit", env=env).returncode == 0
    made: dict[str, list[str]] = {}
    for wallet in ("acme", "zeta", "acme"):
        topped = run("topup", wallet, "100", "--reference", f"inv-{wallet}", "--json", env=env)
        assert topped.returncode == 0, topped.stderr
        made.setdefault(wallet, []).append(json.loads(topped.stdout)["entry"]["id"])
    taken = run("reverse", made["acme"][0], "--reason", "chargeback", "--json", env=env)
    assert taken.returncode == 0, taken.stderr
    undone = json.loads(taken.stdout)["entry"]["id"]

    def found(*command: str) -> list[str]:
        done = run(*command, "--json", env=env)
        assert done.returncode == 0, done.stderr
        return sorted(e["id"] for e in json.loads(done.stdout)["items"])

    assert found("journal", "--reference", "inv-acme") == sorted([*made["acme"], undone])
    assert found("account", "entries", "zeta", "--reference", "inv-acme") == []
    assert found("account", "entries", "zeta", "--reference", "inv-zeta") == made["zeta"]
    table = run("journal", "--reference", "inv-zeta", env={**env, "COLUMNS": ""}).stdout
    assert "pack top-up (inv-zeta)" in table  # piped, unfolded
    assert "inv-acme" not in table
    refused = run("journal", "--reference", "", env=env)
    assert refused.returncode == 2
    assert json.loads(refused.stderr)["field"] == "reference"


def test_account_block_unblock_and_spend_limit(env: dict[str, str]) -> None:
    assert run("account", "create", "acme", "--unit", "credit", env=env).returncode == 0
    capped = ("account", "create", "zeta", "--unit", "credit", "--monthly-spend-limit", "500")
    made = json.loads(run(*capped, "--json", env=env).stdout)
    assert (made["monthly_spend_limit"], made["spend_remaining"]) == (500, 500)
    lifted = run("account", "update", "zeta", "--no-monthly-spend-limit", "--json", env=env)
    assert json.loads(lifted.stdout)["monthly_spend_limit"] is None
    blocked = run("account", "update", "acme", "--block", "--reason", "fraud", env=env)
    assert blocked.returncode == 0, blocked.stderr
    assert "no new authorizations or charges" in blocked.stdout
    listed = json.loads(run("account", "list", "--blocked", "--json", env=env).stdout)
    assert [(a["account_id"], a["blocked"]) for a in listed["items"]] == [("acme", True)]
    table = run("account", "list", "--unblocked", env=env).stdout
    assert "zeta" in table
    assert "acme" not in table
    unblocked = run("account", "update", "acme", "--unblock", "--json", env=env)
    assert json.loads(unblocked.stdout)["blocked"] is False
    history = run("account", "changes", "acme", env=env).stdout
    rows = [[c.strip() for c in line.split("│")] for line in history.splitlines()]
    assert [row[2:5] for row in rows if "blocked" in row] == [
        ["blocked", "yes", "no"],
        ["blocked", "no", "yes"],
    ]


def test_estimate_for_a_wallet_says_whether_it_can_pay(env: dict[str, str]) -> None:
    """``estimate --account``: POST /v1/estimates with account_id, from the CLI."""
    veo = json.dumps(f.veo3_video(video_model="veo3_fast"))
    assert run("account", "create", "veo-user", "--unit", "credit", env=env).returncode == 0
    assert run("topup", "veo-user", "100", env=env).returncode == 0

    def quote(*options: str) -> dict[str, Any]:
        result = run("estimate", "--account", "veo-user", *options, "--json", stdin=veo, env=env)
        assert result.returncode == 0, result.stderr
        body: dict[str, Any] = json.loads(result.stdout)
        return body

    short = quote()
    assert (short["max_cost"], short["affordable"], short["credits_balance"]) == (240, False, 100)
    assert (short["blocked"], short["spend_remaining"]) == (False, None)
    table = run("estimate", "--account", "veo-user", stdin=veo, env=env).stdout
    assert "no: it has less available than the max cost" in table
    assert "100 credit" in table
    # Exactly the max cost is enough; with a spend limit short of it, the limit is the reason.
    assert run("topup", "veo-user", "140", env=env).returncode == 0
    assert (quote()["affordable"], quote()["credits_balance"]) == (True, 240)
    assert "yes" in run("estimate", "--account", "veo-user", stdin=veo, env=env).stdout
    capped = ("account", "update", "veo-user", "--monthly-spend-limit", "100")
    assert run(*capped, env=env).returncode == 0
    limited = quote()
    assert (limited["affordable"], limited["spend_remaining"]) == (False, 100)
    table = run("estimate", "--account", "veo-user", stdin=veo, env=env).stdout
    assert "no: its monthly spend limit leaves less than the max cost" in table
    assert run("account", "update", "veo-user", "--block", env=env).returncode == 0
    assert quote()["blocked"] is True
    assert (
        "no: the wallet is blocked"
        in run("estimate", "--account", "veo-user", stdin=veo, env=env).stdout
    )
    # Asking changed nothing: no hold, no entry beyond the two top-ups.
    shown = json.loads(run("account", "show", "veo-user", "--json", env=env).stdout)
    assert (shown["balance"], shown["pending"]) == (240, 0)

    def refused(*args: str, stdin: str = veo) -> tuple[int, str | None]:
        result = run("estimate", *args, stdin=stdin, env=env)
        assert result.stdout == ""
        return result.returncode, json.loads(result.stderr).get("field")

    assert refused("--account", "nobody") == (7, "account_id")
    assert refused("--account", "veo-user", "--at", "2026-01-01T00:00:00Z") == (2, "at")
    token = json.dumps(f.cosmic_image())
    assert refused("--account", "veo-user", stdin=token) == (2, "catalog")  # bills in token
    unpriced = json.dumps(f.fal_video())
    assert refused("--account", "veo-user", stdin=unpriced) == (4, "operation")


def test_account_revoke_grant_and_entries(env: dict[str, str]) -> None:
    assert run("account", "create", "acme", "--unit", "credit", env=env).returncode == 0
    top = run("topup", "acme", "500", "--kind", "promo", "--json", env=env)
    grant = json.loads(top.stdout)["grant"]["id"]
    revoked = run("account", "revoke-grant", grant, "--reason", "withdrawn", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert re.search(r"taken back\s*\u2502\s*500\s*\u2502", revoked.stdout), revoked.stdout
    again = run("account", "revoke-grant", grant, "--reason", "withdrawn", env=env)
    assert (again.returncode, json.loads(again.stderr)["error"]) == (8, "grant_not_open")
    assert run("account", "revoke-grant", "ghost", "--reason", "x", env=env).returncode == 7
    expiries = run("account", "entries", "acme", "--kind", "expiry", "--json", env=env)
    assert [e["memo"] for e in json.loads(expiries.stdout)["items"]] == [
        f"grant {grant} revoked: withdrawn"
    ]
    journal = json.loads(run("account", "entries", "acme", "--json", env=env).stdout)["items"]
    # Each names who made it: the CLI and the user running it.
    me = f"cli:{getpass.getuser()}"
    assert [(e["kind"], e["actor"]) for e in journal] == [("expiry", me), ("topup", me)]
    mine = run("journal", "--actor", me, "--kind", "topup", "--json", env=env)
    assert [e["id"] for e in json.loads(mine.stdout)["items"]] == [journal[1]["id"]]
    assert "acme" in run("journal", "--actor", me, env=env).stdout
    by_me = run("account", "entries", "acme", "--actor", me, "--json", env=env)
    assert [e["id"] for e in json.loads(by_me.stdout)["items"]] == [e["id"] for e in journal]
    by_other = run("account", "entries", "acme", "--actor", "cli:someone-else", "--json", env=env)
    assert json.loads(by_other.stdout)["items"] == []
    table = run("account", "entries", "acme", "--since", "2000-01-01T00:00:00Z", env=env)
    assert "expiry" in table.stdout
    assert "-500" in table.stdout
    assert "topup" in table.stdout
    # A table of one page says how to read the next; the last page says nothing more.
    first = run("account", "entries", "acme", "--limit", "1", env=env)
    more = re.search(r"^more: --cursor (\S+)$", first.stdout, re.MULTILINE)
    assert more is not None, first.stdout
    assert "expiry" in first.stdout
    assert "topup" not in first.stdout
    rest = run("account", "entries", "acme", "--limit", "1", "--cursor", more[1], env=env)
    assert "topup" in rest.stdout
    assert "expiry" not in rest.stdout
    assert "more:" not in rest.stdout


def test_a_login_name_longer_than_the_record_holds_is_cut_to_fit(env: dict[str, str]) -> None:
    """An entry's actor holds 80 characters: the CLI run by a login name of 100 records
    ``cli:`` and the name's first 76, rather than failing the top-up (PostgreSQL refuses
    a longer value) or storing more than the column holds (SQLite would)."""
    # A process of its own: the forked commands' environment cannot name the login.
    long_login = {**env, "LOGNAME": "x" * 100}
    made = run_process("account", "create", "acme", "--unit", "credit", env=long_login)
    assert made.returncode == 0, made.stderr
    top = run_process("topup", "acme", "5", env=long_login)
    assert top.returncode == 0, top.stderr
    journal = json.loads(run("account", "entries", "acme", "--json", env=env).stdout)["items"]
    assert [e["actor"] for e in journal] == ["cli:" + "x" * 76]


def test_account_hold_and_void_hold_release_a_hold_its_gateway_lost(env: dict[str, str]) -> None:
    """A gateway crashed holding 240 of a Veo3 user's credits: an admin finds the hold,
    reads it, and releases it from the CLI, once (a retry with its key is the same
    answer; a second void is a conflict), charging nothing."""
    assert run("account", "create", "veo", "--unit", "credit", env=env).returncode == 0
    assert run("topup", "veo", "1000", env=env).returncode == 0
    with _ledger_at(env) as ledger:
        held = ledger.authorize("veo", f.veo3_video(video_model="veo3_fast"), idempotency_key="a")
    pending = json.loads(
        run("account", "holds", "veo", "--status", "pending", "--json", env=env).stdout
    )
    assert [h["id"] for h in pending["items"]] == [held.id]

    shown = run("account", "hold", held.id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"status\s*\u2502\s*pending\s*\u2502", shown.stdout), shown.stdout
    assert re.search(r"available\s*\u2502\s*760\s*\u2502", shown.stdout), shown.stdout
    assert "veo3 video veo3_fast" in shown.stdout

    voided = run("account", "void-hold", held.id, "--idempotency-key", "v1", "--json", env=env)
    assert voided.returncode == 0, voided.stderr
    body = json.loads(voided.stdout)
    assert (body["status"], body["held"], body["captured"], body["credits_remaining"]) == (
        "voided",
        240,
        None,
        1000,
    )
    again = run("account", "void-hold", held.id, "--idempotency-key", "v1", "--json", env=env)
    assert (again.returncode, json.loads(again.stdout)) == (0, body)
    assert again.stderr.startswith("already done")
    twice = run("account", "void-hold", held.id, env=env)
    assert (twice.returncode, json.loads(twice.stderr)["error"]) == (8, "hold_not_pending")
    assert run("account", "void-hold", "ghost", env=env).returncode == 7
    assert run("account", "hold", "ghost", env=env).returncode == 7
    with _ledger_at(env) as ledger:
        money = ledger.balance("veo")
        assert (money.balance, money.pending, money.available) == (1000, 0, 1000)
        (record,) = ledger.usage_records("veo").items
        assert (record.status, record.charged) == ("voided", 0)


def test_account_usage_records(env: dict[str, str]) -> None:
    assert run("account", "create", "acme", "--unit", "credit", env=env).returncode == 0
    assert run("topup", "acme", "1000", env=env).returncode == 0
    with _ledger_at(env) as ledger:  # the gateway's traffic
        veo = f.veo3_video(video_model="veo3_fast")
        charged = ledger.charge("acme", veo, idempotency_key="c1", request_id="req-1")
        hold = ledger.authorize("acme", veo, idempotency_key="a1", request_id="req-2")
        ledger.capture(hold.id, status="ERROR", usage={}, idempotency_key="x1")
    listed = run("account", "usage-records", "acme", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["items"]
    assert [(r["request_id"], r["status"], r["charged"]) for r in items] == [
        ("req-2", "ERROR", 0),
        ("req-1", "CHARGED", 240),
    ]
    assert items[1]["id"] == charged.id
    one = run("account", "usage-records", "acme", "--request-id", "req-1", "--json", env=env)
    assert [r["id"] for r in json.loads(one.stdout)["items"]] == [charged.id]
    table = run("account", "usage-records", "acme", "--status", "CHARGED", env=env)
    assert "usage records of acme" in table.stdout
    assert "req-1" in table.stdout
    assert "req-2" not in table.stdout
    assert "240" in table.stdout
    with _ledger_at(env) as ledger:  # one more, left pending
        waiting = ledger.authorize("acme", veo, idempotency_key="a2", request_id="req-3")
    for status, ids in (("pending", [waiting.id]), ("captured", [hold.id]), ("voided", [])):
        held = run("account", "holds", "acme", "--status", status, "--json", env=env)
        assert [h["id"] for h in json.loads(held.stdout)["items"]] == ids, status


def test_adjust_and_reverse_correct_a_wallet_from_the_cli(env: dict[str, str]) -> None:
    """An admin's corrections without curl: an adjustment either way, a refund of a
    charge, each retry-safe and each refused whole."""
    assert run("account", "create", "acme", "--unit", "credit", env=env).returncode == 0
    assert run("topup", "acme", "1000", env=env).returncode == 0
    with _ledger_at(env) as ledger:  # the gateway's traffic
        charged = ledger.charge("acme", f.veo3_video(video_model="veo3_fast"), idempotency_key="c")
    charge_entry = charged.entry_id
    assert charge_entry is not None

    credit = run("account", "adjust", "acme", "50", "--reason", "goodwill", "--json", env=env)
    assert credit.returncode == 0, credit.stderr
    body = json.loads(credit.stdout)
    assert (body["entry"]["kind"], body["entry"]["memo"]) == ("adjustment", "goodwill")
    assert body["balance"]["balance"] == 1000 - 240 + 50
    # A negative amount is the amount, not an option; with a key, a retry does nothing more.
    debit = ("account", "adjust", "acme", "-100", "--reason", "granted twice")
    first = run(*debit, "--idempotency-key", "fix-1", env=env)
    assert first.returncode == 0, first.stderr
    assert "adjusted acme" in first.stdout
    assert "-100" in first.stdout
    again = run(*debit, "--idempotency-key", "fix-1", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["balance"]["balance"] == 710
    assert _balances(env, "acme") == [710]

    refund = run("reverse", charge_entry, "--reason", "blank video", env=env)
    assert refund.returncode == 0, refund.stderr
    assert "reversed " + charge_entry in refund.stdout
    assert "240" in refund.stdout
    assert _balances(env, "acme") == [950]
    records = run("account", "usage-records", "acme", "--json", env=env)
    (record,) = json.loads(records.stdout)["items"]
    assert record["reversed_by"] is not None
    with _ledger_at(env) as ledger:
        (reversal,) = ledger.entries("acme", kind="reversal").items
        assert (reversal.id, reversal.reverses_id) == (record["reversed_by"], charge_entry)
        assert reversal.actor == f"cli:{getpass.getuser()}"
        adjustments = ledger.entries("acme", kind="adjustment").items
        moved = [p.amount for e in adjustments for p in e.postings if p.account_id == "acme"]
        assert sorted(moved) == [-100, 50]

    refused = [
        (("reverse", charge_entry, "--reason", "twice"), 8, "already_reversed"),
        (("reverse", reversal.id, "--reason", "undo"), 8, "not_reversible"),
        (("reverse", "ghost", "--reason", "x"), 7, "not_found"),
        (("account", "adjust", "ghost", "5", "--reason", "x"), 7, "not_found"),
        (("account", "adjust", "acme", "0", "--reason", "x"), 2, "amount"),
        (("account", "adjust", "acme", str(2**63), "--reason", "x"), 2, "amount"),
        (("account", "adjust", "acme", str(-(2**63)), "--reason", "x"), 2, "amount"),
        (("account", "adjust", "acme", "5", "--reason", ""), 2, "reason"),
        (
            ("account", "adjust", "acme", "-99", "--reason", "x", "--idempotency-key", "fix-1"),
            8,
            "idempotency_conflict",
        ),
    ]
    for args, code, what in refused:
        out = run(*args, env=env)
        assert out.returncode == code, (args, out.stderr)
        error = json.loads(out.stderr)
        assert what in (error["error"], error.get("field")), (args, error)
    # Without a reason, or with an amount that is no number: the usage error, exit 2.
    assert run("account", "adjust", "acme", "5", env=env).returncode == 2
    assert run("account", "adjust", "acme", "lots", "--reason", "x", env=env).returncode == 2
    assert _balances(env, "acme") == [950]  # none of them changed anything
    assert run("verify", env=env).returncode == 0


@pytest.fixture(scope="module")
def migrated_with_acme(migrated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The migrated file with the wallet ``acme`` (credits) opened by the CLI."""
    path = tmp_path_factory.mktemp("acme") / "ledger.db"
    shutil.copyfile(migrated, path)
    assert run("account", "create", "acme", "--unit", "credit", env=_url(path)).returncode == 0
    assert not path.with_name("ledger.db-wal").exists()
    return path


@pytest.mark.parametrize(
    ("args", "code", "field"),
    [
        (["topup", "ghost", "5"], 7, "account_id"),
        (["topup", "acme", "0"], 2, "amount"),
        (["topup", "acme", "5", "--kind", "gift"], 2, "kind"),
        (["topup", "acme", "5", "--expires-at", "tomorrow"], 2, "expires-at"),
        (["account", "create", "x", "--unit", "gold"], 2, "unit"),
        (["account", "show", "ghost"], 7, "account_id"),
        (["account", "balance", "ghost"], 7, "account_id"),
        (["account", "entries", "acme", "--kind", "refund"], 2, "kind"),
        (["account", "usage-records", "acme", "--status", "done"], 2, "status"),
        (["account", "usage-records", "acme", "--since", "yesterday"], 2, "since"),
        (["account", "usage-records", "ghost"], 7, "account_id"),
        (["account", "update", "acme"], 2, "body"),
        (["account", "update", "acme", "--overdraft-limit", "-1"], 2, "overdraft_limit"),
        (
            ["account", "update", "acme", "--monthly-spend-limit", "5", "--no-monthly-spend-limit"],
            2,
            "monthly-spend-limit",
        ),
        (
            ["account", "update", "acme", "--monthly-allocation", "5", "--no-monthly-allocation"],
            2,
            "monthly-allocation",
        ),
        (["account", "update", "ghost", "--overdraft-limit", "5"], 7, "account_id"),
        (["account", "changes", "ghost"], 7, "account_id"),
        (["account", "balance", "acme", "--as-of", "yesterday"], 2, "as-of"),
        # An instant without its timezone is no instant: refused, not read as local time.
        (["account", "balance", "acme", "--as-of", "2026-01-01T00:00:00"], 2, "as-of"),
        (["account", "entries", "acme", "--since", "2026-01-01T00:00:00"], 2, "since"),
        # A day is YYYY-MM-DD, not the other forms ISO 8601 (and fromisoformat) also read.
        (["account", "usage", "acme", "--from", "20261101"], 2, "from"),
        (["account", "usage", "acme", "--to", "2026-W47-1"], 2, "to"),
        (["account", "balance", "acme", "--as-of", "9999-12-31T23:00:00-05:00"], 2, "as_of"),
        (["account", "balance", "acme", "--as-of", "9999-12-31T00:00:00Z"], 2, "as_of"),
        (["keys", "create", "--role", "root"], 2, "role"),
        (["keys", "create", "--role", "service", "--name", "n" * 201], 2, "name"),
        (["keys", "revoke", "ghost"], 7, "id"),
    ],
)
def test_admin_errors_exit_with_meaningful_codes(
    migrated_with_acme: Path, tmp_path: Path, args: list[str], code: int, field: str
) -> None:
    path = tmp_path / "ledger.db"
    shutil.copyfile(migrated_with_acme, path)
    result = run(*args, env=_url(path))
    assert result.returncode == code, result.stderr
    assert json.loads(result.stderr)["field"] == field


def test_a_key_name_of_200_characters_is_kept_whole(env: dict[str, str]) -> None:
    """The bound is 200 characters, not bytes: a name of 200 two-byte characters is made
    and listed as it was given (201 is refused, above)."""
    name = "\u00e9" * 200
    made = run("keys", "create", "--role", "service", "--name", name, "--json", env=env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == name
    listed = run("keys", "list", "--json", env=env)
    assert [k["name"] for k in json.loads(listed.stdout)["items"]] == [name]


def test_keys_create_list_revoke(env: dict[str, str]) -> None:
    made = run("keys", "create", "--role", "service", "--name", "gateway", "--json", env=env)
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith(f"clk_{created['id']}_")
    listed = run("keys", "list", "--json", env=env)
    assert [k["id"] for k in json.loads(listed.stdout)["items"]] == [created["id"]]
    assert json.loads(listed.stdout)["items"][0]["expires_at"] is None
    assert created["key"] not in listed.stdout
    lasting = ("keys", "create", "--role", "service", "--expires-at", "2099-01-01T00:00:00Z")
    until = json.loads(run(*lasting, "--json", env=env).stdout)
    assert until["expires_at"] == "2099-01-01T00:00:00Z"
    piped = {**env, "COLUMNS": ""}  # as to a file or grep: each row on one line
    table = run("keys", "list", env=piped).stdout
    assert "2099-01-01T00:00:00+00:00" in table
    # Who made each key: this CLI's user (the journal's actor for the CLI).
    [row] = [line for line in table.splitlines() if until["id"] in line]
    assert f"│ cli:{getpass.getuser()} " in row
    past = run("keys", "create", "--role", "service", "--expires-at", "2001-01-01T00:00Z", env=env)
    assert (past.returncode, json.loads(past.stderr)["field"]) == (2, "expires_at")
    revoked = run("keys", "revoke", created["id"], "--json", env=env)
    assert revoked.returncode == 0
    me = f"cli:{getpass.getuser()}"
    assert json.loads(revoked.stdout)["revoked_at"]
    assert (created["created_by"], json.loads(revoked.stdout)["revoked_by"]) == (me, me)
    mine = run("keys", "list", "--created-by", me, "--json", env=env)
    assert [k["id"] for k in json.loads(mine.stdout)["items"]] == [created["id"], until["id"]]
    others = run("keys", "list", "--created-by", "key:0123456789abcdef", "--json", env=env)
    assert json.loads(others.stdout) == {"items": [], "next_cursor": None}
    live = run("keys", "list", "--role", "service", "--active", "--json", env=env)
    assert [k["id"] for k in json.loads(live.stdout)["items"]] == [until["id"]]
    gone = run("keys", "list", "--inactive", "--json", env=env)
    assert [k["id"] for k in json.loads(gone.stdout)["items"]] == [created["id"]]
    acme = run("keys", "list", "--account", "acme", "--json", env=env).stdout
    assert json.loads(acme)["items"] == []
    # A page at a time: the table says how to read on, and the next page carries on.
    first = run("keys", "list", "--limit", "1", env=piped)
    cursor = json.loads(run("keys", "list", "--limit", "1", "--json", env=env).stdout)[
        "next_cursor"
    ]
    assert f"more: --cursor {cursor}" in first.stdout
    rest = run("keys", "list", "--limit", "1", "--cursor", cursor, "--json", env=env)
    assert json.loads(rest.stdout) == {
        "items": [json.loads(mine.stdout)["items"][1]],
        "next_cursor": None,
    }
    for option, value in (("--limit", "0"), ("--cursor", "nonsense")):
        refused = run("keys", "list", option, value, env=env)
        assert (refused.returncode, json.loads(refused.stderr)["field"]) == (2, option[2:])


@pytest.mark.parametrize(("setting", "refused"), [("0", True), ("3600", False)])
def test_a_key_revoked_with_the_cli_is_refused_by_a_server_as_its_key_cache_says(
    env: dict[str, str], serve: Callable[[dict[str, str]], Served], setting: str, refused: bool
) -> None:
    """CREDITLEDGER_KEY_CACHE_SECONDS: how long a server remembers a key it found valid.
    With 0 it reads the key at every request, so a revocation made by another process (the
    CLI) applies at once; with an hour, the key it just accepted is still taken after it."""
    made = json.loads(run("keys", "create", "--role", "service", "--json", env=env).stdout)
    served = serve({**env, "CREDITLEDGER_KEY_CACHE_SECONDS": setting}).start()
    auth = {"Authorization": f"Bearer {made['key']}"}
    with httpx.Client(base_url=served.url, headers=auth, timeout=10) as http:
        assert http.get("/v1/catalogs").status_code == 200
        assert run("keys", "revoke", made["id"], env=env).returncode == 0
        assert http.get("/v1/catalogs").status_code == (401 if refused else 200)


def test_tables_show_the_operators_text_as_it_is(migrated: Path, tmp_path: Path) -> None:
    """Rich reads ``[bold]`` in printed text as markup, fails on ``[/]``, and turns
    ``:rocket:`` into an emoji: a table showed ``[bold red]loud`` as ``loud``, a wallet
    that ``account show loud`` then does not find."""
    path = tmp_path / "ledger.db"
    shutil.copyfile(migrated, path)
    env = {**_url(path), "COLUMNS": "250"}
    names = ["[bold red]loud", "team:rocket:", "50%[link=mailto:x]x[dim]"]
    for name in names:
        made = run("account", "create", name, "--unit", "credit", env=env)
        assert made.returncode == 0, made.stderr
        shown = run("account", "show", name, env=env)
        assert (shown.returncode, shown.stderr) == (0, "")
        assert f"│ {name} " in shown.stdout
        entries = run("account", "entries", name, env=env)
        assert (entries.returncode, entries.stderr) == (0, "")
    listed = run("account", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("│")[1].strip() for line in listed.stdout.splitlines() if "│" in line]
    assert rows == names  # each wallet, in the order they were opened
    made = run("keys", "create", "--role", "service", "--name", "[/]gateway :key:", env=env)
    assert made.returncode == 0, made.stderr
    keys = run("keys", "list", env=env)
    assert (keys.returncode, keys.stderr) == (0, "")
    assert "│ [/]gateway :key: " in keys.stdout


@pytest.fixture
def server(
    env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """``creditledger serve`` on a free port; yields its URL, admin key and process."""
    served = Served(
        {**env, "CREDITLEDGER_SWEEP_INTERVAL_SECONDS": "0.2", "CREDITLEDGER_HOLD_TTL_SECONDS": "1"},
        tmp_path,
    ).start()
    assert served.admin is not None, "serve printed no admin key"
    assert served.proc is not None
    try:
        yield served.url, served.admin, served.proc
    finally:
        served.stop()


def test_serve_runs_the_veo3_flow_over_real_http_and_sweeps_holds(
    server: tuple[str, str, subprocess.Popen[bytes]], env: dict[str, str]
) -> None:
    url, admin, _ = server
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=url, headers=auth, timeout=10) as http:
        dialect = env["CREDITLEDGER_DATABASE_URL"].split(":")[0].split("+")[0]
        assert http.get("/healthz").json()["database"] == dialect
        assert http.post("/v1/accounts", json={"id": "u", "unit": "credit"}).status_code == 201
        assert http.post("/v1/accounts/u/topups", json={"amount": 100}).status_code == 201
        request = {"account_id": "u", **f.veo3_video(video_model="veo3_fast")}
        short = http.post("/v1/authorizations", json=request)
        assert short.status_code == 402
        assert short.json()["message"] == "Insufficient credits. Need 240, have 100"
        assert http.post("/v1/accounts/u/topups", json={"amount": 400}).status_code == 201
        # Held for a minute rather than the server's 1 s default, so a busy machine's
        # pause between this authorization and its capture cannot expire it.
        hold = http.post("/v1/authorizations", json={**request, "ttl_seconds": 60}).json()
        done = http.post(
            f"/v1/authorizations/{hold['id']}/capture",
            json={"status": "COMPLETED", "usage": {"videos": 1}},
        )
        assert done.json()["charged"] == 240
        # A hold left alone: the server's sweeper expires it (TTL 1 s, sweep every 0.2 s).
        idle = http.post("/v1/authorizations", json=request).json()
        deadline = time.monotonic() + 15
        while http.get(f"/v1/authorizations/{idle['id']}").json()["status"] == "pending":
            assert time.monotonic() < deadline, "the sweeper never expired the hold"
            time.sleep(0.2)
        late = http.post(
            f"/v1/authorizations/{idle['id']}/void",
        )
        assert late.status_code == 409
        assert http.get("/v1/accounts/u").json()["available"] == 260
        assert "creditledger_holds_opened_total 2.0" in http.get("/metrics").text
    verified = run("verify", "--json", env=env)
    assert verified.returncode == 0, verified.stdout


def test_a_capture_whose_catalog_version_was_removed_waits_for_it_to_be_restored(
    env: dict[str, str], tmp_path: Path
) -> None:
    """An operator replaced the catalog a pending hold was quoted with. Its capture is
    not the gateway's error (a 422 it would drop, losing the charge) but the server's:
    503 catalog_changed, nothing charged, until the version is back; serve warns of such
    holds as it starts. A request that ended in ERROR costs nothing by any version: its
    hold is released meanwhile."""
    catalogs = tmp_path / "catalogs"
    f.write_catalog(
        catalogs, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    served = Served({**env, "CREDITLEDGER_CATALOG_DIR": str(catalogs)}, tmp_path).start()
    try:
        auth = {"Authorization": f"Bearer {served.admin}"}
        with httpx.Client(base_url=served.url, headers=auth, timeout=10) as http:
            assert http.post("/v1/accounts", json={"id": "u", "unit": "usd"}).status_code == 201
            assert http.post("/v1/accounts/u/topups", json={"amount": 10**6}).status_code == 201
            made = http.post("/v1/authorizations", json={"account_id": "u", **f.fal_video()})
            hold = made.json()
            assert (hold["held"], hold["catalog_version"]) == (157_500, "operator-1"), made.text
            failing = http.post("/v1/authorizations", json={"account_id": "u", **f.fal_video()})
            assert failing.status_code == 201, failing.text
        served.stop()
        assert "pending hold" not in served.log.read_text()

        del served.env["CREDITLEDGER_CATALOG_DIR"]  # the operator's catalogs are gone
        served.start()
        warned = served.log.read_text()
        notice = " WARNING creditledger.serve: 2 pending hold(s) of fal image_to_video were "
        assert notice + "quoted with catalog " in warned
        assert "version 'operator-1', which the catalogs no longer price" in warned
        capture = f"/v1/authorizations/{hold['id']}/capture"
        body = {"status": "COMPLETED"}  # what was asked for: fal's default frames
        once = {**auth, "Idempotency-Key": "capture-1"}
        with httpx.Client(base_url=served.url, headers=auth, timeout=10) as http:
            refused = http.post(capture, json=body, headers=once)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "30"
            error = refused.json()
            assert (error["error"], error["catalog"], error["catalog_version"]) == (
                "catalog_changed",
                "fal",
                "operator-1",
            )
            assert "nothing was charged" in error["message"]
            errored = http.post(
                f"/v1/authorizations/{failing.json()['id']}/capture", json={"status": "ERROR"}
            )
            assert errored.status_code == 200, errored.text
            assert (errored.json()["charged"], errored.json()["released"]) == (0, 157_500)
            account = http.get("/v1/accounts/u").json()
            assert (account["balance"], account["pending"]) == (10**6, 157_500)
            assert http.get(f"/v1/authorizations/{hold['id']}").json()["status"] == "pending"
        served.stop()
        # ... and the server's log says it, for the operator.
        assert f"authorization '{hold['id']}' was quoted with catalog 'fal'" in (
            served.log.read_text()
        )

        served.env["CREDITLEDGER_CATALOG_DIR"] = str(catalogs)  # ... and restored
        served.start()
        assert "pending hold" not in served.log.read_text()
        with httpx.Client(base_url=served.url, headers=auth, timeout=10) as http:
            done = http.post(capture, json=body, headers=once)  # the gateway's retry
            assert done.status_code == 200, done.text
            assert (done.json()["charged"], done.json()["released"]) == (157_500, 0)
            assert http.get("/v1/accounts/u").json()["balance"] == 10**6 - 157_500
    finally:
        served.stop()
    assert run("verify", env=env).returncode == 0


def test_serve_refuses_a_catalog_version_changed_in_place_after_it_took_effect(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The operator edits the prices of the version in force rather than adding one: the
    next start stops (exit 3, naming the file and the version), as does any CLI write
    with those catalogs; put back as it was, it starts."""
    catalogs = tmp_path / "catalogs"
    prices = f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    f.write_catalog(catalogs, "fal.toml", prices)
    priced = {**env, "CREDITLEDGER_CATALOG_DIR": str(catalogs)}
    served = Served(priced, tmp_path).start()  # operator-1 is kept as it takes effect
    served.stop()
    f.write_catalog(catalogs, "fal.toml", prices.replace('"480p" = 0.02', '"480p" = 0.03'))
    refused = run("serve", "--port", "0", env=priced)
    assert refused.returncode == 3, refused.stderr
    error = json.loads(refused.stderr.strip().splitlines()[-1])
    assert error["error"] == "catalog_changed"
    assert error["versions"] == [
        {"catalog": "fal", "version": "operator-1", "file": str(catalogs / "fal.toml")}
    ]
    assert "its prices were changed in place" in error["message"]
    assert "new version with a later effective_from" in error["message"]
    top = run("topup", "nobody", "5", env=priced)  # refused before the wallet is looked up
    assert top.returncode == 3, top.stderr
    assert json.loads(top.stderr)["error"] == "catalog_changed"
    f.write_catalog(catalogs, "fal.toml", prices)
    served.start()
    served.stop()


def test_serve_prints_a_generated_admin_key_only_on_the_first_start(
    server: tuple[str, str, subprocess.Popen[bytes]], env: dict[str, str], tmp_path: Path
) -> None:
    _, admin, proc = server
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    listed = json.loads(run("keys", "list", "--json", env=env).stdout)["items"]
    assert [k["role"] for k in listed] == ["admin"]
    assert admin not in json.dumps(listed)


@pytest.fixture(params=["sqlite", "postgresql"])
def new_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a database with nothing in it yet: no schema, no key."""
    if request.param == "sqlite":
        yield _url(tmp_path / "new.db")
        return
    with _postgres_database(postgres_or_skip(request), "template0") as url:
        yield {"CREDITLEDGER_DATABASE_URL": url}


def test_replicas_started_together_on_a_new_ledger_print_one_admin_key(
    new_ledger: dict[str, str], tmp_path: Path
) -> None:
    """Three ``serve`` processes started at once on a new ledger: they migrate it one
    after another, then one makes the admin key and prints it, the others print none, and
    the key works on all three."""
    env = new_ledger
    replicas = [Served(env, tmp_path / f"replica-{n}") for n in range(3)]
    for replica in replicas:
        replica.folder.mkdir()
    starting = Threads()
    try:
        for replica in replicas:
            starting.start(replica.start)
        starting.join(timeout=120)
        printed = [r.admin for r in replicas if r.admin is not None]
        assert len(printed) == 1, [r.log.read_text() for r in replicas]
        for replica in replicas:
            auth = {"Authorization": f"Bearer {printed[0]}"}
            assert httpx.get(f"{replica.url}/v1/keys", headers=auth).status_code == 200
    finally:
        for replica in replicas:
            replica.stop()
    listed = json.loads(run("keys", "list", "--json", env=env).stdout)["items"]
    assert [k["role"] for k in listed] == ["admin"]


@contextmanager
def _ledger_at(env: dict[str, str]) -> Iterator[Ledger]:
    """The ledger in ``env``'s file, in this process (closed after)."""
    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    try:
        yield Ledger(db, default_catalogs())
    finally:
        db.dispose()


def _open_wallets(env: dict[str, str], *ids: str) -> None:
    with _ledger_at(env) as ledger:
        for wallet in ids:
            ledger.open_account(wallet, "credit", idempotency_key=f"open-{wallet}")


def _balances(env: dict[str, str], *ids: str) -> list[int]:
    with _ledger_at(env) as ledger:
        return [ledger.account(i).balance for i in ids]


def test_an_argument_that_is_not_utf8_exits_2_naming_it_and_writes_nothing(
    env: dict[str, str],
) -> None:
    """Python reads an argument's bytes that are not UTF-8 (a Latin-1 shell, a file name)
    as lone surrogates, which no database can store or compare: the commands died with a
    traceback from the driver. Run as a real process, whose arguments are bytes."""
    _open_wallets(env, "acme")
    for args in (
        [b"account", b"create", b"caf\xe9", b"--unit", b"credit"],
        [b"topup", b"acme", b"5", b"--reference", b"caf\xe9"],
        [b"account", b"show", b"acm\xff"],
    ):
        done = subprocess.run(
            [forked.PROGRAM.encode(), *args],
            capture_output=True,
            env=forked.environment(env),
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        bad = next(i for i, a in enumerate(args, start=1) if not a.isascii())
        assert json.loads(done.stderr) == {
            "error": "invalid_request",
            "message": f"argument {bad} ('{args[bad - 1].decode('utf-8', 'backslashreplace')}')"
            " is not UTF-8 text: give it in UTF-8",
        }
    assert _balances(env, "acme") == [0]
    with _ledger_at(env) as ledger:
        assert [a.account_id for a in ledger.accounts().items] == ["acme"]


def test_topup_batch_grants_each_row_once_even_run_again(
    env: dict[str, str], tmp_path: Path
) -> None:
    _open_wallets(env, "acme", "zeta")
    batch = tmp_path / "spring.csv"
    batch.write_text(  # as a spreadsheet saves it: with a byte order mark
        "\ufeffaccount_id,amount,kind,expires_at,reference\n"
        "acme,100,promo,2099-01-01T00:00:00Z,spring\n"
        "zeta,250,,,\n"
        "\n"
        "acme,100,promo,2099-01-01T00:00:00Z,spring\n"  # a second grant, not a repeat
    )
    checked = run("topup-batch", str(batch), "--check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "would top up 3 row(s): 450 credit" in checked.stdout
    assert _balances(env, "acme", "zeta") == [0, 0]
    first = run("topup-batch", str(batch), "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["rows"], report["totals"]) == (3, {"credit": 450})
    assert [
        (d["line"], d["account_id"], d["balance"], d["already_done"]) for d in report["done"]
    ] == [(2, "acme", 100, False), (3, "zeta", 250, False), (5, "acme", 200, False)]
    assert "earlier run" not in run("topup-batch", str(batch), "--check", env=env).stdout
    assert _balances(env, "acme", "zeta") == [200, 250]
    again = run("topup-batch", str(batch), env=env)
    assert again.returncode == 0, again.stderr
    assert "topped up 3 row(s): 450 credit (3 of them done by an earlier run" in again.stdout
    assert _balances(env, "acme", "zeta") == [200, 250]  # replayed, not granted twice
    shown = json.loads(run("account", "show", "acme", "--json", env=env).stdout)
    assert [(g["kind"], g["reference"]) for g in shown["grants"]] == [("promo", "spring")] * 2


def test_a_topup_batch_row_changed_under_the_same_batch_id_stops_the_run_there(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The rows before it are replayed; the changed row is a conflict (exit 8) naming its
    line, how many rows are done, and how to finish; nothing after it runs."""
    _open_wallets(env, "acme", "zeta")
    batch = tmp_path / "promo.csv"
    batch.write_text("account_id,amount\nacme,100\nzeta,50\n")
    assert run("topup-batch", str(batch), "--batch-id", "promo-1", env=env).returncode == 0
    batch.write_text("account_id,amount\nacme,100\nzeta,70\nacme,5\n")
    refused = run("topup-batch", str(batch), "--batch-id", "promo-1", env=env)
    assert refused.returncode == 8, refused.stderr
    body = json.loads(refused.stderr)
    assert (body["error"], body["line"], body["done"]) == ("idempotency_conflict", 3, 1)
    assert body["hint"] == (
        "the rows before line 3 are done; correct this one and run the file again "
        "with --batch-id promo-1"
    )
    assert _balances(env, "acme", "zeta") == [100, 50]


def test_topup_batch_with_any_bad_row_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    _open_wallets(env, "acme")
    columns = tmp_path / "columns.csv"
    columns.write_text("account,amount,note\nacme,5,x\n")
    r = run("topup-batch", str(columns), env=env)
    assert r.returncode == 2
    assert {p["field"] for p in json.loads(r.stderr)["problems"]} == {
        "account",
        "note",
        "account_id",
    }
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "account_id,amount,kind,expires_at\n"
        "ghost,5,,\n"
        "acme,1.5,,\n"
        "acme,5,gift,\n"
        "acme,5,promo,2020-01-01T00:00:00Z\n"
        "acme,5,promo,2027-01-01\n"
        "acme,5\n"
        "acme,5,pack,\n"
        f"acme,{'9' * 5000},,\n"  # past the digits Python reads into an int
    )
    r = run("topup-batch", str(rows), env=env)
    assert r.returncode == 2
    body = json.loads(r.stderr)
    assert body["error"] == "invalid_batch"
    assert [(p["line"], p["field"]) for p in body["problems"]] == [
        (2, "account_id"),
        (3, "amount"),
        (4, "kind"),
        (5, "expires_at"),
        (6, "expires_at"),
        (7, "file"),
        (9, "amount"),
    ]
    assert body["problems"][-1]["message"] == (
        "amount must be a whole number of minor units from 1 to 9223372036854775807"
    )
    # A batch id goes into every row's idempotency key: a space, or 101 characters, is
    # refused before the file is read against the ledger.
    good = tmp_path / "good.csv"
    good.write_text("account_id,amount\nacme,5\n")
    for batch_id in ("spring promo", "x" * 101, ""):
        r = run("topup-batch", str(good), "--batch-id", batch_id, env=env)
        assert r.returncode == 2, (batch_id, r.stderr)
        assert json.loads(r.stderr)["field"] == "batch-id"
    assert _balances(env, "acme") == [0]
    assert run("topup-batch", str(good), "--batch-id", "x" * 100, env=env).returncode == 0
    assert _balances(env, "acme") == [5]


def test_batch_summaries_give_a_unit_with_decimals_in_major_units_too(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The files and tables are in minor units; the summary line also gives a unit with
    decimals in major units, so 20000000 usd (scale 6) reads as $20, not twenty million."""
    _open_wallets(env, "acme")
    with _ledger_at(env) as ledger:
        ledger.open_account("studio", "usd", idempotency_key="open-studio")
    batch = tmp_path / "grants.csv"
    batch.write_text("account_id,amount\nacme,450\nstudio,20000000\nstudio,1234567\n")
    checked = run("topup-batch", str(batch), "--check", env={**env, "COLUMNS": ""})
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[-1] == (
        "would top up 3 row(s): 450 credit, 21234567 usd minor units (21.234567 usd)"
    )
    done = run("topup-batch", str(batch), env={**env, "COLUMNS": ""})
    assert done.returncode == 0, done.stderr
    assert "(amounts in minor units)" in done.stdout
    assert done.stdout.splitlines()[-1] == (
        "topped up 3 row(s): 450 credit, 21234567 usd minor units (21.234567 usd)"
    )
    assert _balances(env, "acme", "studio") == [450, 21234567]
    log = tmp_path / "pixazo.jsonl"
    log.write_text(
        "\n".join(
            json.dumps({"account_id": "studio", **body, "status": "COMPLETED", "request_id": r})
            for r, body in (
                ("p-1", f.pixazo_image()),  # $0.04
                ("p-2", f.pixazo_image(enable_prompt_expansion=True)),  # $0.04 + $0.02
            )
        )
    )
    charged = run("usage-import", str(log), env={**env, "COLUMNS": ""})
    assert charged.returncode == 0, charged.stderr
    assert charged.stdout.splitlines()[-1] == (
        "charged 2 line(s): 100000 usd minor units (0.100000 usd)"
    )
    assert _balances(env, "studio") == [21234567 - 100000]
    nothing = tmp_path / "errors.jsonl"
    nothing.write_text(
        json.dumps({"account_id": "studio", **f.pixazo_image(), "status": "ERROR"}) + "\n"
    )
    refused = run("usage-import", str(nothing), "--check", env=env)
    assert (
        refused.stdout.splitlines()[-1]
        == "would charge 1 line(s): 0 usd minor units (0.000000 usd)"
    )


def _usage_line(account: str, model: str = "veo3_fast", **fields: object) -> str:
    return json.dumps(
        {
            "account_id": account,
            **f.veo3_video(video_model=model),
            "status": "COMPLETED",
            **fields,
        }
    )


def test_usage_import_charges_each_line_once_even_run_again(
    env: dict[str, str], tmp_path: Path
) -> None:
    _open_wallets(env, "acme", "zeta")
    with _ledger_at(env) as ledger:
        ledger.top_up("acme", 300, idempotency_key="acme-300")
    log = tmp_path / "gateway.jsonl"
    log.write_text(
        _usage_line("acme", request_id="r-1")
        + "\n"
        + _usage_line("zeta", "veo3", status="ERROR")
        + "\n\n"
        + _usage_line("acme", occurred_at="2026-11-01T00:00:00+01:00")
        + "\n"
    )
    checked = run("usage-import", str(log), "--check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "would charge 3 line(s): 480 credit" in checked.stdout
    # Told before anything is charged: lines 2 and 4 are keyed by this file alone.
    assert "warning: 2 line(s) without a request_id (line 2, 4)" in checked.stderr
    assert _balances(env, "acme", "zeta") == [300, 0]
    first = run("usage-import", str(log), "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["rows"], report["totals"]) == (3, {"credit": 480})
    # A provider ERROR is never charged; what the wallet cannot cover is owed.
    assert [(d["line"], d["account_id"], d["charged"], d["debt"]) for d in report["done"]] == [
        (1, "acme", 240, 0),
        (2, "zeta", 0, 0),
        (4, "acme", 240, 180),
    ]
    assert not any(d["already_done"] for d in report["done"])
    assert _balances(env, "acme", "zeta") == [-180, 0]
    again = run("usage-import", str(log), "--json", env=env)
    assert again.returncode == 0, again.stderr
    replayed = json.loads(again.stdout)
    assert replayed["totals"] == {"credit": 480}
    assert all(d["already_done"] for d in replayed["done"])
    table = run("usage-import", str(log), env=env).stdout
    assert "charged 3 line(s): 480 credit (3 of them done by an earlier run" in table
    assert _balances(env, "acme", "zeta") == [-180, 0]  # replayed, not charged twice
    listed = run("account", "usage-records", "acme", "--kind", "usage", "--json", env=env)
    records = json.loads(listed.stdout)["items"]
    assert [(r["kind"], r["request_id"], r["charged"]) for r in records] == [
        ("usage", None, 240),
        ("usage", "r-1", 240),
    ]
    with _ledger_at(env) as ledger:
        entries = ledger.entries("acme", kind="charge").items
        assert {e.actor for e in entries} == {f"cli:{getpass.getuser()}"}


def test_usage_import_run_again_after_a_price_change_totals_what_was_charged(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A run again replays the lines charged before, at the price of their day: its totals
    are that, not what the lines would cost at the price in force now."""
    prices = tmp_path / "catalogs"
    f.write_catalog(prices, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z"))
    env = {**env, "CREDITLEDGER_CATALOG_DIR": str(prices)}
    with _ledger_at(env) as ledger:
        ledger.open_account("studio", "usd", idempotency_key="open-studio")
    log = tmp_path / "fal.jsonl"
    line = {"account_id": "studio", **f.fal_video(), "status": "COMPLETED", "request_id": "f-1"}
    log.write_text(json.dumps(line) + "\n")
    first = run("usage-import", str(log), "--json", env=env)
    assert first.returncode == 0, first.stderr
    charged = json.loads(first.stdout)["totals"]["usd"]
    assert charged > 0
    f.fal_price_change(prices)  # a dearer version, in force from 2026-06-01: now
    checked = run("usage-import", str(log), "--check", "--json", env=env)
    assert json.loads(checked.stdout)["totals"]["usd"] == charged * 3 // 2  # would cost now
    again = run("usage-import", str(log), "--json", env=env)
    assert again.returncode == 0, again.stderr
    replayed = json.loads(again.stdout)
    assert [d["already_done"] for d in replayed["done"]] == [True]
    assert replayed["totals"] == {"usd": charged}
    with _ledger_at(env) as ledger:
        assert ledger.account("studio").balance == -charged  # charged once, at the old price


def test_usage_import_charges_a_request_once_across_files_by_its_request_id(
    env: dict[str, str], tmp_path: Path
) -> None:
    _open_wallets(env, "acme")
    log = tmp_path / "gateway.jsonl"
    log.write_text(_usage_line("acme", request_id="r-1") + "\n")
    assert run("usage-import", str(log), env=env).returncode == 0
    # The log grew: imported again, only its new lines are charged (the first is keyed
    # by its request_id, not by this file's new batch id).
    log.write_text(
        _usage_line("acme", request_id="r-1") + "\n" + _usage_line("acme", request_id="r-2")
    )
    grown = run("usage-import", str(log), "--json", env=env)
    assert grown.returncode == 0, grown.stderr
    assert "warning" not in grown.stderr  # every line has its request_id
    assert [d["debt"] for d in json.loads(grown.stdout)["done"]] == [240, 480]
    assert _balances(env, "acme") == [-480]
    # A request reported again with another body is a conflict, not a second charge.
    log.write_text(_usage_line("acme", request_id="r-2", status="ERROR"))
    conflict = run("usage-import", str(log), env=env)
    assert conflict.returncode == 8, conflict.stderr
    refused = json.loads(conflict.stderr)
    assert (refused["error"], refused["line"]) == ("idempotency_conflict", 1)
    assert _balances(env, "acme") == [-480]
    # The hint's two commands find that charge's entry and refund it.
    lookup = refused["hint"].split("(its entry_id: creditledger ")[1].split(")")[0]
    found = run(*lookup.split(), env=env)
    assert found.returncode == 0, found.stderr
    (record,) = json.loads(found.stdout)["items"]
    assert (record["request_id"], record["charged"]) == ("r-2", 240)
    assert "creditledger reverse ENTRY_ID --reason" in refused["hint"]
    refund = run("reverse", record["entry_id"], "--reason", "it was an ERROR", env=env)
    assert refund.returncode == 0, refund.stderr
    assert _balances(env, "acme") == [-240]
    # The same request twice in one file is a problem of the file.
    log.write_text(
        _usage_line("acme", request_id="r-3") + "\n" + _usage_line("acme", request_id="r-3")
    )
    twice = run("usage-import", str(log), env=env)
    assert twice.returncode == 2
    assert [(p["line"], p["field"]) for p in json.loads(twice.stderr)["problems"]] == [
        (2, "request_id")
    ]
    assert _balances(env, "acme") == [-240]


def test_a_usage_line_without_request_id_changed_under_its_batch_id_is_a_conflict_of_the_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Keyed by the batch and its line, not by a request: the hint is to correct the line
    and run the file again, not to look up a request that has no id."""
    _open_wallets(env, "acme")
    log = tmp_path / "gateway.jsonl"
    log.write_text(_usage_line("acme") + "\n" + _usage_line("acme") + "\n")
    done = run("usage-import", str(log), "--batch-id", "nov-1", env=env)
    assert done.returncode == 0, done.stderr
    log.write_text(_usage_line("acme") + "\n" + _usage_line("acme", "veo3") + "\n")
    refused = run("usage-import", str(log), "--batch-id", "nov-1", env=env)
    assert refused.returncode == 8, refused.stderr
    warning, error = refused.stderr.splitlines()  # the unkeyed lines' warning first
    assert warning.startswith("warning: 2 line(s) without a request_id (line 1, 2)")
    body = json.loads(error)
    assert (body["error"], body["line"], body["done"]) == ("idempotency_conflict", 2, 1)
    assert body["hint"] == (
        "the rows before line 2 are done; correct this one and run the file again "
        "with --batch-id nov-1"
    )
    assert _balances(env, "acme") == [-480]


def test_usage_import_with_any_bad_line_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    _open_wallets(env, "acme")
    with _ledger_at(env) as ledger:
        ledger.open_account("tokens", "token", idempotency_key="open-tokens")
    log = tmp_path / "bad.jsonl"
    log.write_text(
        "\n".join(
            [
                _usage_line("acme"),  # fine, but not written: the file has bad lines
                "{not json",
                "[1, 2]",
                _usage_line("acme", note="x"),
                json.dumps({"account_id": "acme", **f.veo3_video()}),  # no status
                _usage_line("acme", occurred_at="2026-11-01"),  # no time zone
                _usage_line("acme", occurred_at="2099-01-01T00:00:00Z"),  # not yet
                _usage_line("ghost"),
                _usage_line("tokens"),  # credits into a token wallet
                _usage_line("acme", status="DONE"),
                _usage_line("acme", usage={"videos": 2}),  # more than was asked for
                _usage_line("acme", request_id=7),
            ]
        )
    )
    r = run("usage-import", str(log), env=env)
    assert r.returncode == 2, r.stderr
    body = json.loads(r.stderr)
    assert body["error"] == "invalid_batch"
    assert [(p["line"], p["field"]) for p in body["problems"]] == [
        (2, "line"),
        (3, "line"),
        (4, "note"),
        (5, "status"),
        (6, "occurred_at"),
        (7, "occurred_at"),
        (8, "account_id"),
        (9, "catalog"),
        (10, "status"),
        (11, "usage.videos"),
        (12, "request_id"),
    ]
    assert _balances(env, "acme") == [0]
    with _ledger_at(env) as ledger:
        assert ledger.usage_records("acme").items == []
    assert run("usage-import", str(tmp_path / "missing.jsonl"), env=env).returncode == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    r = run("usage-import", str(empty), env=env)
    assert (r.returncode, json.loads(r.stderr)["problems"][0]["field"]) == (2, "file")


def test_a_batch_cut_short_is_finished_by_running_it_again(
    env: dict[str, str], tmp_path: Path
) -> None:
    _open_wallets(env, "acme", "zeta")
    with _ledger_at(env) as ledger:
        ledger.top_up("acme", 2**63 - 1 - 60, idempotency_key="nearly-full")
    batch = tmp_path / "batch.csv"
    batch.write_text("account_id,amount\nzeta,10\nacme,100\n")
    cut = run("topup-batch", str(batch), env=env)
    assert cut.returncode == 2  # the ledger refused line 3 when it ran: beyond 64 bits
    refused = json.loads(cut.stderr)
    assert (refused["error"], refused["line"], refused["done"]) == ("amount_overflow", 3, 1)
    batch_id = refused["hint"].split("--batch-id ")[1]
    assert _balances(env, "zeta") == [10]
    batch.write_text("account_id,amount\nzeta,10\nacme,50\n")  # line 3 corrected
    finished = run("topup-batch", str(batch), "--batch-id", batch_id, "--json", env=env)
    assert finished.returncode == 0, finished.stderr
    assert _balances(env, "zeta", "acme") == [10, 2**63 - 1 - 10]  # line 2 not again


def test_migrate_takes_the_schema_back_for_a_rollback_and_up_again(
    database_url: str, traffic: f.Traffic
) -> None:
    """A deployment rolled back: the newer creditledger takes its schema down to the older
    one's newest revision (asking first, as it undoes what those revisions keep), and a
    later upgrade takes it up again, every wallet as it was."""
    env = {"CREDITLEDGER_DATABASE_URL": database_url}
    newest = known_revisions()[-1]

    def wallets() -> dict[str, Any]:
        shown = {w: run("account", "show", w, "--json", env=env) for w in traffic.wallets}
        assert all(s.returncode == 0 for s in shown.values()), shown
        return {w: json.loads(s.stdout) for w, s in shown.items()}

    before = wallets()
    unknown = run("migrate", "--to", "0000", env=env)
    assert unknown.returncode == 2, unknown.stderr
    error = json.loads(unknown.stderr)
    assert (error["field"], error["allowed"][0], error["allowed"][-2:]) == (
        "to",
        "0001",
        [newest, "head"],
    )

    asked = run("migrate", "--to", "0011", env=env)
    assert (asked.returncode, asked.stdout) == (2, ""), asked.stderr
    error = json.loads(asked.stderr)
    assert (error["error"], error["field"], error["revision"], error["target"]) == (
        "confirmation_required",
        "yes",
        newest,
        "0011",
    )
    undo = [r for r in reversed(known_revisions()) if r > "0011"]
    assert [u["revision"] for u in error["undo"]] == undo
    assert error["undo"][-1]["title"].startswith("Who did it: ``entries.actor`` and ")
    # What this ledger loses by it, counted: October's prices were kept as they took effect.
    losing = {u["revision"]: u["loses"] for u in error["undo"]}
    assert losing["0019"].startswith("the digests of ")
    # What keeps nothing this ledger has says so: no key here was made with 0020's actors.
    assert losing["0020"] is None
    assert losing["0018"] is None
    assert "--yes" in error["message"]
    assert "Nothing was changed" in error["message"]
    unchanged = json.loads(run("migrate", "--json", env=env).stdout)
    assert (unchanged["before"], unchanged["revision"], unchanged["latest"]) == (
        newest,
        newest,
        True,
    )

    down = run("migrate", "--to", "0011", "--yes", "--json", env=env)
    assert down.returncode == 0, down.stderr
    said = json.loads(down.stdout)
    assert (said["revision"], said["before"], said["latest"], said["applied"]) == (
        "0011",
        newest,
        False,
        [],
    )
    assert said["undone"] == error["undo"]  # what it said it would undo, and lose

    # Up one revision, then the rest: each says where the schema is and what it applied.
    partway = run("migrate", "--to", "0012", env=env)
    assert partway.returncode == 0, partway.stderr
    lines = partway.stdout.splitlines()
    assert lines[0].startswith(
        f"database at schema revision 0012 (this version's latest is {newest}): "
    )
    assert [line.split()[:2] for line in lines[1:]] == [["applied", "0012"]]
    up = run("migrate", env=env)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0].startswith(f"database at the latest schema (revision {newest}): ")
    rest = [["applied", r] for r in reversed(undo) if r != "0012"]
    assert [line.split()[:2] for line in lines[1:]] == rest
    checked = run("verify", "--json", env=env)
    assert checked.returncode == 0, checked.stdout
    assert wallets() == before


def test_migrate_does_not_take_the_schema_down_under_a_running_server(
    env: dict[str, str], serve: Callable[[dict[str, str]], Served]
) -> None:
    """A server left running on a ledger whose schema went back runs the newer version's
    statements on the older tables. The rollback names every process (SQLite) or session
    (PostgreSQL) that has the ledger open, refuses to start while there is one, changing
    nothing, and goes ahead once the server is stopped."""
    newest = known_revisions()[-1]
    served = serve(env).start()
    assert served.proc is not None

    asked = run("migrate", "--to", "0011", env=env)
    assert asked.returncode == 2, asked.stderr
    in_use = json.loads(asked.stderr)["in_use"]
    assert in_use, asked.stderr
    if "sqlite" in env["CREDITLEDGER_DATABASE_URL"]:
        # Its own process only: not the CLI's, nor this test's (which holds none open).
        (server,) = in_use
        assert server.startswith(f"process {served.proc.pid} ("), server
        assert " serve" in server, server
    else:
        assert all(re.fullmatch(r"session \d+ from .+, connected .+Z", s) for s in in_use), in_use

    refused = run("migrate", "--to", "0011", "--yes", env=env)
    assert refused.returncode == 6, refused.stderr
    error = json.loads(refused.stderr)
    assert (error["error"], error["target"]) == ("ledger_in_use", "0011")
    assert error["in_use"], error
    assert "nothing was changed" in error["message"]
    assert ("hint" in error) is ("postgresql" in env["CREDITLEDGER_DATABASE_URL"]), error
    assert json.loads(run("migrate", "--json", env=env).stdout)["before"] == newest
    # The server is untouched by it: it still serves.
    assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200

    served.stop()
    # A PostgreSQL backend ends a moment after its client has gone.
    deadline = time.monotonic() + 20
    while (down := run("migrate", "--to", "0011", "--yes", "--json", env=env)).returncode == 6:
        assert time.monotonic() < deadline, down.stderr
        time.sleep(0.2)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["revision"] == "0011"
