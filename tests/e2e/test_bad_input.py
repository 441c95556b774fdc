"""Bad input changes nothing: each bad request gets a clear 4xx and leaves the database
exactly as it was.

Every request below is sent to a ledger that already holds a funded wallet, an open hold
and a captured one. Its answer must be the expected 4xx in the API's error format (an
``error`` code and a ``message``; ``field`` where a field is at fault). Then the whole
database, every row of every table, must equal what it was before, and ``verify`` must
still find nothing wrong.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.keys import Keys
from ledger.models import metadata
from ledger.services import Ledger
from ledger.settings import Settings
from ledger.verify import verify
from pricing import load_catalogs
from tests import factories as f
from tests.conftest import seeded
from tests.e2e.conftest import Api, api_over, app_for_tests
from tests.factories import Clock

BIG = 2**63  # one past the largest amount
VEO = f.veo3_video(video_model="veo3_fast")
JSON = {"Content-Type": "application/json"}
#: A page cursor (base64 of "instant|id") whose instant is the year 10000 in UTC.
LATE_CURSOR = base64.urlsafe_b64encode(b"9999-12-31T23:59:59-05:00|x").decode()


def _dump(api: Api) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    with api.ledger.db.transaction(write=False) as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(sa.select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def _world(ledger: Ledger, clock: Clock) -> dict[str, str]:
    """A funded credit wallet with an open hold and a captured one, and a token wallet
    with an open hold: made once, through the app, on the template each test's database
    copies (``tests.conftest.seeded``)."""
    with app_for_tests(ledger) as api:
        api.wallet("w", "credit", topup=1_000)
        api.wallet("t", "token", topup=1_000_000)
        hold = api.post("/v1/authorizations", {"account_id": "w", **VEO}, as_key="service")
        assert hold.status_code == 201, hold.text
        done = api.post("/v1/authorizations", {"account_id": "w", **VEO}, as_key="service")
        assert done.status_code == 201, done.text
        r = api.post(f"/v1/authorizations/{done.json()['id']}/capture", {"status": "COMPLETED"})
        assert r.status_code == 200, r.text
        text = api.post("/v1/authorizations", {"account_id": "t", **f.text(max_tokens=100)})
        assert text.status_code == 201, text.text
        return {
            "hold": hold.json()["id"],
            "captured": done.json()["id"],
            "entry": r.json()["entry_id"],
            "text": text.json()["id"],
        }


#: The test's database holds ``_world`` already; the fixture is what it made.
world = seeded("world", _world)


# (name, method, path, JSON body or raw bytes, headers, status, error, field)
CASES: list[tuple[str, str, str, Any, dict[str, Any], int, str | None, str | None]] = [
    # Huge and negative numbers.
    ("topup 2^63", "POST", "/v1/accounts/w/topups", {"amount": BIG}, {}, 422, None, "amount"),
    ("topup 10^30", "POST", "/v1/accounts/w/topups", {"amount": 10**30}, {}, 422, None, "amount"),
    # Each fits 64 bits; the balance it would make does not.
    (
        "topup past the largest balance",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": BIG - 1},
        {},
        422,
        "amount_overflow",
        "amount",
    ),
    (
        "adjustment past the largest balance",
        "POST",
        "/v1/accounts/w/adjustments",
        {"amount": BIG - 1, "reason": "oops"},
        {},
        422,
        "amount_overflow",
        "amount",
    ),
    ("topup -5", "POST", "/v1/accounts/w/topups", {"amount": -5}, {}, 422, None, "amount"),
    # An instant is ISO 8601 with its timezone, never Unix seconds (read as 2023-11-14).
    (
        "usage occurred_at as Unix seconds in text",
        "POST",
        "/v1/usage-records",
        {"account_id": "w", **VEO, "status": "COMPLETED", "occurred_at": "1700000000"},
        {},
        422,
        "invalid_request",
        "occurred_at",
    ),
    (
        "usage occurred_at as Unix seconds",
        "POST",
        "/v1/usage-records",
        {"account_id": "w", **VEO, "status": "COMPLETED", "occurred_at": 1700000000},
        {},
        422,
        "invalid_request",
        "occurred_at",
    ),
    ("topup 0", "POST", "/v1/accounts/w/topups", {"amount": 0}, {}, 422, None, "amount"),
    ("topup 5.5", "POST", "/v1/accounts/w/topups", {"amount": 5.5}, {}, 422, None, "amount"),
    ("topup '5'", "POST", "/v1/accounts/w/topups", {"amount": "5"}, {}, 422, None, "amount"),
    ("topup true", "POST", "/v1/accounts/w/topups", {"amount": True}, {}, 422, None, "amount"),
    (
        "topup 1e400",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": 1e400}',
        JSON,
        422,
        None,
        "amount",
    ),
    # Valid JSON, past the 4,300 digits Python reads into an int: refused by field.
    (
        "topup of 5000 digits",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": ' + b"9" * 5000 + b"}",
        JSON,
        422,
        None,
        "amount",
    ),
    (
        "images of 5000 digits",
        "POST",
        "/v1/estimates",
        b'{"catalog": "pixazo", "operation": "text_to_image", "params": {"prompt": "x", '
        b'"num_images": ' + b"9" * 5000 + b"}}",
        JSON,
        422,
        "invalid_parameter",
        "params.num_images",
    ),
    (
        "usage of 5000 digits",
        "POST",
        "/v1/usage-records",
        b'{"account_id": "t", "catalog": "cosmic", "operation": "text", "params": '
        b'{"prompt": "x", "max_tokens": 5}, "status": "COMPLETED", '
        b'"usage": {"input_tokens": -' + b"9" * 5000 + b', "output_tokens": 1}}',
        JSON,
        422,
        "invalid_usage",
        "usage.input_tokens",
    ),
    (
        "adjust -2^63",
        "POST",
        "/v1/accounts/w/adjustments",
        {"amount": -BIG, "reason": "x"},
        {},
        422,
        None,
        "amount",
    ),
    (
        "account overdraft -1",
        "POST",
        "/v1/accounts",
        {"id": "n", "unit": "credit", "overdraft_limit": -1},
        {},
        422,
        None,
        "overdraft_limit",
    ),
    (
        "account allocation 2^63",
        "POST",
        "/v1/accounts",
        {"id": "n", "unit": "credit", "monthly_allocation": BIG},
        {},
        422,
        None,
        "monthly_allocation",
    ),
    (
        "max_tokens 10^40",
        "POST",
        "/v1/authorizations",
        {"account_id": "t", **f.text(max_tokens=10**40)},
        {},
        422,
        None,
        None,
    ),
    (
        "capture videos -1",
        "POST",
        "/v1/authorizations/{hold}/capture",
        {"status": "COMPLETED", "usage": {"videos": -1}},
        {},
        422,
        None,
        None,
    ),
    (
        "capture tokens 2^70",
        "POST",
        "/v1/authorizations/{hold}/capture",
        {"status": "COMPLETED", "usage": {"videos": 2**70}},
        {},
        422,
        None,
        None,
    ),
    # Each count fits 64 bits; their price does not.
    (
        "capture text whose price passes 64 bits",
        "POST",
        "/v1/authorizations/{text}/capture",
        {"status": "COMPLETED", "usage": {"input_tokens": BIG - 1, "output_tokens": 1}},
        {},
        422,
        "amount_overflow",
        "usage",
    ),
    # Unicode where names are expected.
    (
        "unicode catalog",
        "POST",
        "/v1/authorizations",
        {"account_id": "w", "catalog": "v\u00e9o3\U0001f3ac", "operation": "video", "params": {}},
        {},
        422,
        "unknown_catalog",
        "catalog",
    ),
    (
        "unicode account",
        "POST",
        "/v1/authorizations",
        {"account_id": "w\u202e\U0001f600", **VEO},
        {},
        404,
        "not_found",
        "account_id",
    ),
    (
        "unicode unit",
        "POST",
        "/v1/accounts",
        {"id": "\u6f22", "unit": "\u20ac"},
        {},
        422,
        None,
        "unit",
    ),
    *(
        (f"account id {bad!r}", "POST", "/v1/accounts", {"id": bad, "unit": "credit"}, {}, 422)
        + (None, "id")
        for bad in ("a/b", "..", " w", "w\u202e", "system:x")
    ),
    (
        "unicode timezone",
        "POST",
        "/v1/accounts",
        {"id": "n", "unit": "credit", "timezone": "Mars/\u00d6lympus"},
        {},
        422,
        None,
        "timezone",
    ),
    # Extending a hold: no TTL, out of range, a fraction, a resolved hold.
    *(
        ("extend " + name, "POST", "/v1/authorizations/{hold}/extend", body, {}, 422, None)
        + ("ttl_seconds",)
        for name, body in (
            ("without ttl", {}),
            ("ttl 0", {"ttl_seconds": 0}),
            ("ttl 8 days", {"ttl_seconds": 8 * 24 * 3600}),
            ("ttl 1.5", {"ttl_seconds": 1.5}),
            ("ttl string", {"ttl_seconds": "60"}),
        )
    ),
    (
        "extend a captured hold",
        "POST",
        "/v1/authorizations/{captured}/extend",
        {"ttl_seconds": 60},
        {},
        409,
        "hold_not_pending",
        "id",
    ),
    # Changing a wallet's settings: nothing, a fixed one, beyond 64 bits, not a limit.
    ("patch nothing", "PATCH", "/v1/accounts/w", {}, {}, 422, "invalid_input", "body"),
    ("patch timezone", "PATCH", "/v1/accounts/w", {"timezone": "UTC"}, {}, 422, None, "timezone"),
    ("patch unit", "PATCH", "/v1/accounts/w", {"unit": "token"}, {}, 422, None, "unit"),
    *(
        ("patch " + name, "PATCH", "/v1/accounts/w", body, {}, 422, None, field)
        for name, body, field in (
            ("null limit", {"overdraft_limit": None}, "overdraft_limit"),
            ("limit 2^63", {"overdraft_limit": BIG}, "overdraft_limit"),
            ("limit -1", {"overdraft_limit": -1}, "overdraft_limit"),
            ("allocation 0", {"monthly_allocation": 0}, "monthly_allocation"),
            ("empty reason", {"overdraft_limit": 1, "reason": ""}, "reason"),
            ("null blocked", {"blocked": None}, "blocked"),
            ("blocked as text", {"blocked": "true"}, "blocked"),
            ("blocked as 0", {"blocked": 0}, "blocked"),
        )
    ),
    # The wallet holds credits: balance plus limit would pass 2^63 - 1.
    (
        "patch limit past 64 bits with the balance",
        "PATCH",
        "/v1/accounts/w",
        {"overdraft_limit": BIG - 1},
        {},
        422,
        "amount_overflow",
        "overdraft_limit",
    ),
    ("patch a ghost", "PATCH", "/v1/accounts/ghost", {"overdraft_limit": 1}, {}, 404, None, None),
    # Zones that mean different things on different machines, or are no IANA name.
    *(
        (
            f"timezone {zone!r}",
            "POST",
            "/v1/accounts",
            {"id": "n", "unit": "credit", "timezone": zone},
        )
        + ({}, 422, None, "timezone")
        for zone in ("localtime", "right/UTC", "Europe/../UTC", "/usr/share/zoneinfo/UTC")
    ),
    # Instants with an offset that no UTC date can hold (the year 10000 or 0).
    (
        "expiry past 9999 in UTC",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": 5, "expires_at": "9999-12-31T23:59:59-05:00"},
        {},
        422,
        "invalid_input",
        "expires_at",
    ),
    # Instants are ISO 8601 text: a number is no Unix timestamp (pydantic would read one).
    *(
        (f"instant {name}", method, path, body, {}, 422, "invalid_request", field)
        for name, method, path, body, field in (
            (
                "expiry 1700000000",
                "POST",
                "/v1/accounts/w/topups",
                {"amount": 5, "expires_at": 1700000000},
                "expires_at",
            ),
            (
                "expiry '1700000000'",
                "POST",
                "/v1/accounts/w/topups",
                {"amount": 5, "expires_at": "1700000000"},
                "expires_at",
            ),
            (
                "key expiry 1.5e9",
                "POST",
                "/v1/keys",
                {"role": "service", "expires_at": 1.5e9},
                "expires_at",
            ),
            ("estimate at 0", "POST", "/v1/estimates", {**VEO, "at": 0}, "at"),
            ("as_of -1515", "GET", "/v1/accounts/w/balance?as_of=-1515", None, "as_of"),
            ("since 0", "GET", "/v1/accounts/w/entries?since=0", None, "since"),
            ("until 1e9", "GET", "/v1/accounts/w/usage-records?until=1e9", None, "until"),
            ("since a day", "GET", "/v1/accounts/w/usage-records?since=2026-11-01", None, "since"),
            # An instant needs its timezone: the server's own is not the caller's.
            (
                "expiry without a timezone",
                "POST",
                "/v1/accounts/w/topups",
                {"amount": 5, "expires_at": "2099-12-01T00:00:00"},
                "expires_at",
            ),
            # pydantic reads "_" between the date and the time; ISO 8601 has no such form.
            (
                "expiry 2099-12-01_00:00:00Z",
                "POST",
                "/v1/accounts/w/topups",
                {"amount": 5, "expires_at": "2099-12-01_00:00:00Z"},
                "expires_at",
            ),
        )
    ),
    (
        "cursor past 9999 in UTC",
        "GET",
        f"/v1/accounts/w/entries?cursor={LATE_CURSOR}",
        None,
        {},
        422,
        "invalid_input",
        "cursor",
    ),
    (
        "unicode idempotency key",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": 5},
        {"Idempotency-Key": "cl\u00e9".encode()},
        422,
        None,
        "Idempotency-Key",
    ),
    (
        "idempotency key over 200 characters",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": 5},
        {"Idempotency-Key": "k" * 201},
        422,
        "invalid_request",
        "Idempotency-Key",
    ),
    (
        "idempotency key with a space (printable ASCII without spaces)",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": 5},
        {"Idempotency-Key": "top up 1"},
        422,
        "invalid_request",
        "Idempotency-Key",
    ),
    ("no body at all", "POST", "/v1/accounts/w/topups", None, {}, 422, "invalid_request", "body"),
    # NUL, which PostgreSQL cannot store as text: refused alike on both databases.
    (
        "NUL in an account id",
        "POST",
        "/v1/authorizations",
        {"account_id": "w\u0000", **VEO},
        {},
        422,
        "invalid_request",
        "account_id",
    ),
    (
        "NUL in a prompt",
        "POST",
        "/v1/authorizations",
        {"account_id": "w", **f.veo3_video(prompt="a\u0000b")},
        {},
        422,
        "invalid_request",
        "params.prompt",
    ),
    ("NUL in a path", "GET", "/v1/accounts/w%00", None, {}, 422, "invalid_request", "id"),
    (
        "NUL in the path of a request with a good body",
        "POST",
        "/v1/accounts/w%00/topups",
        {"amount": 5},
        {},
        422,
        "invalid_request",
        "id",
    ),
    (
        "NUL in a query",
        "GET",
        "/v1/accounts/w/entries?cursor=%00",
        None,
        {},
        422,
        "invalid_request",
        "cursor",
    ),
    # Unknown catalogs, operations and models.
    (
        "unknown catalog",
        "POST",
        "/v1/charges",
        {"account_id": "w", "catalog": "midjourney", "operation": "image", "params": {}},
        {},
        422,
        "unknown_catalog",
        "catalog",
    ),
    (
        "unknown operation",
        "POST",
        "/v1/charges",
        {"account_id": "w", "catalog": "veo3", "operation": "audio", "params": {}},
        {},
        422,
        "unknown_operation",
        None,
    ),
    (
        "unknown model",
        "POST",
        "/v1/authorizations",
        {"account_id": "w", **f.veo3_video(video_model="veo9")},
        {},
        422,
        None,
        None,
    ),
    (
        "unknown cosmic model",
        "POST",
        "/v1/authorizations",
        {"account_id": "t", **f.text(model="gpt-99")},
        {},
        422,
        None,
        None,
    ),
    (
        "unpriced operation",
        "POST",
        "/v1/charges",
        {"account_id": "w", **f.fal_video()},
        {},
        422,
        "not_billable",
        None,
    ),
    (
        "unit mismatch",
        "POST",
        "/v1/authorizations",
        {"account_id": "t", **VEO},
        {},
        422,
        None,
        None,
    ),
    (
        "unknown capture status",
        "POST",
        "/v1/authorizations/{hold}/capture",
        {"status": "DONE"},
        {},
        422,
        None,
        "status",
    ),
    (
        "unknown topup kind",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": 5, "kind": "gift"},
        {},
        422,
        None,
        "kind",
    ),
    (
        "unknown field",
        "POST",
        "/v1/accounts/w/topups",
        {"amount": 5, "bonus": 5},
        {},
        422,
        None,
        "bonus",
    ),
    # Malformed bodies and wrong content types.
    (
        "truncated JSON",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": 5',
        JSON,
        400,
        "invalid_json",
        None,
    ),
    ("NaN", "POST", "/v1/accounts/w/topups", b'{"amount": NaN}', JSON, 400, "invalid_json", None),
    (
        "not UTF-8",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": 5, "reference": "\xff\xfe"}',
        JSON,
        400,
        "invalid_json",
        None,
    ),
    # Nested past what Python's parser, and every walk of a document, can recurse: a 500
    # (RecursionError) before the depth was bounded; just past the bound; and where it is
    # found only after parsing.
    (
        "nested 30,000 deep",
        "POST",
        "/v1/charges",
        b"[" * 30_000 + b"]" * 30_000,
        JSON,
        400,
        "invalid_json",
        None,
    ),
    (
        "params nested 65 deep",
        "POST",
        "/v1/authorizations",
        b'{"account_id": "w", "catalog": "veo3", "operation": "video", "params": '
        + b'{"a": ' * 64
        + b"1"
        + b"}" * 64
        + b"}",
        JSON,
        400,
        "invalid_json",
        None,
    ),
    (
        "usage nested 900 deep",
        "POST",
        "/v1/authorizations/{text}/capture",
        b'{"status": "COMPLETED", "usage": ' + b"[" * 899 + b"]" * 899 + b"}",
        JSON,
        400,
        "invalid_json",
        None,
    ),
    ("JSON array", "POST", "/v1/accounts/w/topups", b"[5]", JSON, 422, "invalid_request", "body"),
    (
        "text/plain",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": 5}',
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "form",
        "POST",
        "/v1/charges",
        b"account_id=w&catalog=veo3",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "no content type",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": 5}',
        {},
        415,
        "unsupported_media_type",
        None,
    ),
    (
        "oversized",
        "POST",
        "/v1/authorizations",
        {"account_id": "t", **f.text(prompt="x" * 70_000)},
        {},
        413,
        "body_too_large",
        None,
    ),
    (
        "more output than max_tokens",
        "POST",
        "/v1/authorizations/{text}/capture",
        {"status": "COMPLETED", "usage": {"input_tokens": 10, "output_tokens": 101}},
        {},
        422,
        "invalid_usage",
        "usage.output_tokens",
    ),
    # A key given twice in a body: Python's parser would keep the last value unseen.
    (
        "amount twice",
        "POST",
        "/v1/accounts/w/topups",
        b'{"amount": 1, "amount": 1000000}',
        JSON,
        422,
        "invalid_request",
        "amount",
    ),
    (
        "nested key twice",
        "POST",
        "/v1/authorizations",
        b'{"account_id": "w", "catalog": "veo3", "operation": "video", "params":'
        b' {"prompt": "a cat", "video_model": "veo3", "video_model": "veo3_fast"}}',
        JSON,
        422,
        "invalid_request",
        "params.video_model",
    ),
    (
        "usage key twice",
        "POST",
        "/v1/authorizations/{text}/capture",
        b'{"status": "COMPLETED", "usage": {"input_tokens": 10, "input_tokens": 0}}',
        JSON,
        422,
        "invalid_request",
        "usage.input_tokens",
    ),
    (
        "account twice",
        "POST",
        "/v1/charges",
        b'{"account_id": "t", "account_id": "w", "catalog": "veo3", "operation": "video",'
        b' "params": {"prompt": "a cat", "video_model": "veo3_fast"}}',
        JSON,
        422,
        "invalid_request",
        "account_id",
    ),
    # A parameter of one value given twice: which was meant is not for the server to guess.
    (
        "query parameter twice",
        "GET",
        "/v1/keys?active=maybe&active=true",
        None,
        {},
        422,
        "invalid_request",
        "active",
    ),
    (
        "two parameters twice",
        "GET",
        "/v1/keys?role=admin&active=true&role=service&active=false",
        None,
        {},
        422,
        "invalid_request",
        "role",
    ),
    (
        # Only the one given twice is named (kind, given once, is not at fault).
        "one of two parameters twice",
        "GET",
        "/v1/accounts/w/entries?kind=topup&limit=5&limit=500",
        None,
        {},
        422,
        "invalid_request",
        "limit",
    ),
    (
        "page size twice",
        "GET",
        "/v1/accounts/w/entries?limit=5&limit=500",
        None,
        {},
        422,
        "invalid_request",
        "limit",
    ),
    # A query parameter the route does not take: ignored, a typo would mean the default.
    (
        "query parameter misspelt",
        "GET",
        "/v1/accounts/w/entries?limt=5",
        None,
        {},
        422,
        "invalid_request",
        "limt",
    ),
    (
        "query parameter where none is taken",
        "GET",
        "/v1/accounts/w?x=1",
        None,
        {},
        422,
        "invalid_request",
        "x",
    ),
    (
        "query parameter on a write",
        "POST",
        "/v1/accounts/w/topups?dry_run=true",
        {"amount": 5},
        {},
        422,
        "invalid_request",
        "dry_run",
    ),
    # State the request may not change.
    (
        "capture a captured hold",
        "POST",
        "/v1/authorizations/{captured}/capture",
        {"status": "COMPLETED"},
        {},
        409,
        "hold_not_pending",
        None,
    ),
    (
        "void a captured hold",
        "POST",
        "/v1/authorizations/{captured}/void",
        None,
        {},
        409,
        "hold_not_pending",
        None,
    ),
    (
        "account exists",
        "POST",
        "/v1/accounts",
        {"id": "w", "unit": "credit"},
        {},
        409,
        "account_exists",
        None,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    api: Api,
    world: dict[str, str],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, Any],
    status: int,
    error: str | None,
    field: str | None,
) -> None:
    before = _dump(api)
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"body": body}
    r = api.call(method, path.format(**world), headers=headers, **kwargs)
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["error"]
    assert answer["message"]
    if error is not None:
        assert answer["error"] == error
    if field is not None:
        assert answer["field"] == field
    if status == 422 and answer["error"] == "invalid_request":
        assert answer["field"], answer  # a validation error always names its field
    assert _dump(api) == before
    assert verify(api.ledger.db) == []


@pytest.mark.parametrize(
    ("header", "values"),
    [
        ("Idempotency-Key", ["first-try", "second-try"]),
        ("Idempotency-Key", ["same", "same"]),
        ("Authorization", ["Bearer {service}", "Bearer {admin}"]),
    ],
)
def test_a_header_of_one_value_given_twice_is_refused_and_changes_nothing(
    api: Api, world: dict[str, str], header: str, values: list[str]
) -> None:
    before = _dump(api)
    tokens = {"service": api.service, "admin": api.admin}
    sent = [("Content-Type", "application/json")]
    if header != "Authorization":
        sent.append(("Authorization", f"Bearer {api.service}"))
    sent += [(header, value.format(**tokens)) for value in values]
    r = api.client.post(
        "/v1/authorizations",
        headers=sent,
        content=json.dumps({"account_id": "w", **VEO}),
    )
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["error"] == "invalid_request"
    assert answer["field"] == header
    assert answer["message"] == f"{header}: given 2 times: give it once"
    assert _dump(api) == before
    # Given once, the same request goes through.
    r = api.post("/v1/authorizations", {"account_id": "w", **VEO}, idempotency_key="once")
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 5, "reference": "a\u0000b"}, "reference"),
        ({"amount": 5, "reference\u0000": "a"}, "reference\u0000"),  # in a key
        ({"amount": 5, "reference": ["ok", "a\u0000b"]}, "reference.1"),  # in a list
        ({"amount": 5, "reference": {"at": [{"x": "\u0000"}]}}, "reference.at.0.x"),
    ],
)
def test_nul_anywhere_in_a_body_is_refused_by_name_before_its_fields_are_read(
    api: Api, world: dict[str, str], body: dict[str, Any], field: str
) -> None:
    """PostgreSQL cannot store NUL in text: a body holding it anywhere, in a value, a key
    or a list, is refused alike on both databases, naming where, before its fields are
    checked (a wrong type, an unknown field) and with nothing changed."""
    before = _dump(api)
    r = api.post("/v1/accounts/w/topups", body)
    assert r.status_code == 422, r.text
    answer = r.json()
    assert (answer["error"], answer["field"]) == ("invalid_request", field)
    assert answer["message"] == f"{field}: text must not contain NUL (U+0000)"
    assert _dump(api) == before


LONE = "must be Unicode: a lone surrogate (U+D800 to U+DFFF) is no character"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/accounts/w/topups", b'{"amount": 5, "reference": "a\\udfffb"}', "reference"),
        # In a key of a free-form object: the refusal echoed it, and its answer, which no
        # UTF-8 encodes, was a 500.
        ("/v1/authorizations/{text}/capture", b'{"usage": {"\\ud800": 1}}', "usage.\\ud800"),
        ("/v1/charges", b'{"params": {"prompt": ["\\udc80"]}}', "params.prompt.0"),
    ],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_refused_by_name_and_changes_nothing(
    api: Api, world: dict[str, str], path: str, body: bytes, field: str
) -> None:
    """JSON can escape half of a UTF-16 pair (``"\\ud800"``), which is no character: no
    UTF-8 encodes it, so neither database can store it. Refused at the edge as NUL is,
    naming where (the surrogate escaped), on both databases, with nothing changed; a
    whole pair (an emoji) is text like any other."""
    before = _dump(api)
    r = api.call("POST", path.format(**world), content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json() == {
        "error": "invalid_request",
        "message": f"{field}: text {LONE}",
        "field": field,
    }
    assert _dump(api) == before
    twice = b'{"usage": {"\\ud800": 1, "\\ud800": 2}}'
    r = api.call("POST", f"/v1/authorizations/{world['text']}/capture", content=twice, headers=JSON)
    assert (r.status_code, r.json()["field"]) == (422, "usage.\\ud800")
    pair = api.call(
        "POST",
        "/v1/accounts/w/topups",
        headers=JSON,
        content=b'{"amount": 5, "reference": "\\ud83d\\ude00"}',
    )
    assert pair.status_code == 201, pair.text
    assert pair.json()["grant"]["reference"] == "\U0001f600"


def _nested(depth: int) -> Any:
    """A value of arrays and objects ``depth`` deep (0: a number)."""
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


def test_a_body_nested_past_64_deep_is_refused_and_one_64_deep_is_read(
    api: Api, world: dict[str, str]
) -> None:
    """A body nested more than 64 deep gets 400 saying so (Python's parser, and every walk
    of the document after it, recurse once a level: thousands deep, a 500), with nothing
    changed; 64 deep, the body is read, and its unknown parameter named."""
    before = _dump(api)
    envelope = {"account_id": "w", **VEO}
    # The body, params, and 63 levels below: 65 deep.
    deep = {**envelope, "params": {**VEO["params"], "a": _nested(63)}}
    r = api.post("/v1/authorizations", deep, as_key="service")
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "invalid_json",
        "message": "the body's arrays and objects nest more than 64 deep",
    }
    assert _dump(api) == before
    r = api.post("/v1/authorizations", {**deep, "params": {**deep["params"], "a": _nested(62)}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "params.a"
    assert _dump(api) == before


def _declared_queries(api: Api, path: str) -> list[str]:
    """The query parameters OpenAPI documents for ``GET path``."""
    operation = api.app.openapi()["paths"][path]["get"]
    return sorted(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")


def test_an_unknown_query_parameter_is_named_with_those_the_route_takes(api: Api) -> None:
    takes = _declared_queries(api, "/v1/accounts/{id}/entries")
    assert {"cursor", "limit"} <= set(takes)
    r = api.get("/v1/accounts/w/entries?limt=5&cursor=&zz=1")
    assert r.status_code == 422, r.text
    answer = r.json()
    assert (answer["field"], answer["allowed"]) == ("limt", takes)
    assert (
        answer["message"] == f"limt: unknown query parameter (this route takes: {', '.join(takes)})"
    )
    assert [e["field"] for e in answer["errors"]] == ["limt", "zz"]
    assert _declared_queries(api, "/v1/accounts/{id}") == []
    r = api.get("/v1/accounts/w?as_of=now")
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["allowed"]) == ("as_of", [])
    assert r.json()["message"] == "as_of: unknown query parameter (this route takes: none)"


def test_a_timezone_in_the_wrong_case_is_told_the_zone_it_meant(
    api: Api, world: dict[str, str]
) -> None:
    """``utc`` for a wallet or a report: a 422 naming the zone ``UTC``; nothing made."""
    before = _dump(api)
    cases = [
        ("/v1/accounts", {"id": "zoned", "unit": "credit", "timezone": "europe/paris"}),
        ("/v1/reports", {"month": "2026-10", "format": "csv", "timezone": "utc"}),
    ]
    for path, body in cases:
        r = api.call("POST", path, body=body)
        assert r.status_code == 422, r.text
        answer = r.json()
        assert answer["field"] == "timezone", answer
        meant = "Europe/Paris" if path == "/v1/accounts" else "UTC"
        assert answer["message"].endswith(f"did you mean '{meant}'?"), answer
    assert _dump(api) == before


def test_an_idempotency_key_of_other_characters_is_told_what_it_may_hold_in_words(
    api: Api, world: dict[str, str]
) -> None:
    """Not a regular expression for the message (a person reads it), but the pattern
    as ``allowed`` (for a program)."""
    before = _dump(api)
    for key in ("top up 1", "tab\there"):
        r = api.call(
            "POST", "/v1/accounts/w/topups", body={"amount": 5}, headers={"Idempotency-Key": key}
        )
        assert r.status_code == 422, r.text
        answer = r.json()
        assert answer["field"] == "Idempotency-Key"
        assert answer["message"] == (
            "Idempotency-Key: must be printable ASCII without spaces or control characters (! to ~)"
        )
        assert answer["allowed"] == {"pattern": r"^[\x21-\x7e]+$"}
    assert _dump(api) == before


def test_a_value_outside_a_fields_choices_is_answered_with_the_choices_as_a_list(
    api: Api, world: dict[str, str]
) -> None:
    """Every ``allowed`` of choices is a list of them, whether the ledger, the pricing or
    the request's own schema refused the value: a client reads one shape."""
    cases = [
        ("POST", "/v1/accounts/w/topups", {"amount": 5, "kind": "gift"}, "kind"),
        ("POST", "/v1/keys", {"role": "root", "name": "x"}, "role"),
        ("GET", "/v1/accounts/w/authorizations?status=open", None, "status"),
        ("GET", "/v1/keys?role=root", None, "role"),
        ("POST", "/v1/accounts", {"id": "n", "unit": "euro"}, "unit"),
    ]
    expected = {
        "kind": ["pack", "allocation", "promo"],
        "role": ["admin", "service", "customer"],
        "status": ["pending", "captured", "voided", "expired"],
        "unit": ["credit", "token", "usd"],
    }
    before = _dump(api)
    for method, path, body, field in cases:
        r = api.call(method, path, body=body)
        assert r.status_code == 422, (path, r.text)
        answer = r.json()
        assert answer["field"] == field, (path, answer)
        assert answer["allowed"] == expected[field], (path, answer)
    assert _dump(api) == before


