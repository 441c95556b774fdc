"""The HTTP API in-process: the real app, middleware and database, through httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from ledger.keys import Keys
from ledger.services import Ledger
from ledger.settings import Settings
from tests.e2e.served import Served


@dataclass
class Api:
    """A client of the app with one key per role and helpers for common setup."""

    app: FastAPI
    client: TestClient
    ledger: Ledger
    keys: Keys
    admin: str
    service: str

    def call(
        self,
        method: str,
        path: str,
        *,
        as_key: str | None = "admin",
        body: Any = None,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if as_key is not None:
            token = {"admin": self.admin, "service": self.service}.get(as_key, as_key)
            sent["Authorization"] = f"Bearer {token}"
        if idempotency_key is not None:
            sent["Idempotency-Key"] = idempotency_key
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, path, headers=sent, **kwargs)

    def actor(self, as_key: str) -> str:
        """What the ledger records as made by the key ``as_key`` (a role or a token)."""
        token = {"admin": self.admin, "service": self.service}.get(as_key, as_key)
        principal = self.keys.authenticate(token)
        assert principal is not None
        return f"key:{principal.key_id}"

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.call("POST", path, body=body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("GET", path, **kwargs)

    def wallet(self, account_id: str, unit: str = "credit", topup: int = 0) -> str:
        r = self.post("/v1/accounts", {"id": account_id, "unit": unit})
        assert r.status_code == 201, r.text
        if topup:
            r = self.post(f"/v1/accounts/{account_id}/topups", {"amount": topup})
            assert r.status_code == 201, r.text
        return account_id

    def customer(self, account_id: str) -> str:
        return self.keys.create("customer", name="test", account_id=account_id).key

    def balance(self, account_id: str) -> dict[str, Any]:
        r = self.get(f"/v1/accounts/{account_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@contextmanager
def api_over(ledger: Ledger, keys: Keys, settings: Settings) -> Iterator[Api]:
    """The app over ``ledger`` through a test client, with an admin and a service key."""
    app = create_app(ledger, keys, settings=settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(
            app,
            client,
            ledger,
            keys,
            admin=keys.create("admin", name="test admin").key,
            service=keys.create("service", name="test gateway").key,
        )


def app_for_tests(ledger: Ledger) -> AbstractContextManager[Api]:
    """The app over ``ledger`` as the tests run it: its own keys, a 64 KiB body limit."""
    return api_over(ledger, Keys(ledger.db), Settings(max_body_bytes=64 * 1024))


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    """The app over the ``ledger`` fixture (each database; invariants verified after)."""
    with app_for_tests(ledger) as made:
        yield made


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Makes ``creditledger serve`` processes (not started) in ``tmp_path``, with an
    environment and options; any still running after the test are stopped."""
    made: list[Served] = []

    def make(env: dict[str, str], args: Sequence[str] = ()) -> Served:
        made.append(Served(env, tmp_path, args))
        return made[-1]

    yield make
    for served in made:
        served.stop()
