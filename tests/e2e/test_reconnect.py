"""Over HTTP, a PostgreSQL connection lost under a request is not the gateway's problem
when the database is there again: the request runs once more on a new connection. A
commit whose answer the network lost is answered with what was committed, once (and says
it was replayed); sessions the server ended fail no request after them."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from api.deps import REPLAYED_HEADER
from ledger.db import Database
from ledger.keys import Keys
from ledger.services import Ledger
from ledger.settings import Settings
from ledger.verify import verify
from pricing.catalog import CatalogSet
from tests import factories as f
from tests.e2e.conftest import Api, api_over
from tests.factories import Clock
from tests.netcut import CuttingProxy
from tests.pg import end_sessions

VEO_FAST = f.veo3_video(video_model="veo3_fast")  # 240 credits
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def cut_api(proxy: CuttingProxy, database_url: str, catalogs: CatalogSet) -> Iterator[Api]:
    """The app on a PostgreSQL reached through ``proxy``, with a wallet of 1,000."""
    db = Database.from_url(proxy.url(database_url))
    ledger = Ledger(db, catalogs, clock=Clock())
    # Keys found valid stay so for the test: a key check's read (which commits too)
    # is not the COMMIT the proxy cuts.
    keys = Keys(db, cache_seconds=600)
    try:
        with api_over(ledger, keys, Settings()) as api:
            api.wallet("wallet", topup=1_000)
            assert api.get("/v1/accounts/wallet", as_key="service").status_code == 200
            yield api
        assert verify(db) == []
    finally:
        db.dispose()


@postgresql_only
def test_an_authorization_whose_commit_answer_was_lost_is_answered_201_once(
    cut_api: Api, proxy: CuttingProxy
) -> None:
    body = {"account_id": "wallet", **VEO_FAST}
    proxy.arm()
    first = cut_api.post("/v1/authorizations", body, as_key="service", idempotency_key="a-1")
    assert proxy.cuts == 1
    assert first.status_code == 201, first.text
    assert first.headers[REPLAYED_HEADER] == "true"  # the committed answer, not a 2nd hold
    again = cut_api.post("/v1/authorizations", body, as_key="service", idempotency_key="a-1")
    assert again.json() == first.json()
    wallet = cut_api.balance("wallet")
    assert (wallet["balance"], wallet["pending"]) == (1_000, 240)
    assert _reruns(cut_api) == {"read": 0, "write": 1}


@postgresql_only
def test_no_request_fails_after_the_server_ended_every_session(
    cut_api: Api, database_url: str
) -> None:
    authorized = cut_api.post(
        "/v1/authorizations", {"account_id": "wallet", **VEO_FAST}, as_key="service"
    )
    assert authorized.status_code == 201, authorized.text
    hold = authorized.json()
    assert end_sessions(database_url) >= 1
    health = cut_api.client.get("/healthz")  # the database is there: not a 503
    assert health.status_code == 200, health.text
    assert end_sessions(database_url) >= 1
    read = cut_api.get("/v1/accounts/wallet", as_key="service")
    assert read.status_code == 200, read.text
    assert end_sessions(database_url) >= 1
    captured = cut_api.post(
        f"/v1/authorizations/{hold['id']}/capture",
        {"status": "COMPLETED", "usage": {"videos": 1}},
        as_key="service",
        idempotency_key="c-1",
    )
    assert captured.status_code == 200, captured.text
    assert REPLAYED_HEADER not in captured.headers
    assert captured.json()["charged"] == 240
    wallet = cut_api.balance("wallet")
    assert (wallet["balance"], wallet["pending"]) == (760, 0)
    assert _reruns(cut_api) == {"read": 2, "write": 1}  # the health check, the wallet


@postgresql_only
def test_admin_reads_and_key_checks_do_not_fail_after_the_server_ended_every_session(
    cut_api: Api, database_url: str
) -> None:
    report = cut_api.post("/v1/reports", {"month": "2026-10"})
    assert report.status_code in (200, 201, 202), report.text
    for path in ("/v1/keys", f"/v1/reports/{report.json()['id']}"):
        assert end_sessions(database_url) >= 1
        read = cut_api.get(path)
        assert read.status_code == 200, (path, read.text)
    # A key not checked yet (none is remembered for it): its check reads the database.
    fresh = cut_api.keys.create("service", name="fresh gateway").key
    assert end_sessions(database_url) >= 1
    read = cut_api.get("/v1/accounts/wallet", as_key=fresh)
    assert read.status_code == 200, read.text
    assert _reruns(cut_api) == {"read": 3, "write": 0}


@postgresql_only
@pytest.mark.parametrize("lost", ["commit answer", "sessions"])
def test_a_key_revocation_and_a_report_request_do_not_fail_on_a_lost_connection(
    cut_api: Api, proxy: CuttingProxy, database_url: str, lost: str
) -> None:
    """Neither takes an idempotency key, but each is harmless twice: a second run after
    a lost commit answer finds the key revoked (at the first run's instant) and the
    report queued, and answers with them."""
    leaked = cut_api.keys.create("service", name="leaked").key
    leaked_id = cut_api.actor(leaked).removeprefix("key:")
    assert cut_api.get("/v1/accounts/wallet", as_key=leaked).status_code == 200

    def lose() -> None:
        if lost == "sessions":
            assert end_sessions(database_url) >= 1
        else:
            proxy.arm()

    lose()
    revoked = cut_api.call("DELETE", f"/v1/keys/{leaked_id}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    listed = cut_api.get("/v1/keys", params={"active": "false"}).json()["items"]
    assert [(k["id"], k["revoked_at"]) for k in listed] == [
        (leaked_id, revoked.json()["revoked_at"])
    ]
    assert cut_api.get("/v1/accounts/wallet", as_key=leaked).status_code == 401
    lose()
    report = cut_api.post("/v1/reports", {"month": "2026-10"})
    assert report.status_code == 202, report.text
    again = cut_api.post("/v1/reports", {"month": "2026-10"})
    assert again.json()["id"] == report.json()["id"]  # one job, queued once
    assert proxy.cuts == (2 if lost == "commit answer" else 0)
    assert _reruns(cut_api) == {"read": 0, "write": 2}


def _reruns(api: Api) -> dict[str, int]:
    """``creditledger_database_reruns_total`` by work, as ``/metrics`` shows it."""
    found = {}
    for line in api.client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("creditledger_database_reruns_total{"):
            found[name.split('"')[1]] = int(float(value))
    return found


@postgresql_only
def test_health_is_503_while_the_database_takes_no_connections(api: Api, database_url: str) -> None:
    """/healthz asks the database: refusing every connection (as during a failover), it
    is a 503 for the monitor, and 200 again once the database is back."""
    assert api.client.get("/healthz").status_code == 200
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres")
    statement = 'ALTER DATABASE "{}" ALLOW_CONNECTIONS {}'
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(statement.format(url.database, "false"))
        try:
            conn.execute(  # the pooled connections too
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = %s AND backend_type = 'client backend'",
                (url.database,),
            )
            down = api.client.get("/healthz")
        finally:
            conn.execute(statement.format(url.database, "true"))
    assert (down.status_code, down.json()["error"]) == (503, "database_unavailable"), down.text
    assert api.client.get("/healthz").status_code == 200
