"""Bad requests raise typed errors naming the field and the allowed values."""

from __future__ import annotations

import enum
import json
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request

from api.errors import _allowed, _choices, _validation
from pricing import CatalogSet, estimate
from pricing.errors import (
    InvalidParameter,
    InvalidRequest,
    NoVersionInForce,
    PricingError,
    UnknownCatalog,
    UnknownModel,
    UnknownOperation,
)
from pricing.requests import SCHEMAS
from tests import factories as f


def fails(catalogs: CatalogSet, req: Any, error: type[PricingError]) -> PricingError:
    with pytest.raises(error) as info:
        estimate(req, catalogs=catalogs)
    return info.value


@pytest.mark.parametrize(
    ("req", "field", "allowed"),
    [
        (f.cosmic_video(duration=5), "params.duration", [4, 6, 8]),
        (f.cosmic_video(duration="8"), "params.duration", [4, 6, 8]),
        (f.cosmic_video(duration=True), "params.duration", [4, 6, 8]),
        (f.cosmic_video(resolution="4k"), "params.resolution", ["720p", "1080p"]),
        (f.cosmic_video(reference_images=["a", "b"]), "params.reference_images", {"max_length": 1}),
        (
            f.cosmic_image(size="4096x4096", model="dall-e-3"),
            "params.size",
            ["1024x1024", "1024x1792", "1792x1024"],
        ),
        (f.cosmic_image(size="512x512"), "params.size", ["1024x1024", "2048x2048", "4096x4096"]),
        (f.cosmic_image(quality="ultra"), "params.quality", ["standard", "hd"]),
        (
            f.cosmic_image(model="dall-e-3", reference_images=["https://x/r.jpg"]),
            "params.reference_images",
            ["gemini-3-pro-image-preview"],
        ),
        (f.veo3_video(prompt="x" * 1001), "params.prompt", {"max_length": 1000}),
        (f.veo3_video(aspect_ratio="4:3"), "params.aspect_ratio", ["16:9", "9:16"]),
        (
            f.request("veo3", "image", prompt="c", aspect_ratio="16:9"),
            "params.aspect_ratio",
            ["1:1", "3:2", "2:3"],
        ),
        (f.pixazo_image(num_images=0), "params.num_images", {"min": 1, "max": 4}),
        (f.pixazo_image(num_images=5), "params.num_images", {"min": 1, "max": 4}),
        (f.pixazo_image(num_images=2**70), "params.num_images", {"min": 1, "max": 4}),
        (
            f.pixazo_image(agentic_max_iterations=4),
            "params.agentic_max_iterations",
            {"min": 1, "max": 3},
        ),
        (
            f.pixazo_image(agentic_samples_per_iteration=0),
            "params.agentic_samples_per_iteration",
            {"min": 1, "max": 3},
        ),
        (f.pixazo_image(prompt=""), "params.prompt", {"min_length": 1, "max_length": 4096}),
        (f.pixazo_image(prompt="p" * 4097), "params.prompt", {"min_length": 1, "max_length": 4096}),
        (
            f.pixazo_image(negative_prompt="n" * 1025),
            "params.negative_prompt",
            {"max_length": 1024},
        ),
        (f.pixazo_image(guidance_scale=21), "params.guidance_scale", {"min": 0, "max": 20}),
        (f.pixazo_image(output_format="gif"), "params.output_format", ["jpeg", "png"]),
        (f.text(max_tokens=0), "params.max_tokens", {"min": 1}),
        # A parameter with a default is not nullable: null is refused, not priced.
        (f.pixazo_image(num_images=None), "params.num_images", {"min": 1, "max": 4}),
        (f.cosmic_video(duration=None), "params.duration", [4, 6, 8]),
        (f.text(model="gpt-4o", max_tokens=16_385), "params.max_tokens", {"min": 1, "max": 16_384}),
    ],
)
def test_parameter_out_of_range(
    catalogs: CatalogSet, req: dict[str, Any], field: str, allowed: Any
) -> None:
    error = fails(catalogs, req, InvalidParameter)
    assert error.field == field
    assert error.allowed == allowed
    assert field in error.message


PIXAZO_VIDEO = {"prompt": "A lighthouse", "image_url": "https://example.com/l.jpg"}
EXTEND = {"prompt": "Keep going", "media_id": "m1"}


