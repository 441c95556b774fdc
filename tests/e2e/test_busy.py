"""A lock held past CREDITLEDGER_LOCK_TIMEOUT_SECONDS, through the real interfaces: the
HTTP API answers 503 ``database_busy`` (nothing committed, retry with the same key), the
CLI exits 6, and ``creditledger serve`` and the CLI take the timeout from the
environment; and the keep-alive connections ``serve`` keeps open."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from ledger.db import Database, Timeouts
from ledger.keys import Keys
from ledger.services import Ledger
from ledger.settings import Settings
from ledger.verify import verify
from pricing.catalog import CatalogSet
from tests import factories as f
from tests.e2e.forked import run
from tests.e2e.served import Served, exchange
from tests.factories import Clock
from tests.waits import timed, wallet_locked

VEO_FAST = f.veo3_video(video_model="veo3_fast")


@pytest.fixture
def quick(database_url: str, catalogs: CatalogSet, clock: Clock) -> Iterator[Ledger]:
    """A ledger whose lock waits last at most half a second."""
    db = Database.from_url(database_url, timeouts=Timeouts(lock=0.5))
    try:
        yield Ledger(db, catalogs, clock=clock)
        assert verify(db) == []
    finally:
        db.dispose()


def test_a_wallet_locked_past_the_timeout_is_a_503_that_changes_nothing(
    quick: Ledger, database_url: str
) -> None:
    keys = Keys(quick.db)
    admin = {"Authorization": f"Bearer {keys.create('admin', name='test').key}"}
    app = create_app(quick, keys, settings=Settings())
    with TestClient(app, raise_server_exceptions=False) as client:
        made = client.post("/v1/accounts", json={"id": "veo", "unit": "credit"}, headers=admin)
        assert made.status_code == 201, made.text
        topped = client.post("/v1/accounts/veo/topups", json={"amount": 500}, headers=admin)
        assert topped.status_code == 201, topped.text

        def authorize() -> httpx.Response:
            body = {"account_id": "veo", **VEO_FAST}
            headers = {**admin, "Idempotency-Key": "gw-1"}
            return client.post("/v1/authorizations", json=body, headers=headers)

        with wallet_locked(database_url, "veo"):
            busy, waited = timed(authorize)
        assert isinstance(busy, httpx.Response), repr(busy)
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"] == "database_busy"
        assert waited >= 0.4, waited
        account = client.get("/v1/accounts/veo", headers=admin).json()
        assert (account["balance"], account["pending"]) == (500, 0)

        held = authorize()  # retried as it was, once the lock is free
        assert held.status_code == 201, held.text
        again = authorize()
        assert again.status_code == 201
        assert again.json()["id"] == held.json()["id"]
        account = client.get("/v1/accounts/veo", headers=admin).json()
        assert (account["balance"], account["pending"]) == (500, 240)


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    env = {
        "CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "CREDITLEDGER_LOCK_TIMEOUT_SECONDS": "0.5",
    }
    assert run("migrate", env=env).returncode == 0
    made = run("account", "create", "veo", "--unit", "credit", env=env)
    assert made.returncode == 0, made.stderr
    return env


def test_the_cli_exits_6_when_the_lock_stays_taken(sqlite_env: dict[str, str]) -> None:
    url = sqlite_env["CREDITLEDGER_DATABASE_URL"]
    once = ("topup", "veo", "100", "--idempotency-key", "t1")
    with wallet_locked(url, "veo"):
        # Well below the default timeout (10 s): the environment's 0.5 s applies.
        result, _ = timed(lambda: run(*once, env=sqlite_env), limit=8)
    assert isinstance(result, subprocess.CompletedProcess), repr(result)
    assert result.returncode == 6, result.stderr
    assert json.loads(result.stderr)["error"] == "database_busy"
    assert run(*once, env=sqlite_env).returncode == 0
    shown = run("account", "show", "veo", "--json", env=sqlite_env)
    assert json.loads(shown.stdout)["balance"] == 100


def test_a_lock_timeout_that_makes_no_sense_is_refused_by_name(
    sqlite_env: dict[str, str],
) -> None:
    result = run(
        "account", "show", "veo", env={**sqlite_env, "CREDITLEDGER_LOCK_TIMEOUT_SECONDS": "0"}
    )
    assert result.returncode == 2
    assert json.loads(result.stderr)["field"] == "CREDITLEDGER_LOCK_TIMEOUT_SECONDS"


def test_serve_takes_the_lock_timeout_from_the_environment(
    sqlite_env: dict[str, str], serve: Callable[[dict[str, str]], Served]
) -> None:
    admin = "admin-key-for-the-busy-test-0123456789"
    served = serve({**sqlite_env, "CREDITLEDGER_ADMIN_KEY": admin}).start()
    auth = {"Authorization": f"Bearer {admin}"}
    charge = {"account_id": "veo", **VEO_FAST}
    with httpx.Client(base_url=served.url, headers=auth, timeout=30) as http:

        def post(path: str, body: dict[str, object], key: str) -> httpx.Response:
            return http.post(path, json=body, headers={"Idempotency-Key": key})

        with wallet_locked(sqlite_env["CREDITLEDGER_DATABASE_URL"], "veo"):
            # Well below the default timeout (10 s): the environment's 0.5 s applies.
            busy, waited = timed(lambda: post("/v1/charges", charge, "c1"), limit=8)
        assert isinstance(busy, httpx.Response), repr(busy)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"] == "database_busy"
        assert waited >= 0.4, waited
        # Nothing was charged: without credits the same request is a 402 ...
        assert post("/v1/charges", charge, "c1").status_code == 402
        # ... and with them it goes through.
        assert post("/v1/accounts/veo/topups", {"amount": 240}, "t1").status_code == 201
        charged = post("/v1/charges", charge, "c2")
        assert charged.status_code == 201, charged.text
        assert http.get("/v1/accounts/veo").json()["balance"] == 0


@pytest.mark.parametrize(("setting", "idle", "kept"), [(None, 6.0, True), ("1", 2.5, False)])
def test_serve_keeps_an_idle_connection_open_longer_than_clients_pools_do(
    sqlite_env: dict[str, str],
    serve: Callable[[dict[str, str]], Served],
    setting: str | None,
    idle: float,
    kept: bool,
) -> None:
    """By default longer than httpx's 5 s (a server that closes first races the client's
    next request on the connection); CREDITLEDGER_KEEP_ALIVE_SECONDS sets it."""
    extra = {} if setting is None else {"CREDITLEDGER_KEEP_ALIVE_SECONDS": setting}
    served = serve({**sqlite_env, **extra}).start()
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        assert exchange(conn).startswith(b"HTTP/1.1 200")
        time.sleep(idle)
        assert exchange(conn).startswith(b"HTTP/1.1 200") is kept
