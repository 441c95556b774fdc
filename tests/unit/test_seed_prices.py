"""Every price point of the seed documents, pinned through ``estimate`` and ``price_usage``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pricing import CatalogSet, estimate, price_usage
from pricing.errors import InvalidParameter, NotBillable
from tests import factories as f

# seed 000, "Text Generation Pricing": every model of the tier table and its multiplier.
TIERS = {
    "gpt-5-nano": 1,
    "gpt-4.1-nano": 1,
    "gpt-4o-mini": 1,
    "gpt-5-mini": 1,
    "gpt-4.1-mini": 1,
    "claude-3-haiku-20240307": 1,
    "claude-3-5-haiku-20241022": 1,
    "gpt-5": 2,
    "gpt-5.2": 2,
    "gpt-4.1": 2,
    "gpt-4o": 2,
    "o1-mini": 2,
    "o3": 2,
    "o3-mini": 2,
    "o4-mini": 2,
    "claude-sonnet-4-20250514": 2,
    "claude-sonnet-4-5-20250929": 2,
    "claude-opus-4-5-20251101": 2,
    "gemini-3-pro-preview": 2,
    "claude-opus-4-20250514": 4,
    "claude-opus-4-1-20250805": 4,
    "o1": 4,
    "o3-pro": 4,
}


@pytest.mark.parametrize(("model", "multiplier"), sorted(TIERS.items()))
def test_text_tier_multiplier_applies_to_input_plus_output(
    catalogs: CatalogSet, model: str, multiplier: int
) -> None:
    # seed 000's response example: {"input_tokens": 10, "output_tokens": 89}.
    charge = price_usage(
        f.text(model=model, max_tokens=500),
        {"input_tokens": 10, "output_tokens": 89},
        "COMPLETED",
        catalogs=catalogs,
    )
    assert charge.amount == 99 * multiplier
    assert charge.unit == "token"


def test_the_tier_table_is_exactly_the_text_models(catalogs: CatalogSet) -> None:
    for version in catalogs.catalogs["cosmic"].versions:
        assert set(version.operations["text"].models) == set(TIERS)


def test_seed_000_worked_example_sonnet_45(catalogs: CatalogSet) -> None:
    # "Using Claude Sonnet 4.5 (Standard tier) with a 1,000 token response will deduct 2,000".
    charge = price_usage(
        f.text(model="claude-sonnet-4-5-20250929"),
        {"input_tokens": 0, "output_tokens": 1000},
        "COMPLETED",
        catalogs=catalogs,
    )
    assert charge.amount == 2000


def test_text_quote_is_ceil_of_estimated_input_plus_max_tokens(catalogs: CatalogSet) -> None:
    prompt = "Write a product description for a coffee mug"  # 44 ASCII bytes
    quote = estimate(f.text(prompt, model="o1", max_tokens=500), catalogs=catalogs)
    input_tokens = 44 + 4 + 3  # bytes + message framing + reply primer
    assert quote.estimated_usage == {"input_tokens": input_tokens, "output_tokens": 500}
    assert quote.cost == quote.max_cost == (input_tokens + 500) * 4


def test_a_conversation_reserves_each_messages_bytes_and_framing(catalogs: CatalogSet) -> None:
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Describe a mug \u2615"},  # the cup is 3 UTF-8 bytes
    ]
    quote = estimate(
        f.request("cosmic", "text", messages=messages, model="gpt-5-nano", max_tokens=10),
        catalogs=catalogs,
    )
    input_tokens = (5 + 4) + (3 + 4) + (18 + 4) + 3  # each: bytes + framing; reply primer
    assert quote.estimated_usage == {"input_tokens": input_tokens, "output_tokens": 10}
    assert quote.max_cost == input_tokens + 10


@pytest.mark.parametrize(
    ("model", "size", "tokens"),
    [
        # seed 000, Media Generation Pricing.
        ("dall-e-3", "1024x1024", 4_800),
        ("dall-e-3", "1792x1024", 4_800),
        ("dall-e-3", "1024x1792", 4_800),
        ("gemini-3-pro-image-preview", "1024x1024", 32_160),
        ("gemini-3-pro-image-preview", "2048x2048", 32_160),
        ("gemini-3-pro-image-preview", "4096x4096", 57_600),
    ],
)
def test_cosmic_image_prices(catalogs: CatalogSet, model: str, size: str, tokens: int) -> None:
    quote = estimate(f.cosmic_image(model=model, size=size), catalogs=catalogs)
    assert (quote.cost, quote.max_cost, quote.model) == (tokens, tokens, model)


@pytest.mark.parametrize(
    ("model", "duration", "tokens"),
    [
        ("veo-3.1-fast-generate-preview", 4, 144_000),
        ("veo-3.1-fast-generate-preview", 6, 216_000),
        ("veo-3.1-fast-generate-preview", 8, 288_000),
        ("veo-3.1-generate-preview", 4, 384_000),
        ("veo-3.1-generate-preview", 6, 576_000),
        ("veo-3.1-generate-preview", 8, 768_000),
    ],
)
@pytest.mark.parametrize("resolution", ["720p", "1080p"])
def test_cosmic_video_prices(
    catalogs: CatalogSet, model: str, duration: int, tokens: int, resolution: str
) -> None:
    quote = estimate(
        f.cosmic_video(model=model, duration=duration, resolution=resolution), catalogs=catalogs
    )
    assert quote.cost == quote.max_cost == tokens


@pytest.mark.parametrize(
    ("model", "tokens"),
    [("veo-3.1-fast-generate-preview", 288_000), ("veo-3.1-generate-preview", 768_000)],
)
def test_cosmic_video_extension_prices(catalogs: CatalogSet, model: str, tokens: int) -> None:
    req = f.request("cosmic", "video_extend", prompt="It walks away", media_id="m1", model=model)
    assert estimate(req, catalogs=catalogs).cost == tokens


def test_cosmic_defaults_of_the_newer_docs(catalogs: CatalogSet) -> None:
    video = estimate(f.cosmic_video(), catalogs=catalogs)
    assert video.model == "veo-3.1-fast-generate-preview"
    assert video.defaults_applied == {
        "model": "veo-3.1-fast-generate-preview",
        "duration": 8,
        "resolution": "720p",
    }
    assert video.cost == 288_000  # seed 000's response example: 288000 tokens for 8 s fast
    # What the request gives is not a default it relied on.
    short = estimate(f.cosmic_video(duration=4, resolution="1080p"), catalogs=catalogs)
    assert short.defaults_applied == {"model": "veo-3.1-fast-generate-preview"}
    image = estimate(f.cosmic_image(), catalogs=catalogs)
    assert (image.model, image.cost) == ("gemini-3-pro-image-preview", 32_160)
    text = estimate(f.text(max_tokens=10), catalogs=catalogs)
    assert text.model == "claude-opus-4-5-20251101"
    assert text.defaults_applied == {"model": "claude-opus-4-5-20251101"}
    # Without max_tokens the model may write up to its output limit: that is reserved,
    # and the quote says it assumed it.
    unbounded = estimate(f.text(), catalogs=catalogs)
    assert unbounded.defaults_applied == {
        "model": "claude-opus-4-5-20251101",
        "max_tokens": 64_000,
    }
    assert unbounded.estimated_usage["output_tokens"] == 64_000
    # Asked for in full, the limit is what it is: quoted as the default was; one more
    # token than the model can write is refused, naming the limit.
    full = estimate(f.text(max_tokens=64_000), catalogs=catalogs)
    assert full.defaults_applied == {"model": "claude-opus-4-5-20251101"}
    assert (full.cost, full.max_cost) == (unbounded.cost, unbounded.max_cost)
    with pytest.raises(InvalidParameter) as beyond:
        estimate(f.text(max_tokens=64_001), catalogs=catalogs)
    assert (beyond.value.field, beyond.value.allowed) == (
        "params.max_tokens",
        {"min": 1, "max": 64_000},
    )


def test_cosmic_defaults_of_the_older_docs(catalogs: CatalogSet) -> None:
    at = datetime(2025, 6, 1, tzinfo=UTC)
    image = estimate(f.cosmic_image(), at, catalogs=catalogs)
    assert (image.catalog_version, image.model, image.cost) == ("2024-03-14", "dall-e-3", 4_800)
    text = estimate(f.text(max_tokens=10), at, catalogs=catalogs)
    assert text.model == "claude-sonnet-4-5-20250929"


@pytest.mark.parametrize(("model", "credits"), [("veo3_fast", 240), ("veo3", 500)])
@pytest.mark.parametrize("source_image_urls", [None, ["https://example.com/cat.jpg"]])
@pytest.mark.parametrize("aspect_ratio", ["16:9", "9:16"])
def test_veo3_video_prices(
    catalogs: CatalogSet,
    model: str,
    credits: int,
    source_image_urls: list[str] | None,
    aspect_ratio: str,
) -> None:
    params: dict[str, object] = {"video_model": model, "aspect_ratio": aspect_ratio}
    if source_image_urls is not None:
        params["source_image_urls"] = source_image_urls
    quote = estimate(f.veo3_video(**params), catalogs=catalogs)
    assert (quote.cost, quote.max_cost, quote.unit) == (credits, credits, "credit")


def test_veo3_defaults_to_veo3_fast(catalogs: CatalogSet) -> None:
    assert estimate(f.veo3_video(), catalogs=catalogs).cost == 240


@pytest.mark.parametrize("aspect_ratio", ["1:1", "3:2", "2:3"])
def test_veo3_image_costs_24_regardless_of_size(catalogs: CatalogSet, aspect_ratio: str) -> None:
    req = f.request("veo3", "image", prompt="A cat", aspect_ratio=aspect_ratio)
    assert estimate(req, catalogs=catalogs).cost == 24


@pytest.mark.parametrize("num_images", [1, 2, 3, 4])
@pytest.mark.parametrize("expansion", [False, True])
def test_pixazo_per_image_and_prompt_expansion(
    catalogs: CatalogSet, num_images: int, expansion: bool
) -> None:
    quote = estimate(
        f.pixazo_image(num_images=num_images, enable_prompt_expansion=expansion), catalogs=catalogs
    )
    # $0.04 per image, +$0.02 per request with expansion; micro-dollars (scale 6).
    assert quote.unit == "usd"
    assert quote.scale == 6
    assert quote.cost == quote.max_cost == 40_000 * num_images + (20_000 if expansion else 0)


def test_pixazo_agentic_holds_every_possible_candidate(catalogs: CatalogSet) -> None:
    req = f.pixazo_image(
        num_images=2,
        enable_agentic_generation=True,
        agentic_max_iterations=3,
        agentic_samples_per_iteration=2,
        enable_prompt_expansion=True,
    )
    quote = estimate(req, catalogs=catalogs)
    assert quote.max_cost == 2 * 3 * 2 * 40_000 + 20_000
    assert quote.estimated_usage["candidates"] == 12


def test_pixazo_agentic_early_stop_charges_only_rendered_candidates(catalogs: CatalogSet) -> None:
    req = f.pixazo_image(enable_agentic_generation=True)  # defaults: 2 iterations x 2 samples
    assert estimate(req, catalogs=catalogs).max_cost == 4 * 40_000
    charge = price_usage(req, {"candidates": 2}, "COMPLETED", catalogs=catalogs)
    assert charge.amount == 2 * 40_000


@pytest.mark.parametrize(
    "req",
    [
        f.request("pixazo", "image_to_video", prompt="Push in", image_url="https://x/i.jpg"),
        f.fal_video(),
    ],
    ids=["pixazo", "fal"],
)
def test_unpublished_prices_are_listed_but_not_billable(
    catalogs: CatalogSet, req: dict[str, object]
) -> None:
    with pytest.raises(NotBillable, match="no price is configured for"):
        estimate(req, catalogs=catalogs)
    op = catalogs.catalogs[str(req["catalog"])].version_at().operations["image_to_video"]
    assert not op.billable
