"""Crash recovery: the real server, killed with SIGKILL in the middle of traffic.

On each database, eight clients drive authorizations, captures (completed and provider
ERRORs), usage reported after the fact and top-ups against ``creditledger serve`` while
it is killed at a random moment, ten times (times ``CREDITLEDGER_TEST_SCALE`` in a soak),
and restarted. Every request carries an idempotency key. Afterwards, on a restarted
server:

- every request that was answered 2xx is in the ledger, and replaying it gives back the
  very answer the client got;
- every request that was cut off is replayed twice with its key: both replays answer the
  same, and no request id has more than one effect (one hold, one usage report, one
  top-up);
- ``creditledger verify`` finds every invariant intact (no half-written entry);
- the sweeper expires the holds left open, and the wallet's balance is exactly the
  arithmetic of the answers: top-ups in, captured and reported charges out.

Then again with a second server on the same database beside it, never killed, serving
half the clients: it answers every call they send, none with an error.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from ledger.db import Database
from ledger.models import grants, holds, metering
from tests import factories as f
from tests.conftest import examples, postgres_or_skip
from tests.e2e.forked import run
from tests.e2e.served import Served, Threads
from tests.pg import TempPostgres, end_sessions

KILLS = examples(10)  # times CREDITLEDGER_TEST_SCALE, for a soak
CLIENTS = 8
OPENING = 5_000
WALLET = "crash"
NONE: frozenset[int] = frozenset()


@dataclass
class Call:
    """One request as sent: enough to replay it."""

    op: str
    key: str
    path: str
    body: dict[str, Any]
    status: int | None = None  # None: cut off by the crash
    answer: Any = None


@dataclass
class Client:
    """One gateway client; its state (holds to capture) outlives a server's life."""

    number: int
    rng: random.Random
    calls: list[Call] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)
    sent: int = 0

    def next_call(self) -> Call:
        self.sent += 1
        key = f"c{self.number}-{self.sent}"
        roll = self.rng.random()
        if self.holds and roll < 0.4:
            hold = self.holds.pop(self.rng.randrange(len(self.holds)))
            error = self.rng.random() < 0.25
            body: dict[str, Any] = (
                {"status": "ERROR"} if error else {"status": "COMPLETED", "usage": {"videos": 1}}
            )
            return Call("capture", key, f"/v1/authorizations/{hold}/capture", body)
        if roll < 0.9:
            model = self.rng.choice(["veo3_fast", "veo3"])
            body = {"account_id": WALLET, "request_id": key, **f.veo3_video(video_model=model)}
            if roll < 0.75:
                return Call("authorize", key, "/v1/authorizations", body)
            # Post-paid: never refused for want of credits (a shortfall is debt).
            body["status"] = "ERROR" if self.rng.random() < 0.25 else "COMPLETED"
            return Call("usage", key, "/v1/usage-records", body)
        amount = self.rng.randrange(100, 1_000)
        return Call(
            "topup", key, f"/v1/accounts/{WALLET}/topups", {"amount": amount, "reference": key}
        )

    def drive(self, http: httpx.Client, stop: threading.Event) -> None:
        """Send calls until the server dies (or ``stop``); the cut-off call is kept."""
        while not stop.is_set():
            call = self.next_call()
            self.calls.append(call)
            try:
                r = http.post(call.path, json=call.body, headers={"Idempotency-Key": call.key})
            except httpx.TransportError:
                return  # the server is gone: this call's fate is unknown
            call.status, call.answer = r.status_code, r.json()
            if call.op == "authorize" and r.status_code == 201:
                self.holds.append(call.answer["id"])


def _env(url: str) -> dict[str, str]:
    """A server on the database ``url`` whose holds last five seconds and whose sweeper
    runs five times a second: holds left open expire within the test."""
    return {
        "CREDITLEDGER_DATABASE_URL": url,
        "CREDITLEDGER_SWEEP_INTERVAL_SECONDS": "0.2",
        "CREDITLEDGER_HOLD_TTL_SECONDS": "5",
    }


def _fund(http: httpx.Client) -> None:
    """Open the wallet the clients drive, with ``OPENING`` credits."""
    assert http.post("/v1/accounts", json={"id": WALLET, "unit": "credit"}).status_code == 201
    opened = http.post(f"/v1/accounts/{WALLET}/topups", json={"amount": OPENING})
    assert opened.status_code == 201, opened.text


