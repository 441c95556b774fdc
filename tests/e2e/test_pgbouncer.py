"""Behind PgBouncer in transaction pooling mode, as PostgreSQL is often deployed: each
transaction runs on whichever server session is free, and the session options the ledger
sends at the start are dropped. The ledger in process, and ``creditledger serve`` over HTTP.

The database URL's ``prepare_threshold=none`` keeps psycopg from preparing statements on
the server (after five runs of a statement, by default): there a statement one client
prepared is missing from the session its next transaction gets, or already there under
the name another client gives its own (``prepared statement "_pg3_0" already exists``),
and about a quarter of the requests failed. The sessions still read instants in UTC on a
server whose time zone is not (``ledger.db.SESSION_TIMEZONE``): the pooler keeps the
``SET TimeZone`` each connection sends where the options were dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy.engine import make_url

from ledger.db import Database
from ledger.services import Ledger
from ledger.verify import verify
from pricing.catalog import CatalogSet
from tests import factories as f
from tests.conftest import postgres_or_skip
from tests.e2e.served import Served
from tests.pg import TempPgBouncer, find_pgbouncer

postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
#: The latest instant the ledger takes: kept as the year 10000 in the server's time zone.
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
VEO_FAST = f.veo3_video(video_model="veo3_fast")  # 240 credits
WALLETS = 4
PAIRS = 15


@pytest.fixture
def bouncer(request: pytest.FixtureRequest, database_url: str) -> Iterator[TempPgBouncer]:
    """PgBouncer (transaction pooling, one server session) in front of the test's
    PostgreSQL database."""
    binary = find_pgbouncer()
    if binary is None:
        if os.environ.get("CREDITLEDGER_REQUIRE_PGBOUNCER") == "1":
            pytest.fail("CREDITLEDGER_REQUIRE_PGBOUNCER=1 but PgBouncer is not installed")
        pytest.skip(
            "PgBouncer not installed (apt-get install pgbouncer); "
            "set CREDITLEDGER_REQUIRE_PGBOUNCER=1 to make this a failure"
        )
    database = make_url(database_url).database
    assert database is not None
    pooler = TempPgBouncer(binary, postgres_or_skip(request), database).start()
    try:
        yield pooler
    finally:
        pooler.stop()


@postgresql_only
def test_behind_pgbouncer_in_transaction_mode_every_request_succeeds(
    bouncer: TempPgBouncer, catalogs: CatalogSet, caplog: pytest.LogCaptureFixture
) -> None:
    """Concurrent clients, more than the pooler's server sessions, authorize and capture
    on wallets of their own: every call succeeds, and the money adds up. The lock timeout
    the pooler dropped with the startup options is missed, once, with the cure."""
    caplog.set_level(logging.WARNING, logger="creditledger.db")
    db = Database.from_url(f"{bouncer.url()}?prepare_threshold=none")
    try:
        db.migrate()  # at its head already: Alembic's reads, behind the pooler
        with db.transaction(write=False) as conn:
            raw: Any = conn.connection.driver_connection
            assert raw.prepare_threshold is None
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
            # The pooler gives the server session the client's name.
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "creditledger"
        ledger = Ledger(db, catalogs)
        for n in range(WALLETS):
            ledger.open_account(f"w{n}", "credit", idempotency_key=f"open-{n}")
            ledger.top_up(f"w{n}", 10_000, idempotency_key=f"top-{n}", expires_at=LATEST)
        failures: list[BaseException] = []

        def drive(n: int) -> None:
            try:
                for i in range(PAIRS):
                    hold = ledger.authorize(f"w{n}", VEO_FAST, idempotency_key=f"a-{n}-{i}")
                    ledger.capture(
                        hold.id,
                        status="COMPLETED",
                        usage={"videos": 1},
                        idempotency_key=f"c-{n}-{i}",
                    )
                    assert ledger.balance(f"w{n}").balance == 10_000 - 240 * (i + 1)
            except BaseException as exc:  # noqa: BLE001 - reported below, with the others
                failures.append(exc)

        threads = [threading.Thread(target=drive, args=(n,)) for n in range(WALLETS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        for n in range(WALLETS):
            wallet = ledger.account(f"w{n}")
            assert (wallet.balance, wallet.pending) == (10_000 - 240 * PAIRS, 0)
            # Read back in UTC: in the server's own zone the instant is past year 9999.
            assert [g.expires_at for g in wallet.grants] == [LATEST]
        assert verify(db) == []
    finally:
        db.dispose()
    _missed_once(caplog)


@postgresql_only
def test_a_lock_timeout_the_database_sets_is_not_missed(
    bouncer: TempPgBouncer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither behind the pooler once the database sets its own lock timeout, nor on a
    connection whose options the server got, is a lock timeout said to be missing."""
    caplog.set_level(logging.WARNING, logger="creditledger.db")
    direct = Database.from_url(database_url)
    pooled = Database.from_url(f"{bouncer.url()}?prepare_threshold=none")
    try:
        with direct.transaction(write=False) as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "10s"
            database = make_url(database_url).database
            conn.exec_driver_sql(f"ALTER DATABASE {database} SET lock_timeout = '3s'")
        with pooled.transaction(write=False) as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "3s"
    finally:
        direct.dispose()
        pooled.dispose()
    assert [r for r in caplog.records if "lock timeout" in r.getMessage()] == []


