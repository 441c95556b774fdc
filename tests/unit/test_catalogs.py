"""Catalog loading: validation with file, key and reason; operator versions; listing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pricing import CatalogSet, estimate, load_catalogs, price_usage
from pricing.catalog import MODEL_ID_MAX, UNIT_CODE_MAX, describe, shipped_catalog_files
from pricing.errors import (
    AmountOverflow,
    CatalogError,
    InvalidParameter,
    InvalidRequest,
    InvalidUsage,
    NotBillable,
)
from tests import factories as f


def load(tmp_path: Path, text: str, name: str = "acme.toml") -> None:
    f.write_catalog(tmp_path, name, text)
    load_catalogs([tmp_path])


def shipped(name: str, *changes: tuple[str, str]) -> str:
    """A shipped catalog's file as an operator's catalog "acme", with ``changes`` (each
    (old, new), the old text found exactly once) made to it."""
    text = dict(shipped_catalog_files())[f"pricing/catalogs/{name}.toml"]
    text = text.replace(f'name = "{name}"', 'name = "acme"', 1)
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def operator(tmp_path: Path, name: str, *changes: tuple[str, str]) -> CatalogSet:
    """The shipped catalogs and ``shipped(name, *changes)`` as the operator's "acme"."""
    f.write_catalog(tmp_path, "acme.toml", shipped(name, *changes))
    return load_catalogs([tmp_path])


