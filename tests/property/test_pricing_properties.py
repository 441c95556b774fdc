"""Properties of the pricing engine that must hold for every request, not just examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pricing import CatalogSet, default_catalogs, estimate, load_catalogs, price_usage
from pricing.catalog import CatalogSet as _CatalogSet
from pricing.errors import InvalidUsage
from pricing.money import MAX_AMOUNT, to_minor_units
from tests import factories as f

SHIPPED = default_catalogs()
TEXT_MODELS = SHIPPED.catalogs["cosmic"].version_at(f.NOW).operations["text"].models
MULTIPLIER = {"budget": 1, "standard": 2, "premium": 4}

prompts = st.text(min_size=0, max_size=400)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=200)}
    ),
    min_size=1,
    max_size=5,
)
statuses = st.sampled_from(["COMPLETED", "FAILED", "ERROR"])


@st.composite
def text_requests(draw: st.DrawFn) -> dict[str, Any]:
    model = draw(st.sampled_from(sorted(TEXT_MODELS)))
    limit = TEXT_MODELS[model].max_output_tokens
    assert limit is not None
    body: dict[str, Any] = {"model": model}
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, limit))
    if draw(st.booleans()):
        body["messages"] = draw(messages)
    else:
        body["prompt"] = draw(prompts)
    return f.request("cosmic", "text", **body)


@given(
    body=st.one_of(prompts.map(lambda p: {"prompt": p}), messages.map(lambda m: {"messages": m})),
    max_tokens=st.integers(1, 4096),
)
def test_text_cost_scales_exactly_with_the_tier_multiplier(
    body: dict[str, Any], max_tokens: int
) -> None:
    costs = {}
    for model in ("gpt-5-nano", "gpt-5", "o1"):  # one model per tier
        quote = estimate(
            f.request("cosmic", "text", model=model, max_tokens=max_tokens, **body),
            f.NOW,
            catalogs=SHIPPED,
        )
        costs[TEXT_MODELS[model].tier] = quote.cost
        usage = quote.estimated_usage
        assert (
            quote.cost
            == (int(usage["input_tokens"]) + max_tokens) * MULTIPLIER[str(TEXT_MODELS[model].tier)]
        )
    assert costs["standard"] == 2 * costs["budget"]
    assert costs["premium"] == 4 * costs["budget"]


@given(model=st.sampled_from(sorted(TEXT_MODELS)), used_in=st.integers(0, 10**12), data=st.data())
def test_text_charge_is_tokens_times_multiplier(
    model: str, used_in: int, data: st.DataObject
) -> None:
    # Any input (it may run past its estimate); output up to what the model can write.
    limit = TEXT_MODELS[model].max_output_tokens
    assert limit is not None
    used_out = data.draw(st.integers(0, limit))
    charge = price_usage(
        f.text(model=model),
        {"input_tokens": used_in, "output_tokens": used_out},
        "COMPLETED",
        at=f.NOW,
        catalogs=SHIPPED,
    )
    assert charge.amount == (used_in + used_out) * MULTIPLIER[str(TEXT_MODELS[model].tier)]


@given(
    model=st.sampled_from(sorted(TEXT_MODELS)),
    max_tokens=st.integers(1, 4096) | st.none(),
    beyond=st.integers(1, 10**12),
)
def test_output_tokens_beyond_max_tokens_are_refused(
    model: str, max_tokens: int | None, beyond: int
) -> None:
    """The provider writes at most max_tokens (the model's limit without it)."""
    limit = TEXT_MODELS[model].max_output_tokens
    assert limit is not None
    assume(max_tokens is None or max_tokens <= limit)
    most = limit if max_tokens is None else max_tokens
    request = (
        f.text(model=model) if max_tokens is None else f.text(model=model, max_tokens=max_tokens)
    )
    with pytest.raises(InvalidUsage) as caught:
        price_usage(
            request,
            {"input_tokens": 10, "output_tokens": most + beyond},
            "COMPLETED",
            at=f.NOW,
            catalogs=SHIPPED,
        )
    assert caught.value.field == "usage.output_tokens"
    assert caught.value.allowed == {"min": 0, "max": most}
    exact = {"input_tokens": 10, "output_tokens": most}
    assert price_usage(request, exact, "COMPLETED", at=f.NOW, catalogs=SHIPPED).amount > 0


@given(text=st.text(max_size=300))
def test_the_input_estimate_bounds_the_utf8_bytes(text: str) -> None:
    quote = estimate(f.text(text, max_tokens=1, model="gpt-5-nano"), f.NOW, catalogs=SHIPPED)
    assert quote.estimated_usage["input_tokens"] >= len(text.encode("utf-8"))


# ---------------------------------------------------- max_cost bounds every possible charge


@st.composite
def media_cases(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A billable media request of the shipped catalogs and a usage within its limits."""
    kind = draw(
        st.sampled_from(["cosmic_image", "cosmic_video", "extend", "veo3", "veo3_image", "pixazo"])
    )
    if kind == "cosmic_image":
        model = draw(st.sampled_from(["dall-e-3", "gemini-3-pro-image-preview"]))
        sizes = {
            "dall-e-3": ["1024x1024", "1792x1024", "1024x1792"],
            "gemini-3-pro-image-preview": ["1024x1024", "2048x2048", "4096x4096"],
        }[model]
        req = f.cosmic_image(model=model, size=draw(st.sampled_from(sizes)))
        return req, {"images": draw(st.integers(0, 1))}
    if kind == "cosmic_video":
        req = f.cosmic_video(
            model=draw(
                st.sampled_from(["veo-3.1-fast-generate-preview", "veo-3.1-generate-preview"])
            ),
            duration=draw(st.sampled_from([4, 6, 8])),
        )
        return req, {"videos": draw(st.integers(0, 1))}
    if kind == "extend":
        req = f.request(
            "cosmic",
            "video_extend",
            prompt="go",
            media_id="m",
            model=draw(
                st.sampled_from(["veo-3.1-fast-generate-preview", "veo-3.1-generate-preview"])
            ),
        )
        return req, {"videos": draw(st.integers(0, 1))}
    if kind == "veo3":
        return f.veo3_video(video_model=draw(st.sampled_from(["veo3", "veo3_fast"]))), {}
    if kind == "veo3_image":
        return f.request("veo3", "image", prompt="p"), {"images": draw(st.integers(0, 1))}
    n = draw(st.integers(1, 4))
    agentic = draw(st.booleans())
    iterations, samples = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    req = f.pixazo_image(
        num_images=n,
        enable_prompt_expansion=draw(st.booleans()),
        enable_agentic_generation=agentic,
        agentic_max_iterations=iterations,
        agentic_samples_per_iteration=samples,
    )
    usage: dict[str, Any] = {"images": draw(st.integers(0, n))}
    if agentic:
        usage["candidates"] = draw(st.integers(0, n * iterations * samples))
    return req, usage


@given(case=media_cases(), status=statuses)
def test_max_cost_bounds_any_media_charge_within_the_request(
    case: tuple[dict[str, Any], dict[str, Any]], status: str
) -> None:
    req, usage = case
    quote = estimate(req, f.NOW, catalogs=SHIPPED)
    charge = price_usage(
        req, usage, status, catalog_version=quote.catalog_version, catalogs=SHIPPED
    )
    assert 0 <= charge.amount <= quote.max_cost
    assert 0 <= quote.cost <= quote.max_cost


@given(req=text_requests(), data=st.data(), status=statuses)
def test_max_cost_bounds_any_text_charge_within_the_estimate(
    req: dict[str, Any], data: st.DataObject, status: str
) -> None:
    quote = estimate(req, f.NOW, catalogs=SHIPPED)
    used_in = data.draw(st.integers(0, int(quote.estimated_usage["input_tokens"])))
    used_out = data.draw(st.integers(0, int(quote.estimated_usage["output_tokens"])))
    charge = price_usage(
        req,
        {"input_tokens": used_in, "output_tokens": used_out},
        status,
        catalog_version=quote.catalog_version,
        catalogs=SHIPPED,
    )
    assert 0 <= charge.amount <= quote.max_cost


# ------------------------------------------------------ per-second rounding never undercharges


@pytest.fixture(scope="module")
def fal_priced(tmp_path_factory: pytest.TempPathFactory) -> CatalogSet:
    directory = tmp_path_factory.mktemp("catalogs")
    # Awkward rates on purpose: rounding must still be exact and upward.
    text = f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z").replace(
        '{ "256p" = 0.01, "480p" = 0.02, "720p" = 0.05 }',
        '{ "256p" = 0.0123457, "480p" = 0.0333333, "720p" = 0.0999999 }',
    )
    f.write_catalog(directory, "fal.toml", text)
    return load_catalogs([directory])


RATES = {
    "256p": Fraction("0.0123457"),
    "480p": Fraction("0.0333333"),
    "720p": Fraction("0.0999999"),
}
sizes = st.one_of(
    st.sampled_from(
        ["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
    ),
    st.builds(lambda w, h: {"width": w, "height": h}, st.integers(1, 4000), st.integers(1, 4000)),
)


@given(
    frames=st.integers(1, 10_000),
    fps=st.integers(1, 240),
    size=sizes,
    agentic=st.booleans(),
    iterations=st.integers(1, 4),
    samples=st.integers(1, 4),
    data=st.data(),
    status=statuses,
)
def test_per_second_rounds_up_once_and_bounds_charges(
    fal_priced: CatalogSet,
    frames: int,
    fps: int,
    size: Any,
    agentic: bool,
    iterations: int,
    samples: int,
    data: st.DataObject,
    status: str,
) -> None:
    req = f.fal_video(
        num_frames=frames,
        fps=fps,
        image_size=size,
        enable_agentic_generation=agentic,
        agentic_max_iterations=iterations,
        agentic_samples_per_iteration=samples,
    )
    quote = estimate(req, f.NOW, catalogs=fal_priced)
    tier = quote.lines[0].description.split()[0]
    renders = iterations * samples if agentic else 1
    exact = RATES[tier] * 10**6 * frames * renders / fps  # micro-dollars, as a true fraction
    assert exact <= quote.cost < exact + 1  # rounds up, and only once
    usage: dict[str, Any] = {"num_frames": data.draw(st.integers(0, frames))}
    if agentic:
        usage["candidates"] = data.draw(st.integers(0, renders))
    charge = price_usage(
        req, usage, status, catalog_version=quote.catalog_version, catalogs=fal_priced
    )
    assert 0 <= charge.amount <= quote.max_cost


@given(
    st.decimals(
        min_value=0, max_value=Decimal(MAX_AMOUNT), allow_nan=False, allow_infinity=False, places=9
    )
)
def test_to_minor_units_is_the_ceiling(amount: Decimal) -> None:
    whole = to_minor_units(amount)
    assert isinstance(whole, int)
    assert amount <= whole < amount + 1


# --------------------------------------------------- the version in force by effective_from


@given(
    offsets=st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True),
    probe=st.integers(-10, 10**6 + 10),
)
def test_the_version_in_force_is_the_latest_started(offsets: list[int], probe: int) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    files = []
    for i, minutes in enumerate(offsets):
        start = (base + timedelta(minutes=minutes)).isoformat()
        files.append(
            (
                f"v{i}.toml",
                f"""
name = "acme"
unit = {{ code = "credit", scale = 0 }}
[[versions]]
id = "v{i}"
effective_from = {start}
source = "test"
[versions.operations.image]
body = "veo3.image"
[versions.operations.image.models]
image = {{}}
[versions.operations.image.pricing]
type = "fixed"
per = "image"
usage_key = "images"
prices = {{ image = {i + 1} }}
""",
            )
        )
    catalogs = _CatalogSet.from_sources(files)
    at = base + timedelta(minutes=probe)
    started = [(m, i) for i, m in enumerate(offsets) if m <= probe]
    assume(started)
    expected = max(started)[1]
    quote = estimate(f.request("acme", "image", prompt="x"), at, catalogs=catalogs)
    assert quote.catalog_version == f"v{expected}"
    assert quote.cost == expected + 1