@postgresql_only
def test_a_lock_timeout_dropped_in_front_of_a_utc_server_is_missed(
    bouncer: TempPgBouncer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind the pooler, on a database whose own time zone is UTC, the sessions come in
    UTC though their options were dropped: the lock timeout they lost is missed all the
    same, once, with the cure."""
    caplog.set_level(logging.WARNING, logger="creditledger.db")
    direct = Database.from_url(database_url)
    try:
        with direct.transaction(write=False) as conn:
            database = make_url(database_url).database
            conn.exec_driver_sql(f"ALTER DATABASE {database} SET TimeZone = 'UTC'")
    finally:
        direct.dispose()
    pooled = Database.from_url(f"{bouncer.url()}?prepare_threshold=none")
    try:
        with pooled.transaction(write=False) as conn:
            raw: Any = conn.connection.driver_connection
            assert raw.info.parameter_status("TimeZone") == "UTC"  # nothing else to see
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
    finally:
        pooled.dispose()
    _missed_once(caplog)


@postgresql_only
def test_the_server_behind_pgbouncer_serves_concurrent_gateways(
    bouncer: TempPgBouncer, serve: Callable[[dict[str, str]], Served]
) -> None:
    """``creditledger serve`` on the pooler's URL: it migrates through it, and concurrent
    authorize+capture calls over HTTP all succeed, the wallet charged exactly."""
    url = f"{bouncer.url()}?prepare_threshold=none"
    served = serve({"CREDITLEDGER_DATABASE_URL": url}).start()
    auth = {"Authorization": f"Bearer {served.admin}"}
    statuses: list[int] = []
    with httpx.Client(base_url=served.url, headers=auth, timeout=30) as http:
        assert http.post("/v1/accounts", json={"id": "gw", "unit": "credit"}).status_code == 201
        assert http.post("/v1/accounts/gw/topups", json={"amount": 100_000}).status_code == 201

        def drive(n: int) -> None:
            for i in range(PAIRS):
                key = {"Idempotency-Key": f"a-{n}-{i}"}
                held = http.post(
                    "/v1/authorizations", json={"account_id": "gw", **VEO_FAST}, headers=key
                )
                statuses.append(held.status_code)
                if held.status_code != 201:
                    continue
                captured = http.post(
                    f"/v1/authorizations/{held.json()['id']}/capture",
                    json={"status": "COMPLETED", "usage": {"videos": 1}},
                    headers={"Idempotency-Key": f"c-{n}-{i}"},
                )
                statuses.append(captured.status_code)

        threads = [threading.Thread(target=drive, args=(n,)) for n in range(WALLETS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(set(statuses)) == [200, 201], statuses
        assert len(statuses) == 2 * WALLETS * PAIRS
        wallet = http.get("/v1/accounts/gw").json()
    assert (wallet["balance"], wallet["pending"]) == (100_000 - 240 * WALLETS * PAIRS, 0)


def _missed_once(caplog: pytest.LogCaptureFixture) -> None:
    """The sessions' missing lock timeout was said once, with the cure."""
    said = [r.getMessage() for r in caplog.records if "lock timeout" in r.getMessage()]
    assert len(said) == 1, said
    assert "ALTER ROLE postgres SET lock_timeout = '10s'" in said[0]
