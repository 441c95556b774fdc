"""The HTTP API end to end: the seed flows, every endpoint, idempotency and errors.

Each test runs on SQLite and on a real PostgreSQL; the ``ledger`` fixture verifies every
ledger invariant afterwards.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from pydantic import BaseModel

from api import schemas
from api.main import ROUTES, create_app
from ledger.errors import UnbalancedEntry
from ledger.models import (
    ENTRY_KINDS,
    HOLD_STATUSES,
    METERING_KINDS,
    METERING_STATUSES,
    idempotency,
)
from ledger.services import Ledger
from ledger.verify import verify
from pricing import estimate, price_usage
from tests import factories as f
from tests.e2e.conftest import Api
from tests.e2e.served import exchange
from tests.factories import Clock

VEO_FAST = f.veo3_video(video_model="veo3_fast")


def authorize(api: Api, account: str, request: dict[str, Any], **kw: Any) -> Any:
    return api.post(
        "/v1/authorizations", {"account_id": account, **request}, as_key="service", **kw
    )


# ----------------------------------------------------------------------------- seed flows


def test_veo3_user_short_of_credits_gets_the_seed_402_then_pays_after_a_topup(api: Api) -> None:
    user = api.wallet("veo-user", "credit", topup=100)
    r = authorize(api, user, VEO_FAST)
    assert r.status_code == 402
    body = r.json()
    assert {k: body[k] for k in ("error", "message", "credits_needed", "credits_balance")} == {
        "error": "insufficient_credits",
        "message": "Insufficient credits. Need 240, have 100",
        "credits_needed": 240,
        "credits_balance": 100,
    }
    assert body["unit"] == "credit"
    # The refusal changed nothing.
    assert (api.balance(user)["balance"], api.balance(user)["pending"]) == (100, 0)

    assert api.post(f"/v1/accounts/{user}/topups", {"amount": 200}).status_code == 201
    r = authorize(api, user, VEO_FAST)
    assert r.status_code == 201, r.text
    hold = r.json()
    assert (hold["status"], hold["held"], hold["unit"], hold["scale"]) == (
        "pending",
        240,
        "credit",
        0,
    )
    assert hold["credits_remaining"] == 60
    assert hold["quote"]["max_cost"] == 240
    assert hold["expires_at"]

    r = api.post(
        f"/v1/authorizations/{hold['id']}/capture",
        {"status": "COMPLETED", "usage": {"videos": 1}},
        as_key="service",
    )
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["status"], done["charged"], done["released"], done["credits_used"]) == (
        "captured",
        240,
        0,
        240,
    )
    assert done["credits_remaining"] == 60
    assert api.balance(user)["balance"] == 60
    got = api.get(f"/v1/authorizations/{hold['id']}", as_key="service").json()
    assert (got["status"], got["captured"]) == ("captured", 240)


def test_cosmic_text_is_captured_with_the_providers_usage_object(api: Api) -> None:
    bucket = api.wallet("bucket-1", "token", topup=1_000_000)
    request = f.text(max_tokens=500)
    hold = authorize(api, bucket, request).json()
    usage = {"input_tokens": 10, "output_tokens": 89}
    expected = price_usage(request, usage, "COMPLETED", catalog_version=hold["catalog_version"])
    r = api.post(
        f"/v1/authorizations/{hold['id']}/capture",
        {"status": "COMPLETED", "usage": usage},
        as_key="service",
    )
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["charged"] == expected.amount > 0
    assert done["released"] == hold["held"] - expected.amount
    account = api.balance(bucket)
    assert (account["balance"], account["pending"]) == (1_000_000 - expected.amount, 0)


def test_cosmic_video_ending_in_error_charges_nothing_and_releases_the_hold(api: Api) -> None:
    bucket = api.wallet("bucket-2", "token", topup=1_000_000)
    hold = authorize(api, bucket, f.cosmic_video()).json()
    assert hold["held"] > 0
    assert api.balance(bucket)["pending"] == hold["held"]
    r = api.post(f"/v1/authorizations/{hold['id']}/capture", {"status": "ERROR"}, as_key="service")
    assert r.status_code == 200, r.text
    assert (r.json()["charged"], r.json()["released"]) == (0, hold["held"])
    account = api.balance(bucket)
    assert (account["balance"], account["pending"], account["available"]) == (
        1_000_000,
        0,
        1_000_000,
    )


def test_pixazo_agentic_request_stopping_early_pays_only_rendered_candidates(api: Api) -> None:
    user = api.wallet("pix-user", "usd", topup=1_000_000)  # $1 in micro-dollars
    hold = authorize(api, user, f.pixazo_image(enable_agentic_generation=True)).json()
    assert hold["held"] == 160_000  # 2 x 2 candidates at $0.04
    r = api.post(
        f"/v1/authorizations/{hold['id']}/capture",
        {"status": "COMPLETED", "usage": {"candidates": 2}},
        as_key="service",
    )
    assert (r.json()["charged"], r.json()["released"]) == (80_000, 80_000)
    assert api.balance(user)["balance"] == 920_000


def test_a_hold_left_alone_expires_and_can_no_longer_be_captured(api: Api, clock: Clock) -> None:
    user = api.wallet("idle", "credit", topup=500)
    hold = authorize(api, user, {**VEO_FAST, "ttl_seconds": 60}).json()
    authorize(api, user, {**VEO_FAST, "ttl_seconds": 60})  # a second, left alone too
    clock.advance(seconds=61)
    swept = api.app.state.sweeper.run_once()
    assert swept.holds_expired == 2  # in one round: each is counted
    got = api.get(f"/v1/authorizations/{hold['id']}").json()
    assert got["status"] == "expired"
    r = api.post(
        f"/v1/authorizations/{hold['id']}/capture",
        {"status": "COMPLETED", "usage": {"videos": 1}},
        as_key="service",
    )
    assert r.status_code == 409
    assert r.json()["error"] == "hold_not_pending"
    assert api.balance(user)["available"] == 500
    metrics = api.client.get("/metrics").text
    assert 'creditledger_holds_resolved_total{outcome="expired"} 2.0' in metrics


def test_a_hold_expired_before_the_sweeper_ran_does_not_cause_a_402(api: Api, clock: Clock) -> None:
    """A gateway retries as its first hold expires, before the sweeper's round: the
    expired hold holds nothing, so the retry is authorized, and the hold is counted as
    released by expiry."""
    user = api.wallet("retrying", "credit", topup=500)
    stale = authorize(api, user, {**VEO_FAST, "ttl_seconds": 60}).json()
    clock.advance(seconds=61)  # no sweep
    assert api.balance(user)["pending"] == 240
    veo = f.veo3_video(video_model="veo3")
    estimate = api.post("/v1/estimates", {**veo, "account_id": user}, as_key="service").json()
    assert (estimate["affordable"], estimate["credits_balance"]) == (True, 500)
    r = authorize(api, user, veo)
    assert r.status_code == 201, r.text
    assert (r.json()["held"], r.json()["credits_remaining"]) == (500, 0)
    assert api.get(f"/v1/authorizations/{stale['id']}").json()["status"] == "expired"
    assert api.balance(user)["pending"] == 500
    assert api.app.state.sweeper.run_once().holds_expired == 0
    metrics = api.client.get("/metrics").text
    assert 'creditledger_holds_resolved_total{outcome="expired"} 1.0' in metrics
    assert "creditledger_holds_opened_total 2.0" in metrics


def test_every_refusal_of_a_hold_no_longer_pending_names_the_state_it_needs(
    api: Api, clock: Clock
) -> None:
    """Capture, void and extend of a hold already captured, voided or expired: 409
    ``hold_not_pending`` with the hold as the field and ``pending`` as what is allowed,
    whichever of them refused it; and nothing moved."""
    user = api.wallet("resolved", "credit", topup=2_000)
    captured = authorize(api, user, VEO_FAST).json()["id"]
    api.post(f"/v1/authorizations/{captured}/capture", {"status": "COMPLETED"})
    voided = authorize(api, user, VEO_FAST).json()["id"]
    api.post(f"/v1/authorizations/{voided}/void")
    expired = authorize(api, user, {**VEO_FAST, "ttl_seconds": 60}).json()["id"]
    clock.advance(seconds=61)
    before = api.balance(user)
    for hold in (captured, voided, expired):
        for action, body in (
            ("capture", {"status": "COMPLETED"}),
            ("void", None),
            ("extend", {"ttl_seconds": 60}),
        ):
            if hold == expired and action == "void":
                continue  # an expired hold not swept yet may still be voided: it releases
            r = api.post(f"/v1/authorizations/{hold}/{action}", body, as_key="service")
            assert r.status_code == 409, (hold, action, r.text)
            refused = r.json()
            assert refused["error"] == "hold_not_pending", (action, refused)
            assert (refused["field"], refused["allowed"]) == ("id", ["pending"]), (
                action,
                refused,
            )
    assert api.balance(user) == before


def test_a_hold_kept_alive_while_the_provider_works_is_captured_after_its_first_expiry(
    api: Api, clock: Clock
) -> None:
    """fal's queue (seed 004) can outlast a hold: the gateway extends it and captures."""
    user = api.wallet("queued", "credit", topup=500)
    hold = authorize(api, user, {**VEO_FAST, "ttl_seconds": 600}).json()
    extend = f"/v1/authorizations/{hold['id']}/extend"
    for _ in range(3):  # IN_QUEUE, IN_PROGRESS...: ten minutes more each time
        clock.advance(seconds=540)
        r = api.post(extend, {"ttl_seconds": 600}, as_key="service")
        assert r.status_code == 200, r.text
        assert datetime.fromisoformat(r.json()["expires_at"]) == clock.now + timedelta(seconds=600)
        assert api.app.state.sweeper.run_once().holds_expired == 0
    assert clock.now > datetime.fromisoformat(hold["expires_at"])  # past the first expiry
    assert api.balance(user)["pending"] == 240
    r = api.post(f"/v1/authorizations/{hold['id']}/capture", {"status": "COMPLETED"})
    assert (r.status_code, r.json()["charged"]) == (200, 240)
    # A resolved hold, or one that expired, is not revived.
    again = api.post(extend, {"ttl_seconds": 60}, as_key="service")
    assert (again.status_code, again.json()["error"]) == (409, "hold_not_pending")
    late = authorize(api, user, {**VEO_FAST, "ttl_seconds": 60}).json()
    clock.advance(seconds=61)  # not swept yet, but expired
    r = api.post(f"/v1/authorizations/{late['id']}/extend", {"ttl_seconds": 60})
    assert (r.status_code, r.json()["error"]) == (409, "hold_not_pending")
    r = api.post(f"/v1/authorizations/{late['id']}/capture", {"status": "COMPLETED"})
    assert (r.status_code, r.json()["error"]) == (409, "hold_not_pending")
    # When, written as every instant of the API is: in UTC, with Z.
    assert r.json()["message"].endswith(f"expired at {late['expires_at']}")
    assert late["expires_at"].endswith("Z")
    assert api.app.state.sweeper.run_once().holds_expired == 1
    # At most seven days from the authorization, however it is extended.
    week = authorize(api, user, {**VEO_FAST, "ttl_seconds": 6 * 24 * 3600 + 60}).json()
    clock.advance(days=6)
    path = f"/v1/authorizations/{week['id']}/extend"
    r = api.post(path, {"ttl_seconds": 24 * 3600 + 1}, idempotency_key="w-1")
    assert (r.status_code, r.json()["field"], r.json()["allowed"]["max"]) == (
        422,
        "ttl_seconds",
        24 * 3600,
    )
    r = api.post(path, {"ttl_seconds": 3600}, idempotency_key="w-2")
    assert r.status_code == 200, r.text
    assert api.post(path, {"ttl_seconds": 3600}, idempotency_key="w-2").json() == r.json()
    r = api.post(path, {"ttl_seconds": 24 * 3600}, idempotency_key="w-3")  # to the last second
    assert r.status_code == 200, r.text
    created = datetime.fromisoformat(week["created_at"])
    assert datetime.fromisoformat(r.json()["expires_at"]) == created + timedelta(days=7)


# ------------------------------------------------------------------------------ endpoints


