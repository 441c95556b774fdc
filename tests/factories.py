"""Builders of requests and catalog files for the tests (no copy-pasted setup)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ledger.db import Database
from ledger.services import Ledger
from reports import queries, statement

#: After every shipped version took effect: quotes "now" and at this instant agree.
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def request(catalog: str, operation: str, **params: Any) -> dict[str, Any]:
    """The envelope the gateway sends: the provider's own body under ``params``."""
    return {"catalog": catalog, "operation": operation, "params": params}


def text(
    prompt: str = "Write a product description for a coffee mug", **params: Any
) -> dict[str, Any]:
    return request("cosmic", "text", prompt=prompt, **params)


def cosmic_image(**params: Any) -> dict[str, Any]:
    return request("cosmic", "image", **{"prompt": "A serene mountain landscape", **params})


def cosmic_video(**params: Any) -> dict[str, Any]:
    return request("cosmic", "video", **{"prompt": "A calico kitten playing", **params})


def veo3_video(**params: Any) -> dict[str, Any]:
    return request("veo3", "video", **{"prompt": "A cat playing in a garden", **params})


def pixazo_image(**params: Any) -> dict[str, Any]:
    return request("pixazo", "text_to_image", **{"prompt": "A mountain observatory", **params})


def fal_video(**params: Any) -> dict[str, Any]:
    body = {"prompt": "The camera pushes in", "image_url": "https://example.com/a.jpg", **params}
    return request("fal", "image_to_video", **body)


#: An operator's catalog version giving fal's image-to-video a price per second by tier.
FAL_PRICES = """
name = "fal"
unit = {{ code = "usd", scale = 6 }}

[[versions]]
id = "operator-1"
effective_from = {effective_from}
source = "operator price list"
based_on = "seed-004"

[versions.operations.image_to_video.pricing]
prices = {{ "256p" = 0.01, "480p" = 0.02, "720p" = 0.05 }}
"""


#: An operator catalog "acme": one video model "fast" at a fixed price. Fill in
#: ``limits`` (a limits line for the operation, or "") and ``price``.
MINIMAL_CATALOG = """
name = "acme"
unit = {{ code = "credit", scale = 0 }}

[[versions]]
id = "v1"
effective_from = 2026-01-01T00:00:00Z
source = "test"

[versions.operations.video]
body = "veo3.video"
model_param = "video_model"
defaults = {{ video_model = "fast" }}
{limits}
[versions.operations.video.models]
fast = {{ name = "Fast" }}

[versions.operations.video.pricing]
type = "fixed"
per = "video"
usage_key = "videos"
prices = {{ fast = {price} }}
"""


def write_catalog(directory: Path, name: str, text: str) -> Path:
    """Write one operator catalog file and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def fal_version(version_id: str, effective_from: str, price_480p: str) -> str:
    """``FAL_PRICES`` as version ``version_id``, from ``effective_from`` (ISO 8601), at
    ``price_480p`` dollars a second at 480p."""
    return (
        FAL_PRICES.format(effective_from=effective_from)
        .replace('id = "operator-1"', f'id = "{version_id}"')
        .replace('"480p" = 0.02', f'"480p" = {price_480p}')
    )


def fal_price_change(directory: Path) -> Path:
    """Two operator versions of fal's price list in ``directory``: ``operator-1`` ($0.02 a
    second at 480p) from 2026-01-01, and ``operator-2`` ($0.03) from 2026-06-01."""
    write_catalog(directory, "fal.toml", FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z"))
    write_catalog(
        directory, "fal-2.toml", fal_version("operator-2", "2026-06-01T00:00:00Z", "0.03")
    )
    return directory


class Clock:
    """A controllable clock for the ledger: starts at NOW, moves only when told."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def make_statement(
    db: Database,
    month: str,
    timezone: str,
    account: str | None = None,
    *,
    from_journal: bool = False,
    generated_at: datetime = NOW,
) -> statement.Statement:
    """The statement of ``month`` in ``timezone`` as a report job makes it (reconciled, or
    :class:`reports.errors.ReconciliationError`); ``from_journal`` reads every wallet the
    exact way instead of from its rollups."""
    with db.transaction(write=False) as conn:
        frames = queries.load(
            conn, queries.period(month, timezone), account, from_journal=from_journal
        )
    return statement.build(frames, account_id=account, generated_at=generated_at)


_keys = iter(range(10**9))


def key(prefix: str = "k") -> str:
    """A fresh idempotency key."""
    return f"{prefix}-{next(_keys)}"


@dataclass(frozen=True)
class Traffic:
    """What :func:`month_of_traffic` did, for the tests to check the report against."""

    month: str
    wallets: dict[str, str]  # external id -> unit
    last_day_2330: str  # the metering record captured at 23:30 UTC on the last day
    open_at_end: list[str]  # holds pending across the month's end (UTC)
    refunded: str  # an entry reversed during the month