def test_a_number_out_of_a_fields_range_is_answered_with_the_bound_it_broke(
    api: Api, world: dict[str, str]
) -> None:
    """A number out of range names, as ``allowed``, the bound it broke: the upper one (64
    bits for an amount, a week for a hold's TTL) for a value above it, the lower one for a
    value under it."""
    week = 7 * 24 * 3600
    cases = [
        ("/v1/accounts/w/topups", {"amount": BIG}, "amount", {"le": BIG - 1}),
        ("/v1/accounts/w/topups", {"amount": 0}, "amount", {"ge": 1}),
        (
            "/v1/authorizations/{hold}/extend",
            {"ttl_seconds": week + 1},
            "ttl_seconds",
            {"le": week},
        ),
        ("/v1/authorizations/{hold}/extend", {"ttl_seconds": 0}, "ttl_seconds", {"ge": 1}),
    ]
    before = _dump(api)
    for path, body, field, bound in cases:
        r = api.call("POST", path.format(**world), body=body, idempotency_key=None)
        assert r.status_code == 422, (path, r.text)
        answer = r.json()
        assert (answer["field"], answer["allowed"]) == (field, bound), (path, answer)
    # A request parameter's: the catalog's limits (as numbers), and the 64 bits of a body's
    # whole number where the catalog leaves the top open.
    for params, field, allowed in [
        (f.pixazo_image(num_images=0), "params.num_images", {"min": 1, "max": 4}),
        (f.pixazo_image(num_images=BIG), "params.num_images", {"min": 1, "max": 4}),
        (f.text(max_tokens=BIG), "params.max_tokens", {"min": 1, "max": BIG - 1}),
        (f.pixazo_image(seed=-BIG - 1), "params.seed", {"min": -BIG}),
    ]:
        r = api.post("/v1/authorizations", {"account_id": "w", **params})
        assert r.status_code == 422, r.text
        answer = r.json()
        assert (answer["field"], answer["allowed"]) == (field, allowed), answer
        assert all(type(v) is int for v in answer["allowed"].values()), answer
    assert _dump(api) == before