def test_the_gateway_writes_and_the_reads_run_on_the_databases_own_threads(
    api: Api, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorize, capture and the like go to the database (``Database.submit``): on SQLite
    its write thread, on PostgreSQL its worker threads; reads go to the worker threads
    (SQLite's read threads); an admin's top-up goes to the thread pool."""
    ran_on: dict[str, str] = {}
    for name in ("authorize", "capture", "top_up", "account", "hold"):
        original = getattr(ledger, name)

        def recorded(
            *args: Any, _name: str = name, _original: Any = original, **kwargs: Any
        ) -> Any:
            ran_on[_name] = threading.current_thread().name
            return _original(*args, **kwargs)

        monkeypatch.setattr(ledger, name, recorded)
    account = api.wallet("threads", topup=1_000)
    r = api.post("/v1/authorizations", {"account_id": account, **f.veo3_video()})
    assert r.status_code == 201, r.text
    hold = r.json()["id"]
    r = api.post(f"/v1/authorizations/{hold}/capture", {"status": "COMPLETED"})
    assert r.status_code == 200, r.text
    assert api.get(f"/v1/authorizations/{hold}").status_code == 200
    assert api.get(f"/v1/accounts/{account}").status_code == 200
    writer = "creditledger-writer"
    worker = "creditledger-reader" if ledger.db.is_sqlite else "creditledger-worker"
    assert not ran_on["top_up"].startswith(("creditledger-", "MainThread"))
    if ledger.db.is_sqlite:
        assert (ran_on["authorize"], ran_on["capture"]) == (writer, writer)
    else:
        assert ran_on["authorize"].startswith(worker)
        assert ran_on["capture"].startswith(worker)
    assert ran_on["hold"].startswith(worker)
    assert ran_on["account"].startswith(worker)
    assert api.balance(account)["balance"] == 1_000 - 240


def test_void_releases_everything(api: Api) -> None:
    user = api.wallet("voider", "credit", topup=500)
    hold = authorize(api, user, VEO_FAST).json()
    r = api.post(f"/v1/authorizations/{hold['id']}/void", as_key="service")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "voided"
    assert api.balance(user)["available"] == 500
    again = api.post(f"/v1/authorizations/{hold['id']}/void", as_key="service")
    assert again.status_code == 409


def test_charge_deducts_at_once_or_answers_402(api: Api) -> None:
    user = api.wallet("charged", "credit", topup=300)
    r = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service")
    assert r.status_code == 201, r.text
    assert (r.json()["credits_used"], r.json()["credits_remaining"]) == (240, 60)
    r = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service")
    assert r.status_code == 402
    assert (r.json()["credits_needed"], r.json()["credits_balance"]) == (240, 60)


def test_estimate_with_and_without_an_account(api: Api) -> None:
    r = api.post("/v1/estimates", VEO_FAST, as_key="service")
    assert r.status_code == 200, r.text
    quote = r.json()
    assert (quote["cost"], quote["max_cost"], quote["unit"]) == (240, 240, "credit")
    assert "affordable" not in quote or quote["affordable"] is None
    user = api.wallet("est", "credit", topup=100)
    r = api.post("/v1/estimates", {**VEO_FAST, "account_id": user}, as_key="service")
    assert (r.json()["affordable"], r.json()["credits_balance"]) == (False, 100)
    own = api.customer(user)
    r = api.post("/v1/estimates", {**VEO_FAST, "account_id": user}, as_key=own)
    assert r.status_code == 200
    tokens = api.wallet("est-tokens", "token")
    r = api.post("/v1/estimates", {**VEO_FAST, "account_id": tokens}, as_key="service")
    assert (r.status_code, r.json()["field"]) == (422, "catalog")


def test_an_estimate_at_a_past_instant_uses_the_catalog_versions_then(api: Api) -> None:
    now = api.post("/v1/estimates", f.cosmic_image(), as_key="service").json()
    then = api.post("/v1/estimates", {**f.cosmic_image(), "at": "2025-06-01T00:00:00+02:00"}).json()
    # Seed 001's version (DALL-E 3 by default) was in force then; seed 000's is now.
    seed_001 = ("2024-03-14", "dall-e-3", 4800)
    assert (then["catalog_version"], then["model"], then["cost"]) == seed_001
    assert then["catalog_version"] != now["catalog_version"]
    assert then == estimate(
        f.cosmic_image(), datetime(2025, 6, 1, tzinfo=UTC), catalogs=api.ledger.catalogs
    ).to_dict() | dict.fromkeys(("affordable", "credits_balance", "blocked", "spend_remaining"))
    user = api.wallet("then", "token")
    for body, field in (
        ({"at": "2024-01-01T00:00:00Z"}, "at"),  # before the catalog's first version
        ({"at": "2025-06-01T00:00:00"}, "at"),  # no timezone
        ({"at": "9999-12-31T23:59:59-05:00"}, "at"),  # no UTC date
        ({"at": "2025-06-01T00:00:00Z", "account_id": user}, "at"),
    ):
        r = api.post("/v1/estimates", {**f.cosmic_image(), **body})
        assert (r.status_code, r.json()["field"]) == (422, field), r.text


def test_wallets_are_listed_a_page_at_a_time(api: Api) -> None:
    for name in ("alpha", "beta", "gamma"):
        api.wallet(name, "credit", topup=100)
    api.wallet("tokens", "token")
    first = api.get("/v1/accounts", params={"limit": 2})
    assert first.status_code == 200, first.text
    body = first.json()
    assert [a["id"] for a in body["items"]] == ["alpha", "beta"]
    # A listed wallet is the wallet without its grants and this month's spending.
    only_one = ("grants", "spent_this_month", "spend_remaining")
    assert body["items"][0] == {k: v for k, v in api.balance("alpha").items() if k not in only_one}
    rest = api.get("/v1/accounts", params={"limit": 10, "cursor": body["next_cursor"]}).json()
    assert ([a["id"] for a in rest["items"]], rest["next_cursor"]) == (["gamma", "tokens"], None)
    only = api.get("/v1/accounts", params={"unit": "token"}, as_key="service").json()
    assert [a["id"] for a in only["items"]] == ["tokens"]
    for params, field in (
        ({"cursor": "x"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"unit": "eur"}, "unit"),
    ):
        r = api.get("/v1/accounts", params=params)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field


def test_wallets_short_of_a_price_or_in_debt_are_listed(api: Api) -> None:
    api.wallet("rich", "credit", topup=1000)
    held = api.wallet("held", "credit", topup=300)
    assert authorize(api, held, VEO_FAST).status_code == 201  # 60 left
    api.wallet("empty", "credit")
    r = api.post("/v1/accounts", {"id": "debtor", "unit": "credit", "overdraft_limit": 300})
    assert r.status_code == 201, r.text
    r = api.post("/v1/charges", {"account_id": "debtor", **VEO_FAST}, as_key="service")
    assert r.status_code == 201, r.text
    r = api.call("PATCH", "/v1/accounts/debtor", body={"overdraft_limit": 100, "reason": "risk"})
    assert (r.status_code, r.json()["debt"]) == (200, 140), r.text
    api.wallet("tokens", "token")

    def listed(**params: Any) -> dict[str, int]:
        r = api.get("/v1/accounts", params=params, as_key="service")
        assert r.status_code == 200, r.text
        return {a["id"]: a["available"] for a in r.json()["items"]}

    # Who could not pay a 240-credit video, to tell them before they try.
    short = listed(unit="credit", available_below=240)
    assert short == {"held": 60, "empty": 0, "debtor": -140}
    assert listed(unit="credit", available_below=0) == {"debtor": -140}
    assert listed(unit="credit", available_below=-140) == {}
    assert listed(in_debt="true") == {"debtor": -140}
    assert set(listed(in_debt="false")) == {"rich", "held", "empty", "tokens"}
    assert listed(unit="credit", available_below=240, in_debt="false") == {"held": 60, "empty": 0}
    page = api.get("/v1/accounts", params={"unit": "credit", "available_below": 240, "limit": 2})
    assert [a["id"] for a in page.json()["items"]] == ["held", "empty"]
    rest = {"unit": "credit", "available_below": 240, "cursor": page.json()["next_cursor"]}
    assert [a["id"] for a in api.get("/v1/accounts", params=rest).json()["items"]] == ["debtor"]

    before = api.balance("debtor")
    for params, field in (
        ({"available_below": 240}, "unit"),  # minor units of which unit?
        ({"unit": "credit", "available_below": 2**63}, "available_below"),
        ({"unit": "credit", "available_below": -(2**63)}, "available_below"),
        ({"unit": "credit", "available_below": "1e3"}, "available_below"),
        ({"in_debt": "maybe"}, "in_debt"),
    ):
        r = api.get("/v1/accounts", params=params)
        assert (r.status_code, r.json()["field"]) == (422, field), r.text
    r = api.get("/v1/accounts", params={"available_below": 240})
    assert "credit" in r.json()["allowed"], r.text
    r = api.get("/v1/accounts", params={"unit": "credit", "available_below": 2**63})
    assert r.json()["allowed"] == {"le": 2**63 - 1}, r.text
    customer = api.customer("debtor")
    r = api.get("/v1/accounts", params={"in_debt": "true"}, as_key=customer)
    assert r.status_code == 403, r.text
    assert api.balance("debtor") == before


def test_a_wallets_authorizations_are_listed_for_it_and_its_customer(api: Api) -> None:
    user = api.wallet("lister", "credit", topup=1000)
    ids = [authorize(api, user, VEO_FAST).json()["id"] for _ in range(3)]
    r = api.post(f"/v1/authorizations/{ids[0]}/void", None, as_key="service")
    assert r.status_code == 200, r.text
    customer = api.customer(user)
    page = api.get(f"/v1/accounts/{user}/authorizations", params={"limit": 2}, as_key=customer)
    assert page.status_code == 200, page.text
    body = page.json()
    assert [h["id"] for h in body["items"]] == [ids[2], ids[1]]
    assert body["items"][0] == api.get(f"/v1/authorizations/{ids[2]}").json()
    rest = api.get(
        f"/v1/accounts/{user}/authorizations", params={"cursor": body["next_cursor"]}
    ).json()
    assert ([h["id"] for h in rest["items"]], rest["next_cursor"]) == ([ids[0]], None)
    pending = api.get(f"/v1/accounts/{user}/authorizations", params={"status": "pending"})
    assert sum(h["held"] for h in pending.json()["items"]) == api.balance(user)["pending"]
    bad = api.get(f"/v1/accounts/{user}/authorizations", params={"status": "done"})
    assert (bad.status_code, bad.json()["field"]) == (422, "status")


def test_the_balance_at_any_past_instant_is_what_the_wallet_showed_then(
    api: Api, clock: Clock
) -> None:
    user = api.wallet("history", "credit")
    opened = clock.now
    clock.advance(seconds=1)
    seen: list[tuple[str, dict[str, Any]]] = []

    def step(r: httpx.Response) -> dict[str, Any]:
        assert r.status_code in (200, 201), r.text
        account = api.balance(user)
        seen.append((clock.now.isoformat(), account))
        clock.advance(minutes=1)
        body: dict[str, Any] = r.json()
        return body

    topup = step(api.post(f"/v1/accounts/{user}/topups", {"amount": 1000}))
    first = step(authorize(api, user, VEO_FAST))
    second = step(authorize(api, user, VEO_FAST))
    step(api.post(f"/v1/authorizations/{first['id']}/capture", {"status": "COMPLETED"}))
    step(api.post(f"/v1/authorizations/{second['id']}/void"))
    charge = step(api.post("/v1/charges", {"account_id": user, **VEO_FAST}))
    step(api.post(f"/v1/entries/{charge['entry_id']}/reverse", {"reason": "refund"}))
    step(api.call("PATCH", f"/v1/accounts/{user}", body={"overdraft_limit": 300}))
    step(api.post(f"/v1/accounts/{user}/adjustments", {"amount": -100, "reason": "fix"}))
    step(api.call("PATCH", f"/v1/accounts/{user}", body={"overdraft_limit": 50}))
    step(api.post(f"/v1/entries/{topup['entry']['id']}/reverse", {"reason": "chargeback"}))
    assert api.balance(user)["debt"] > 0  # the last steps went below zero

    customer = api.customer(user)
    for instant, account in seen:
        r = api.get(f"/v1/accounts/{user}/balance", params={"as_of": instant}, as_key=customer)
        assert r.status_code == 200, r.text
        then = r.json()
        assert datetime.fromisoformat(then.pop("as_of")) == datetime.fromisoformat(instant)
        money = ("id", "unit", "scale", "balance", "pending", "available", "overdraft_limit")
        assert then == {k: account[k] for k in (*money, "debt")}
    before = api.get(
        f"/v1/accounts/{user}/balance", params={"as_of": (opened - timedelta(days=1)).isoformat()}
    ).json()
    assert (before["balance"], before["pending"], before["available"]) == (0, 0, 0)
    now = api.get(f"/v1/accounts/{user}/balance", as_key="service").json()
    assert now["as_of"] is None
    assert now["available"] == api.balance(user)["available"]
    later = (clock.now + timedelta(microseconds=1)).isoformat()
    for bad in ("2026-11-21T12:00:00", "yesterday", "9999-12-31T23:59:59-05:00", later):
        r = api.get(f"/v1/accounts/{user}/balance", params={"as_of": bad})
        assert (r.status_code, r.json()["field"]) == (422, "as_of"), r.text
    # Later than the server's now: refused (not yet known), naming the latest it answers.
    assert r.json()["allowed"] == {"max": clock.now.isoformat().replace("+00:00", "Z")}
    assert r.json()["message"].startswith("as_of must not be later than now"), r.text


def test_a_wallets_usage_by_day_and_model_is_cut_in_its_timezone(api: Api, clock: Clock) -> None:
    r = api.post("/v1/accounts", {"id": "tokyo", "unit": "credit", "timezone": "Asia/Tokyo"})
    assert r.status_code == 201, r.text
    api.post("/v1/accounts/tokyo/topups", {"amount": 10_000})
    veo3 = f.veo3_video(video_model="veo3")
    image = f.request("veo3", "image", prompt="A lighthouse")

    def charge(request: dict[str, Any]) -> dict[str, Any]:
        r = api.post("/v1/charges", {"account_id": "tokyo", **request}, as_key="service")
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def capture(request: dict[str, Any], status: str) -> None:
        hold = authorize(api, "tokyo", request).json()["id"]
        r = api.post(f"/v1/authorizations/{hold}/capture", {"status": status})
        assert r.status_code == 200, r.text

    clock.now = datetime(2026, 11, 10, 14, 30, tzinfo=UTC)  # 23:30 on the 10th in Tokyo
    charge(VEO_FAST)
    clock.now = datetime(2026, 11, 10, 15, 30, tzinfo=UTC)  # 00:30 on the 11th in Tokyo
    charge(image)
    capture(veo3, "COMPLETED")
    capture(veo3, "ERROR")  # metered, never charged
    refunded = charge(VEO_FAST)
    r = api.post(f"/v1/entries/{refunded['entry_id']}/reverse", {"reason": "refund"})
    assert r.status_code == 201, r.text
    clock.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # 21:00 on the 21st
    charge(VEO_FAST)

    customer = api.customer("tokyo")
    r = api.get("/v1/accounts/tokyo/usage", as_key=customer)
    assert r.status_code == 200, r.text
    month = r.json()
    assert (month["from"], month["to"], month["timezone"]) == (
        "2026-11-01",
        "2026-11-21",
        "Asia/Tokyo",
    )
    rows = [
        (i["day"], i["operation"], i["model"], i["requests"], i["videos"], i["images"], i["amount"])
        for i in month["items"]
    ]
    assert rows == [
        ("2026-11-10", "video", "veo3_fast", 1, 1, 0, 240),
        ("2026-11-11", "image", "image", 1, 0, 1, 24),
        ("2026-11-11", "video", "veo3", 2, 1, 0, 500),  # the ERROR produced no video
        ("2026-11-11", "video", "veo3_fast", 1, 1, 0, 240),  # refunded: a credit, not usage
        ("2026-11-21", "video", "veo3_fast", 1, 1, 0, 240),
    ]
    totals = month["totals"]
    assert (totals["requests"], totals["amount"], totals["seconds"]) == (6, 1244, "0")
    # What was charged for usage is what the journal debited for it.
    debited = sum(
        -p["amount"]
        for e in api.get("/v1/accounts/tokyo/entries", params={"limit": 500}).json()["items"]
        if e["kind"] in ("capture", "charge")
        for p in e["postings"]
        if p["account_id"] == "tokyo"
    )
    assert debited == totals["amount"]

    day = api.get("/v1/accounts/tokyo/usage", params={"from": "2026-11-11", "to": "2026-11-11"})
    assert [i["day"] for i in day.json()["items"]] == ["2026-11-11"] * 3
    assert day.json()["totals"]["amount"] == 24 + 500 + 240
    assert api.get("/v1/accounts/tokyo/usage", as_key="service").status_code == 200
    stranger = api.wallet("stranger")
    other = api.get(f"/v1/accounts/{stranger}/usage", as_key=customer)
    assert other.status_code == 404
    for params, field in (
        ({"from": "2026-11-12", "to": "2026-11-11"}, "from"),
        ({"from": "2025-01-01", "to": "2026-11-11"}, "to"),
        ({"from": "0"}, "from"),
        ({"from": "2026-11-01T00:00:00"}, "from"),
        ({"to": "2026-02-30"}, "to"),
    ):
        bad = api.get("/v1/accounts/tokyo/usage", params=params)
        assert (bad.status_code, bad.json()["field"]) == (422, field), bad.text


def test_a_wallet_opened_with_an_allocation_can_spend_it_at_once(api: Api) -> None:
    """A gateway's sign-up opens the wallet and sends its first request at once: the
    month's allocation is granted as the wallet opens, not at the sweeper's next round
    (which answered that first request 402)."""
    body = {"id": "signup", "unit": "credit", "monthly_allocation": 500}
    r = api.call("POST", "/v1/accounts", body=body, idempotency_key="signup-1")
    assert r.status_code == 201, r.text
    opened = r.json()
    assert (opened["balance"], opened["available"]) == (500, 500)
    assert [(g["kind"], g["period"], g["remaining"]) for g in opened["grants"]] == [
        ("allocation", "2026-11", 500)
    ]
    again = api.call("POST", "/v1/accounts", body=body, idempotency_key="signup-1")
    assert again.json() == opened  # a retried opening grants nothing more
    hold = authorize(api, "signup", VEO_FAST)
    assert hold.status_code == 201, hold.text
    assert api.app.state.sweeper.run_once().allocations_granted == 0
    assert api.balance("signup")["balance"] == 500


def test_a_wallets_overdraft_and_allocation_change_and_each_change_is_kept(
    api: Api, clock: Clock
) -> None:
    user = api.wallet("plan", "credit", topup=100)
    assert authorize(api, user, VEO_FAST).status_code == 402  # needs 240, has 100
    change = {"overdraft_limit": 200, "reason": "credit line approved"}
    r = api.call("PATCH", f"/v1/accounts/{user}", body=change, idempotency_key="line-1")
    assert r.status_code == 200, r.text
    assert (r.json()["overdraft_limit"], r.json()["available"]) == (200, 300)
    again = api.call("PATCH", f"/v1/accounts/{user}", body=change, idempotency_key="line-1")
    assert again.json() == r.json()  # replayed: one change, not two
    other = api.call(
        "PATCH", f"/v1/accounts/{user}", body={"overdraft_limit": 5}, idempotency_key="line-1"
    )
    assert other.status_code == 409
    hold = authorize(api, user, VEO_FAST)
    assert hold.status_code == 201, hold.text
    r = api.post(f"/v1/authorizations/{hold.json()['id']}/capture", {"status": "COMPLETED"})
    assert r.status_code == 200, r.text
    assert api.balance(user)["balance"] == -140  # within the credit line

    # A limit below what the wallet owes leaves it in debt: no new authorization.
    r = api.call("PATCH", f"/v1/accounts/{user}", body={"overdraft_limit": 40})
    assert (r.json()["debt"], r.json()["available"]) == (100, -100)
    assert authorize(api, user, f.request("veo3", "image", prompt="x")).status_code == 402

    # An allocation set in a period that had none is granted at once, and only once.
    r = api.call("PATCH", f"/v1/accounts/{user}", body={"monthly_allocation": 1000})
    assert r.json()["monthly_allocation"] == 1000
    assert r.json()["balance"] == 860  # the debt was repaid first
    assert api.app.state.sweeper.run_once().allocations_granted == 0
    assert api.balance(user)["balance"] == 860
    r = api.call("PATCH", f"/v1/accounts/{user}", body={"monthly_allocation": None})
    assert r.json()["monthly_allocation"] is None
    clock.advance(days=15)  # into December: no allocation any more
    assert api.app.state.sweeper.run_once().allocations_granted == 0

    history = api.get(f"/v1/accounts/{user}/changes", as_key=api.customer(user)).json()
    assert [(c["setting"], c["old_value"], c["new_value"]) for c in history["items"]] == [
        ("monthly_allocation", 1000, None),
        ("monthly_allocation", None, 1000),
        ("overdraft_limit", 200, 40),
        ("overdraft_limit", 0, 200),
    ]
    assert history["items"][-1]["reason"] == "credit line approved"
    page = api.get(f"/v1/accounts/{user}/changes", params={"limit": 3}).json()
    rest = api.get(f"/v1/accounts/{user}/changes", params={"cursor": page["next_cursor"]})
    # The admin's pages hold the same changes, and who made them (hidden from customers).
    paged = page["items"] + rest.json()["items"]
    assert [{**c, "actor": None} for c in paged] == history["items"]
    assert {c["actor"] for c in paged} == {api.actor("admin")}
    # Nothing to change, or nothing that changes: no history.
    assert api.call("PATCH", f"/v1/accounts/{user}", body={}).status_code == 422
    same = api.call("PATCH", f"/v1/accounts/{user}", body={"overdraft_limit": 40})
    assert same.status_code == 200
    assert len(api.get(f"/v1/accounts/{user}/changes").json()["items"]) == 4


def test_a_blocked_wallet_is_refused_new_spending_but_settles_what_it_holds(api: Api) -> None:
    user = api.wallet("abuser", "credit", topup=1000)
    other = api.wallet("bystander", "credit", topup=1000)
    held = [authorize(api, user, VEO_FAST, idempotency_key=f"before-{n}") for n in range(3)]
    assert [h.status_code for h in held] == [201, 201, 201]
    block = {"blocked": True, "reason": "chargeback"}
    r = api.call("PATCH", f"/v1/accounts/{user}", body=block, idempotency_key="block-1")
    assert r.status_code == 200, r.text
    assert (r.json()["blocked"], r.json()["pending"], r.json()["available"]) == (True, 720, 280)
    again = api.call("PATCH", f"/v1/accounts/{user}", body=block, idempotency_key="block-1")
    assert again.json() == r.json()

    # New spending is refused, and the refusal changes nothing.
    before = api.balance(user)
    image = f.request("veo3", "image", prompt="x")
    for refused in (
        authorize(api, user, image),
        api.post("/v1/charges", {"account_id": user, **image}, as_key="service"),
    ):
        assert refused.status_code == 403, refused.text
        assert (refused.json()["error"], refused.json()["field"]) == (
            "account_blocked",
            "account_id",
        )
    assert api.balance(user) == before
    assert authorize(api, other, image).status_code == 201  # only this wallet
    # A request made before the block replays as it was; it is not a new one.
    replay = authorize(api, user, VEO_FAST, idempotency_key="before-0")
    assert (replay.status_code, replay.json()["id"]) == (201, held[0].json()["id"])
    quote = api.post("/v1/estimates", {**image, "account_id": user}, as_key="service").json()
    assert (quote["affordable"], quote["blocked"], quote["credits_balance"]) == (False, True, 280)
    fine = api.post("/v1/estimates", {**image, "account_id": other}, as_key="service").json()
    assert (fine["affordable"], fine["blocked"]) == (True, False)

    # What it already holds still settles: the provider did the work.
    first, second, third = (h.json()["id"] for h in held)
    r = api.post(f"/v1/authorizations/{first}/capture", {"status": "COMPLETED"}, as_key="service")
    assert (r.status_code, r.json()["charged"]) == (200, 240), r.text
    r = api.post(f"/v1/authorizations/{second}/extend", {"ttl_seconds": 600}, as_key="service")
    assert r.status_code == 200, r.text
    assert api.post(f"/v1/authorizations/{third}/void", as_key="service").status_code == 200
    assert api.post(f"/v1/accounts/{user}/topups", {"amount": 100}).status_code == 201
    mine = api.get(f"/v1/accounts/{user}", as_key=api.customer(user)).json()
    assert (mine["blocked"], mine["balance"], mine["pending"]) == (True, 860, 240)

    listed = api.get("/v1/accounts", params={"blocked": "true"}, as_key="service").json()
    assert [a["id"] for a in listed["items"]] == [user]
    assert [a["blocked"] for a in listed["items"]] == [True]
    unblocked = api.get("/v1/accounts", params={"blocked": "false"}).json()["items"]
    assert user not in [a["id"] for a in unblocked]
    assert other in [a["id"] for a in unblocked]
    bad = api.get("/v1/accounts", params={"blocked": "maybe"})
    assert (bad.status_code, bad.json()["field"]) == (422, "blocked"), bad.text

    assert (
        api.call("PATCH", f"/v1/accounts/{user}", body=block, as_key="service").status_code == 403
    )

    r = api.call("PATCH", f"/v1/accounts/{user}", body={"blocked": False, "reason": "paid"})
    assert (r.status_code, r.json()["blocked"]) == (200, False)
    assert authorize(api, user, image).status_code == 201
    history = api.get(f"/v1/accounts/{user}/changes", as_key=api.customer(user)).json()["items"]
    assert [(c["setting"], c["old_value"], c["new_value"], c["reason"]) for c in history] == [
        ("blocked", True, False, "paid"),
        ("blocked", False, True, "chargeback"),
    ]


def test_a_monthly_spend_limit_caps_holds_and_charges_until_the_wallets_month_ends(
    api: Api, clock: Clock
) -> None:
    body = {"id": "capped", "unit": "credit", "timezone": "Asia/Tokyo", "monthly_spend_limit": 1000}
    r = api.post("/v1/accounts", body)
    assert r.status_code == 201, r.text
    assert (r.json()["monthly_spend_limit"], r.json()["spend_remaining"]) == (1000, 1000)
    user = "capped"
    assert api.post(f"/v1/accounts/{user}/topups", {"amount": 10_000}).status_code == 201
    holds = [authorize(api, user, VEO_FAST).json()["id"] for _ in range(4)]  # 960 held

    before = api.balance(user)
    refused = authorize(api, user, VEO_FAST)
    assert refused.status_code == 402, refused.text
    assert refused.json() == {
        "error": "spend_limit_reached",
        "message": "Monthly spend limit reached. Need 240, 40 of 1000 left "
        "until 2026-11-30T15:00:00Z",
        "credits_needed": 240,
        "credits_balance": 9_040,
        "unit": "credit",
        "scale": 0,
        "spend_limit": 1000,
        "spend_remaining": 40,
        "resets_at": "2026-11-30T15:00:00Z",  # midnight of December 1 in Tokyo
    }
    assert api.balance(user) == before  # the refusal changed nothing
    quote = api.post("/v1/estimates", {**VEO_FAST, "account_id": user}, as_key="service").json()
    assert (quote["affordable"], quote["spend_remaining"]) == (False, 40)
    image = f.request("veo3", "image", prompt="x")
    assert authorize(api, user, image).status_code == 201  # 24 fits in 40

    r = api.post(f"/v1/authorizations/{holds[0]}/capture", {"status": "COMPLETED"})
    assert r.status_code == 200, r.text
    assert api.post(f"/v1/authorizations/{holds[1]}/void").status_code == 200
    charged = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service")
    assert charged.status_code == 201, charged.text
    again = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service")
    assert (again.status_code, again.json()["error"]) == (402, "spend_limit_reached")
    account = api.balance(user)
    assert (account["spent_this_month"], account["pending"], account["spend_remaining"]) == (
        480,
        504,
        16,
    )

    r = api.call("PATCH", f"/v1/accounts/{user}", body={"monthly_spend_limit": 2000})
    assert (r.status_code, r.json()["spend_remaining"]) == (200, 1016)
    assert authorize(api, user, VEO_FAST).status_code == 201
    # The month ends at midnight in the wallet's timezone, not in UTC.
    clock.advance(days=9, hours=2, minutes=59, seconds=59)
    assert api.app.state.sweeper.run_once().holds_expired == 4  # 240 * 3 and 24
    assert api.balance(user)["spent_this_month"] == 480
    clock.advance(seconds=1)
    december = api.balance(user)
    assert (december["spent_this_month"], december["spend_remaining"]) == (0, 2000)
    r = api.call("PATCH", f"/v1/accounts/{user}", body={"monthly_spend_limit": None})
    assert (r.json()["monthly_spend_limit"], r.json()["spend_remaining"]) == (None, None)
    history = api.get(f"/v1/accounts/{user}/changes").json()["items"]
    assert [(c["setting"], c["old_value"], c["new_value"]) for c in history] == [
        ("monthly_spend_limit", 2000, None),
        ("monthly_spend_limit", 1000, 2000),
    ]
    for method, path, bad in (
        ("POST", "/v1/accounts", {"id": "neg", "unit": "credit", "monthly_spend_limit": -1}),
        ("PATCH", f"/v1/accounts/{user}", {"monthly_spend_limit": "100"}),
        ("PATCH", f"/v1/accounts/{user}", {"monthly_spend_limit": 2**63}),
    ):
        r = api.call(method, path, body=bad)
        assert (r.status_code, r.json()["field"]) == (422, "monthly_spend_limit"), r.text


def test_a_refund_gives_its_spend_back_to_the_month_of_its_charge(api: Api, clock: Clock) -> None:
    """The spend limit counts what the month spent net of refunds of that spend: a
    refunded charge or capture of this month makes room again; a refund of last month's
    spend makes none this month (the month could otherwise use more than its limit);
    taking back a top-up or an adjustment is no refund."""
    body = {"id": "capped", "unit": "credit", "monthly_spend_limit": 500}
    assert api.post("/v1/accounts", body).status_code == 201
    user = "capped"
    assert api.post(f"/v1/accounts/{user}/topups", {"amount": 10_000}).status_code == 201
    charged = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service")
    assert charged.status_code == 201, charged.text
    hold = authorize(api, user, VEO_FAST).json()["id"]
    captured = api.post(f"/v1/authorizations/{hold}/capture", {"status": "COMPLETED"})
    assert captured.status_code == 200, captured.text
    full = authorize(api, user, VEO_FAST)
    assert (full.status_code, full.json()["spend_remaining"]) == (402, 20)

    charge_entry = api.get(f"/v1/usage-records/{charged.json()['id']}").json()["entry_id"]
    refund = api.post(f"/v1/entries/{charge_entry}/reverse", {"reason": "blank video"})
    assert refund.status_code == 201, refund.text
    account = api.balance(user)
    assert (account["spent_this_month"], account["spend_remaining"]) == (240, 260)
    again = authorize(api, user, VEO_FAST)  # the refund made room for it
    assert again.status_code == 201, again.text
    assert api.post(f"/v1/authorizations/{again.json()['id']}/void").status_code == 200

    # Taking back credits is no refund: the month's spend stays as it was.
    adjusted = api.post(f"/v1/accounts/{user}/adjustments", {"amount": 100, "reason": "gift"})
    assert adjusted.status_code == 201, adjusted.text
    assert (
        api.post(
            f"/v1/entries/{adjusted.json()['entry']['id']}/reverse", {"reason": "no gift"}
        ).status_code
        == 201
    )
    assert api.balance(user)["spent_this_month"] == 240

    # Next month, refunding November's capture makes no room in December ...
    clock.advance(days=30)
    assert api.balance(user)["spent_this_month"] == 0
    image = api.post(
        "/v1/charges", {"account_id": user, **f.request("veo3", "image", prompt="x")},
        as_key="service",
    )  # fmt: skip
    assert image.status_code == 201, image.text
    assert api.balance(user)["spent_this_month"] == 24
    capture_entry = captured.json()["entry_id"]
    assert (
        api.post(f"/v1/entries/{capture_entry}/reverse", {"reason": "late refund"}).status_code
        == 201
    )
    account = api.balance(user)
    assert (account["spent_this_month"], account["spend_remaining"]) == (24, 476)
    assert account["balance"] == 10_000 - 24  # both refunds came back to the balance
    # ... so December can still use only its own 500, the refunded 240 not on top of it.
    assert authorize(api, user, VEO_FAST).status_code == 201
    refused = authorize(api, user, VEO_FAST)
    assert (refused.status_code, refused.json()["spend_remaining"]) == (402, 236), refused.text
    # A refund of December's own charge gives its room back.
    image_entry = api.get(f"/v1/usage-records/{image.json()['id']}").json()["entry_id"]
    assert api.post(f"/v1/entries/{image_entry}/reverse", {"reason": "blurry"}).status_code == 201
    assert api.balance(user)["spent_this_month"] == 0


def test_a_revoked_grant_gives_up_only_what_is_left_and_is_never_refilled(
    api: Api, clock: Clock
) -> None:
    user = api.wallet("promo-user", "credit", topup=1000)
    promo = api.post(
        f"/v1/accounts/{user}/topups",
        {"amount": 500, "kind": "promo", "priority": -1, "expires_at": "2027-01-01T00:00:00Z"},
    ).json()
    grant = promo["grant"]["id"]
    charge = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service").json()
    clock.advance(minutes=5)

    body = {"reason": "campaign withdrawn"}
    r = api.post(f"/v1/grants/{grant}/revoke", body, idempotency_key="revoke-1")
    assert r.status_code == 201, r.text
    done = r.json()
    assert (done["grant"]["remaining"], done["grant"]["amount"]) == (0, 500)
    assert done["grant"]["expires_at"] == "2026-11-21T12:05:00Z"  # it expired when revoked
    assert (done["entry"]["kind"], done["entry"]["memo"]) == (
        "expiry",
        f"grant {grant} revoked: campaign withdrawn",
    )
    taken = [p["amount"] for p in done["entry"]["postings"] if p["account_id"] == user]
    assert taken == [-260]  # 240 of the promotion was spent first (priority -1): it stays spent
    assert (done["balance"]["balance"], done["balance"]["available"]) == (1000, 1000)
    again = api.post(f"/v1/grants/{grant}/revoke", body, idempotency_key="revoke-1")
    assert again.json() == done
    twice = api.post(f"/v1/grants/{grant}/revoke", body)
    assert (twice.status_code, twice.json()["error"]) == (409, "grant_not_open")
    assert [g["kind"] for g in api.balance(user)["grants"]] == ["pack"]

    # Refunding what the promotion paid for does not bring the promotion back.
    r = api.post(f"/v1/entries/{charge['entry_id']}/reverse", {"reason": "bad render"})
    assert r.status_code == 201, r.text
    account = api.balance(user)
    assert account["balance"] == 1240
    assert sorted((g["kind"], g["remaining"]) for g in account["grants"]) == [
        ("adjustment", 240),
        ("pack", 1000),
    ]
    for path, key, code, field in (
        ("/v1/grants/nope/revoke", "admin", 404, "id"),
        (f"/v1/grants/{grant}/revoke", "service", 403, None),
    ):
        r = api.post(path, body, as_key=key)
        assert (r.status_code, r.json().get("field")) == (code, field), r.text
    r = api.post(f"/v1/grants/{grant}/revoke", {})
    assert (r.status_code, r.json()["field"]) == (422, "reason")


def test_account_topups_adjustments_entries_and_reversal(api: Api) -> None:
    r = api.post(
        "/v1/accounts",
        {"id": "acme", "unit": "token", "overdraft_limit": 10, "timezone": "Europe/Berlin"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["available"] == 10
    assert api.post("/v1/accounts", {"id": "acme", "unit": "token"}).status_code == 409
    r = api.post(
        "/v1/accounts/acme/topups",
        {
            "amount": 1000,
            "kind": "promo",
            "expires_at": "2027-01-01T00:00:00Z",
            "priority": -1,
            "reference": "order-7",
        },
    )
    assert r.status_code == 201, r.text
    topup = r.json()
    assert (topup["grant"]["kind"], topup["grant"]["remaining"]) == ("promo", 1000)
    given = ("expires_at", "priority", "reference")
    assert [topup["grant"][name] for name in given] == ["2027-01-01T00:00:00Z", -1, "order-7"]
    assert topup["entry"]["memo"] == "promo top-up (order-7)"
    r = api.post("/v1/accounts/acme/adjustments", {"amount": -100, "reason": "goodwill back"})
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["balance"] == 900
    account = api.balance("acme")
    assert (account["balance"], account["available"], account["timezone"]) == (
        900,
        910,
        "Europe/Berlin",
    )
    assert [g["kind"] for g in account["grants"]] == ["promo"]

    page = api.get("/v1/accounts/acme/entries", params={"limit": 1}).json()
    assert len(page["items"]) == 1
    assert page["next_cursor"]
    rest = api.get(
        "/v1/accounts/acme/entries", params={"limit": 10, "cursor": page["next_cursor"]}
    ).json()
    kinds = [e["kind"] for e in page["items"] + rest["items"]]
    assert sorted(kinds) == ["adjustment", "topup"]

    r = api.post(f"/v1/entries/{topup['entry']['id']}/reverse", {"reason": "chargeback"})
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["balance"] == -100
    again = api.post(f"/v1/entries/{topup['entry']['id']}/reverse", {"reason": "chargeback"})
    assert (again.status_code, again.json()["error"]) == (409, "already_reversed")
    undo = api.post(f"/v1/entries/{r.json()['entry']['id']}/reverse", {"reason": "undo"})
    assert (undo.status_code, undo.json()["error"]) == (409, "not_reversible")  # a reversal


def test_reversing_a_top_up_whose_credits_expired_leaves_the_wallet_as_it_was(
    api: Api, clock: Clock
) -> None:
    """The credits left the wallet when they expired; the reversal takes them back from
    the expired-credits account. Taken from the wallet a second time, they left it 200
    of its 500, and its next authorization (240) answered 402."""
    user = api.wallet("lapsed", "credit", topup=500)
    day = (clock.now + timedelta(days=1)).isoformat()
    r = api.post(f"/v1/accounts/{user}/topups", {"amount": 300, "kind": "promo", "expires_at": day})
    assert r.status_code == 201, r.text
    promo = r.json()["entry"]["id"]
    clock.advance(days=2)
    r = api.post(f"/v1/entries/{promo}/reverse", {"reason": "campaign void"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["balance"]["balance"], body["balance"]["debt"]) == (500, 0)
    assert {p["account_id"]: p["amount"] for p in body["entry"]["postings"]} == {
        "system:promotions:credit": 300,
        "system:expired:credit": -300,
    }
    kinds = [e["kind"] for e in api.get(f"/v1/accounts/{user}/entries").json()["items"]]
    assert kinds == ["reversal", "expiry", "topup", "topup"]
    hold = api.post("/v1/authorizations", {"account_id": user, **VEO_FAST}, as_key="service")
    assert hold.status_code == 201, hold.text


def test_entries_filter_by_kind_and_time(api: Api, clock: Clock) -> None:
    user = api.wallet("journal", "credit", topup=1000)  # 12:00
    clock.advance(hours=1)
    charge = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service").json()
    clock.advance(hours=1)
    api.post(f"/v1/accounts/{user}/adjustments", {"amount": -10, "reason": "fix"})
    api.post(f"/v1/entries/{charge['entry_id']}/reverse", {"reason": "refund"})
    customer = api.customer(user)

    def kinds(**params: str) -> list[str]:
        r = api.get(f"/v1/accounts/{user}/entries", params=params, as_key=customer)
        assert r.status_code == 200, r.text
        return [e["kind"] for e in r.json()["items"]]

    assert kinds() == ["reversal", "adjustment", "charge", "topup"]
    assert kinds(kind="charge") == ["charge"]
    assert kinds(since="2026-11-21T13:00:00Z") == ["reversal", "adjustment", "charge"]
    assert kinds(until="2026-11-21T13:00:00Z") == ["topup"]
    window = {"since": "2026-11-21T22:00:00+09:00", "until": "2026-11-21T14:00:00Z"}
    assert kinds(**window) == ["charge"]  # 13:00 UTC, in Tokyo's 22:00
    first = api.get(
        f"/v1/accounts/{user}/entries", params={"since": "2026-11-21T12:30:00Z", "limit": "2"}
    ).json()
    rest = api.get(
        f"/v1/accounts/{user}/entries",
        params={"since": "2026-11-21T12:30:00Z", "cursor": first["next_cursor"]},
    ).json()
    assert [e["kind"] for e in first["items"] + rest["items"]] == [
        "reversal",
        "adjustment",
        "charge",
    ]
    for params, field in (
        ({"kind": "refund"}, "kind"),
        ({"since": "2026-11-21T13:00:00Z", "until": "2026-11-21T13:00:00Z"}, "since"),
        ({"since": "2026-11-21T13:00:00"}, "since"),
        ({"until": "tomorrow"}, "until"),
    ):
        r = api.get(f"/v1/accounts/{user}/entries", params=params)
        assert (r.status_code, r.json()["field"]) == (422, field), r.text


def test_usage_records_show_each_request_as_metered(api: Api, clock: Clock) -> None:
    user = api.wallet("metered-user", "token", topup=10_000_000)  # 12:00
    api.wallet("someone-else", "token")

    def hold(request: dict[str, Any], request_id: str) -> dict[str, Any]:
        r = authorize(api, user, {**request, "request_id": request_id})
        assert r.status_code == 201, r.text
        clock.advance(minutes=1)
        body: dict[str, Any] = r.json()
        return body

    text = hold(f.text(max_tokens=500), "req-text")
    usage = {"input_tokens": 10, "output_tokens": 89}
    captured = api.post(
        f"/v1/authorizations/{text['id']}/capture", {"status": "COMPLETED", "usage": usage}
    ).json()
    video = hold(f.cosmic_video(), "req-video")
    api.post(f"/v1/authorizations/{video['id']}/capture", {"status": "ERROR"})
    voided = hold(f.text(), "req-void")
    api.post(f"/v1/authorizations/{voided['id']}/void")
    pending = hold(f.text(), "req-pending")
    charge = api.post(
        "/v1/charges", {"account_id": user, **f.cosmic_image(), "request_id": "req-image"}
    ).json()
    refund = api.post(f"/v1/entries/{charge['entry_id']}/reverse", {"reason": "refund"}).json()
    customer = api.customer(user)

    def listed(**params: str) -> list[dict[str, Any]]:
        r = api.get(f"/v1/accounts/{user}/usage-records", params=params, as_key=customer)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    records = listed()
    assert [(r["request_id"], r["kind"], r["status"]) for r in records] == [
        ("req-image", "charge", "CHARGED"),
        ("req-pending", "authorization", "pending"),
        ("req-void", "authorization", "voided"),
        ("req-video", "authorization", "ERROR"),
        ("req-text", "authorization", "COMPLETED"),
    ]
    image, _, _, failed, done = records
    assert done["id"] == text["metering_id"]
    assert done["hold_id"] == text["id"]
    assert (done["held"], done["charged"]) == (text["held"], captured["charged"])
    assert done["entry_id"] == captured["entry_id"]
    assert done["reversed_by"] is None
    assert {k: done["usage"][k] for k in usage} == usage  # the provider's, not the estimate
    assert (done["catalog"], done["operation"], done["unit"]) == ("cosmic", "text", "token")
    assert done["catalog_version"] == text["catalog_version"]
    assert done["completed_at"]
    assert (failed["charged"], failed["entry_id"]) == (0, None)  # ERROR is never charged
    assert image["id"] == charge["id"]
    assert image["charged"] == charge["credits_used"]
    assert (image["hold_id"], image["reversed_by"]) == (None, refund["entry"]["id"])
    assert image["usage"]["images"] == 1
    assert listed(status="pending")[0]["id"] == pending["metering_id"]
    assert [r["request_id"] for r in listed(request_id="req-video")] == ["req-video"]
    assert [r["operation"] for r in listed(catalog="cosmic", operation="image")] == ["image"]
    assert listed(model=done["model"], status="COMPLETED") == [done]
    same_model = ["req-pending", "req-void", "req-text"]  # the text requests, not the media
    assert [r["request_id"] for r in listed(model=done["model"])] == same_model
    assert listed(catalog="veo3") == []
    window = {"since": "2026-11-21T21:01:00+09:00", "until": "2026-11-21T12:03:00Z"}
    assert [r["request_id"] for r in listed(**window)] == ["req-void", "req-video"]
    first = api.get(f"/v1/accounts/{user}/usage-records", params={"limit": "3"}).json()
    rest = api.get(
        f"/v1/accounts/{user}/usage-records", params={"cursor": first["next_cursor"]}
    ).json()
    assert first["items"] + rest["items"] == records
    assert rest["next_cursor"] is None

    one = api.get(f"/v1/usage-records/{done['id']}", as_key=customer)
    assert (one.status_code, one.json()) == (200, done)
    assert api.get(f"/v1/usage-records/{image['id']}", as_key="service").json() == image
    other = api.customer("someone-else")
    for path in (f"/v1/usage-records/{done['id']}", f"/v1/accounts/{user}/usage-records"):
        r = api.get(path, as_key=other)
        assert r.status_code == 404, r.text
    missing = api.get("/v1/usage-records/nope")
    assert (missing.status_code, missing.json()["field"]) == (404, "id")
    for params, field in (
        ({"status": "captured"}, "status"),
        ({"since": "2026-11-21T13:00:00Z", "until": "2026-11-21T13:00:00Z"}, "since"),
        ({"until": "2026-11-21T13:00:00"}, "until"),
        ({"model": "m" * 201}, "model"),
        ({"cursor": "not-ours"}, "cursor"),
        ({"limit": "0"}, "limit"),
    ):
        r = api.get(f"/v1/accounts/{user}/usage-records", params=params)
        assert (r.status_code, r.json()["field"]) == (422, field), r.text


def test_each_entry_and_change_names_the_key_that_made_it(api: Api, clock: Clock) -> None:
    admin, service = api.actor("admin"), api.actor("service")
    user = api.wallet("audited", "credit")
    promo = api.post(
        f"/v1/accounts/{user}/topups",
        {"amount": 1000, "kind": "promo", "expires_at": "2026-11-21T13:00:00Z"},
        headers={"Idempotency-Key": "top-1"},
    ).json()
    assert promo["entry"]["actor"] == admin
    hold = authorize(api, user, VEO_FAST).json()
    capture = (f"/v1/authorizations/{hold['id']}/capture", {"status": "COMPLETED"})
    once = {"Idempotency-Key": "cap-1"}
    captured = api.post(*capture, headers=once, as_key="service").json()
    # A retry by another key of the operator's scope replays the first answer: the
    # entry stays the first caller's.
    retried = api.post(*capture, headers=once, as_key="admin")
    assert (retried.status_code, retried.json()) == (200, captured)
    charge = api.post("/v1/charges", {"account_id": user, **VEO_FAST}, as_key="service").json()
    api.post(f"/v1/entries/{charge['entry_id']}/reverse", {"reason": "refund"})
    api.post(f"/v1/accounts/{user}/adjustments", {"amount": 5, "reason": "goodwill"})
    api.call("PATCH", f"/v1/accounts/{user}", body={"overdraft_limit": 10, "reason": "vip"})
    clock.advance(hours=2)
    assert api.ledger.expire_grants() == 1  # the sweeper: the promo's rest expires

    journal = api.get(f"/v1/accounts/{user}/entries").json()["items"]
    by_id = {e["id"]: e["actor"] for e in journal}
    assert by_id[captured["entry_id"]] == service
    assert by_id[charge["entry_id"]] == service
    assert [(e["kind"], e["actor"]) for e in journal] == [
        ("expiry", "system"),
        ("adjustment", admin),
        ("reversal", admin),
        ("charge", service),
        ("capture", service),
        ("topup", admin),
    ]
    changes = api.get(f"/v1/accounts/{user}/changes").json()["items"]
    assert [(c["setting"], c["actor"]) for c in changes] == [("overdraft_limit", admin)]
    # Customers see their journal and changes, not the operator's keys.
    customer = api.customer(user)
    seen = api.get(f"/v1/accounts/{user}/entries", as_key=customer).json()["items"]
    assert [e["id"] for e in seen] == [e["id"] for e in journal]
    assert {e["actor"] for e in seen} == {None}
    changed = api.get(f"/v1/accounts/{user}/changes", as_key=customer).json()["items"]
    assert [c["actor"] for c in changed] == [None]

    # What one key did: in one wallet, and across the journal (an audit after a leak).
    other = api.wallet("elsewhere", "credit", topup=1000)
    elsewhere = api.post("/v1/charges", {"account_id": other, **VEO_FAST}, as_key="service")
    by_service = api.get(f"/v1/accounts/{user}/entries", params={"actor": service}).json()
    assert [e["kind"] for e in by_service["items"]] == ["charge", "capture"]
    journal_page = api.get("/v1/entries", params={"actor": service, "limit": 2}).json()
    rest = api.get(
        "/v1/entries", params={"actor": service, "cursor": journal_page["next_cursor"]}
    ).json()
    assert [e["id"] for e in journal_page["items"] + rest["items"]] == [
        elsewhere.json()["entry_id"],
        charge["entry_id"],
        captured["entry_id"],
    ]
    expired = api.get("/v1/entries", params={"actor": "system", "kind": "expiry"}).json()
    assert [(e["account_id"], e["kind"]) for e in expired["items"]] == [(user, "expiry")]
    assert api.get("/v1/entries", params={"since": "2026-11-22T00:00:00Z"}).json()["items"] == []
    # Before the clock moved on: this wallet's entries but the expiry, none of the other's.
    before = api.get("/v1/entries", params={"until": "2026-11-21T13:00:00Z"}).json()["items"]
    assert [e["id"] for e in before] == [e["id"] for e in journal if e["kind"] != "expiry"]
    for as_key, path in ((customer, f"/v1/accounts/{user}/entries"), ("service", "/v1/entries")):
        r = api.get(path, params={"actor": service}, as_key=as_key)
        assert r.status_code == 403, r.text
    for params in ({"actor": ""}, {"actor": "k" * 81}, {"kind": "refund"}):
        r = api.get("/v1/entries", params=params)
        assert (r.status_code, r.json()["field"]) == (422, next(iter(params))), r.text


def test_a_payment_is_matched_to_its_top_ups_and_chargeback_by_its_reference(
    api: Api, clock: Clock
) -> None:
    user = api.wallet("payer", "credit")
    other = api.wallet("sibling", "credit")
    ids, grants = [], []
    for wallet, amount, reference in ((user, 500, "pi_3Nq"), (other, 200, "pi_3Nq")):
        r = api.post(f"/v1/accounts/{wallet}/topups", {"amount": amount, "reference": reference})
        assert (r.status_code, r.json()["grant"]["reference"]) == (201, reference), r.text
        ids.append(r.json()["entry"]["id"])
        grants.append(r.json()["grant"]["id"])
        clock.advance(minutes=1)
    assert api.post(f"/v1/accounts/{user}/topups", {"amount": 70}).status_code == 201
    clock.advance(minutes=1)
    r = api.post(f"/v1/entries/{ids[0]}/reverse", {"reason": "chargeback"})
    assert r.status_code == 201, r.text
    taken = r.json()["entry"]["id"]
    clock.advance(minutes=1)
    # The sibling's part withdrawn: what was left of it goes by an expiry entry.
    r = api.post(f"/v1/grants/{grants[1]}/revoke", {"reason": "refunded"})
    assert r.status_code == 201, r.text
    revoked = r.json()["entry"]["id"]

    payment = api.get("/v1/entries", params={"reference": "pi_3Nq"}).json()
    assert [(e["kind"], e["account_id"]) for e in payment["items"]] == [
        ("expiry", other),
        ("reversal", user),
        ("topup", other),
        ("topup", user),
    ]
    assert [e["id"] for e in payment["items"]] == [revoked, taken, ids[1], ids[0]]
    assert {p["account_id"]: p["amount"] for p in payment["items"][0]["postings"]} == {
        other: -200,
        "system:expired:credit": 200,
    }
    # A customer finds its own part of a payment (the reference is on its receipt).
    customer = api.customer(user)
    r = api.get(f"/v1/accounts/{user}/entries", params={"reference": "pi_3Nq"}, as_key=customer)
    assert [e["id"] for e in r.json()["items"]] == [taken, ids[0]], r.text
    assert api.get("/v1/entries", params={"reference": "pi_none"}).json()["items"] == []
    for params in ({"reference": ""}, {"reference": "r" * 201}):
        for path in ("/v1/entries", f"/v1/accounts/{user}/entries"):
            r = api.get(path, params=params)
            assert (r.status_code, r.json()["field"]) == (422, "reference"), r.text
    r = api.get("/v1/entries", params={"reference": "pi_3Nq"}, as_key="service")
    assert r.status_code == 403, r.text


@pytest.mark.parametrize(
    ("path", "name", "longest"),
    [
        ("/v1/entries", "reference", 200),
        ("/v1/accounts/acme/entries", "reference", 200),
        ("/v1/entries", "actor", 80),
        ("/v1/accounts/acme/entries", "actor", 80),
        ("/v1/accounts/acme/usage-records", "catalog", 64),
        ("/v1/accounts/acme/usage-records", "operation", 64),
        ("/v1/accounts/acme/usage-records", "model", 200),
        ("/v1/accounts/acme/usage-records", "request_id", 200),
        ("/v1/keys", "account_id", 200),
    ],
)
def test_a_filter_takes_one_character_up_to_what_its_column_holds(
    api: Api, path: str, name: str, longest: int
) -> None:
    """A filter's bounds are those of what it matches (a grant's reference, an entry's
    actor, a usage record's catalog, operation, model and request id, a customer key's
    wallet): a value at either bound is asked for, and finds nothing here; one past them
    is refused, naming the filter."""
    api.wallet("acme")
    for size in (1, longest):
        r = api.get(path, params={name: "x" * size})
        assert (r.status_code, r.json()["items"]) == (200, []), r.text
    for value in ("", "x" * (longest + 1)):
        r = api.get(path, params={name: value})
        assert (r.status_code, r.json()["field"]) == (422, name), r.text


def test_catalogs_health_and_metrics(api: Api) -> None:
    listing = api.get("/v1/catalogs", as_key="service").json()["catalogs"]
    assert {c["name"] for c in listing} >= {"cosmic", "veo3", "pixazo", "fal"}
    veo = api.get("/v1/catalogs/veo3", as_key="service").json()
    assert veo["unit"] == "credit"
    assert veo["versions"][0]["operations"]
    missing = api.get("/v1/catalogs/nope", as_key="service")
    assert (missing.status_code, missing.json()["field"]) == (404, "name")
    assert "veo3" in missing.json()["allowed"]
    health = api.client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    user = api.wallet("metered", "credit", topup=100)
    authorize(api, user, VEO_FAST)  # 402
    assert api.client.get("/openapi.json").status_code == 200
    assert api.client.get("/no/such/path").status_code == 404
    text = api.client.get("/metrics").text
    # FastAPI's own document is counted by its path; a path no route has, as unmatched.
    assert (
        'creditledger_http_requests_total{method="GET",route="/openapi.json",status="200"} 1.0'
        in text
    )
    assert 'creditledger_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert "/no/such/path" not in text
    assert "creditledger_http_request_duration_seconds_bucket" in text
    assert (
        'creditledger_http_requests_total{method="POST",route="/v1/authorizations",status="402"}'
        in text
    )
    assert 'creditledger_insufficient_credits_total{route="/v1/authorizations"} 1.0' in text
    # The 404 above is a request of its route template, and no 402.
    assert (
        'creditledger_http_requests_total{method="GET",route="/v1/catalogs/{name}",status="404"}'
        in text
    )
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("creditledger_insufficient_credits_total")
    ]
    assert counted == ['creditledger_insufficient_credits_total{route="/v1/authorizations"} 1.0']
    # Nothing lost a connection (tests/e2e/test_reconnect.py counts some that did).
    assert 'creditledger_database_reruns_total{work="read"} 0.0' in text
    assert 'creditledger_database_reruns_total{work="write"} 0.0' in text


def test_openapi_documents_every_endpoint(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    paths = document["paths"]
    assert set(paths) >= {
        "/v1/estimates",
        "/v1/authorizations",
        "/v1/authorizations/{id}",
        "/v1/authorizations/{id}/capture",
        "/v1/authorizations/{id}/void",
        "/v1/authorizations/{id}/extend",
        "/v1/charges",
        "/v1/accounts",
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/balance",
        "/v1/accounts/{id}/usage",
        "/v1/accounts/{id}/changes",
        "/v1/accounts/{id}/entries",
        "/v1/accounts/{id}/usage-records",
        "/v1/usage-records",
        "/v1/usage-records/{id}",
        "/v1/accounts/{id}/topups",
        "/v1/accounts/{id}/adjustments",
        "/v1/entries",
        "/v1/entries/{id}/reverse",
        "/v1/grants/{id}/revoke",
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/catalogs",
        "/v1/catalogs/{name}",
        "/healthz",
    }
    # A 402 documents what a gateway needs to answer its client: what is needed and had.
    refused = paths["/v1/authorizations"]["post"]["responses"]["402"]
    reference = refused["content"]["application/json"]["schema"]["$ref"]
    fields = document["components"]["schemas"][reference.rsplit("/", 1)[-1]]["properties"]
    assert {"error", "credits_needed", "credits_balance", "unit", "scale"} <= set(fields)
    # Every operation documents 500 and 503, 400 and 413 (any request may declare a
    # Content-Length that is no count of bytes or over the limit), and 422 (any may name
    # a query parameter the route does not take). One that takes a body documents 415
    # for a body that is not JSON, and only such a one.
    for path, operations in paths.items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "413", "422", "500", "503"} <= statuses, (method, path)
            assert ("415" in statuses) == ("requestBody" in operation), (method, path)
            # Each error with the body it comes with: the API's error format.
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    body = response["content"]["application/json"]["schema"]["$ref"]
                    assert body.rsplit("/", 1)[-1] in (
                        "ErrorPublic",
                        "InsufficientCreditsPublic",
                    ), (method, path, status)
    # Each operation that takes an Idempotency-Key documents the header of a replay.
    keyed = [
        (method, path, operation["responses"])
        for path, operations in paths.items()
        for method, operation in operations.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    ]
    assert len(keyed) == 12, [(m, p) for m, p, _ in keyed]
    for method, path, responses in keyed:
        (success,) = (r for status, r in responses.items() if status.startswith("2"))
        assert "Idempotent-Replayed" in success.get("headers", {}), (method, path)
    # Usage that already ran is never refused for want of credits.
    assert "402" not in paths["/v1/usage-records"]["post"]["responses"]

    def choices(path: str, name: str) -> list[str]:
        (param,) = (p for p in paths[path]["get"]["parameters"] if p["name"] == name)
        (listed,) = (s for s in param["schema"]["anyOf"] if "enum" in s)
        return list(listed["enum"])

    # The routes spell out the ledger's values for the documentation: the same ones.
    assert choices("/v1/accounts/{id}/entries", "kind") == list(ENTRY_KINDS)
    assert choices("/v1/entries", "kind") == list(ENTRY_KINDS)
    assert choices("/v1/accounts/{id}/authorizations", "status") == list(HOLD_STATUSES)
    assert choices("/v1/accounts/{id}/usage-records", "status") == list(METERING_STATUSES)
    assert choices("/v1/accounts/{id}/usage-records", "kind") == list(METERING_KINDS)


def test_every_app_serves_the_routes_built_once_per_process(api: Api) -> None:
    """The routes are built as their modules are imported, and each app serves those
    same objects: FastAPI does not build them again for the app (``include_router`` did,
    on the app's first request, which waited for it)."""
    for app in (api.app, create_app(api.ledger, api.keys)):
        served = [route for route in app.routes if route in ROUTES]
        assert len(served) == len(ROUTES)
        assert all(any(route is mine for mine in ROUTES) for route in served)


def _integer_bounds(node: Any, where: str = "") -> dict[str, Any]:
    """Every bound of an integer schema under ``node``, by where it stands."""
    found: dict[str, Any] = {}
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for name in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if name in node:
                    found[f"{where}/{name}"] = node[name]
        for key, child in node.items():
            found |= _integer_bounds(child, f"{where}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found |= _integer_bounds(child, f"{where}/{index}")
    return found


def test_openapi_gives_each_integer_bound_exactly_as_the_api_enforces_it(api: Api) -> None:
    """FastAPI's OpenAPI model turns bounds into floats: 2**63 - 1 came out as 2**63."""
    document = json.loads(api.client.get("/openapi.json").content)
    components = document["components"]["schemas"]
    compared = 0
    for name, model in vars(schemas).items():
        if isinstance(model, type) and issubclass(model, BaseModel) and name in components:
            enforced = _integer_bounds(model.model_json_schema(mode="validation"))
            published = _integer_bounds(components[name])
            assert published == enforced, name
            assert all(type(bound) is int for bound in published.values()), name
            compared += len(enforced)
    assert compared >= 20  # the amounts, the top-up priority, the hold's time to live
    amount = components["TopUpCreate"]["properties"]["amount"]
    assert (amount["minimum"], amount["maximum"]) == (1, 2**63 - 1)
    # The published bound is the one kept: one more is refused, naming the field.
    api.wallet("acct-bounds")
    over = api.post("/v1/accounts/acct-bounds/topups", {"amount": amount["maximum"] + 1})
    assert over.status_code == 422
    assert over.json()["field"] == "amount"
    assert api.balance("acct-bounds")["balance"] == 0
    assert all(type(b) is int for b in _integer_bounds(document["paths"]).values())


# ---------------------------------------------------------------------------- idempotency


def test_same_idempotency_key_and_body_replays_the_original_response(api: Api) -> None:
    user = api.wallet("idem", "credit", topup=1000)
    first = authorize(api, user, VEO_FAST, idempotency_key="req-1")
    second = authorize(api, user, VEO_FAST, idempotency_key="req-1")
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json() == second.json()
    assert api.balance(user)["pending"] == 240
    capture = {"status": "COMPLETED", "usage": {"videos": 1}}
    path = f"/v1/authorizations/{first.json()['id']}/capture"
    a = api.post(path, capture, as_key="service", idempotency_key="cap-1")
    b = api.post(path, capture, as_key="service", idempotency_key="cap-1")
    assert (a.status_code, b.status_code) == (200, 200)
    assert a.json() == b.json()
    assert api.balance(user)["balance"] == 760
    t1 = api.post(f"/v1/accounts/{user}/topups", {"amount": 5}, idempotency_key="top-1")
    t2 = api.post(f"/v1/accounts/{user}/topups", {"amount": 5}, idempotency_key="top-1")
    assert t1.json() == t2.json()
    assert api.balance(user)["balance"] == 765
    # The shortest and the longest keys allowed (1 and 200 characters; the latter is
    # stored with its scope in front of it) work like any other.
    for key in ("t", "t" * 200):
        made = [
            api.post(f"/v1/accounts/{user}/topups", {"amount": 7}, idempotency_key=key)
            for _ in range(2)
        ]
        assert [r.status_code for r in made] == [201, 201], made[0].text
        assert made[0].json() == made[1].json()
        assert made[1].headers["idempotent-replayed"] == "true"
    assert api.balance(user)["balance"] == 765 + 7 + 7


def test_a_replayed_answer_says_so_and_the_metrics_count_each_effect_once(api: Api) -> None:
    """A retry answered from its key's stored result carries ``Idempotent-Replayed:
    true`` (the first answer does not), and the hold and usage counters count what was
    done, not how often it was asked."""
    user = api.wallet("retry", "credit", topup=1000)

    def twice(
        path: str, body: Any, key: str, as_key: str = "service"
    ) -> tuple[httpx.Response, httpx.Response]:
        first = api.post(path, body, as_key=as_key, idempotency_key=key)
        again = api.post(path, body, as_key=as_key, idempotency_key=key)
        assert first.status_code == again.status_code < 300, (first.text, again.text)
        assert first.json() == again.json()
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        return first, again

    held = twice("/v1/authorizations", {"account_id": user, **VEO_FAST}, "a1")[0].json()
    twice(f"/v1/authorizations/{held['id']}/capture", {"status": "COMPLETED"}, "c1")
    voided = twice("/v1/authorizations", {"account_id": user, **VEO_FAST}, "a2")[0].json()
    twice(f"/v1/authorizations/{voided['id']}/void", None, "v1")
    twice("/v1/charges", {"account_id": user, **f.request("veo3", "image", prompt="x")}, "ch1")
    reported = {"account_id": user, **VEO_FAST, "status": "ERROR"}
    twice("/v1/usage-records", reported, "u1")
    twice(f"/v1/accounts/{user}/topups", {"amount": 5}, "t1", as_key="admin")
    # Without a key every request is new: nothing to replay, no header.
    plain = api.post(f"/v1/accounts/{user}/topups", {"amount": 5})
    assert plain.status_code == 201
    assert "idempotent-replayed" not in plain.headers
    assert api.balance(user)["balance"] == 1000 - 240 - 24 + 5 + 5

    def counted() -> None:
        """Each change counted once, however often it was replayed."""
        metrics = api.get("/metrics").text
        assert "creditledger_holds_opened_total 2.0" in metrics
        assert 'creditledger_holds_resolved_total{outcome="captured"} 1.0' in metrics
        assert 'creditledger_holds_resolved_total{outcome="voided"} 1.0' in metrics
        assert 'creditledger_usage_reported_total{outcome="ERROR"} 1.0' in metrics

    counted()
    for path, body, key in (
        ("/v1/authorizations", {"account_id": user, **VEO_FAST}, "a1"),
        (f"/v1/authorizations/{held['id']}/capture", {"status": "COMPLETED"}, "c1"),
        (f"/v1/authorizations/{voided['id']}/void", None, "v1"),
        ("/v1/usage-records", reported, "u1"),
    ):
        replayed = api.post(path, body, as_key="service", idempotency_key=key)
        assert replayed.headers["idempotent-replayed"] == "true"
    counted()


def test_idempotency_keys_past_their_retention_are_deleted_oldest_first(
    api: Api, clock: Clock
) -> None:
    api.ledger.idempotency_retention = timedelta(hours=24)
    user = api.wallet("kept", "credit", topup=1000)
    old = authorize(api, user, VEO_FAST, idempotency_key="day-1")
    clock.advance(hours=23)
    recent = authorize(api, user, VEO_FAST, idempotency_key="day-2")
    sweeper = api.app.state.sweeper
    assert sweeper.run_once().keys_pruned == 0  # nothing is 24 hours old yet
    clock.advance(hours=2)
    with api.ledger.db.transaction(write=False) as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(idempotency)).scalar_one()
    # Every key older than 24 hours: "day-1", the wallet's opening and its top-up.
    assert sweeper.run_once().keys_pruned == 3
    with api.ledger.db.transaction(write=False) as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(idempotency)).scalar_one()
    assert left == stored - 3
    again = authorize(api, user, VEO_FAST, idempotency_key="day-2")
    assert again.json() == recent.json()  # still replayed
    assert api.balance(user)["pending"] == 0  # both holds expired in the sweeps (15 min)
    renewed = authorize(api, user, VEO_FAST, idempotency_key="day-1")
    assert renewed.status_code == 201
    assert renewed.json()["id"] != old.json()["id"]  # a new request: its key was deleted
    assert api.balance(user)["pending"] == 240
    metrics = api.client.get("/metrics").text
    assert "creditledger_idempotency_keys_pruned_total 3.0" in metrics


def test_same_idempotency_key_with_another_body_is_409_and_changes_nothing(api: Api) -> None:
    user = api.wallet("idem2", "credit", topup=1000)
    assert authorize(api, user, VEO_FAST, idempotency_key="req-9").status_code == 201
    other = f.veo3_video(video_model="veo3")
    r = authorize(api, user, other, idempotency_key="req-9")
    assert (r.status_code, r.json()["error"]) == (409, "idempotency_conflict")
    # Named as the client knows it: not with the scope the API prefixes it with.
    assert "operator:" not in r.json()["message"]
    r = api.post(f"/v1/accounts/{user}/topups", {"amount": 5}, idempotency_key="req-9")
    assert r.status_code == 409
    assert r.json()["message"].startswith("this idempotency key was used for a different auth")
    assert api.balance(user)["pending"] == 240
    assert api.balance(user)["balance"] == 1000


# --------------------------------------------------------------------------------- errors

BAD_TOPUPS = [
    ({"amount": 0}, "amount"),
    ({"amount": -5}, "amount"),
    ({"amount": 2**63}, "amount"),
    ({"amount": 10**30}, "amount"),
    ({"amount": 1.5}, "amount"),
    ({"amount": "10"}, "amount"),
    ({"amount": True}, "amount"),
    ({"amount": None}, "amount"),
    ({}, "amount"),
    ({"amount": 5, "kind": "gift"}, "kind"),
    ({"amount": 5, "expires_at": "2027-01-01T00:00:00"}, "expires_at"),
    ({"amount": 5, "priority": 10**9}, "priority"),
    ({"amount": 5, "surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("body", "field"), BAD_TOPUPS)
def test_bad_topups_are_422_naming_the_field_and_change_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    user = api.wallet("careful", "credit", topup=50)
    before = api.balance(user)
    r = api.post(f"/v1/accounts/{user}/topups", body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert r.json()["message"]
    assert api.balance(user) == before
    assert verify(api.ledger.db) == []


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        (
            {"catalog": "nope", "operation": "video", "params": {}},
            422,
            "unknown_catalog",
            "catalog",
        ),
        ({"catalog": "veo3", "operation": "nope", "params": {}}, 422, "unknown_operation", None),
        (f.veo3_video(video_model="veo9"), 422, None, None),
        (f.veo3_video(aspect_ratio="4:3"), 422, None, None),
        (f.fal_video(), 422, "not_billable", None),
        ({"catalog": "veo3", "operation": "video", "params": []}, 422, "invalid_request", "params"),
    ],
)
def test_bad_priced_requests_are_4xx_with_the_reason(
    api: Api, body: dict[str, Any], status: int, error: str | None, field: str | None
) -> None:
    user = api.wallet("pricer", "credit", topup=1000)
    r = authorize(api, user, body)
    assert r.status_code == status, r.text
    if error is not None:
        assert r.json()["error"] == error
    if field is not None:
        assert r.json()["field"] == field
    assert "allowed" in r.json() or r.json()["error"] in ("not_billable", "invalid_request")
    assert api.balance(user)["pending"] == 0


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b'{"amount": ', "application/json", 400, "invalid_json"),
        (b'{"amount": NaN}', "application/json", 400, "invalid_json"),
        (b'{"amount": Infinity}', "application/json", 400, "invalid_json"),
        (b"amount=5", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"amount": 5}', "text/plain", 415, "unsupported_media_type"),
        (b'{"amount": 5}', "", 415, "unsupported_media_type"),
        (b'{"amount": 5}', "Application/JSON; charset=UTF-8", 201, None),
        (b'{"amount": 5}', "application/vnd.creditledger+json", 201, None),
        (b'{"amount": 5}', "application/jsonp", 415, "unsupported_media_type"),
        # A +json suffix under application/ only, as FastAPI itself reads bodies.
        (b'{"amount": 5}', "text/vnd.creditledger+json", 415, "unsupported_media_type"),
        (b"[1, 2]", "application/json", 422, "invalid_request"),
        (
            '{"amount": 5, "reference": "\u00e9\u6f22\U0001f600"}'.encode(),
            "application/json",
            201,
            None,
        ),
    ],
)
def test_malformed_bodies_get_a_clear_4xx(
    api: Api, content: bytes, content_type: str, status: int, error: str | None
) -> None:
    user = api.wallet("raw", "credit", topup=10)
    headers = {"Content-Type": content_type} if content_type else {}
    r = api.post(f"/v1/accounts/{user}/topups", content=content, headers=headers)
    assert r.status_code == status, r.text
    if error is not None:
        assert r.json()["error"] == error
        assert api.balance(user)["balance"] == 10
    if status == 415:  # says what to send, and what was sent
        given = repr(content_type) if content_type else "no Content-Type"
        assert r.json()["message"] == f"send the body as application/json (got {given})"