def minimal(*changes: tuple[str, str], limits: str = "", price: object = 7) -> str:
    text = f.MINIMAL_CATALOG.format(limits=limits, price=price)
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def test_minimal_operator_catalog_loads_and_prices(tmp_path: Path) -> None:
    f.write_catalog(tmp_path, "acme.toml", f.MINIMAL_CATALOG.format(limits="", price=7))
    catalogs = load_catalogs([tmp_path])
    quote = estimate(f.request("acme", "video", prompt="x"), catalogs=catalogs)
    assert (quote.cost, quote.unit, quote.catalog_version) == (7, "credit", "v1")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("name = [", "", "not valid TOML"),
        (
            f.MINIMAL_CATALOG.format(limits="", price=-1),
            "versions[0].operations.video.pricing.prices.fast",
            "greater than or equal to 0",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price='"seven"'),
            "versions[0].operations.video.pricing",
            "",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace(
                'fast = { name = "Fast" }', 'fast = { unsupported_params = ["video_model"] }'
            ),
            "versions[0].operations.video.models.fast.unsupported_params",
            "has a default",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace(
                'type = "fixed"', 'type = "auction"'
            ),
            "versions[0].operations.video.pricing",
            "auction",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace(
                "2026-01-01T00:00:00Z", "2026-01-01T00:00:00"
            ),
            "versions[0].effective_from",
            "timezone",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace('"veo3.video"', '"veo9.video"'),
            "versions[0].operations.video.body",
            "unknown request body",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace(
                'video_model = "fast"', 'video_model = "slow"'
            ),
            "versions[0].operations.video.defaults.video_model",
            "not one of the models",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="limits = { duration = { le = 3 } }", price=7),
            "versions[0].operations.video.limits.duration",
            "not a parameter",
        ),
        (
            f.MINIMAL_CATALOG.format(
                limits='limits = { aspect_ratio = { allowed = ["1:1"] } }', price=7
            ).replace('video_model = "fast"', 'video_model = "fast", aspect_ratio = "16:9"'),
            "versions[0].operations.video.defaults.aspect_ratio",
            "not allowed",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace(
                'unit = { code = "credit", scale = 0 }', ""
            ),
            "unit",
            "Field required",
        ),
        (
            f.MINIMAL_CATALOG.format(limits="", price=7).replace(
                'source = "test"', 'source = "test"\ncolour = 1'
            ),
            "versions[0].colour",
            "Extra inputs",
        ),
        # A unit's scale: at 19 places, one major unit is past 64 bits of minor units.
        (minimal(("scale = 0", "scale = 19")), "unit.scale", "less than or equal to 18"),
        # Identifiers (a catalog's name, an operation's) are at most 32 characters.
        (minimal(('name = "acme"', f'name = "a{"c" * 32}"')), "name", "should match pattern"),
        (
            minimal(limits="limits = { prompt = {} }"),
            "versions[0].operations.video.limits.prompt",
            "a limit needs at least one of",
        ),
        (
            'name = "acme"\nunit = { code = "credit", scale = 0 }\nversions = []\n',
            "versions",
            "at least one [[versions]]",
        ),
        # A price for a model the operation does not have (a typo) is not dropped.
        (
            minimal(price="7, slow = 9"),
            "versions[0].operations.video.pricing.prices.slow",
            "unknown model; models: ['fast']",
        ),
        # Prices by a variant are a table per model, and a table needs the variant.
        (
            minimal(
                ('video_model = "fast"', 'video_model = "fast", aspect_ratio = "16:9"'),
                ('usage_key = "videos"', 'usage_key = "videos"\nvariant = "aspect_ratio"'),
            ),
            "versions[0].operations.video.pricing.prices.fast",
            "needs a table by 'aspect_ratio'",
        ),
        (
            minimal(price='{ "16:9" = 7 }'),
            "versions[0].operations.video.pricing.prices.fast",
            "a table needs pricing.variant",
        ),
        (
            minimal(
                ('video_model = "fast"', 'video_model = "fast", aspect_ratio = "16:9"'),
                ('usage_key = "videos"', 'usage_key = "videos"\nvariant = "aspect_ratio"'),
                price="{}",
            ),
            "versions[0].operations.video.pricing.prices.fast",
            "empty price table",
        ),
        # A variant needs a default: a request that leaves it out must still have a price.
        (
            minimal(('usage_key = "videos"', 'usage_key = "videos"\nvariant = "aspect_ratio"')),
            "versions[0].operations.video.pricing.variant",
            "needs a default",
        ),
        # Without model_param the operation's one model is the one every request uses.
        (
            shipped(
                "veo3",
                ('image = { name = "Veo3 API image generation" }', "image = {}\nimage2 = {}"),
            ),
            "versions[0].operations.image.models",
            "exactly one model",
        ),
        # Defaults are checked as strictly as requests are: "1" is not the number 1.
        (
            shipped(
                "pixazo",
                ("guidance_scale = 4, num_images = 1,", 'guidance_scale = 4, num_images = "1",'),
            ),
            "versions[0].operations.text_to_image.defaults.num_images",
            "not allowed",
        ),
        (
            shipped(
                "cosmic",
                ("duration = { allowed = [4, 6, 8] }", 'duration = { allowed = ["4", "6", "8"] }'),
            ),
            "versions[1].operations.video.limits.duration.allowed",
            "do not match the type of 'duration'",
        ),
        # per_token: every model's tier has a multiplier, and a multiplier is positive;
        # every model says how much output it may write (the reserve of a request
        # without max_tokens).
        (
            shipped(
                "cosmic",
                (
                    '"o3-pro" = { name = "o3-pro", tier = "premium"',
                    '"o3-pro" = { name = "o3-pro", tier = "luxury"',
                ),
            ),
            "versions[0].operations.text.models.o3-pro.tier",
            "tier 'luxury' has no multiplier; tiers: ['budget', 'premium', 'standard']",
        ),
        (
            shipped("cosmic", ("budget = 1.0,", "budget = 0,")),
            "versions[0].operations.text.pricing.multipliers.budget",
            "greater than 0",
        ),
        (
            shipped(
                "cosmic",
                ('tier = "premium", max_output_tokens = 100_000 }\n\n', 'tier = "premium" }\n\n'),
            ),
            "versions[0].operations.text.models.o3-pro.max_output_tokens",
            "required for per_token pricing",
        ),
        # A parameter a price counts by is one of the body's (named where the rule says it).
        (
            shipped("pixazo", ('count_param = "num_images"', 'count_param = "num_pictures"')),
            "versions[0].operations.text_to_image.pricing.count_param",
            "'num_pictures' is not a parameter of this body",
        ),
        # per_unit: the count and every add-on have a default.
        (
            shipped("pixazo", ("guidance_scale = 4, num_images = 1,", "guidance_scale = 4,")),
            "versions[0].operations.text_to_image.pricing.count_param",
            "'num_images' needs a default",
        ),
        (
            shipped(
                "pixazo",
                (
                    '{ negative_prompt = "", enable_prompt_expansion = false,',
                    '{ negative_prompt = "",',
                ),
            ),
            "versions[0].operations.text_to_image.pricing.addons[0].param",
            "'enable_prompt_expansion' needs a default",
        ),
        # per_second: every size preset a request may name has its dimensions, and
        # prices are for the tiers there are.
        (
            shipped("fal", ("square = [512, 512], ", "")),
            "versions[0].operations.image_to_video.pricing.presets",
            "no dimensions for presets ['square']",
        ),
        (
            f.FAL_PRICES.format(effective_from="2030-01-01T00:00:00Z").replace(
                '"720p" = 0.05', '"720p" = 0.05, "1080p" = 0.1'
            ),
            "versions[0].operations.image_to_video.pricing.prices.1080p",
            "unknown tier; tiers: ['256p', '480p', '720p']",
        ),
        # A unit's code and a model's id fit where the ledger keeps them.
        (
            shipped("veo3", ('code = "credit"', 'code = "credit_of_veo3_xy"')),
            "unit.code",
            "should match pattern",
        ),
        (
            shipped(
                "pixazo",
                ('"cosmos-3-super-text-to-image" = {', f'"{"m" * 201}" = {{'),
            ),
            "versions[0].operations.text_to_image.models",
            "at most 200 characters",
        ),
        # A version based on another states its own source: where its numbers come from.
        (
            f.FAL_PRICES.format(effective_from="2030-01-01T00:00:00Z").replace(
                'source = "operator price list"\n', ""
            ),
            "versions[0].source",
            "Field required",
        ),
    ],
)
def test_broken_catalog_fails_with_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    with pytest.raises(CatalogError) as info:
        load(tmp_path, text, "fal.toml" if 'name = "fal"' in text else "acme.toml")
    error = info.value
    assert error.file.endswith(("acme.toml", "fal.toml"))
    assert error.key.startswith(key)
    assert reason in error.reason
    assert error.file in str(error)
    assert reason in str(error)


def test_a_shipped_version_cannot_be_redefined(tmp_path: Path) -> None:
    text = f.FAL_PRICES.format(effective_from="2030-01-01T00:00:00Z").replace(
        'id = "operator-1"', 'id = "seed-004"'
    )
    with pytest.raises(CatalogError, match="already defined in pricing/catalogs/fal.toml"):
        load(tmp_path, text, "fal.toml")


def test_the_unit_of_a_catalog_never_changes(tmp_path: Path) -> None:
    text = f.FAL_PRICES.format(effective_from="2030-01-01T00:00:00Z").replace(
        'code = "usd", scale = 6', 'code = "usd", scale = 2'
    )
    with pytest.raises(CatalogError) as info:
        load(tmp_path, text, "fal.toml")
    assert info.value.key == "unit"


