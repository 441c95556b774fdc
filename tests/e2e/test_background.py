"""The background jobs of ``creditledger serve`` (the sweeper, the report worker) as an
operator watches them: through ``/metrics``."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx2 as httpx

from tests.e2e.served import Served


def _value(text: str, series: str) -> float | None:
    """The value of one series (its name and labels as Prometheus writes them)."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_the_jobs_rounds_and_what_the_sweeper_expired_are_in_the_metrics(
    database_url: str, serve: Callable[..., Served]
) -> None:
    """Each job's rounds counted by outcome, timed, and the time of its last success
    (the series an alert on a stalled sweeper reads: holds it would release stay held,
    refusing requests); the grants it expired counted."""
    env = {"CREDITLEDGER_DATABASE_URL": database_url, "CREDITLEDGER_SWEEP_INTERVAL_SECONDS": "0.2"}
    server = serve(env).start()
    assert server.admin is not None
    auth = {"Authorization": f"Bearer {server.admin}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
        assert http.post("/v1/accounts", json={"id": "promo", "unit": "credit"}).is_success
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        r = http.post("/v1/accounts/promo/topups", json={"amount": 50, "expires_at": soon})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 60
        while True:
            text = http.get("/metrics").text
            if _value(text, "creditledger_grants_expired_total") == 1:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        assert http.get("/v1/accounts/promo").json()["balance"] == 0
    for task in ("sweeper", "reports"):
        ok = _value(text, f'creditledger_background_rounds_total{{outcome="ok",task="{task}"}}')
        assert ok is not None
        assert ok >= 1, text
        failed = f'creditledger_background_rounds_total{{outcome="failed",task="{task}"}}'
        assert _value(text, failed) == 0, text
        last = f'creditledger_background_last_success_timestamp_seconds{{task="{task}"}}'
        succeeded = _value(text, last)
        assert succeeded is not None
        assert abs(time.time() - succeeded) < 60, text
        timed = f'creditledger_background_round_duration_seconds_count{{task="{task}"}}'
        assert (_value(text, timed) or 0) >= 1, text
    interval = 'creditledger_background_interval_seconds{task="sweeper"}'
    assert _value(text, interval) == 0.2
    assert _value(text, "creditledger_allocations_granted_total") == 0