#: The refusals a route documents as its own (400, 413, 422, 500 and 503 are on every
#: route: ``test_openapi_documents_every_endpoint``).
_REFUSALS = frozenset({401, 402, 403, 404, 409})


def _refusals(statuses: Any) -> set[int]:
    """Of ``statuses`` (ints, or an OpenAPI ``responses`` object's keys), the refusals."""
    return {int(status) for status in statuses} & _REFUSALS


def test_each_refusal_of_a_gateway_route_is_documented_on_it_and_no_other(api: Api) -> None:
    """A gateway codes against the OpenAPI document: the refusals each gateway route
    answers (no key 401, a short wallet 402, a customer's key 403, a wallet or hold not
    found 404, a key reused or a hold already resolved 409) are the ones documented on
    it, none missing and none it never answers."""
    paths = api.get("/openapi.json").json()["paths"]
    poor = api.wallet("poor", topup=100)
    rich = api.wallet("rich", topup=10_000)
    customer = api.customer(rich)
    done = authorize(api, rich, VEO_FAST).json()["id"]
    captured = api.post(f"/v1/authorizations/{done}/capture", {"status": "COMPLETED"})
    assert captured.status_code == 200, captured.text
    image = f.request("veo3", "image", prompt="x")
    hold = "/v1/authorizations/{id}"
    # What each route takes besides the request: usage reported says how it ended (and is
    # never refused for want of credits: it ran).
    paying: dict[str, dict[str, str]] = {
        "/v1/authorizations": {},
        "/v1/charges": {},
        "/v1/usage-records": {"status": "COMPLETED"},
    }
    answered: dict[tuple[str, str], set[int]] = {}

    def ask(route: str, path: str, body: Any, as_key: str | None, key: str | None = None) -> None:
        """POST ``body`` to ``path`` (GET it when there is no body) of ``route``."""
        method = "POST" if body is not None else "GET"
        r = api.call(method, path, body=body, as_key=as_key, idempotency_key=key)
        answered.setdefault((method.lower(), route), set()).add(r.status_code)

    for as_key in (None, customer, "service"):
        ask("/v1/estimates", "/v1/estimates", {"account_id": "nobody", **VEO_FAST}, as_key)
        for route in paying:
            ask(route, route, {"account_id": poor, **VEO_FAST, **paying[route]}, as_key)  # short
            ask(route, route, {"account_id": "nobody", **image, **paying[route]}, as_key)
        for id in (done, "nothing"):
            ask(hold, f"/v1/authorizations/{id}", None, as_key)
            for action, body in (
                ("capture", {"status": "COMPLETED"}),
                ("void", {}),  # a POST without a body of its own
                ("extend", {"ttl_seconds": 60}),
            ):
                ask(f"{hold}/{action}", f"/v1/authorizations/{id}/{action}", body, as_key)
    for route in paying:  # one key, two bodies
        for prompt in ("x", "y"):
            body = {"account_id": rich, **f.request("veo3", "image", prompt=prompt)}
            ask(route, route, {**body, **paying[route]}, "service", f"one-key-{route}")
    expected = {
        ("post", "/v1/estimates"): {401, 404},
        ("get", hold): {401, 404},
        ("post", "/v1/authorizations"): {401, 402, 403, 404, 409},
        ("post", "/v1/charges"): {401, 402, 403, 404, 409},
        ("post", "/v1/usage-records"): {401, 403, 404, 409},
        ("post", f"{hold}/capture"): {401, 403, 404, 409},
        ("post", f"{hold}/void"): {401, 403, 404, 409},
        ("post", f"{hold}/extend"): {401, 403, 404, 409},
    }
    assert {route: _refusals(statuses) for route, statuses in answered.items()} == expected
    for (method, route), statuses in expected.items():
        assert _refusals(paths[route][method]["responses"]) == statuses, (method, route)