def test_based_on_unknown_version_and_cycles(tmp_path: Path) -> None:
    text = f.FAL_PRICES.format(effective_from="2030-01-01T00:00:00Z").replace(
        'based_on = "seed-004"', 'based_on = "nope"'
    )
    with pytest.raises(CatalogError, match="unknown version 'nope'"):
        load(tmp_path, text, "fal.toml")
    loop = """
name = "fal"
unit = { code = "usd", scale = 6 }

[[versions]]
id = "operator-1"
effective_from = 2030-01-01T00:00:00Z
source = "operator price list"
based_on = "operator-2"

[[versions]]
id = "operator-2"
effective_from = 2031-01-01T00:00:00Z
source = "operator price list"
based_on = "operator-1"
"""
    with pytest.raises(CatalogError) as info:
        load(tmp_path, loop, "fal.toml")
    # Found where the chain from the first version comes back to it.
    assert info.value.key == "versions[1].based_on"
    assert info.value.reason == "cycle: operator-1 -> operator-2 -> operator-1"
    assert "cycle: operator-1 -> operator-2 -> operator-1" in info.value.reason


def test_two_versions_at_the_same_instant_are_ambiguous(tmp_path: Path) -> None:
    text = f.FAL_PRICES.format(effective_from="1970-01-01T00:00:00Z")
    with pytest.raises(CatalogError, match="same instant"):
        load(tmp_path, text, "fal.toml")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalogs([tmp_path / "absent"])