def _post(http: httpx.Client, call: Call) -> tuple[int, Any]:
    r = http.post(call.path, json=call.body, headers={"Idempotency-Key": call.key})
    return r.status_code, r.json()


@pytest.mark.long
@pytest.mark.parametrize("beside", [False, True], ids=["alone", "beside-another-server"])
def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(
    database_url: str, serve: Callable[[dict[str, str]], Served], tmp_path: Path, beside: bool
) -> None:
    """``beside``: a second server on the same database serves half the clients all along,
    and is never killed. Every call sent to it is answered, none with an error, while the
    other dies (on SQLite, holding the file's write lock) and starts again."""
    rng = random.Random(20261121)
    served = serve(_env(database_url)).start()
    auth = {"Authorization": f"Bearer {served.admin}"}
    with httpx.Client(base_url=served.url, headers=auth) as http:
        _fund(http)
    clients = [Client(n, random.Random(rng.random())) for n in range(CLIENTS)]
    survivor = Served(_env(database_url), tmp_path / "survivor") if beside else None
    if survivor is not None:
        survivor.folder.mkdir()
        survivor.start()
    its = clients[1::2] if survivor is not None else []

    try:
        for _ in range(KILLS):
            if served.proc is None or served.proc.poll() is not None:
                served.start()
            stop = threading.Event()
            with (
                httpx.Client(base_url=served.url, headers=auth, timeout=30) as http,
                httpx.Client(base_url=(survivor or served).url, headers=auth, timeout=30) as other,
            ):
                threads = Threads()
                for client in clients:
                    threads.start(client.drive, other if client in its else http, stop)
                time.sleep(rng.uniform(0.3, 1.5))
                served.kill()
                stop.set()
                threads.join(timeout=60)
        sent = [call for client in its for call in client.calls]
        assert all(call.status in (200, 201, 402, 409) for call in sent), Counter(
            call.status for call in sent
        )
    finally:
        if survivor is not None:
            survivor.stop()
    served.start()
    _settle(served, clients, database_url)


