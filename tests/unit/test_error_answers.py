"""An error's answer can always be sent: one that echoes a lone surrogate from the
request (no UTF-8 encodes it) sends it escaped, as JSON writes it, not a 500."""

from __future__ import annotations

import json

from starlette.requests import Request

from api import errors
from pricing.errors import InvalidUsage

SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}


def test_an_error_echoing_a_lone_surrogate_is_sent_with_it_escaped() -> None:
    exc = InvalidUsage("unknown usage field '\ud800' for this operation", field="usage.\ud800")
    answer = errors._domain(Request(dict(SCOPE)), exc)
    assert answer.status_code == 422
    assert b"\\ud800" in answer.body
    assert json.loads(bytes(answer.body)) == exc.to_dict()
    plain = errors._domain(Request(dict(SCOPE)), InvalidUsage("caf\u00e9", field="usage.x"))
    assert "café".encode() in plain.body  # other text stays as it is, in UTF-8