@pytest.mark.parametrize(
    ("req", "field"),
    [
        # Every body's required text must say something: an empty one is refused, whether
        # or not the catalog limits its length.
        (f.cosmic_image(prompt=""), "params.prompt"),
        (f.cosmic_video(prompt=""), "params.prompt"),
        (f.request("cosmic", "video_extend", **{**EXTEND, "prompt": ""}), "params.prompt"),
        (f.request("cosmic", "video_extend", **{**EXTEND, "media_id": ""}), "params.media_id"),
        (f.veo3_video(prompt=""), "params.prompt"),
        (f.request("veo3", "image", prompt=""), "params.prompt"),
        (f.fal_video(prompt=""), "params.prompt"),
        (f.fal_video(image_url=""), "params.image_url"),
        (
            f.request("pixazo", "image_to_video", **{**PIXAZO_VIDEO, "image_url": ""}),
            "params.image_url",
        ),
        # A size of no pixels is no size.
        (f.pixazo_image(image_size={"width": 0, "height": 480}), "params.image_size.width"),
        (f.fal_video(image_size={"width": 832, "height": 0}), "params.image_size.height"),
        # Strict: text is not a number or a flag, a number is not a flag, one URL is not a
        # list of them. Coerced, "yes" would buy prompt expansion the caller never asked for.
        (f.pixazo_image(num_images="2"), "params.num_images"),
        (f.text(max_tokens="100"), "params.max_tokens"),
        (f.pixazo_image(enable_prompt_expansion="yes"), "params.enable_prompt_expansion"),
        (f.pixazo_image(enable_prompt_expansion=1), "params.enable_prompt_expansion"),
        (f.pixazo_image(seed="42"), "params.seed"),
        (f.text(stream=1), "params.stream"),
        (f.cosmic_image(reference_images="https://x/r.jpg"), "params.reference_images"),
        (f.veo3_video(source_image_urls="https://x/s.jpg"), "params.source_image_urls"),
        (f.cosmic_image(metadata=["a"]), "params.metadata"),
    ],
)
def test_a_parameter_of_the_wrong_shape_is_refused(
    catalogs: CatalogSet, req: dict[str, Any], field: str
) -> None:
    error = fails(catalogs, req, InvalidParameter)
    assert isinstance(error, InvalidParameter)
    assert field in [e["field"] for e in error.errors]


SIZES = ["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]


def test_a_size_neither_preset_nor_width_and_height_is_one_error(catalogs: CatalogSet) -> None:
    """Each branch of the union refuses 5; the answer names params.image_size once."""
    error = fails(catalogs, f.pixazo_image(image_size=5), InvalidParameter)
    assert isinstance(error, InvalidParameter)
    assert [(e["field"], e.get("allowed")) for e in error.errors] == [("params.image_size", SIZES)]


def test_a_nested_field_gets_no_allowed_values_of_its_parent(catalogs: CatalogSet) -> None:
    error = fails(
        catalogs, f.pixazo_image(image_size={"width": "x", "height": 480}), InvalidParameter
    )
    assert isinstance(error, InvalidParameter)
    assert [(e["field"], e.get("allowed")) for e in error.errors] == [
        ("params.image_size", SIZES),
        ("params.image_size.width", None),
    ]


def test_unknown_parameter_lists_the_known_ones(catalogs: CatalogSet) -> None:
    error = fails(catalogs, f.cosmic_image(colour="red"), InvalidParameter)
    assert error.field == "params.colour"
    assert "prompt" in error.allowed
    assert "size" in error.allowed


@pytest.mark.parametrize("field", ["video_model", "source_image_urls"])
def test_each_operation_takes_only_its_own_providers_fields(
    catalogs: CatalogSet, field: str
) -> None:
    """Seed 003's image request has a prompt and an aspect ratio; a video model and
    source images belong to its video request, and are unknown to the image's."""
    req = f.request("veo3", "image", prompt="c", **{field: ["veo3"]})
    error = fails(catalogs, req, InvalidParameter)
    assert (error.field, error.allowed) == (f"params.{field}", ["aspect_ratio", "prompt"])


MOST = 2**63 - 1


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_every_whole_number_of_each_body_fits_64_bits_whatever_its_catalog(schema: str) -> None:
    """The bodies themselves bound each whole number to signed 64 bits (the ledger's
    columns), so that a catalog that leaves one open (no values, no range) cannot let a
    larger one through."""
    model = SCHEMAS[schema]
    base = {
        "prompt": "x",
        **{name: "x" for name, spec in model.model_fields.items() if spec.is_required()},
    }
    wholes = [
        name
        for name, spec in model.model_fields.items()
        if spec.annotation is int or int in get_args(spec.annotation)
    ]
    assert bool(wholes) == (
        schema not in ("cosmic.image", "cosmic.video_extend", "veo3.image", "veo3.video")
    )
    for name in wholes:
        for fits in (MOST, -MOST - 1):
            assert getattr(model.model_validate({**base, name: fits}), name) == fits
        for past in (MOST + 1, -MOST - 2):
            with pytest.raises(ValidationError) as refused:
                model.model_validate({**base, name: past})
            assert [error["loc"] for error in refused.value.errors()] == [(name,)], name


def test_a_parsed_body_cannot_be_changed_after_it_was_priced() -> None:
    body = SCHEMAS["cosmic.text"].model_validate({"prompt": "x", "max_tokens": 10})
    with pytest.raises(ValidationError, match="frozen"):
        body.max_tokens = 10**6  # type: ignore[attr-defined]
    assert body.max_tokens == 10  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"messages": []},
        {"messages": [{"role": "system", "content": "You are"}]},
        {"messages": [{"role": "user"}]},
        {"prompt": 42},
    ],
)
def test_text_needs_prompt_or_user_assistant_messages(
    catalogs: CatalogSet, params: dict[str, Any]
) -> None:
    error = fails(catalogs, f.request("cosmic", "text", **params), InvalidParameter)
    assert error.field is not None
    assert error.field.startswith("params")


