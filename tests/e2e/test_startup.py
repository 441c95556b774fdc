"""``creditledger serve`` and ``migrate`` started before their PostgreSQL takes
connections (a container started beside its database, a server still starting or
recovering): they wait for it, up to ``CREDITLEDGER_STARTUP_WAIT_SECONDS``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import httpx2 as httpx
import psycopg
import pytest

from tests.conftest import postgres_or_skip
from tests.e2e.forked import run
from tests.e2e.served import Served, Threads
from tests.pg import TempPostgres

ADMIN = "clk_startup_admin_key_0123456789abcdef"
WAITING = "database: not reachable"


def test_a_server_started_before_its_postgresql_waits_for_it_then_migrates_and_serves(
    request: pytest.FixtureRequest, serve: Callable[[dict[str, str]], Served]
) -> None:
    server = TempPostgres(postgres_or_skip(request).bindir).start()
    try:
        server.halt()
        served = serve({"CREDITLEDGER_DATABASE_URL": server.url(), "CREDITLEDGER_ADMIN_KEY": ADMIN})
        waited: list[str] = []

        def start_database_once_the_server_waits() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                log = getattr(served, "log", None)
                text = log.read_text(errors="replace") if log is not None else ""
                if WAITING in text:
                    waited.append(text)
                    time.sleep(1.0)  # a retry or two against a database still down
                    server.resume()
                    return
                time.sleep(0.05)
            raise AssertionError("serve never said it waits for the database")

        threads = Threads()
        threads.start(start_database_once_the_server_waits)
        served.start(timeout=120)
        threads.join(60)
        assert waited, "the server started before the database did"
        assert "Connection refused" in waited[0]
        auth = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=served.url, headers=auth, timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            # Migrated: the ledger's tables are there.
            made = http.post("/v1/accounts", json={"id": "wallet", "unit": "credit"})
            assert made.status_code == 201, made.text
            assert http.get("/v1/accounts/wallet").json()["balance"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize(("wait", "says"), [(0.0, False), (1.5, True)])
def test_migrate_gives_up_on_a_database_that_stays_away_after_its_wait(
    wait: float, says: bool
) -> None:
    # A port held but not listening: connections to it are refused, and no other process
    # can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"postgresql+psycopg://postgres@127.0.0.1:{held.getsockname()[1]}/ledger"
        started = time.monotonic()
        done = run(
            "migrate",
            env={"CREDITLEDGER_DATABASE_URL": url, "CREDITLEDGER_STARTUP_WAIT_SECONDS": str(wait)},
        )
        took = time.monotonic() - started
    assert done.returncode == 6, done.stderr  # the database cannot be used
    assert "Connection refused" in done.stderr
    assert (WAITING in done.stderr) is says
    if says:
        assert took >= wait
        assert done.stderr.count(WAITING) == 1  # the same reason is said once


def test_a_sqlite_file_that_cannot_be_opened_fails_at_once() -> None:
    # A wait would outlast the command's time limit in ``run`` (60 s).
    done = run(
        "migrate",
        env={
            "CREDITLEDGER_DATABASE_URL": "sqlite:////nonexistent-folder/ledger.db",
            "CREDITLEDGER_STARTUP_WAIT_SECONDS": "600",
        },
    )
    assert done.returncode == 6, done.stderr
    assert WAITING not in done.stderr
    assert "unable to open database file" in done.stderr


def test_a_postgresql_that_refuses_the_credentials_or_the_database_fails_at_once(
    request: pytest.FixtureRequest,
) -> None:
    """A wrong password, an unknown role or database, a role that pg_hba.conf rejects or
    does not name, SSL required of a server without it: the server answered, and waiting
    will not change its answer. The command fails at once, with what the server said,
    where a wait of ten minutes would otherwise run out first."""
    server = TempPostgres(postgres_or_skip(request).bindir).start()
    try:
        with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("CREATE ROLE startup_pw LOGIN PASSWORD 'right'")
            conn.execute("CREATE DATABASE startup OWNER startup_pw")
            # Only the roles named here may connect over TCP: any other finds no line
            # of pg_hba.conf, and startup_reject a line that rejects it.
            (server.data / "pg_hba.conf").write_text(
                "local all all trust\n"
                "host all startup_pw 127.0.0.1/32 scram-sha-256\n"
                "host all startup_reject 127.0.0.1/32 reject\n"
                "host all startup_nologin,postgres,ghost 127.0.0.1/32 trust\n"
            )
            conn.execute("CREATE ROLE startup_nologin NOLOGIN")
            conn.execute("SELECT pg_reload_conf()")
        at = f"127.0.0.1:{server.port}"
        refused = {
            f"postgresql+psycopg://startup_pw:wrong@{at}/postgres": "password authentication "
            'failed for user "startup_pw"',
            f"postgresql+psycopg://startup_pw@{at}/postgres": "no password supplied",
            f"postgresql+psycopg://ghost@{at}/postgres": 'role "ghost" does not exist',
            f"postgresql+psycopg://postgres@{at}/nope": 'database "nope" does not exist',
            f"postgresql+psycopg://startup_nologin@{at}/postgres": "not permitted to log in",
            f"postgresql+psycopg://startup_reject@{at}/postgres": "pg_hba.conf rejects connection",
            f"postgresql+psycopg://stranger@{at}/postgres": "no pg_hba.conf entry",
            f"postgresql+psycopg://postgres@{at}/postgres?sslmode=require": "SSL was required",
        }
        for url, says in refused.items():
            started = time.monotonic()
            done = run(
                "migrate",
                env={
                    "CREDITLEDGER_DATABASE_URL": url,
                    "CREDITLEDGER_STARTUP_WAIT_SECONDS": "600",
                    "PGPASSFILE": "/nonexistent",
                },
            )
            assert done.returncode == 6, (url, done.stderr)
            assert WAITING not in done.stderr, (url, done.stderr)
            assert says in json.loads(done.stderr.splitlines()[-1])["message"], url
            assert "wrong" not in done.stderr  # the password is not shown
            assert time.monotonic() - started < 30, url
        # The right password passes: the refusals above were the credentials'.
        good = f"postgresql+psycopg://startup_pw:right@{at}/startup"
        done = run("migrate", env={"CREDITLEDGER_DATABASE_URL": good})
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()
