"""Fuzzing: schemathesis generates requests for every operation in ``/openapi.json``.

Cases are valid by the schema and invalid by it (negative mode), sent with valid keys of
every role through the real app and database. Each response must be no 5xx, a documented
status, the documented content type and headers, and a body that matches the documented
schema; a request the schema forbids must be refused with a 4xx. The path parameters and
bodies of valid cases are steered three times in four towards things that exist (the
wallets, holds, usage records, entries, grants, keys, reports and catalogs set up first),
so cases reach the ledger and not only 404s. Afterwards every ledger invariant must still
hold (the ``ledger`` fixture checks).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.generation.meta import negated_parameters
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import factories as f
from tests.conftest import examples
from tests.e2e.conftest import Api

CASES = examples(1200)  # per database (about 40 per operation)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

#: Wallets and requests the catalogs can price in their unit, for steered bodies.
PRICED = [
    ("fuzz", f.veo3_video(video_model="veo3_fast")),
    ("fuzz", f.veo3_video(video_model="veo3")),
    ("fuzz-tokens", f.text(max_tokens=100)),
    ("fuzz-tokens", f.cosmic_image()),
    ("fuzz-tokens", f.cosmic_video()),
    ("fuzz-usd", f.pixazo_image()),
    ("fuzz-usd", f.fal_video()),  # no published price: 422
]
#: Values of body fields that exist, for the same purpose.
KNOWN = {
    "unit": ["credit", "token", "usd"],
    "timezone": ["UTC", "Europe/Berlin"],
    "month": ["2026-10"],
}


def _world(api: Api) -> dict[str, list[str]]:
    """Things that exist, by the kind of id a path names."""
    credits = api.wallet("fuzz", "credit", topup=10_000)
    tokens = api.wallet("fuzz-tokens", "token", topup=5_000_000)
    usd = api.wallet("fuzz-usd", "usd", topup=1_000_000)
    holds, records = [], []
    for _ in range(3):
        r = api.post(
            "/v1/authorizations", {"account_id": credits, **f.veo3_video(video_model="veo3_fast")}
        )
        assert r.status_code == 201, r.text
        holds.append(r.json()["id"])
        records.append(r.json()["metering_id"])
    entries = [e["id"] for e in api.get(f"/v1/accounts/{credits}/entries").json()["items"]]
    grants = [g["id"] for w in (credits, tokens, usd) for g in api.balance(w)["grants"]]
    spare = api.keys.create("service", name="spare").id
    r = api.post("/v1/reports", {"month": "2026-10", "format": "csv"})
    assert r.status_code == 202, r.text
    return {
        "accounts": [credits, tokens, usd],
        "authorizations": holds,
        "usage-records": records,
        "entries": entries,
        "grants": grants,
        "keys": [spare],
        "reports": [r.json()["id"]],
        "catalogs": ["cosmic", "veo3", "pixazo", "fal"],
    }


def _often(data: st.DataObject, label: str) -> bool:
    return data.draw(st.integers(0, 3), label=label) > 0


def _steer(case: Any, world: dict[str, list[str]], data: st.DataObject) -> None:
    """Three times in four, point the case at things that exist."""
    if case.path_parameters and _often(data, "existing path id"):
        kind = case.operation.path.split("/")[2]
        for name in case.path_parameters:
            case.path_parameters[name] = data.draw(st.sampled_from(world[kind]), label=name)
    headers = case.headers or {}
    if "Idempotency-Key" in headers and _often(data, "fresh idempotency key"):
        # Generated keys repeat ("0"), and a reused key is rightly a 409.
        headers["Idempotency-Key"] = data.draw(st.uuids(), label="idempotency key").hex
    body = case.body
    if isinstance(body, dict) and _often(data, "existing body refs"):
        if "account_id" in body:
            body["account_id"] = data.draw(st.sampled_from(world["accounts"]), label="account")
        if "catalog" in body:
            account, priced = data.draw(st.sampled_from(PRICED), label="priced request")
            body.update(copy.deepcopy(priced))
            if "account_id" in body:
                body["account_id"] = account
        for name, values in KNOWN.items():
            if name in body:
                body[name] = data.draw(st.sampled_from(values), label=name)


def _one_item(case: Any, name: str) -> bool:
    """Whether the query parameter ``name`` of ``case`` is a list of one plain value, or
    an object of one key (a query sends an object's keys): sent as ``name=value``, the
    very request that value alone makes."""
    value = (case.query or {}).get(name)
    if isinstance(value, dict):
        return len(value) == 1
    return (
        isinstance(value, list | tuple)
        and len(value) == 1
        and not isinstance(value[0], list | tuple | dict)
    )


def _sent_as_nothing(case: Any, sent_url: str | None, name: str) -> bool:
    """Whether the optional query parameter ``name`` of ``case`` was not sent at all,
    though the case gave it a value: a list of nothing (``[]``, ``[[]]``) is written as
    no ``name=`` in the query, the very request without it."""
    if sent_url is None:  # not known: not taken for undone
        return False
    optional = any(p.name == name and not p.is_required for p in case.operation.query)
    sent = parse_qs(urlsplit(sent_url).query, keep_blank_values=True)
    return optional and name in (case.query or {}) and name not in sent


def _checks(case: Any, sent_url: str | None) -> list[Any]:
    """The checks for ``case``, which was sent to ``sent_url`` with a valid key of its
    own.

    A negative case whose named mutations are only undone on the way is no longer negative
    where it counts: its Authorization header (replaced by that valid key), a query
    parameter made a list of one value (``?actor=false`` whether ``"false"`` or
    ``["false"]`` was meant: the server cannot tell, and refuses two values or more) or an
    object of one key (``{"false": {...}}`` is sent as that key alone), and an optional
    query parameter made a list of nothing (not sent at all). Nor are extra
    query parameters besides them: an API ignores unknown query parameters, and
    schemathesis itself accepts a 2xx when they are a case's only mutation. For such a
    case the "negative data is rejected" check is left out; every other check still runs.
    """
    meta = case._meta
    if meta is None or not meta.generation.mode.is_negative:
        return CHECKS
    named = list(negated_parameters(meta))
    negative = {where for where, info in meta.components.items() if info.mode.is_negative}
    undone = bool(named) and all(
        (name, where) == ("Authorization", ParameterLocation.HEADER)
        or (
            where == ParameterLocation.QUERY
            and (_one_item(case, name) or _sent_as_nothing(case, sent_url, name))
        )
        for name, where in named
    )
    if undone and negative <= {ParameterLocation.HEADER, ParameterLocation.QUERY}:
        return [check for check in CHECKS if check is not negative_data_rejection]
    return CHECKS


@pytest.mark.long
def test_schemathesis_finds_no_5xx_and_no_schema_violation(api: Api) -> None:
    world = _world(api)
    tokens = {
        "admin": api.admin,
        "service": api.service,
        "customer": api.customer("fuzz"),
    }
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    found = list(schema.get_all_operations())
    assert all(isinstance(op, Ok) for op in found), found  # every operation is valid
    operations = [op.ok() for op in found if isinstance(op, Ok)]
    seen: Counter[tuple[str, int]] = Counter()

    def fuzz(operation: APIOperation[Any, Any, Any, Any]) -> None:
        """An equal share of the cases for ``operation``: each one is reached (drawn from
        all of them at once, Hypothesis's choices left one out now and then)."""
        modes = {
            mode: strategy
            for mode in GenerationMode
            if not (strategy := operation.as_strategy(mode)).is_empty
        }

        @given(data=st.data())
        @settings(max_examples=-(-CASES // len(operations)))
        def case_of(data: st.DataObject) -> None:
            mode = data.draw(st.sampled_from(list(modes)), label="mode")
            case = data.draw(modes[mode], label="case")
            if mode is GenerationMode.POSITIVE:  # a negative case keeps what makes it invalid
                _steer(case, world, data)
            role = data.draw(st.sampled_from(sorted(tokens)), label="role")
            response = case.call(headers={"Authorization": f"Bearer {tokens[role]}"})
            seen[(case.operation.label, response.status_code)] += 1
            case.validate_response(response, checks=_checks(case, response.request.url))

        case_of()

    for operation in operations:
        fuzz(operation)

    calls: Counter[str] = Counter()
    for (label, _), n in seen.items():
        calls[label] += n
    # Each operation was called, all but those with few distinct requests (GET /healthz:
    # one per role) as often as its share.
    assert set(calls) == {op.label for op in operations}, calls
    assert sum(calls.values()) >= CASES * 0.9, calls
    # The steering reached the ledger: writes that succeeded, not only refusals.
    written = sum(
        n
        for (label, status), n in seen.items()
        if label.split()[0] in ("POST", "PATCH", "DELETE") and status < 300
    )
    assert written >= 25, sorted(seen.items())