@pytest.fixture
def fal_priced(tmp_path: Path) -> CatalogSet:
    """The shipped catalogs and an operator's fal prices per second from 2026 on
    (``FAL_PRICES``: 256p $0.01, 480p $0.02, 720p $0.05)."""
    f.write_catalog(
        tmp_path, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    return load_catalogs([tmp_path])


def test_an_operator_price_takes_over_at_its_instant(fal_priced: CatalogSet) -> None:
    before = datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(NotBillable):
        estimate(f.fal_video(), before, catalogs=fal_priced)
    quote = estimate(f.fal_video(), at, catalogs=fal_priced)
    # Default 832x480 snaps to 480p: $0.02/s x 189 frames / 24 fps = $0.1575.
    assert (quote.catalog_version, quote.cost) == ("operator-1", 157_500)
    # The earlier version stays, priced as it was.
    assert [v.id for v in fal_priced.catalogs["fal"].versions] == ["seed-004", "operator-1"]


@pytest.mark.parametrize(
    ("image_size", "tier_price"),
    [
        ("square_hd", 50_000),  # 1024 short side: clamped to 720p
        ("square", 20_000),  # 512: nearest is 480p
        ("landscape_16_9", 20_000),  # 576: nearer 480 than 720
        ("portrait_4_3", 50_000),  # 768: clamped to 720p
        ({"width": 320, "height": 240}, 10_000),  # 240: clamped up to 256p
        ({"width": 1280, "height": 368}, 20_000),  # 368: a tie between 256 and 480 -> higher
    ],
)
def test_fal_sizes_snap_to_a_resolution_tier(
    fal_priced: CatalogSet, image_size: object, tier_price: int
) -> None:
    quote = estimate(f.fal_video(image_size=image_size, num_frames=48, fps=24), catalogs=fal_priced)
    assert quote.cost == 2 * tier_price  # two seconds


def test_agentic_video_candidates_are_full_renders(fal_priced: CatalogSet) -> None:
    req = f.fal_video(enable_agentic_generation=True, num_frames=24, fps=24)  # 2 x 2 renders of 1 s
    assert estimate(req, catalogs=fal_priced).max_cost == 4 * 20_000
    # Stopped early after three candidates: three renders charged, never more than asked.
    charged = price_usage(req, {"candidates": 3}, "COMPLETED", catalogs=fal_priced)
    assert (charged.amount, charged.usage["candidates"]) == (3 * 20_000, 3)
    with pytest.raises(InvalidUsage) as refused:
        price_usage(req, {"candidates": 5}, "COMPLETED", catalogs=fal_priced)
    assert (refused.value.field, refused.value.allowed) == (
        "usage.candidates",
        {"min": 0, "max": 4},
    )


def test_video_seconds_are_frames_over_fps_exactly(fal_priced: CatalogSet) -> None:
    quote = estimate(f.fal_video(num_frames=36, fps=24), catalogs=fal_priced)  # 1.5 s at 480p
    assert quote.estimated_usage == {"seconds": Decimal("1.5"), "num_frames": 36}
    assert quote.to_dict()["lines"][0]["quantity"] == "1.5"
    assert quote.cost == 30_000


def test_a_video_is_charged_for_the_frames_it_rendered_never_more_than_asked(
    fal_priced: CatalogSet,
) -> None:
    req = f.fal_video(num_frames=48, fps=24)  # 2 s at 480p, 20,000 a second
    assert price_usage(req, {}, "COMPLETED", catalogs=fal_priced).amount == 40_000
    assert price_usage(req, {"num_frames": 12}, "COMPLETED", catalogs=fal_priced).amount == 10_000
    with pytest.raises(InvalidUsage) as refused:
        price_usage(req, {"num_frames": 49}, "COMPLETED", catalogs=fal_priced)
    assert (refused.value.field, refused.value.allowed) == (
        "usage.num_frames",
        {"min": 0, "max": 48},
    )


def test_non_terminating_seconds_round_up_once(fal_priced: CatalogSet) -> None:
    # 100 frames at 3 fps = 33.3... s x 20,000 = 666,666.66... -> 666,667 (ceil, once).
    quote = estimate(f.fal_video(num_frames=100, fps=3), catalogs=fal_priced)
    assert quote.cost == 666_667


def test_describe_lists_versions_operations_models_and_prices(catalogs: object) -> None:
    listing = {c["name"]: c for c in describe(load_catalogs(), f.NOW)}
    assert set(listing) == {"cosmic", "fal", "pixazo", "veo3"}
    cosmic = listing["cosmic"]
    assert [(v["id"], v["in_force"]) for v in cosmic["versions"]] == [
        ("2024-03-14", False),
        ("2025-12-20", True),
    ]
    video = next(o for o in cosmic["versions"][1]["operations"] if o["name"] == "video")
    assert {
        "model": "veo-3.1-generate-preview",
        "variant": "duration=6",
        "price": "576000",
        "per": "video",
    } in video["prices"]
    veo3 = listing["veo3"]["versions"][0]["operations"][0]
    assert veo3["models"] == [
        {"id": "veo3_fast", "name": "veo3_fast (standard quality)"},
        {"id": "veo3", "name": "veo3 (premium quality)"},
    ]
    fal = listing["fal"]["versions"][0]["operations"][0]
    assert fal["billable"] is False
    assert {row["price"] for row in fal["prices"]} == {None}
    pixazo = listing["pixazo"]["versions"][0]["operations"][0]
    assert [row["price"] for row in pixazo["prices"]] == ["0.04", "0.02"]


def test_variants_are_offered_and_listed_in_numeric_order(tmp_path: Path) -> None:
    """An operator's 10-second video sorts after 8 seconds, not before 4, in a refusal's
    ``allowed`` and in the price listing."""
    text = shipped(
        "cosmic",
        ("duration = { allowed = [4, 6, 8] }", "duration = { allowed = [4, 6, 8, 10, 12] }"),
        ('"8" = 768_000', '"8" = 768_000\n"10" = 960_000'),
    )
    f.write_catalog(tmp_path, "acme.toml", text)
    catalogs = load_catalogs([tmp_path])
    standard = "veo-3.1-generate-preview"
    video = f.request("acme", "video", prompt="A kitten", model=standard, duration=10)
    assert estimate(video, catalogs=catalogs).cost == 960_000
    with pytest.raises(InvalidParameter) as refused:
        estimate({**video, "params": {**video["params"], "duration": 12}}, catalogs=catalogs)
    assert (refused.value.field, refused.value.allowed) == (
        "params.duration",
        ["4", "6", "8", "10"],
    )
    listing = next(c for c in describe(catalogs) if c["name"] == "acme")
    operation = next(o for o in listing["versions"][-1]["operations"] if o["name"] == "video")
    assert [row["variant"] for row in operation["prices"] if row["model"] == standard] == [
        "duration=4",
        "duration=6",
        "duration=8",
        "duration=10",
    ]


def test_variants_no_number_can_name_are_listed_after_the_numbers(tmp_path: Path) -> None:
    """Keys ``int()`` cannot read although ``isdigit`` says digits (a superscript two,
    5,000 digits) made the listing of an operator's catalog raise; they sort as text,
    after the numbers, and a number with leading zeros next to its value. (An image's
    size takes any text, so any key may name one.)"""
    many = "9" * 5000
    text = shipped(
        "cosmic",
        (
            '"1024x1792" = 4_800',
            f'"1024x1792" = 4_800\n"²" = 1\n"{many}" = 2\n"٣" = 3\n"06" = 4\n"10" = 5\n"6" = 6',
        ),
    )
    f.write_catalog(tmp_path, "acme.toml", text)
    listing = next(c for c in describe(load_catalogs([tmp_path])) if c["name"] == "acme")
    operation = next(o for o in listing["versions"][-1]["operations"] if o["name"] == "image")
    assert [row["variant"] for row in operation["prices"] if row["model"] == "dall-e-3"] == [
        "size=06",
        "size=6",
        "size=10",
        f"size={many}",
        "size=1024x1024",
        "size=1024x1792",
        "size=1792x1024",
        "size=²",
        "size=٣",
    ]


@pytest.mark.parametrize("price", ['"5" = 1', '"8s" = 1', '"²" = 1', '"08" = 1'])
def test_a_price_for_a_value_the_variant_never_takes_is_refused(tmp_path: Path, price: str) -> None:
    """Durations are 4, 6 or 8: a price for 5 seconds, or "8s", could never be charged (a
    typo's price left dead, and its requests refused as not offered). Refused at load,
    naming the key and the values the parameter takes."""
    text = shipped("cosmic", ('"8" = 768_000', f'"8" = 768_000\n{price}'))
    f.write_catalog(tmp_path, "acme.toml", text)
    k = price.split('"')[1]
    with pytest.raises(CatalogError) as refused:
        load_catalogs([tmp_path])
    assert refused.value.key.endswith(f".pricing.prices.veo-3.1-generate-preview.{k}")
    assert f"'duration' never takes '{k}'" in str(refused.value)
    assert "it takes: ['4', '6', '8']" in str(refused.value)


def test_an_operator_catalog_at_the_edges_of_its_limits(tmp_path: Path) -> None:
    """Scale 18 and 32-character names are allowed; a model's name defaults to its id;
    an operator's own limit applies on top of the body's."""
    name = f"a{'c' * 31}"
    text = minimal(
        ("scale = 0", "scale = 18"),
        ('name = "acme"', f'name = "{name}"\ntitle = "  Acme video  "'),
        ('fast = { name = "Fast" }', "fast = {}"),
        limits="limits = { prompt = { min_length = 5 } }",
        price="0.000000000000000001",
    )
    f.write_catalog(tmp_path, "acme.toml", text)
    catalogs = load_catalogs([tmp_path])
    quote = estimate(f.request(name, "video", prompt="hello"), catalogs=catalogs)
    assert (quote.cost, quote.scale) == (1, 18)
    with pytest.raises(InvalidParameter) as short:
        estimate(f.request(name, "video", prompt="hell"), catalogs=catalogs)
    assert (short.value.field, short.value.allowed) == ("params.prompt", {"min_length": 5})
    listing = next(c for c in describe(catalogs) if c["name"] == name)
    assert listing["title"] == "Acme video"
    assert listing["versions"][0]["operations"][0]["models"] == [{"id": "fast", "name": "fast"}]


def test_an_unknown_version_names_the_versions_there_are(catalogs: CatalogSet) -> None:
    with pytest.raises(InvalidRequest) as info:
        catalogs.catalogs["cosmic"].version("2020-01-01")
    assert (info.value.field, info.value.allowed) == (
        "catalog_version",
        ["2024-03-14", "2025-12-20"],
    )


def test_a_unit_code_and_a_model_id_fit_every_column_the_ledger_keeps_them_in() -> None:
    from ledger.models import accounts, daily, holds, metering, postings, units

    for table in (holds, metering, daily):
        assert getattr(table.c.model.type, "length", None) == MODEL_ID_MAX, table.name
    for column in (units.c.code, accounts.c.unit, postings.c.unit, metering.c.unit, daily.c.unit):
        assert getattr(column.type, "length", None) == UNIT_CODE_MAX, column


def test_a_price_is_at_most_an_amount_and_exact_to_18_places_of_a_minor_unit(
    tmp_path: Path,
) -> None:
    """The dearest price is the largest amount, to the minor unit; the finest has 18
    decimal places of a minor unit. Beyond either it is refused at load, naming the key,
    however far beyond (an exponent past what a Decimal context holds included)."""
    usd = ("scale = 0", "scale = 6")
    key = "versions[0].operations.video.pricing.prices.fast"

    def cost(price: str) -> int:
        f.write_catalog(tmp_path, "acme.toml", minimal(usd, price=price))
        quote = estimate(f.request("acme", "video", prompt="x"), catalogs=load_catalogs([tmp_path]))
        return quote.cost

    assert cost("9223372036854.775807") == 2**63 - 1
    assert cost("0.000001000000000000000001") == 2  # 1.000000000000000001 minor units, up
    assert cost("0.040000000000000000000000000000") == 40_000  # zeros are no places
    for price, reason in [
        ("9223372036854.775808", "at most 9223372036854.775807 (9223372036854775807 minor"),
        ("1e999999", "1E+999999 is more than any amount can be"),
        ("0.0000010000000000000000001", "at most 24 (18 places of a minor unit at scale 6)"),
        ("1e-999999", "1E-999999 has more decimal places than a price can"),
        ("0." + "3" * 70, "has more decimal places than a price can"),
    ]:
        with pytest.raises(CatalogError) as refused:
            load(tmp_path, minimal(usd, price=price))
        assert refused.value.key == key, price
        assert reason in refused.value.reason, (price, refused.value.reason)
    # At scale 0 the largest amount is the largest price; 18 places are its finest.
    assert f.MINIMAL_CATALOG.count("scale = 0") == 1
    with pytest.raises(CatalogError, match=r"at most 9223372036854775807$"):
        load(tmp_path, minimal(price="9223372036854775808"))
    with pytest.raises(CatalogError, match=r"at most 18 \(18 places of a minor unit at scale 0"):
        load(tmp_path, minimal(price="0.0000000000000000001"))
    f.write_catalog(tmp_path, "acme.toml", minimal(price="0.000000000000000001"))
    assert (
        estimate(f.request("acme", "video", prompt="x"), catalogs=load_catalogs([tmp_path])).cost
        == 1
    )


@pytest.mark.parametrize(
    ("name", "change", "key"),
    [
        (
            "cosmic",
            ("budget = 1.0,", "budget = 1e-19,"),
            "versions[0].operations.text.pricing.multipliers.budget",
        ),
        (
            "cosmic",
            ('"4096x4096" = 57_600', '"4096x4096" = 1e19'),
            "versions[0].operations.image.pricing.prices.gemini-3-pro-image-preview.4096x4096",
        ),
        (
            "veo3",
            ("veo3_fast = 240,", "veo3_fast = 240.0000000000000000001,"),
            "versions[0].operations.video.pricing.prices.veo3_fast",
        ),
        (
            "pixazo",
            ("unit_price = 0.04", "unit_price = 9223372036854.775808"),
            "versions[0].operations.text_to_image.pricing.unit_price",
        ),
        (
            "pixazo",
            ("price = 0.02", "price = 0.0000000000000000000000001"),
            "versions[0].operations.text_to_image.pricing.addons[0].price",
        ),
    ],
)
def test_every_kind_of_price_is_held_to_those_bounds(
    tmp_path: Path, name: str, change: tuple[str, str], key: str
) -> None:
    with pytest.raises(CatalogError) as refused:
        load(tmp_path, shipped(name, change))
    assert refused.value.key == key
    assert "at most" in refused.value.reason


def test_a_price_per_second_is_held_to_those_bounds(tmp_path: Path) -> None:
    text = f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    for price in ("9223372036854.775808", "0.0000000000000000000000001"):
        with pytest.raises(CatalogError) as refused:
            load(tmp_path, text.replace('"480p" = 0.02', f'"480p" = {price}'), name="fal.toml")
        assert refused.value.key == "versions[0].operations.image_to_video.pricing.prices.480p"


MOST = 2**63 - 1


def test_every_whole_number_of_a_request_fits_64_bits(catalogs: CatalogSet) -> None:
    """Whatever a catalog's limits leave open, a request's whole numbers are 64-bit ones:
    beyond, the parameter is named with the bound it broke (and the catalog's own)."""
    with pytest.raises(InvalidParameter) as refused:
        estimate(f.text(max_tokens=MOST + 1), catalogs=catalogs)
    assert (refused.value.field, refused.value.allowed) == (
        "params.max_tokens",
        {"max": MOST, "min": 1},  # cosmic's own ge = 1, and the 64-bit top
    )
    for params in ({"seed": -(2**63) - 1}, {"num_inference_steps": 10**30}):
        with pytest.raises(InvalidParameter) as refused:
            estimate(f.pixazo_image(**params), catalogs=catalogs)
        assert refused.value.field == f"params.{next(iter(params))}"
    with pytest.raises(InvalidParameter) as seed:
        estimate(f.pixazo_image(seed=-(2**63) - 1), catalogs=catalogs)
    assert seed.value.allowed == {"min": -(2**63)}
    # One of a few values: pydantic would say it could not parse "input string".
    with pytest.raises(InvalidParameter) as duration:
        estimate(f.cosmic_video(duration=2**64), catalogs=catalogs)
    assert (duration.value.field, duration.value.allowed) == ("params.duration", [4, 6, 8])
    assert duration.value.message == (
        "params.duration: a whole number past 64 bits, not one of the values allowed"
    )
    assert estimate(f.pixazo_image(seed=-(2**63)), catalogs=catalogs).cost == 40_000
    assert estimate(f.pixazo_image(seed=MOST), catalogs=catalogs).cost == 40_000
    for side, size in (
        ("width", {"width": MOST + 1, "height": 480}),
        ("height", {"width": 640, "height": MOST + 1}),
    ):
        with pytest.raises(InvalidParameter) as wide:
            estimate(
                f.request(
                    "fal",
                    "image_to_video",
                    prompt="x",
                    image_url="https://x/a.png",
                    image_size=size,
                ),
                catalogs=catalogs,
            )
        named = [e for e in wide.value.errors if e["field"] == f"params.image_size.{side}"]
        assert len(named) == 1
        assert "less than or equal to 9223372036854775807" in named[0]["message"]


def test_a_counted_parameter_is_never_negative_whatever_the_catalog_leaves_open(
    tmp_path: Path,
) -> None:
    """A count the price is made of (images, frames, candidates, max_tokens) has a floor
    of 0 and fps one of 1, added where a catalog gives no lower bound: a negative count
    or a rate of 0 is refused by name, never priced. A lower ``ge`` is a catalog error."""
    catalogs = operator(
        tmp_path,
        "pixazo",
        ("num_images = { ge = 1, le = 4 }", "num_images = { le = 4 }"),
        ("agentic_max_iterations = { ge = 1, le = 3 }", ""),
    )
    for params, field, allowed in [
        ({"num_images": -1}, "params.num_images", {"min": 0, "max": 4}),
        (
            {"enable_agentic_generation": True, "agentic_max_iterations": -2},
            "params.agentic_max_iterations",
            {"min": 0},
        ),
    ]:
        with pytest.raises(InvalidParameter) as refused:
            estimate(f.request("acme", "text_to_image", prompt="x", **params), catalogs=catalogs)
        assert (refused.value.field, refused.value.allowed) == (field, allowed)
    assert (
        estimate(
            f.request("acme", "text_to_image", prompt="x", num_images=0), catalogs=catalogs
        ).cost
        == 0
    )
    listing = next(c for c in describe(catalogs) if c["name"] == "acme")
    operation = listing["versions"][0]["operations"][0]
    assert operation["limits"]["num_images"] == {"min": 0, "max": 4}
    # fps divides: at least 1 (fal's own ge = 1 taken away).
    catalogs = operator(tmp_path, "fal", ("fps = { ge = 1 }", ""))
    with pytest.raises(InvalidParameter) as still:
        estimate(
            f.request("acme", "image_to_video", prompt="x", image_url="https://x/a.png", fps=0),
            catalogs=catalogs,
        )
    assert (still.value.field, still.value.allowed) == ("params.fps", {"min": 1})
    # A per_token operation's max_tokens, where the catalog gives it no lower bound.
    catalogs = operator(tmp_path, "cosmic", ("limits = { max_tokens = { ge = 1 } }", ""))
    with pytest.raises(InvalidParameter) as tokens:
        estimate(f.request("acme", "text", prompt="x", max_tokens=-5), catalogs=catalogs)
    assert (tokens.value.field, tokens.value.allowed) == ("params.max_tokens", {"min": 0})
    # A floor itself may be listed among the values allowed.
    catalogs = operator(
        tmp_path, "pixazo", ("num_images = { ge = 1, le = 4 }", "num_images = { allowed = [0, 1] }")
    )
    zero = f.request("acme", "text_to_image", prompt="x", num_images=0)
    assert estimate(zero, catalogs=catalogs).cost == 0
    for catalog_text, key in [
        (
            shipped("pixazo", ("num_images = { ge = 1, le = 4 }", "num_images = { ge = -1 }")),
            "num_images.ge",
        ),
        (shipped("fal", ("fps = { ge = 1 }", "fps = { ge = 0 }")), "fps.ge"),
        (
            shipped("fal", ("num_frames = { ge = 1 }", "num_frames = { allowed = [24, -24] }")),
            "num_frames.allowed",
        ),
    ]:
        with pytest.raises(CatalogError) as broken:
            load(tmp_path, catalog_text)
        assert broken.value.key.endswith(f".limits.{key}"), broken.value.key
        assert "counts what is billed" in broken.value.reason


def test_a_catalogs_bounds_are_64_bit_numbers_too(tmp_path: Path) -> None:
    """A limit or an output limit past 64 bits is refused at load: it would lift the
    bound of the body (a later bound replaces an earlier one) or promise a count no
    column holds. (A bound of 1e999999 also took a quarter of a minute to print.)"""
    for name, change, key in [
        (
            "pixazo",
            ("num_images = { ge = 1, le = 4 }", "num_images = { ge = 1, le = 1e30 }"),
            ".limits.num_images.le",
        ),
        (
            "fal",
            ("num_inference_steps = { ge = 1 }", "num_inference_steps = { ge = -1e999999 }"),
            ".limits.num_inference_steps.ge",
        ),
    ]:
        with pytest.raises(CatalogError) as broken:
            load(tmp_path, shipped(name, change))
        assert broken.value.key.endswith(key), broken.value.key
    # A fractional bound is answered as the catalog writes it.
    steps = "num_inference_steps = { ge = 1 }"
    catalogs = operator(tmp_path, "fal", (steps, f"{steps}\nguidance_scale = {{ ge = 0.5 }}"))
    low_scale = f.request(
        "acme", "image_to_video", prompt="x", image_url="https://x/a.png", guidance_scale=0.25
    )
    with pytest.raises(InvalidParameter) as low:
        estimate(low_scale, catalogs=catalogs)
    assert (low.value.field, low.value.allowed) == ("params.guidance_scale", {"min": "0.5"})
    with pytest.raises(CatalogError) as output:
        load(
            tmp_path,
            shipped(
                "cosmic",
                (
                    'GPT-5 Nano", tier = "budget", max_output_tokens = 128_000',
                    'GPT-5 Nano", tier = "budget", max_output_tokens = 9223372036854775808',
                ),
            ),
        )
    assert output.value.key.endswith(".models.gpt-5-nano.max_output_tokens"), output.value.key
    catalogs = operator(
        tmp_path,
        "cosmic",
        (
            'GPT-5 Nano", tier = "budget", max_output_tokens = 128_000',
            'GPT-5 Nano", tier = "budget", max_output_tokens = 9223372036854775807',
        ),
    )
    quote = estimate(
        f.request("acme", "text", prompt="x", model="gpt-5-nano", max_tokens=MOST - 99),
        catalogs=catalogs,
    )
    assert quote.estimated_usage["output_tokens"] == MOST - 99
    with pytest.raises(AmountOverflow) as dear:  # its whole output limit, and the input
        estimate(f.request("acme", "text", prompt="x", model="gpt-5-nano"), catalogs=catalogs)
    assert dear.value.field == "params"


def test_what_a_request_would_meter_fits_the_columns_that_keep_it(tmp_path: Path) -> None:
    """Counts within 64 bits can multiply past them (agentic candidates are iterations x
    samples per output), and frames over fps can be more video seconds than the ledger's
    NUMERIC(24, 6) holds, at a price low enough to fit: refused, quote and charge."""
    f.write_catalog(
        tmp_path,
        "fal.toml",
        f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z").replace(
            '"480p" = 0.02',
            '"480p" = 0.000000000000000000000001',  # 1e-18 minor units
        ),
    )
    catalogs = load_catalogs([tmp_path])

    def video(**params: Any) -> dict[str, Any]:
        return f.request("fal", "image_to_video", prompt="x", image_url="https://x/a.png", **params)

    agentic = {"enable_agentic_generation": True, "num_frames": 1, "fps": MOST}
    fits = estimate(
        video(**agentic, agentic_max_iterations=2**31, agentic_samples_per_iteration=2**32 - 1),
        catalogs=catalogs,
    )
    assert fits.estimated_usage["candidates"] == 2**63 - 2**31
    many = video(**agentic, agentic_max_iterations=2**32, agentic_samples_per_iteration=2**31)
    with pytest.raises(InvalidParameter) as refused:
        estimate(many, catalogs=catalogs)
    assert (refused.value.field, refused.value.allowed) == ("params", {"max": MOST})
    assert refused.value.message == (
        f"params: this would meter {2**63} candidates, more than the ledger can keep "
        f"(at most {MOST})"
    )
    with pytest.raises(InvalidUsage) as reported:
        price_usage(many, {"candidates": 2**63}, "COMPLETED", catalogs=catalogs)
    assert reported.value.message == f"usage.candidates must be a whole number from 0 to {MOST}"
    assert (reported.value.field, reported.value.allowed) == (
        "usage.candidates",
        {"min": 0, "max": MOST},
    )
    # Candidate images as well: outputs x iterations x samples.
    images = operator(
        tmp_path,
        "pixazo",
        ("num_images = { ge = 1, le = 4 }", ""),
        ("agentic_max_iterations = { ge = 1, le = 3 }", ""),
        ("unit_price = 0.04", "unit_price = 0.000000000000000000000001"),
    )

    def candidates(outputs: int) -> dict[str, Any]:
        return f.request(
            "acme",
            "text_to_image",
            prompt="x",
            num_images=outputs,
            enable_agentic_generation=True,
            agentic_max_iterations=2**31,
            agentic_samples_per_iteration=1,
        )

    assert estimate(candidates(2**32 - 1), catalogs=images).estimated_usage["candidates"] == (
        2**63 - 2**31
    )
    with pytest.raises(InvalidParameter) as rendered:
        estimate(candidates(2**32), catalogs=images)
    assert (rendered.value.field, rendered.value.allowed) == ("params", {"max": MOST})
    # 10^9 seconds exactly: one microsecond more than both databases keep exactly.
    long = video(num_frames=10**15, fps=10**6)
    with pytest.raises(InvalidParameter) as seconds:
        estimate(long, catalogs=catalogs)
    assert (seconds.value.field, seconds.value.allowed) == (
        "params",
        {"max": Decimal("999999999.999999")},
    )
    with pytest.raises(InvalidUsage) as charged:
        price_usage(long, {"num_frames": 10**15}, "COMPLETED", catalogs=catalogs)
    assert (charged.value.field, charged.value.allowed) == (
        "usage",
        {"max": Decimal("999999999.999999")},
    )
    with pytest.raises(InvalidUsage) as defaulted:  # frames default to what was asked
        price_usage(long, {}, "COMPLETED", catalogs=catalogs)
    assert defaulted.value.field == "usage"
    most = estimate(video(num_frames=10**15 - 1, fps=10**6), catalogs=catalogs)
    assert most.estimated_usage["seconds"] == Decimal("999999999.999999")
    with pytest.raises(AmountOverflow) as dear:  # 2 x (2^63 - 1 + 1) tokens at 2.0
        price_usage(f.text(), {"input_tokens": MOST, "output_tokens": 1}, "COMPLETED")
    assert dear.value.field == "usage"