@pytest.mark.parametrize(
    "req",
    [
        f.request("cosmic", "text", messages=[{"role": "user", "content": "x"}]),
        f.request("cosmic", "text", prompt="x"),
        f.request("cosmic", "image", prompt="x"),
        f.request("cosmic", "video", prompt="x"),
        f.request("cosmic", "video_extend", prompt="x", media_id="m"),
    ],
    ids=["one message", "text", "image", "video", "extend"],
)
def test_the_least_a_body_may_hold_is_priced(catalogs: CatalogSet, req: dict[str, Any]) -> None:
    """One message; a prompt, a media id of one character: where an empty one is refused
    (above), the shortest is a request like any other."""
    assert estimate(req, catalogs=catalogs).max_cost > 0


def test_message_role_error_names_the_allowed_roles(catalogs: CatalogSet) -> None:
    req = f.request("cosmic", "text", messages=[{"role": "system", "content": "x"}])
    error = fails(catalogs, req, InvalidParameter)
    assert error.field == "params.messages[0].role"
    assert "'user' or 'assistant'" in error.message


def test_unknown_catalog_operation_and_model(catalogs: CatalogSet) -> None:
    error = fails(catalogs, f.request("midjourney", "image", prompt="x"), UnknownCatalog)
    assert error.allowed == ["cosmic", "fal", "pixazo", "veo3"]
    error = fails(catalogs, f.request("cosmic", "audio", prompt="x"), UnknownOperation)
    assert error.allowed == ["text", "image", "video", "video_extend"]
    error = fails(catalogs, f.veo3_video(video_model="veo4"), UnknownModel)
    assert (error.field, error.allowed) == ("params.video_model", ["veo3", "veo3_fast"])


@pytest.mark.parametrize(
    ("req", "field"),
    [
        ([], None),
        ({"catalog": "cosmic", "operation": "text"}, "params"),
        ({"catalog": 1, "operation": "text", "params": {}}, "catalog"),
        ({"catalog": "cosmic", "operation": None, "params": {}}, "operation"),
        # Not a name at all (unhashable): refused by name, not a TypeError from a lookup.
        ({"catalog": ["cosmic"], "operation": "text", "params": {}}, "catalog"),
        ({"catalog": "cosmic", "operation": {"text": 1}, "params": {}}, "operation"),
        ({"catalog": "cosmic", "operation": "text", "params": "prompt"}, "params"),
        ({"catalog": "cosmic", "operation": "text", "params": {}, "extra": 1}, "extra"),
    ],
)
def test_malformed_envelope(catalogs: CatalogSet, req: Any, field: str | None) -> None:
    assert fails(catalogs, req, InvalidRequest).field == field


def test_video_did_not_exist_under_the_older_docs(catalogs: CatalogSet) -> None:
    from datetime import UTC, datetime

    with pytest.raises(UnknownOperation) as info:
        estimate(f.cosmic_video(), datetime(2025, 1, 1, tzinfo=UTC), catalogs=catalogs)
    assert info.value.allowed == ["text", "image"]