def _settle(
    served: Served, clients: list[Client], database_url: str, *, unknown: frozenset[int] = NONE
) -> None:
    """What the clients were told, checked against the ledger of a serving ``served``.

    Calls that got no answer (cut off), or one of the ``unknown`` statuses, are sent
    again, twice, with their keys: whatever their fate was, they take effect once at most.
    """
    auth = {"Authorization": f"Bearer {served.admin}"}
    calls = [c for client in clients for c in client.calls]
    answered = [c for c in calls if c.status is not None]
    retried = [c for c in calls if c.status is None or c.status in unknown]
    statuses = Counter(c.status or 0 for c in answered)
    # The traffic was real: every kind of call succeeded, and some were caught by an outage.
    assert {c.op for c in answered if (c.status or 0) < 300} == {
        "authorize",
        "capture",
        "usage",
        "topup",
    }
    assert retried, "no request was caught by an outage"
    assert set(statuses) <= {200, 201, 402, 409} | unknown, statuses

    outcome: dict[str, tuple[int, Any]] = {}
    with httpx.Client(base_url=served.url, headers=auth, timeout=30) as http:
        # Acknowledged means in the ledger: the replay is the very answer the client got.
        # (A refusal changes nothing and is not kept: 402, or 409 for a hold that expired
        # before its capture; a retry may succeed.)
        for call in answered:
            assert call.status is not None
            if call.status >= 300:
                continue
            assert _post(http, call) == (call.status, call.answer), call
            outcome[call.key] = (call.status, call.answer)
            if call.op == "authorize" and call.status == 201:
                hold = http.get(f"/v1/authorizations/{call.answer['id']}").json()
                assert hold["held"] == call.answer["held"]
            if call.op == "capture" and call.status == 200:
                hold = http.get(f"/v1/authorizations/{call.answer['id']}").json()
                assert (hold["status"], hold["captured"]) == ("captured", call.answer["charged"])
        # Cut off, or of unknown outcome: sent twice, it has one effect at most, and a 2xx
        # is given back the same the second time.
        for call in retried:
            first = _post(http, call)
            again = _post(http, call)
            assert first[0] in (200, 201, 402, 409), (call, first)
            if first[0] < 300:  # kept under its key: the very answer again
                assert again == first, call
            else:  # a refusal is not kept: judged anew, on a wallet whose holds expire
                assert again[0] in (200, 201, 402, 409), (call, again)
            outcome[call.key] = again

        # The sweeper expires every hold left open.
        deadline = time.monotonic() + 60
        while (wallet := http.get(f"/v1/accounts/{WALLET}").json())["pending"]:
            assert time.monotonic() < deadline, "the sweeper left holds open"
            time.sleep(0.2)
        entries = _entry_ids(http)

    topped = [a for (s, a) in outcome.values() if s == 201 and "grant" in a]
    captured = [a for (s, a) in outcome.values() if s == 200 and "charged" in a]
    reported = [a for (s, a) in outcome.values() if s == 201 and "debt" in a]
    assert reported
    for answer in topped + reported:
        entry = answer["entry"]["id"] if "entry" in answer else answer["entry_id"]
        assert entry is None or entry in entries
    charged = sum(a["charged"] for a in captured + reported)
    assert wallet["balance"] == OPENING + sum(a["grant"]["amount"] for a in topped) - charged
    assert wallet["available"] == wallet["balance"]

    db = Database.from_url(database_url)
    try:
        with db.transaction(write=False) as conn:
            # Each authorization and usage report carries its key as request_id, each
            # top-up as reference.
            per_request = _repeated(conn, metering.c.request_id)
            per_reference = _repeated(conn, grants.c.reference)
            in_ledger = conn.execute(sa.select(sa.func.count()).select_from(holds)).scalar()
    finally:
        db.dispose()
    assert per_request == []
    assert per_reference == []
    authorized = sum(1 for (s, a) in outcome.values() if s == 201 and "held" in a)
    assert in_ledger == authorized  # every hold in the ledger is one that an answer names
    served.stop()
    verified = run("verify", "--json", env={"CREDITLEDGER_DATABASE_URL": database_url})
    assert verified.returncode == 0, verified.stdout


def _repeated(conn: sa.Connection, column: sa.Column[Any]) -> list[Any]:
    """The values of ``column`` found on more than one row."""
    query = sa.select(column).where(column.is_not(None)).group_by(column)
    return list(conn.execute(query.having(sa.func.count() > 1)).scalars())