def _veo3_digest(tmp_path: Path, *changes: tuple[str, str]) -> str:
    (acme,) = (c for c in operator(tmp_path, "veo3", *changes) if c.name == "acme")
    (version,) = acme.versions
    return version.digest


@pytest.mark.parametrize(
    "change",
    [
        ('source = "seed 003"', 'source = "seed 003, as read again"'),
        ('description = "Generate an image; 24 credits regardless of size"', 'description = "x"'),
        ('veo3 = { name = "veo3 (premium quality)" }', 'veo3 = { name = "Veo 3" }'),
        ("veo3_fast = 240, veo3 = 500", "veo3_fast = 240.0, veo3 = 500.000"),  # by value
        ("# The seed names no image model", "# (a comment)"),
    ],
)
def test_a_versions_digest_is_what_it_charges_not_its_words(
    tmp_path: Path, change: tuple[str, str]
) -> None:
    """The ledger keeps each version's digest once in force, and refuses catalogs whose
    version differs: words for people may be corrected in place, prices may not."""
    assert _veo3_digest(tmp_path / "a") == _veo3_digest(tmp_path / "b", change)


@pytest.mark.parametrize(
    "change",
    [
        ("veo3_fast = 240, veo3 = 500", "veo3_fast = 241, veo3 = 500"),
        ("prices = { image = 24 }", "prices = { image = 24.5 }"),
        ("effective_from = 1970-01-01T00:00:00Z", "effective_from = 1970-01-01T00:00:01Z"),
        ('video_model = "veo3_fast", aspect_ratio', 'video_model = "veo3", aspect_ratio'),
        (
            'prompt = { max_length = 1000 }, aspect_ratio = { allowed = ["16:9"',
            'prompt = { max_length = 999 }, aspect_ratio = { allowed = ["16:9"',
        ),
        ('per = "image"', 'per = "picture"'),
    ],
)
def test_a_versions_digest_changes_with_what_it_charges(
    tmp_path: Path, change: tuple[str, str]
) -> None:
    assert _veo3_digest(tmp_path / "a") != _veo3_digest(tmp_path / "b", change)