def test_every_bound_of_a_request_body_is_answered_with_the_bound_it_broke(
    api: Api, world: dict[str, str]
) -> None:
    """Each bound the request bodies' schemas set (lengths, ranges, choices), named as
    ``allowed`` when broken, with nothing changed: refused at the edge, not left to the
    ledger (whose own checks of some answer otherwise) nor taken (a 65-character catalog
    name, a priority past a million, a provider status the ledger does not know)."""
    week = 7 * 24 * 3600
    veo = {"account_id": "w", **VEO}
    cases = [
        # Amounts: 64 bits, signed where a change may debit.
        (
            "POST",
            "/v1/accounts/w/adjustments",
            {"amount": -BIG, "reason": "x"},
            "amount",
            {"ge": -(BIG - 1)},
        ),
        (
            "POST",
            "/v1/accounts/w/adjustments",
            {"amount": BIG, "reason": "x"},
            "amount",
            {"le": BIG - 1},
        ),
        (
            "POST",
            "/v1/accounts",
            {"id": "n", "unit": "credit", "overdraft_limit": BIG},
            "overdraft_limit",
            {"le": BIG - 1},
        ),
        (
            "POST",
            "/v1/accounts",
            {"id": "n", "unit": "credit", "overdraft_limit": -1},
            "overdraft_limit",
            {"ge": 0},
        ),
        (
            "POST",
            "/v1/accounts",
            {"id": "n", "unit": "credit", "monthly_allocation": 0},
            "monthly_allocation",
            {"ge": 1},
        ),
        (
            "POST",
            "/v1/accounts",
            {"id": "n", "unit": "credit", "monthly_spend_limit": BIG},
            "monthly_spend_limit",
            {"le": BIG - 1},
        ),
        ("PATCH", "/v1/accounts/w", {"overdraft_limit": BIG}, "overdraft_limit", {"le": BIG - 1}),
        ("PATCH", "/v1/accounts/w", {"monthly_spend_limit": -1}, "monthly_spend_limit", {"ge": 0}),
        # A hold's TTL at authorization, as at its extension: a second to a week.
        (
            "POST",
            "/v1/authorizations",
            {**veo, "ttl_seconds": week + 1},
            "ttl_seconds",
            {"le": week},
        ),
        ("POST", "/v1/authorizations", {**veo, "ttl_seconds": 0}, "ttl_seconds", {"ge": 1}),
        (
            "POST",
            "/v1/accounts/w/topups",
            {"amount": 5, "priority": 10**6 + 1},
            "priority",
            {"le": 10**6},
        ),
        (
            "POST",
            "/v1/accounts/w/topups",
            {"amount": 5, "priority": -(10**6) - 1},
            "priority",
            {"ge": -(10**6)},
        ),
        # Names and texts.
        ("POST", "/v1/estimates", {**VEO, "catalog": "c" * 65}, "catalog", {"max_length": 64}),
        ("POST", "/v1/estimates", {**VEO, "operation": ""}, "operation", {"min_length": 1}),
        ("POST", "/v1/accounts", {"id": "n" * 201, "unit": "credit"}, "id", {"max_length": 200}),
        (
            "POST",
            "/v1/authorizations",
            {**veo, "account_id": ""},
            "account_id",
            {"min_length": 1},
        ),
        ("POST", "/v1/accounts", {"id": "n", "unit": "c" * 17}, "unit", {"max_length": 16}),
        (
            "POST",
            "/v1/accounts",
            {"id": "n", "unit": "credit", "timezone": "z" * 65},
            "timezone",
            {"max_length": 64},
        ),
        *(
            (
                "POST",
                path,
                {**veo, **extra, "request_id": "r" * 201},
                "request_id",
                {"max_length": 200},
            )
            for path, extra in (
                ("/v1/authorizations", {}),
                ("/v1/charges", {}),
                ("/v1/usage-records", {"status": "COMPLETED"}),
            )
        ),
        (
            "POST",
            "/v1/accounts/w/topups",
            {"amount": 5, "reference": ""},
            "reference",
            {"min_length": 1},
        ),
        (
            "POST",
            "/v1/accounts/w/topups",
            {"amount": 5, "reference": "r" * 201},
            "reference",
            {"max_length": 200},
        ),
        (
            "POST",
            "/v1/accounts/w/adjustments",
            {"amount": 5, "reason": ""},
            "reason",
            {"min_length": 1},
        ),
        (
            "POST",
            "/v1/accounts/w/adjustments",
            {"amount": 5, "reason": "r" * 501},
            "reason",
            {"max_length": 500},
        ),
        ("POST", "/v1/keys", {"role": "service", "name": "n" * 201}, "name", {"max_length": 200}),
        ("POST", "/v1/reports", {"month": "2026-100"}, "month", {"max_length": 7}),
        (
            "POST",
            "/v1/reports",
            {"month": "2026-10", "timezone": ""},
            "timezone",
            {"min_length": 1},
        ),
        (
            "POST",
            "/v1/reports",
            {"month": "2026-10", "timezone": "z" * 65},
            "timezone",
            {"max_length": 64},
        ),
    ]
    # Choices: a provider status the ledger does not know, a format reports do not make.
    choices = [
        (
            "POST",
            "/v1/authorizations/{hold}/capture",
            {"status": "CANCELLED"},
            "status",
            ["COMPLETED", "FAILED", "ERROR"],
        ),
        (
            "POST",
            "/v1/usage-records",
            {**veo, "status": "PENDING"},
            "status",
            ["COMPLETED", "FAILED", "ERROR"],
        ),
        (
            "POST",
            "/v1/reports",
            {"month": "2026-10", "format": "xlsx"},
            "format",
            ["csv", "json", "parquet", "html"],
        ),
        ("POST", "/v1/keys", {"role": "root"}, "role", ["admin", "service", "customer"]),
    ]
    before = _dump(api)
    for method, path, body, field, bound in [*cases, *choices]:
        r = api.call(method, path.format(**world), body=body)
        assert r.status_code == 422, (path, r.text)
        answer = r.json()
        assert (answer["error"], answer["field"]) == ("invalid_request", field), (path, answer)
        assert answer["allowed"] == bound, (path, answer)
    assert _dump(api) == before


