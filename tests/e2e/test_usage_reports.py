"""Usage reported after the fact: POST /v1/usage-records charges a request that ran with
no authorization before it (post-paid), through the real HTTP stack on both databases.

The ``ledger`` fixture verifies every ledger invariant after each test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.errors import InvalidInput
from ledger.models import metadata
from pricing import price_usage
from tests import factories as f
from tests.e2e.conftest import Api
from tests.factories import Clock

VEO_FAST = f.veo3_video(video_model="veo3_fast")
TEXT_USAGE = {"input_tokens": 10, "output_tokens": 89}


def report(api: Api, account: str, request: dict[str, Any], **body: Any) -> Any:
    headers = {}
    if "key" in body:
        headers["idempotency_key"] = body.pop("key")
    return api.post(
        "/v1/usage-records", {"account_id": account, **request, **body}, as_key="service", **headers
    )


def _dump(api: Api) -> dict[str, list[tuple[Any, ...]]]:
    with api.ledger.db.transaction(write=False) as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(sa.select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def test_text_usage_reported_after_the_fact_is_priced_charged_and_metered(api: Api) -> None:
    bucket = api.wallet("bucket", "token", topup=1_000_000)
    request = f.text(max_tokens=500)
    expected = price_usage(request, TEXT_USAGE, "COMPLETED", at=f.NOW)
    r = report(api, bucket, request, status="COMPLETED", usage=TEXT_USAGE, request_id="req-7")
    assert r.status_code == 201, r.text
    done = r.json()
    assert done["charged"] == done["credits_used"] == expected.amount > 0
    assert (done["status"], done["catalog"], done["operation"]) == ("COMPLETED", "cosmic", "text")
    assert (done["catalog_version"], done["model"]) == (expected.catalog_version, expected.model)
    assert done["credits_remaining"] == 1_000_000 - expected.amount
    assert (done["debt"], done["unit"], done["scale"]) == (0, "token", 0)
    assert done["charge"] == expected.to_dict()
    account = api.balance(bucket)
    assert (account["balance"], account["pending"]) == (1_000_000 - expected.amount, 0)

    # Its usage record, as the provider reported it; the entry is a charge by the caller.
    record = api.get(f"/v1/usage-records/{done['id']}").json()
    assert {k: record[k] for k in ("kind", "status", "held", "charged", "request_id")} == {
        "kind": "usage",
        "status": "COMPLETED",
        "held": 0,
        "charged": expected.amount,
        "request_id": "req-7",
    }
    assert (record["usage"]["input_tokens"], record["usage"]["output_tokens"]) == (10, 89)
    assert (record["hold_id"], record["entry_id"]) == (None, done["entry_id"])
    listed = api.get(f"/v1/accounts/{bucket}/usage-records?request_id=req-7").json()["items"]
    assert [item["id"] for item in listed] == [done["id"]]
    entry = api.get(f"/v1/accounts/{bucket}/entries?kind=charge").json()["items"]
    assert [(e["id"], e["actor"]) for e in entry] == [(done["entry_id"], api.actor("service"))]
    assert {p["amount"] for p in entry[0]["postings"]} == {-expected.amount, expected.amount}

    # The day's usage counts it like any other request.
    usage = api.get(f"/v1/accounts/{bucket}/usage").json()
    assert (usage["totals"]["amount"], usage["totals"]["requests"]) == (expected.amount, 1)
    assert [(i["model"], i["output_tokens"]) for i in usage["items"]] == [(expected.model, 89)]
    metrics = api.get("/metrics").text
    assert 'creditledger_usage_reported_total{outcome="COMPLETED"} 1.0' in metrics

    # Listed by kind among the wallet's other records.
    held = api.post("/v1/authorizations", {"account_id": bucket, **request}, as_key="service")
    assert held.status_code == 201, held.text
    path = f"/v1/accounts/{bucket}/usage-records"
    by_kind = {
        kind: [i["id"] for i in api.get(f"{path}?kind={kind}").json()["items"]]
        for kind in ("usage", "authorization", "charge")
    }
    assert by_kind == {
        "usage": [done["id"]],
        "authorization": [held.json()["metering_id"]],
        "charge": [],
    }
    r = api.get(f"{path}?kind=refund")
    assert (r.status_code, r.json()["field"]) == (422, "kind")


def test_a_provider_error_reported_after_the_fact_is_metered_and_never_charged(
    api: Api,
) -> None:
    bucket = api.wallet("bucket", "token", topup=1_000)
    r = report(api, bucket, f.cosmic_video(), status="ERROR")
    assert r.status_code == 201, r.text
    done = r.json()
    assert (done["charged"], done["entry_id"], done["credits_remaining"]) == (0, None, 1_000)
    record = api.get(f"/v1/usage-records/{done['id']}").json()
    assert (record["kind"], record["status"], record["charged"]) == ("usage", "ERROR", 0)
    assert api.balance(bucket)["balance"] == 1_000
    assert api.get(f"/v1/accounts/{bucket}/entries?kind=charge").json()["items"] == []


def test_pixazo_agentic_usage_is_charged_per_rendered_candidate(api: Api) -> None:
    user = api.wallet("pix-user", "usd", topup=1_000_000)
    request = f.pixazo_image(enable_agentic_generation=True)
    r = report(api, user, request, status="COMPLETED", usage={"candidates": 3})
    assert r.status_code == 201, r.text
    assert r.json()["charged"] == 120_000  # 3 candidates at $0.04
    # Agentic candidates must be reported: the request alone does not say how many ran.
    r = report(api, user, request, status="COMPLETED")
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (
        422,
        "invalid_usage",
        "usage.candidates",
    )
    assert api.balance(user)["balance"] == 880_000


def test_usage_beyond_the_balance_is_charged_as_debt_that_blocks_until_a_topup(
    api: Api,
) -> None:
    user = api.wallet("veo-user", "credit", topup=100)
    r = report(api, user, VEO_FAST, status="COMPLETED")
    assert r.status_code == 201, r.text
    done = r.json()
    # The provider did the work: charged in full, the shortfall owed.
    assert (done["charged"], done["credits_remaining"], done["debt"]) == (240, -140, 140)
    account = api.balance(user)
    assert (account["balance"], account["available"]) == (-140, -140)
    # Debt blocks new spending, even spending the wallet could otherwise cover later.
    r = api.post("/v1/authorizations", {"account_id": user, **VEO_FAST}, as_key="service")
    assert r.status_code == 402
    assert (r.json()["credits_needed"], r.json()["credits_balance"]) == (240, -140)
    assert api.post(f"/v1/accounts/{user}/topups", {"amount": 400}).status_code == 201
    assert api.balance(user)["balance"] == 260
    r = api.post("/v1/authorizations", {"account_id": user, **VEO_FAST}, as_key="service")
    assert r.status_code == 201, r.text


def test_a_blocked_wallet_and_its_spend_limit_still_take_usage_that_already_ran(
    api: Api,
) -> None:
    user = api.wallet("capped", "credit", topup=1_000)
    r = api.call("PATCH", f"/v1/accounts/{user}", body={"monthly_spend_limit": 300})
    assert r.status_code == 200, r.text
    assert report(api, user, VEO_FAST, status="COMPLETED").status_code == 201
    # 240 of 300 spent: a new 240 hold is refused by the limit ...
    r = api.post("/v1/authorizations", {"account_id": user, **VEO_FAST}, as_key="service")
    assert (r.status_code, r.json()["error"]) == (402, "spend_limit_reached")
    # ... but usage that already ran is charged past it, and counted.
    r = report(api, user, VEO_FAST, status="COMPLETED")
    assert r.status_code == 201, r.text
    account = api.balance(user)
    assert (account["spent_this_month"], account["spend_remaining"]) == (480, 0)

    r = api.call("PATCH", f"/v1/accounts/{user}", body={"blocked": True})
    assert r.status_code == 200, r.text
    r = report(api, user, VEO_FAST, status="COMPLETED")
    assert r.status_code == 201, r.text
    assert api.balance(user)["balance"] == 1_000 - 3 * 240


def test_a_reported_usage_is_retried_safely_and_refunded_once(api: Api) -> None:
    user = api.wallet("retry", "credit", topup=1_000)
    first = report(api, user, VEO_FAST, status="COMPLETED", key="usage-1")
    assert first.status_code == 201, first.text
    again = report(api, user, VEO_FAST, status="COMPLETED", key="usage-1")
    assert (again.status_code, again.json()) == (201, first.json())
    assert api.balance(user)["balance"] == 760
    before = _dump(api)
    other = report(api, user, VEO_FAST, status="ERROR", key="usage-1")
    assert (other.status_code, other.json()["error"]) == (409, "idempotency_conflict")
    assert _dump(api) == before

    entry = first.json()["entry_id"]
    r = api.post(f"/v1/entries/{entry}/reverse", {"reason": "provider refund"})
    assert r.status_code == 201, r.text
    record = api.get(f"/v1/usage-records/{first.json()['id']}").json()
    assert record["reversed_by"] == r.json()["entry"]["id"]
    assert api.balance(user)["balance"] == 1_000
    assert api.post(f"/v1/entries/{entry}/reverse", {"reason": "again"}).status_code == 409


def test_usage_is_priced_by_the_catalog_version_in_force_when_it_ran(
    api: Api, clock: Clock
) -> None:
    user = api.wallet("then", "token", topup=100_000)
    then = "2025-06-01T00:00:00+02:00"
    r = report(api, user, f.cosmic_image(), status="COMPLETED", occurred_at=then)
    assert r.status_code == 201, r.text
    # Seed 001's version (DALL-E 3 by default) was in force then; seed 000's is now.
    assert (r.json()["catalog_version"], r.json()["model"], r.json()["charged"]) == (
        "2024-03-14",
        "dall-e-3",
        4800,
    )
    now = report(api, user, f.cosmic_image(), status="COMPLETED").json()
    assert now["catalog_version"] != "2024-03-14"
    # Exactly now is not the future.
    at_now = clock.now.isoformat()
    assert (
        report(api, user, f.cosmic_image(), status="ERROR", occurred_at=at_now).status_code == 201
    )
    before = _dump(api)
    later = (clock.now + timedelta(seconds=1)).isoformat()
    for occurred_at in (
        later,  # not yet
        "2024-01-01T00:00:00Z",  # before the catalog's first version
        "2025-06-01T00:00:00",  # no timezone
        1_700_000_000,  # a number is no instant
    ):
        r = report(api, user, f.cosmic_image(), status="COMPLETED", occurred_at=occurred_at)
        assert (r.status_code, r.json()["field"]) == (422, "occurred_at"), (occurred_at, r.text)
        if occurred_at == later:  # the latest allowed, as the API writes an instant
            assert r.json()["allowed"] == {"max": at_now.replace("+00:00", "Z")}
    assert _dump(api) == before


@pytest.mark.parametrize(
    ("request_body", "extra", "status", "field"),
    [
        (
            f.text(max_tokens=100),
            {"usage": {"input_tokens": 5, "output_tokens": 101}},
            422,
            "usage.output_tokens",
        ),
        (f.text(), {"usage": {"output_tokens": 5}}, 422, "usage.input_tokens"),
        (f.text(), {"usage": {"input_tokens": -1, "output_tokens": 1}}, 422, "usage.input_tokens"),
        (f.text(), {"usage": [1]}, 422, "usage"),
        (f.text(), {"status": "DONE"}, 422, "status"),
        (f.text(), {"status": None}, 422, "status"),
        (f.text(), {"account_id": "nobody", "usage": TEXT_USAGE}, 404, "account_id"),
        (VEO_FAST, {}, 422, "catalog"),  # credits into a token wallet
        (f.request("nope", "text"), {}, 422, "catalog"),
        (f.text(model="gpt-0"), {}, 422, "params.model"),
        (f.text(), {"request_id": ""}, 422, "request_id"),
        (f.fal_video(), {}, 422, "operation"),  # no published price
    ],
)
def test_bad_usage_reports_are_4xx_naming_the_field_and_change_nothing(
    api: Api, request_body: dict[str, Any], extra: dict[str, Any], status: int, field: str
) -> None:
    user = api.wallet("t", "token", topup=1_000)
    before = _dump(api)
    body = {"status": "COMPLETED", **extra}
    account = body.pop("account_id", user)
    r = report(api, account, request_body, **body)
    assert r.status_code == status, r.text
    assert r.json().get("field") == field, r.text
    assert _dump(api) == before


def test_customers_cannot_report_usage(api: Api) -> None:
    user = api.wallet("self", "credit", topup=1_000)
    r = api.post(
        "/v1/usage-records",
        {"account_id": user, **VEO_FAST, "status": "COMPLETED"},
        as_key=api.customer(user),
    )
    assert r.status_code == 403
    assert api.balance(user)["balance"] == 1_000


def test_the_ledger_use_case_refuses_what_the_http_edge_would(api: Api) -> None:
    """The Python API checks its own arguments (the CLI and scripts call it directly)."""
    api.wallet("py", "token", topup=1_000)
    ledger = api.ledger
    with pytest.raises(InvalidInput, match="occurred_at") as caught:
        ledger.report_usage(
            "py",
            f.text(),
            status="COMPLETED",
            usage=TEXT_USAGE,
            idempotency_key=f.key(),
            occurred_at=datetime(2026, 1, 1),  # naive
        )
    assert caught.value.field == "occurred_at"
    done = ledger.report_usage(
        "py",
        f.text(),
        status="COMPLETED",
        usage=TEXT_USAGE,
        idempotency_key=f.key(),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert done.charged > 0