def test_a_version_made_of_another_has_the_digest_of_what_it_resolves_to(tmp_path: Path) -> None:
    """``based_on`` is how a version is written, not what it is."""
    shipped_fal = {c.name: c for c in load_catalogs()}["fal"].versions[0]
    f.write_catalog(
        tmp_path,
        "fal.toml",
        'name = "fal"\nunit = { code = "usd", scale = 6 }\n[[versions]]\nid = "copy"\n'
        'effective_from = 1970-01-01T00:00:00Z\nsource = "s"\nbased_on = "seed-004"\n',
    )
    with pytest.raises(CatalogError, match="same instant"):
        load_catalogs([tmp_path])  # (the same instant as seed-004: made a second later)
    text = (tmp_path / "fal.toml").read_text().replace("00:00:00Z", "00:00:01Z")
    f.write_catalog(tmp_path, "fal.toml", text)
    copy = {c.name: c for c in load_catalogs([tmp_path])}["fal"].versions[1]
    assert copy.id == "copy"
    assert copy.digest != shipped_fal.digest  # it takes effect at another instant...
    moved = dict(shipped_catalog_files())["pricing/catalogs/fal.toml"].replace(
        "1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z"
    )
    moved = moved.replace('id = "seed-004"', 'id = "copy"')
    other = tmp_path / "other"
    f.write_catalog(other, "fal.toml", moved.replace('name = "fal"', 'name = "fal2"'))
    same = {c.name: c for c in load_catalogs([other])}["fal2"].versions[0]
    assert same.digest == copy.digest  # ...and is otherwise seed-004 whole


def test_a_digest_spells_every_value_toml_has() -> None:
    """TOML's local date-times, dates and times too: a digest never fails a load."""
    from datetime import date, time

    from pricing.catalog import digest

    local = {"id": "v", "x": [date(2026, 1, 1), time(1, 2), datetime(2026, 1, 1, 3)]}
    assert digest("credit", 0, local) == digest("credit", 0, dict(local))
    moved = {**local, "x": [date(2026, 1, 2), time(1, 2), datetime(2026, 1, 1, 3)]}
    assert digest("credit", 0, moved) != digest("credit", 0, local)
    aware = {"id": "v", "at": datetime(2026, 1, 1, 1, tzinfo=UTC)}
    assert digest("credit", 0, aware) != digest("credit", 1, aware)  # the scale counts