#: An operator's text catalog at the finest rate a catalog may give (10^-18 credit a
#: token), so that counts past 64 bits still price within an amount.
CHEAP_TEXT = """
name = "cheap"
unit = { code = "credit", scale = 0 }
[[versions]]
id = "v1"
effective_from = 2026-01-01T00:00:00Z
source = "test"
[versions.operations.text]
body = "cosmic.text"
model_param = "model"
defaults = { model = "m" }
[versions.operations.text.models]
m = { tier = "t", max_output_tokens = 100 }
[versions.operations.text.pricing]
type = "per_token"
multipliers = { t = 0.000000000000000001 }
"""


def test_counts_past_64_bits_are_a_4xx_naming_the_field_on_either_database(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A count the ledger would keep in a 64-bit column, past it but priced within an
    amount: SQLite's driver failed to bind it (a 500) and PostgreSQL refused it as a
    balance overflow of ``params``. Now pricing refuses it by name on both, and nothing
    changes. fal's candidates are at the README's example prices."""
    f.write_catalog(tmp_path, "cheap.toml", CHEAP_TEXT)
    f.write_catalog(
        tmp_path, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    priced = Ledger(ledger.db, load_catalogs([tmp_path]), clock=ledger.clock)
    with api_over(priced, Keys(priced.db), Settings()) as api:
        api.wallet("w", "credit", topup=1_000)
        api.wallet("u", "usd", topup=10**12)
        text = f.request("cheap", "text", prompt="x", max_tokens=5)
        hold = api.post("/v1/authorizations", {"account_id": "w", **text})
        assert hold.status_code == 201, hold.text
        agentic = f.request(
            "fal",
            "image_to_video",
            prompt="x",
            image_url="https://x/a.png",
            num_frames=1,
            fps=2**63 - 1,
            enable_agentic_generation=True,
            agentic_max_iterations=2**32,
            agentic_samples_per_iteration=2**31,
        )
        before = _dump(api)
        over = {"input_tokens": 2**63, "output_tokens": 1}
        for path, body, field in [
            (
                "/v1/usage-records",
                {"account_id": "w", **text, "status": "COMPLETED", "usage": over},
                "usage.input_tokens",
            ),
            (
                f"/v1/authorizations/{hold.json()['id']}/capture",
                {"status": "COMPLETED", "usage": over},
                "usage.input_tokens",
            ),
            (
                "/v1/authorizations",
                {"account_id": "w", **f.request("cheap", "text", prompt="x", max_tokens=2**63)},
                "params.max_tokens",
            ),
            ("/v1/authorizations", {"account_id": "u", **agentic}, "params"),
            ("/v1/charges", {"account_id": "u", **agentic}, "params"),
            ("/v1/estimates", agentic, "params"),
        ]:
            r = api.post(path, body)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["field"] == field, r.json()
            assert r.json()["allowed"]["max"] == 2**63 - 1, r.json()
        assert _dump(api) == before
        # Within 64 bits, the same requests go through.
        fits = {"input_tokens": 2**63 - 2, "output_tokens": 1}
        r = api.post(
            f"/v1/authorizations/{hold.json()['id']}/capture",
            {"status": "COMPLETED", "usage": fits},
        )
        assert r.status_code == 200, r.text
        assert r.json()["charged"] == 10
    assert verify(ledger.db) == []
