"""Pricing what a request actually used, by outcome status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from pricing import CatalogSet, estimate, load_catalogs, price_usage
from pricing.errors import InvalidUsage
from tests import factories as f


@pytest.mark.parametrize(
    "req",
    [f.text(), f.cosmic_video(), f.veo3_video(), f.pixazo_image(num_images=4)],
    ids=["text", "cosmic-video", "veo3", "pixazo"],
)
def test_error_is_never_charged(catalogs: CatalogSet, req: dict[str, Any]) -> None:
    charge = price_usage(req, {"input_tokens": 10, "output_tokens": 5}, "ERROR", catalogs=catalogs)
    assert (charge.amount, charge.charged, charge.status) == (0, False, "ERROR")


def test_failed_is_not_charged_by_default(catalogs: CatalogSet) -> None:
    charge = price_usage(f.veo3_video(), {}, "FAILED", catalogs=catalogs)
    assert (charge.amount, charge.charged) == (0, False)


def test_failed_policy_charged_prices_reported_usage(tmp_path: Any) -> None:
    f.write_catalog(
        tmp_path,
        "veo3-failed.toml",
        """
name = "veo3"
unit = { code = "credit", scale = 0 }
[[versions]]
id = "charge-failures"
effective_from = 2026-01-01T00:00:00Z
source = "operator policy"
based_on = "seed-003"
failed_policy = "charged"
""",
    )
    catalogs = load_catalogs([tmp_path])
    charge = price_usage(f.veo3_video(), {}, "FAILED", catalogs=catalogs, at=f.NOW)
    assert (charge.amount, charge.charged) == (240, True)
    assert charge.reason == "FAILED: priced from reported usage"
    # ERROR stays free whatever the policy.
    error = price_usage(f.veo3_video(), {}, "ERROR", catalogs=catalogs, at=f.NOW)
    assert (error.amount, error.reason) == (0, "ERROR is a provider system error: never charged")


def test_unknown_status(catalogs: CatalogSet) -> None:
    with pytest.raises(InvalidUsage) as info:
        price_usage(f.veo3_video(), {}, "DONE", catalogs=catalogs)
    assert info.value.allowed == ["COMPLETED", "FAILED", "ERROR"]


def test_text_capture_may_exceed_the_estimate(catalogs: CatalogSet) -> None:
    # The real input (say a PDF behind media_url) can exceed the estimate: it is charged.
    req = f.text("Summarise this", media_url="https://x/report.pdf", max_tokens=100)
    quote = estimate(req, catalogs=catalogs)
    charge = price_usage(
        req, {"input_tokens": 50_000, "output_tokens": 100}, "COMPLETED", catalogs=catalogs
    )
    assert charge.amount == 2 * 50_100 > quote.max_cost


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"input_tokens": 1}, "usage.output_tokens"),
        ({"input_tokens": -1, "output_tokens": 1}, "usage.input_tokens"),
        ({"input_tokens": 1.5, "output_tokens": 1}, "usage.input_tokens"),
        ({"input_tokens": True, "output_tokens": 1}, "usage.input_tokens"),
        ({"input_tokens": "10", "output_tokens": 1}, "usage.input_tokens"),
        ({"input_tokens": 1, "output_tokens": 1, "reasoning_tokens": 9}, "usage.reasoning_tokens"),
        ({"input_tokens": 1, "output_tokens": 1, "total_tokens": 3}, "usage.total_tokens"),
    ],
)
def test_bad_text_usage(catalogs: CatalogSet, usage: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidUsage) as info:
        price_usage(f.text(), usage, "COMPLETED", catalogs=catalogs)
    assert info.value.field == field


@pytest.mark.parametrize("usage", [5, "input_tokens", ["input_tokens", "output_tokens"], 1.5])
@pytest.mark.parametrize("req", [f.text(), f.veo3_video()], ids=["text", "video"])
def test_usage_that_is_not_an_object(
    catalogs: CatalogSet, req: dict[str, Any], usage: object
) -> None:
    with pytest.raises(InvalidUsage) as info:
        price_usage(req, usage, "COMPLETED", catalogs=catalogs)  # type: ignore[arg-type]
    assert (info.value.field, info.value.message) == ("usage", "usage must be an object")


def test_provider_usage_object_with_total(catalogs: CatalogSet) -> None:
    usage = {"input_tokens": 10, "output_tokens": 89, "total_tokens": 99}
    charge = price_usage(f.text(model="gpt-5-nano"), usage, "COMPLETED", catalogs=catalogs)
    assert charge.amount == 99
    assert charge.usage == {"input_tokens": 10, "output_tokens": 89}


def test_media_usage_cannot_exceed_the_request(catalogs: CatalogSet) -> None:
    with pytest.raises(InvalidUsage) as info:
        price_usage(f.pixazo_image(num_images=2), {"images": 3}, "COMPLETED", catalogs=catalogs)
    assert info.value.allowed == {"min": 0, "max": 2}
    with pytest.raises(InvalidUsage):
        price_usage(f.cosmic_video(), {"videos": 2}, "COMPLETED", catalogs=catalogs)


def test_media_usage_defaults_to_what_was_requested(catalogs: CatalogSet) -> None:
    assert (
        price_usage(f.pixazo_image(num_images=3), None, "COMPLETED", catalogs=catalogs).amount
        == 120_000
    )
    partial = price_usage(
        f.pixazo_image(num_images=3), {"images": 1}, "COMPLETED", catalogs=catalogs
    )
    assert partial.amount == 40_000
    assert price_usage(f.cosmic_video(), {}, "COMPLETED", catalogs=catalogs).amount == 288_000


def test_agentic_candidates_must_be_reported_and_bounded(catalogs: CatalogSet) -> None:
    req = f.pixazo_image(enable_agentic_generation=True, enable_prompt_expansion=True)
    with pytest.raises(InvalidUsage, match="usage.candidates is required"):
        price_usage(req, {}, "COMPLETED", catalogs=catalogs)
    with pytest.raises(InvalidUsage):
        price_usage(req, {"candidates": 5}, "COMPLETED", catalogs=catalogs)
    charge = price_usage(req, {"candidates": 3}, "COMPLETED", catalogs=catalogs)
    assert charge.amount == 3 * 40_000 + 20_000
    with pytest.raises(InvalidUsage, match="only to agentic"):
        price_usage(f.pixazo_image(), {"candidates": 1}, "COMPLETED", catalogs=catalogs)


def test_capture_uses_the_version_the_hold_was_quoted_with(tmp_path: Any) -> None:
    # A new price takes effect between authorization and capture: the capture is priced
    # by the version the quote names.
    f.fal_price_change(tmp_path)
    catalogs = load_catalogs([tmp_path])
    quote = estimate(f.fal_video(), datetime(2026, 3, 1, tzinfo=UTC), catalogs=catalogs)
    assert quote.catalog_version == "operator-1"
    pinned = price_usage(
        f.fal_video(), {}, "COMPLETED", catalog_version=quote.catalog_version, catalogs=catalogs
    )
    assert pinned.amount == quote.cost == 157_500  # $0.02 x 189/24 s
    current = price_usage(f.fal_video(), {}, "COMPLETED", catalogs=catalogs)
    assert (current.catalog_version, current.amount) == ("operator-2", 236_250)


def test_reported_counts_are_held_to_64_bits_and_to_what_was_asked(
    catalogs: CatalogSet,
) -> None:
    """Text input has no limit of its own (it may run past its estimate), but what the
    ledger keeps is a 64-bit count: beyond that a count is refused by name, whatever the
    database."""
    most = 2**63 - 1
    charge = price_usage(
        f.text(model="gpt-5-nano", max_tokens=1),
        {"input_tokens": most - 1, "output_tokens": 1},
        "COMPLETED",
        catalogs=catalogs,
    )
    assert charge.usage == {"input_tokens": most - 1, "output_tokens": 1}
    for beyond in (most + 1, 10**30):
        with pytest.raises(InvalidUsage) as info:
            price_usage(
                f.text(max_tokens=1),
                {"input_tokens": beyond, "output_tokens": 1},
                "COMPLETED",
                catalogs=catalogs,
            )
        assert (info.value.field, info.value.allowed) == (
            "usage.input_tokens",
            {"min": 0, "max": most},
        )
        assert info.value.message == f"usage.input_tokens must be a whole number from 0 to {most}"
    # Within what the request asked for, the message says so.
    with pytest.raises(InvalidUsage) as asked:
        price_usage(
            f.text(max_tokens=5),
            {"input_tokens": 1, "output_tokens": 6},
            "COMPLETED",
            catalogs=catalogs,
        )
    assert asked.value.message == (
        "usage.output_tokens must be a whole number from 0 to 5 (what the request asked for)"
    )


def test_a_quote_and_a_charge_itemize_what_they_price(catalogs: CatalogSet, tmp_path: Any) -> None:
    """The lines (what, how many, at what price, for how much) and the usage a quote
    assumes are what a gateway shows its customer and what a pending authorization's
    usage record says; each is pinned, not only the totals."""

    def itemized(quote: Any) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        return [tuple(line) for line in quote.lines], dict(quote.estimated_usage)

    assert itemized(estimate(f.veo3_video(), catalogs=catalogs)) == (
        [("video, veo3_fast (standard quality)", 1, 240, 240)],
        {"videos": 1},
    )
    image = f.pixazo_image(num_images=2, enable_prompt_expansion=True)
    assert itemized(estimate(image, catalogs=catalogs)) == (
        [("images", 2, 40_000, 80_000), ("prompt expansion (per request)", 1, 20_000, 20_000)],
        {"images": 2},
    )
    # An operator's price of fal's video seconds: each candidate is a full render.
    f.fal_price_change(tmp_path)
    operator = load_catalogs([tmp_path])
    at = datetime(2026, 3, 1, tzinfo=UTC)
    video = f.fal_video(
        enable_agentic_generation=True, agentic_max_iterations=3, agentic_samples_per_iteration=1
    )
    quote = estimate(video, at, catalogs=operator)
    seconds = Decimal("7.875")  # 189 frames at 24 fps
    assert itemized(quote) == (
        [
            (
                "480p video seconds (189 frames at 24 fps) x 3 candidate renders",
                3 * seconds,
                20_000,
                3 * seconds * 20_000,
            )
        ],
        {"seconds": seconds, "num_frames": 189, "candidates": 3},
    )
    one = price_usage(
        video,
        {"candidates": 1},
        "COMPLETED",
        catalog_version=quote.catalog_version,
        catalogs=operator,
    )
    assert [tuple(line) for line in one.lines] == [
        ("480p video seconds (189 frames at 24 fps)", seconds, 20_000, seconds * 20_000)
    ]
    assert one.amount == 157_500
    # A usage whose total disagrees names the total it should have been.
    usage = {"input_tokens": 10, "output_tokens": 89, "total_tokens": 100}
    with pytest.raises(InvalidUsage) as info:
        price_usage(f.text(), usage, "COMPLETED", catalogs=catalogs)
    assert (info.value.field, info.value.allowed) == ("usage.total_tokens", [99])


def test_without_an_instant_the_version_in_force_now_prices(tmp_path: Any) -> None:
    """``at`` left out means now, by the real clock: a version that took effect a
    minute ago prices the request, one that takes effect in an hour does not yet."""
    now = datetime.now(UTC).replace(microsecond=0)
    for name, version_id, effective, price in (
        ("fal.toml", "old", now - timedelta(days=30), "0.01"),
        ("fal-2.toml", "current", now - timedelta(minutes=1), "0.02"),
        ("fal-3.toml", "next", now + timedelta(hours=1), "0.03"),
    ):
        text = f.fal_version(version_id, effective.isoformat().replace("+00:00", "Z"), price)
        f.write_catalog(tmp_path, name, text)
    catalogs = load_catalogs([tmp_path])
    quote = estimate(f.fal_video(), catalogs=catalogs)
    assert (quote.catalog_version, quote.cost) == ("current", 157_500)
    later = estimate(f.fal_video(), now + timedelta(hours=1), catalogs=catalogs)
    assert (later.catalog_version, later.cost) == ("next", 236_250)