def test_each_refusal_of_a_wallet_read_is_documented_on_it_and_no_other(api: Api) -> None:
    """As for the gateway's routes: what reads a wallet documents the refusals it answers
    (401 without a key, 403 for a role that may not read it, 404 for a wallet or record
    not found or not the customer key's own) and no conflict (409): a read has none."""
    paths = api.get("/openapi.json").json()["paths"]
    rich = api.wallet("rich", topup=10_000)
    api.wallet("other")
    own = api.customer(rich)
    record = authorize(api, rich, VEO_FAST).json()["metering_id"]
    reads = {
        "/v1/accounts/{id}": "/v1/accounts/{}",
        "/v1/accounts/{id}/changes": "/v1/accounts/{}/changes",
        "/v1/accounts/{id}/balance": "/v1/accounts/{}/balance",
        "/v1/accounts/{id}/usage": "/v1/accounts/{}/usage",
        "/v1/accounts/{id}/entries": "/v1/accounts/{}/entries",
        "/v1/accounts/{id}/authorizations": "/v1/accounts/{}/authorizations",
        "/v1/accounts/{id}/usage-records": "/v1/accounts/{}/usage-records",
    }
    for route, path in reads.items():
        answered = {
            api.get(path.format(account), as_key=as_key).status_code
            for account in (rich, "other", "nobody")
            for as_key in (None, own, "service", "admin")
        }
        assert _refusals(answered) == _refusals(paths[route]["get"]["responses"]), route
    for route in ("/v1/accounts", "/v1/entries"):  # lists: not a customer's (403)
        answered = {api.get(route, as_key=as_key).status_code for as_key in (None, own, "admin")}
        assert _refusals(answered) == _refusals(paths[route]["get"]["responses"]) == {401, 403}
    answered = {
        api.get(f"/v1/usage-records/{id}", as_key=as_key).status_code
        for id in (record, "nothing")
        for as_key in (None, own, api.customer("other"), "service")
    }
    assert _refusals(answered) == _refusals(paths["/v1/usage-records/{id}"]["get"]["responses"])