def _entry_ids(http: httpx.Client) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = http.get(f"/v1/accounts/{WALLET}/entries", params=params).json()
        ids.update(e["id"] for e in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


@pytest.mark.long
def test_postgresql_going_away_under_traffic_loses_nothing_and_doubles_nothing(
    request: pytest.FixtureRequest, serve: Callable[[dict[str, str]], Served]
) -> None:
    """The database goes away under a running server, which is not restarted: a
    PostgreSQL of its own is restarted (``fast``), crashed and recovered (``immediate``),
    and has its sessions ended (``pg_terminate_backend``), while eight clients drive
    traffic. A call in flight is answered 503 (or cut off), never 500, unless the database
    is back by the time it runs again on a new connection (sessions ended: no 503 at all);
    the server serves again once the database is back, without a restart; and, as after
    a crash, every answer replays, every 503 sent again takes effect once at most, the
    money adds up and ``verify`` passes."""
    # Durable (the suite's shared server is not): an immediate stop is a crash, and a
    # commit it acknowledged must be in the WAL that recovery replays.
    server = TempPostgres(postgres_or_skip(request).bindir, durable=True).start()
    try:
        with _driven(serve, server.url(), seed=20261203) as (served, clients, _, rng):
            for outage in ["fast", "immediate", "terminate"] * examples(1):
                time.sleep(rng.uniform(0.3, 1.0))
                # From each client's call in flight on.
                since = [max(len(c.calls) - 1, 0) for c in clients]
                if outage == "terminate":
                    end_sessions(server.url())
                else:
                    server.restart(outage)
                _wait(clients, _served, "the server did not come back", every=True)
                if outage == "terminate":
                    # The database itself stayed up: a request that met its session ended
                    # ran again on a new one, and none was refused.
                    refused = [
                        call
                        for client, n in zip(clients, since, strict=True)
                        for call in client.calls[n:]
                        if call.status == 503
                    ]
                    assert refused == [], refused
        _outage_settled(served, clients, server.url())
    finally:
        server.stop()


def test_sqlite_disk_full_under_traffic_loses_nothing_and_doubles_nothing(
    serve: Callable[[dict[str, str]], Served], tmp_path: Path
) -> None:
    """The disk of the SQLite file fills up under a running server (another file takes
    every byte left on a small tmpfs), then is freed, while eight clients drive traffic.
    Writes caught by it are answered 503 ``database_unavailable`` (their transactions
    rolled back whole), never a 500, while reads are answered; the same server writes
    again once there is room; and, as after a crash, every answer replays, every 503 sent
    again takes effect once at most, the money adds up and ``verify`` passes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root): {mounted.stderr}")
    try:
        url = f"sqlite:///{disk / 'ledger.db'}"
        # Room held back before the traffic: the WAL can grow at tens of MB a second (on
        # a loaded machine its checkpoints fall behind), and may fill the disk before the
        # test does, but not this.
        filler = _reserve(disk / "filler")
        with _driven(serve, url, seed=20261204) as (served, clients, http, rng):
            for _ in range(examples(1)):
                time.sleep(rng.uniform(0.2, 0.5))  # early: the WAL still grows
                _fill(filler)
                _wait(clients, lambda call: call.status == 503, "no write met the full disk")
                assert http.get(f"/v1/accounts/{WALLET}").status_code == 200  # reads go on
                filler.unlink()  # room again
                _wait(clients, _served, "writes did not resume")
                filler = _reserve(filler)
            time.sleep(0.5)
        _outage_settled(served, clients, url)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


@contextmanager
def _driven(
    serve: Callable[[dict[str, str]], Served], url: str, *, seed: int
) -> Iterator[tuple[Served, list[Client], httpx.Client, random.Random]]:
    """A server on ``url`` with a funded wallet, and eight clients driving traffic at it
    until the block ends."""
    served = serve(_env(url)).start()
    auth = {"Authorization": f"Bearer {served.admin}"}
    rng = random.Random(seed)
    clients = [Client(n, random.Random(rng.random())) for n in range(CLIENTS)]
    with httpx.Client(base_url=served.url, headers=auth, timeout=30) as http:
        _fund(http)
        stop = threading.Event()
        threads = Threads()
        for client in clients:
            threads.start(client.drive, http, stop)
        try:
            yield served, clients, http, rng
        finally:
            stop.set()
            threads.join(timeout=60)


def _outage_settled(served: Served, clients: list[Client], url: str) -> None:
    """After an outage of the database: the server was never restarted, each 503 said the
    database was unavailable, and the ledger adds up (:func:`_settle`, 503s sent again)."""
    assert served.starts == 1
    for call in (c for client in clients for c in client.calls):
        if call.status == 503:
            assert call.answer["error"] == "database_unavailable", call
    _settle(served, clients, url, unknown=frozenset({503}))


def _served(call: Call) -> bool:
    return call.status in (200, 201)


def _reserve(filler: Path, size: int = 16 << 20) -> Path:
    """``filler``, holding ``size`` bytes of its disk (or what there is)."""
    _grow(filler, size)
    return filler


def _fill(filler: Path) -> None:
    """``filler`` grown to take every byte left on its disk."""
    _grow(filler, None)


def _grow(filler: Path, size: int | None) -> None:
    # Unbuffered: a buffered file would keep the bytes a full disk refused and raise
    # ENOSPC again when closed, outside the try (seen once in a full run).
    with filler.open("ab", buffering=0) as out:
        try:
            while size is None or out.tell() < size:
                out.write(b"\0" * (1 << 16))
        except OSError:
            pass  # ENOSPC: full


def _wait(
    clients: list[Client], seen: Callable[[Call], bool], failure: str, *, every: bool = False
) -> None:
    """Wait until some client (with ``every``, each client) has a call, sent from now on,
    that ``seen`` accepts."""
    sent = [len(c.calls) for c in clients]
    done = all if every else any
    deadline = time.monotonic() + 30
    while not done(
        any(seen(call) for call in client.calls[n:])
        for client, n in zip(clients, sent, strict=True)
    ):
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)