def test_time_before_every_version_and_naive_time(catalogs: CatalogSet) -> None:
    from datetime import UTC, datetime

    with pytest.raises(NoVersionInForce):
        estimate(f.cosmic_image(), datetime(2020, 1, 1, tzinfo=UTC), catalogs=catalogs)
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        estimate(f.cosmic_image(), datetime(2026, 1, 1), catalogs=catalogs)


def test_error_to_dict_is_json_ready(catalogs: CatalogSet) -> None:
    import json

    error = fails(catalogs, f.cosmic_video(duration=5), InvalidParameter)
    body = json.loads(json.dumps(error.to_dict()))
    assert body == {
        "error": "invalid_parameter",
        "message": "params.duration: Input should be 4, 6 or 8",
        "field": "params.duration",
        "allowed": [4, 6, 8],
    }


@pytest.mark.parametrize(
    ("expected", "allowed"),
    [
        ("'pack', 'allocation' or 'promo'", ["pack", "allocation", "promo"]),
        ("'only'", ["only"]),
        ("1, 2 or 3", [1, 2, 3]),
        # Choices whose text would not read back exactly are left as pydantic wrote them.
        ("'this or that' or 'other'", "'this or that' or 'other'"),
        ("'a, b' or 'c'", ["a, b", "c"]),
        ("<Color.RED: 1>", "<Color.RED: 1>"),
        ("", ""),  # no choices: nothing to list
    ],
)
def test_the_choices_pydantic_writes_as_text_are_read_back_as_a_list(
    expected: str, allowed: Any
) -> None:
    assert _choices(expected) == allowed


class _Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class _Bounded(BaseModel):
    color: _Color = _Color.RED
    size: Literal["s", "m"] = "s"
    over: Annotated[int, Field(gt=0)] = 1
    under: Annotated[int, Field(lt=10)] = 1
    at_least: Annotated[int, Field(ge=1)] = 1
    at_most: Annotated[int, Field(le=9)] = 1
    short: Annotated[str, Field(max_length=3)] = ""
    long: Annotated[str, Field(min_length=2)] = "ab"
    number: int = 0


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("color", "green", ["red", "blue"]),
        ("size", "xl", ["s", "m"]),
        ("over", 0, {"gt": 0}),
        ("under", 10, {"lt": 10}),
        ("at_least", 0, {"ge": 1}),
        ("at_most", 10, {"le": 9}),
        ("short", "abcd", {"max_length": 3}),
        ("long", "a", {"min_length": 2}),
        ("number", "many", None),  # a wrong type has no bound to name
    ],
)
def test_what_a_field_allows_is_read_from_pydantics_own_error(
    field: str, value: Any, allowed: Any
) -> None:
    """``allowed`` of a 422, from the error pydantic itself raises: an enum's and a
    literal's choices as a list, each kind of bound as the bound, nothing for a type."""
    with pytest.raises(ValidationError) as info:
        _Bounded.model_validate({field: value})
    (error,) = info.value.errors()
    assert _allowed(dict(error)) == allowed


def test_a_bound_that_is_no_json_number_is_answered_as_text() -> None:
    """A bound pydantic keeps as a Decimal (of a Decimal field) is written as its text in
    the 422, which could not be written at all otherwise: the first error's, and each of
    the list of them."""

    class Priced(BaseModel):
        rate: Annotated[Decimal, Field(ge=Decimal("0.5"))]
        floor: Annotated[Decimal, Field(le=Decimal("1.5"))] = Decimal(0)

    def answer(given: dict[str, str]) -> Any:
        with pytest.raises(ValidationError) as info:
            Priced.model_validate(given)
        errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]
        request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
        response = _validation(request, RequestValidationError(errors))
        assert response.status_code == 422
        return json.loads(bytes(response.body))

    one = answer({"rate": "0.25"})
    assert (one["field"], one["allowed"]) == ("rate", {"ge": "0.5"})
    assert "errors" not in one
    two = answer({"rate": "0.25", "floor": "2"})
    assert (two["field"], two["allowed"]) == ("rate", {"ge": "0.5"})
    listed = [(e["field"], e["allowed"]) for e in two["errors"]]
    assert listed == [("rate", {"ge": "0.5"}), ("floor", {"le": "1.5"})]