def test_each_refusal_of_the_key_routes_is_documented_on_them(api: Api) -> None:
    """Keys are an admin's: a service or customer key asking is 403, no key 401, a
    customer key for a wallet not found or a key not found 404; each route documents
    the refusals it answers and no other."""
    paths = api.get("/openapi.json").json()["paths"]
    api.wallet("acme")
    own = api.customer("acme")
    asked: dict[tuple[str, str], set[int]] = {}
    for as_key in (None, own, "service", "admin"):
        for method, route, path, body, params in (
            ("post", "/v1/keys", "/v1/keys", {"role": "customer", "account_id": "nobody"}, None),
            ("get", "/v1/keys", "/v1/keys", None, {"account_id": "nobody"}),
            ("delete", "/v1/keys/{id}", "/v1/keys/nothing", None, None),
        ):
            r = api.call(method.upper(), path, as_key=as_key, body=body, params=params)
            asked.setdefault((method, route), set()).add(r.status_code)
    for (method, route), statuses in asked.items():
        assert _refusals(statuses) == _refusals(paths[route][method]["responses"]), (method, route)


def test_a_content_length_refused_on_a_route_without_a_body_is_a_documented_answer(
    api: Api,
) -> None:
    """Any request can declare a Content-Length that is no count of bytes (400) or over
    the limit (413), a GET too, and is refused before its route: each route's OpenAPI
    says so (schemathesis sent one to ``GET /v1/catalogs/{name}``, which did not)."""
    limit = api.app.state.services.settings.max_body_bytes
    operation = api.get("/openapi.json").json()["paths"]["/v1/catalogs/{name}"]["get"]
    for declared, status in ((b"_;GY%~eye_", 400), (str(limit + 1).encode(), 413)):
        r = api.get("/v1/catalogs/veo3", headers={"Content-Length": declared.decode()})
        assert r.status_code == status, r.text
        assert str(status) in operation["responses"], operation["responses"]
    r = api.get("/v1/catalogs/veo3", headers={"Content-Length": "x"})
    assert r.json() == {
        "error": "invalid_request",
        "message": "Content-Length: not a whole number of bytes",
        "field": "Content-Length",
    }