def month_of_traffic(ledger: Ledger, clock: Clock, *, seed: int = 7) -> Traffic:
    """October 2026 of a small gateway, in the ledger, through its use cases.

    Wallets in UTC, Europe/Berlin and Asia/Tokyo; top-ups before and during the month,
    a promo that expires mid-month, a monthly allocation, text, image and video requests
    captured COMPLETED and ERROR, immediate charges, usage reported after the fact (post-
    paid), voids, a refund, a hold still
    pending at the month's end, a capture at 23:30 UTC on the 31st, and traffic after the
    month (so the month's closing balance is not today's balance).
    """
    rng = random.Random(seed)
    clock.now = datetime(2026, 9, 28, 9, 0, tzinfo=UTC)
    wallets = {"acme": "token", "berlin": "token", "tokyo": "credit", "studio": "usd"}
    zones = {"acme": "UTC", "berlin": "Europe/Berlin", "tokyo": "Asia/Tokyo", "studio": "UTC"}
    for name, unit in wallets.items():
        ledger.open_account(
            name,
            unit,
            timezone=zones[name],
            monthly_allocation=50_000 if name == "acme" else None,
            idempotency_key=key("open"),
        )
        amount = {"token": 5_000_000, "credit": 200_000, "usd": 20_000_000}[unit]
        ledger.top_up(name, amount, idempotency_key=key())
    ledger.roll_allocations()
    requests = {
        "acme": lambda: text(max_tokens=rng.choice([256, 512])),
        "berlin": lambda: rng.choice([text(max_tokens=300), cosmic_image()]),
        "tokyo": lambda: veo3_video(video_model=rng.choice(["veo3_fast", "veo3"])),
        "studio": lambda: pixazo_image(),
    }
    clock.now = datetime(2026, 10, 1, 0, 30, tzinfo=UTC)
    ledger.roll_allocations()
    ledger.top_up(
        "berlin",
        4_000_000,
        kind="promo",
        expires_at=datetime(2026, 10, 12, tzinfo=UTC),
        idempotency_key=key(),
    )
    refunded = ""
    for day in range(1, 32):
        for hour in (3, 11, 17, 22):
            clock.now = datetime(2026, 10, day, hour, rng.randrange(60), tzinfo=UTC)
            ledger.expire_grants()
            for name in wallets:
                body = requests[name]()
                hold = ledger.authorize(name, body, idempotency_key=key())
                outcome = rng.random()
                if outcome < 0.1:
                    ledger.void(hold.id, idempotency_key=key())
                    continue
                status = "ERROR" if outcome < 0.2 else "COMPLETED"
                usage = (
                    {"input_tokens": rng.randrange(5, 80), "output_tokens": rng.randrange(200)}
                    if body["operation"] == "text"
                    else {}
                )
                ledger.capture(hold.id, status=status, usage=usage, idempotency_key=key())
            charge = ledger.charge(
                "tokyo", veo3_video(video_model="veo3_fast"), idempotency_key=key()
            )
            if hour == 22:  # agentic renders the studio's gateway reports once they ran
                ledger.report_usage(
                    "studio",
                    pixazo_image(enable_agentic_generation=True),
                    status=rng.choice(["COMPLETED", "COMPLETED", "ERROR"]),
                    usage={"candidates": rng.randrange(1, 5)},
                    idempotency_key=key(),
                )
            if day == 14 and hour == 11:
                assert charge.entry_id is not None
                ledger.reverse(charge.entry_id, reason="failed render", idempotency_key=key())
                refunded = charge.entry_id
        if day == 20:
            ledger.top_up("acme", 250_000, idempotency_key=key())
            ledger.adjust("studio", -1_000, reason="goodwill clawback", idempotency_key=key())
    clock.now = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    late = ledger.authorize("acme", text(max_tokens=100), idempotency_key=key())
    ledger.capture(
        late.id,
        status="COMPLETED",
        usage={"input_tokens": 9, "output_tokens": 20},
        idempotency_key=key(),
    )
    clock.now = datetime(2026, 10, 31, 23, 50, tzinfo=UTC)
    pending = ledger.authorize("tokyo", veo3_video(video_model="veo3"), idempotency_key=key())
    clock.now = datetime(2026, 11, 1, 0, 4, tzinfo=UTC)
    ledger.capture(pending.id, status="COMPLETED", usage={}, idempotency_key=key())
    ledger.roll_allocations()
    for name in wallets:
        body = requests[name]()
        hold = ledger.authorize(name, body, idempotency_key=key())
        usage = {"input_tokens": 5, "output_tokens": 5} if body["operation"] == "text" else {}
        ledger.capture(hold.id, status="COMPLETED", usage=usage, idempotency_key=key())
    ledger.top_up("studio", 1_000_000, idempotency_key=key())
    clock.now = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    return Traffic(
        month="2026-10",
        wallets=wallets,
        last_day_2330=late.id,
        open_at_end=[pending.id],
        refunded=refunded,
    )