def test_an_oversized_body_is_413_declared_or_chunked(api: Api) -> None:
    user = api.wallet("big", "token", topup=10)
    limit = api.app.state.services.settings.max_body_bytes
    for size, status in ((limit, 201), (limit + 1, 413)):
        padded = b'{"amount": 1}'.ljust(size)
        r = api.post(
            f"/v1/accounts/{user}/topups",
            content=padded,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == status, (size, r.text)
    assert api.balance(user)["balance"] == 11
    r = authorize(api, user, f.text(prompt="x" * (70 * 1024)))
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"

    def chunks() -> Any:
        yield b'{"account_id": "big", "catalog": "cosmic", "operation": "text", '
        for _ in range(70):
            yield b" " * 1024
        yield b'"params": {"prompt": "x"}}'

    r = api.post(
        "/v1/authorizations",
        content=chunks(),
        as_key="service",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json() == {"error": "body_too_large", "message": f"the body exceeds {limit} bytes"}
    assert api.balance(user)["pending"] == 0

    # Sent chunked (no Content-Length), counted as it comes: at the limit taken, a byte
    # over it refused.
    def pieces(size: int) -> Any:
        padded = b'{"amount": 1}'.ljust(size)
        for at in range(0, size, 1000):
            yield padded[at : at + 1000]

    for size, status in ((limit, 201), (limit + 1, 413)):
        r = api.post(
            f"/v1/accounts/{user}/topups",
            content=pieces(size),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == status, (size, r.text)
    assert api.balance(user)["balance"] == 12


def test_unknown_ids_are_404(api: Api) -> None:
    for method, path, body in [
        ("GET", "/v1/accounts/ghost", None),
        ("GET", "/v1/accounts/ghost/entries", None),
        ("POST", "/v1/accounts/ghost/topups", {"amount": 1}),
        ("GET", "/v1/authorizations/ghost", None),
        ("POST", "/v1/authorizations/ghost/void", None),
        ("POST", "/v1/authorizations/ghost/capture", {"status": "ERROR"}),
        ("POST", "/v1/entries/ghost/reverse", {"reason": "x"}),
        ("DELETE", "/v1/keys/ghost", None),
    ]:
        r = api.call(method, path, body=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == "not_found"
    r = api.post("/v1/authorizations", {"account_id": "ghost", **VEO_FAST})
    assert r.status_code == 404


def test_a_bug_is_answered_without_closing_the_connection(api: Api) -> None:
    """Through uvicorn: a 500 is an ordinary response, and the client's next request on
    the same keep-alive connection is answered (Starlette's last resort re-raises after
    answering, and uvicorn then closes the connection under the client)."""
    user = api.wallet("buggy", "credit", topup=500)
    body = json.dumps({"account_id": user, **VEO_FAST}).encode()
    request = (
        b"POST /v1/authorizations HTTP/1.1\r\nHost: ledger\r\n"
        + f"Authorization: Bearer {api.service}\r\n".encode()
        + b"Content-Type: application/json\r\nIdempotency-Key: bug-1\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    def bug(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("boom")

    api.ledger.authorize = bug  # type: ignore[method-assign]
    with _uvicorn(api) as address, socket.create_connection(address, timeout=10) as conn:
        answer = exchange(conn, request)
        assert answer.startswith(b"HTTP/1.1 500"), answer[:200]
        assert b'"internal_error"' in answer
        assert b"boom" not in answer
        assert exchange(conn).startswith(b"HTTP/1.1 200")  # the same connection


@contextmanager
def _uvicorn(api: Api) -> Iterator[tuple[str, int]]:
    """The app served by uvicorn on a thread: its address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        yield listener.getsockname()
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def test_a_body_refused_unread_for_its_key_is_not_taken_for_the_next_request(api: Api) -> None:
    """A request without a valid key is refused (401) before its body is read. Its body,
    sent whole, is passed over: the next request on the same keep-alive connection is
    answered as itself, and the refused one did nothing."""
    user = api.wallet("unread", "credit", topup=500)
    # A body that reads as requests of its own, were it taken for the next one.
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: ledger\r\n\r\n" * 1000
    body = json.dumps({"account_id": user, **VEO_FAST, "pad": smuggled.decode()}).encode()
    for key in ("Bearer nonsense", None):
        refused = (
            b"POST /v1/authorizations HTTP/1.1\r\nHost: ledger\r\n"
            + (f"Authorization: {key}\r\n".encode() if key else b"")
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with _uvicorn(api) as address, socket.create_connection(address, timeout=10) as conn:
            answer = exchange(conn, refused)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            following = b"GET /v1/accounts/unread HTTP/1.1\r\nHost: ledger\r\n" + (
                f"Authorization: Bearer {api.admin}\r\n\r\n".encode()
            )
            answer = exchange(conn, following)
            if answer:  # or the server closed the connection: as safe
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
                assert b'"id":"unread"' in answer
                conn.settimeout(0.5)
                try:
                    extra = conn.recv(65536)
                except TimeoutError:
                    extra = b""
                assert extra == b""  # nothing more: no answer to a smuggled request
    assert api.balance(user)["pending"] == 0


def test_health_answers_head_as_monitors_ask_it(api: Api) -> None:
    """Uptime monitors check with HEAD: the GET's status and headers, no body (the next
    answer on the connection starts right after the headers), and GET still works."""
    head = b"HEAD /healthz HTTP/1.1\r\nHost: ledger\r\n\r\n"
    with _uvicorn(api) as address, socket.create_connection(address, timeout=10) as conn:
        conn.sendall(head + b"GET /healthz HTTP/1.1\r\nHost: ledger\r\n\r\n")
        data = b""
        while data.count(b"\r\n\r\n") < 2 or not data.endswith(b"}"):
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK\r\n"), data
    assert first.endswith(b"\r\n\r\n"), data  # the headers alone
    assert second.startswith(b"200 OK\r\n"), data
    assert second.endswith(b'{"status":"ok","database":"' + api.ledger.db.dialect.encode() + b'"}')
    length = second.lower().split(b"content-length: ")[1].split(b"\r\n")[0]
    assert b"content-length: " + length + b"\r\n" in first.lower()
    assert b"content-type: application/json" in first.lower()
    # Not an operation of the API's description: HEAD is every GET's, by HTTP's rules.
    assert not any("head" in path for path in api.app.openapi()["paths"].values())


def test_a_path_no_route_has_is_404_in_the_one_error_format(api: Api) -> None:
    """With a key or without: a client parses one error format, ``error`` included."""
    for path, as_key in (("/v1/nope", "admin"), ("/v2/accounts", "service"), ("/", None)):
        missing = api.call("GET", path, as_key=as_key)
        assert missing.status_code == 404, (path, missing.text)
        assert missing.json() == {"error": "not_found", "message": "Not Found"}, path


def test_every_get_route_answers_head_as_its_get_without_the_body(api: Api) -> None:
    """HEAD is answered as GET is (RFC 9110): the same status and headers, the length of
    the body that GET sends included, its key checks and errors alike; a route without
    GET answers 405 naming what it takes. HEAD is counted as HEAD, under its route."""
    user = api.wallet("headed", "credit", topup=500)
    for path, as_key, status in [
        ("/v1/catalogs", "service", 200),
        (f"/v1/accounts/{user}", "admin", 200),
        (f"/v1/accounts/{user}/entries?limit=1", api.customer(user), 200),
        ("/v1/catalogs", None, 401),
        ("/v1/keys", "service", 403),
        ("/v1/accounts/nobody", "admin", 404),
        (f"/v1/accounts/{user}/entries?limt=1", "admin", 422),
    ]:
        got = api.call("GET", path, as_key=as_key)
        head = api.call("HEAD", path, as_key=as_key)
        assert (got.status_code, head.status_code) == (status, status), (path, head.text)
        assert got.content, path  # (that HEAD sends no body on the wire: the test above)
        for name in ("content-length", "content-type"):
            assert head.headers[name] == got.headers[name], (path, name)
    only_post = api.call("HEAD", "/v1/authorizations", as_key="service")
    assert (only_post.status_code, only_post.headers["allow"]) == (405, "POST")
    assert api.call("OPTIONS", "/v1/catalogs", as_key="service").status_code == 405  # HEAD only
    # A 405 names every method of the path, of each of its routes, HEAD with GET.
    for method, path, allow in [
        ("POST", "/v1/catalogs", "GET, HEAD"),
        ("DELETE", "/v1/accounts", "GET, HEAD, POST"),
        ("POST", f"/v1/accounts/{user}", "GET, HEAD, PATCH"),
        ("PUT", "/v1/keys", "GET, HEAD, POST"),
        ("GET", "/v1/keys/k1", "DELETE"),
    ]:
        refused = api.call(method, path, as_key="admin")
        assert refused.status_code == 405, (method, path, refused.text)
        assert refused.headers["allow"] == allow, (method, path)
        assert refused.json()["error"] == "method_not_allowed"
    assert api.balance(user)["balance"] == 500  # read only, as GET is
    text = api.client.get("/metrics").text
    assert (
        'creditledger_http_requests_total{method="HEAD",route="/v1/catalogs",status="200"}' in text
    )
    assert (
        'creditledger_http_requests_total{method="HEAD",route="/v1/accounts/{id}",status="404"}'
        in text
    )


def test_a_lost_database_is_a_json_503_and_a_bug_a_json_500(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    user = api.wallet("fragile", "credit", topup=500)

    def lost(*_a: Any, **_k: Any) -> Any:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    def cut_off(*_a: Any, **_k: Any) -> Any:
        # As psycopg raises it on a pipelined statement or commit: not wrapped by SQLAlchemy.
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def ended(*_a: Any, **_k: Any) -> Any:
        # The server ended a session idle in its transaction past the timeout: SQLAlchemy
        # wraps that as an InternalError (by its SQLSTATE class), raw in a pipeline.
        raise sa.exc.InternalError("COMMIT", {}, psycopg.errors.IdleInTransactionSessionTimeout())

    def ended_raw(*_a: Any, **_k: Any) -> Any:
        raise psycopg.errors.IdleInTransactionSessionTimeout()

    def bug(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("boom")

    def unmapped(*_a: Any, **_k: Any) -> Any:
        # A domain error no status is mapped to is a bug too: not its own words in a 4xx.
        raise UnbalancedEntry("entry boom: credit sums to 5")

    for broken, status, error in (
        (lost, 503, "database_unavailable"),
        (cut_off, 503, "database_unavailable"),
        (ended, 503, "database_unavailable"),
        (ended_raw, 503, "database_unavailable"),
        (bug, 500, "internal_error"),
        (unmapped, 500, "internal_error"),
    ):
        original = api.ledger.authorize
        api.ledger.authorize = broken  # type: ignore[method-assign]
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, logger="creditledger.api"):
                r = authorize(api, user, VEO_FAST)
        finally:
            api.ledger.authorize = original  # type: ignore[method-assign]
        assert r.status_code == status
        assert r.json()["error"] == error
        assert "boom" not in r.text
        # The log: a line for a database that is away (an outage would bury a log in
        # tracebacks), the traceback for a bug; each names the request, by the id its
        # answer carries.
        made = r.headers["x-request-id"]
        [logged] = [rec for rec in caplog.records if rec.name == "creditledger.api"]
        about = f"request {made}: POST /v1/authorizations"
        # The same as fields, for a JSON log (CREDITLEDGER_LOG_FORMAT=json).
        fields = {name: getattr(logged, name, "absent") for name in ("request_id", "method")}
        assert fields == {"request_id": made, "method": "POST"}
        assert (getattr(logged, "path", None), getattr(logged, "query", "absent")) == (
            "/v1/authorizations",
            None,
        )
        if status == 503:
            assert (logged.levelno, logged.exc_info) == (logging.WARNING, None)
            assert logged.getMessage().startswith(f"database unavailable ({about}): ")
            assert "\n" not in logged.getMessage()
        else:
            assert logged.levelno == logging.ERROR
            assert logged.exc_info is not None
            what = "unhandled error" if broken is bug else "unmapped domain error"
            assert logged.getMessage() == f"{what} ({about})"
            assert r.json() == {
                "error": "internal_error",
                "message": "internal error",
                "request_id": made,
            }
    assert api.balance(user)["pending"] == 0
    # The metrics count each answer by the status the client got, a bug's 500 included
    # (``Contained`` answers it inside the metrics middleware, as an ordinary response).
    counted = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in api.client.get("/metrics").text.splitlines()
        if line.startswith("creditledger_http_requests_total{")
        and 'route="/v1/authorizations"' in line
    }
    assert counted == {
        'creditledger_http_requests_total{method="POST",route="/v1/authorizations",'
        f'status="{code}"}}': float(times)
        for code, times in (("500", 2), ("503", 4))
    }


def test_every_answer_carries_the_requests_id_the_gateways_own_when_it_sends_one(
    api: Api,
) -> None:
    """``X-Request-ID``: the gateway's own (one printable ASCII value of at most 200
    characters) comes back as sent; otherwise each answer has a new one. Whatever answers:
    a route, a refusal before any route (413, 404 of no route), or a bug."""
    user = api.wallet("traced", "credit", topup=500)
    ids = set()
    sent: str | bytes | None
    for sent in (None, "", "has space", "x" * 201, "é".encode()):
        headers = {} if sent is None else {"X-Request-ID": sent}
        r = api.get("/healthz", headers=headers)
        made = r.headers["x-request-id"]
        assert len(made) == 32
        assert made != sent
        ids.add(made)
    assert len(ids) == 5  # each its own
    own = "gw-7f3a:req/0001"
    answers = [
        api.get("/healthz", headers={"X-Request-ID": own}),
        authorize(api, user, VEO_FAST, headers={"X-Request-ID": own}),
        api.get("/v1/nowhere", headers={"X-Request-ID": own}),
        api.call("POST", "/v1/charges", content=b"x" * 70_000, headers={"X-Request-ID": own}),
        api.get("/v1/accounts/traced", as_key=None, headers={"X-Request-ID": own}),
    ]
    assert [r.status_code for r in answers] == [200, 201, 404, 413, 401]
    assert all(r.headers.get_list("x-request-id") == [own] for r in answers)
    # Sent twice: neither is taken for the request's.
    r = api.client.get("/healthz", headers=[("X-Request-ID", own), ("X-Request-ID", "other")])
    assert r.headers["x-request-id"] not in (own, "other")
