"""The providers' own request bodies, as their seed documents describe them.

These models hold the *shape* of each body: field names, types and the rules that are
structure rather than numbers ("prompt or messages", message roles). Every number
(lengths, ranges, allowed values) and every default lives in the catalog, which narrows
these models per version when it is loaded (see ``pricing.catalog``). Unknown fields are
rejected: a parameter we do not understand could change what the provider charges.

Validation is strict: ``"8"`` is not a duration and ``1`` is not ``true``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The largest whole number a request or its usage may give: the ledger keeps counts in
#: signed 64-bit columns, and a provider takes none larger.
MAX_INT = 2**63 - 1


def _int() -> Any:
    """An optional whole number of a request body: signed 64 bits (a catalog's limits
    narrow it further)."""
    return Field(default=None, ge=-MAX_INT - 1, le=MAX_INT)


class RequestBody(BaseModel):
    """Base of every provider request body: strict, closed, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Message(RequestBody):
    """A chat message (seeds 000/001: role "user" or "assistant", content the text)."""

    role: Literal["user", "assistant"]
    content: str


class ImageSize(RequestBody):
    """A custom image or video size (seeds 002/004: ``{"width": int, "height": int}``)."""

    width: int = Field(gt=0, le=MAX_INT)
    height: int = Field(gt=0, le=MAX_INT)


# Guidance scales are documented as floats; they never touch money, and a Decimal keeps
# JSON parsed with Decimal floats valid. Lax so that ints and floats are both accepted.
Scale = Decimal


class CosmicText(RequestBody):
    """``POST /v3/buckets/:bucket_slug/ai/text`` (seeds 000 and 001)."""

    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    model: str | None = None
    max_tokens: int | None = _int()
    media_url: str | None = None
    stream: bool | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> CosmicText:
        # Seed: "You must provide either a prompt or messages parameter."
        if self.prompt is None and self.messages is None:
            raise ValueError("either 'prompt' or 'messages' is required")
        return self


class CosmicImage(RequestBody):
    """``POST /v3/buckets/:bucket_slug/ai/image`` (seeds 000 and 001)."""

    prompt: str = Field(min_length=1)
    model: str | None = None
    size: str | None = None
    quality: str | None = None
    reference_images: list[str] | None = None
    folder: str | None = None
    alt_text: str | None = None
    metadata: dict[str, Any] | None = None


class CosmicVideo(RequestBody):
    """``POST /v3/buckets/:bucket_slug/ai/video`` (seed 000)."""

    prompt: str = Field(min_length=1)
    model: str | None = None
    duration: int | None = _int()
    resolution: str | None = None
    reference_images: list[str] | None = None
    folder: str | None = None
    metadata: dict[str, Any] | None = None


class CosmicVideoExtend(RequestBody):
    """``POST /v3/buckets/:bucket_slug/ai/video/extend`` (seed 000)."""

    prompt: str = Field(min_length=1)
    media_id: str = Field(min_length=1)
    model: str | None = None
    folder: str | None = None
    metadata: dict[str, Any] | None = None


class Veo3Video(RequestBody):
    """``POST /api/v1/generate/video/`` (seed 003)."""

    prompt: str = Field(min_length=1)
    video_model: str | None = None
    source_image_urls: list[str] | None = None
    aspect_ratio: str | None = None


class Veo3Image(RequestBody):
    """Image generation of the Veo3 credits API (seed 003 gives only its price and ratios)."""

    prompt: str = Field(min_length=1)
    aspect_ratio: str | None = None


class _CosmosCommon(RequestBody):
    """Fields shared by the Cosmos 3 Super bodies of Pixazo (seed 002) and fal (seed 004)."""

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    enable_prompt_expansion: bool | None = None
    enable_agentic_generation: bool | None = None
    agentic_max_iterations: int | None = _int()
    agentic_samples_per_iteration: int | None = _int()
    agentic_early_stop: bool | None = None
    image_size: str | ImageSize | None = None
    num_inference_steps: int | None = _int()
    guidance_scale: Scale | None = Field(default=None, strict=False)
    enable_safety_checker: bool | None = None
    seed: int | None = _int()
    sync_mode: bool | None = None


class PixazoTextToImage(_CosmosCommon):
    """``cosmos-3-super-text-to-image-request`` (seed 002)."""

    num_images: int | None = _int()
    output_format: str | None = None


class PixazoImageToVideo(_CosmosCommon):
    """``cosmos-3-super-image-to-video-request`` (seed 002)."""

    image_url: str = Field(min_length=1)
    num_frames: int | None = _int()
    frames_per_second: int | None = _int()


class FalImageToVideo(_CosmosCommon):
    """``nvidia/cosmos-3-super/image-to-video`` (seed 004)."""

    image_url: str = Field(min_length=1)
    num_frames: int | None = _int()
    fps: int | None = _int()


#: The schema names a catalog operation may name, and their models.
SCHEMAS: dict[str, type[RequestBody]] = {
    "cosmic.text": CosmicText,
    "cosmic.image": CosmicImage,
    "cosmic.video": CosmicVideo,
    "cosmic.video_extend": CosmicVideoExtend,
    "veo3.video": Veo3Video,
    "veo3.image": Veo3Image,
    "pixazo.text_to_image": PixazoTextToImage,
    "pixazo.image_to_video": PixazoImageToVideo,
    "fal.image_to_video": FalImageToVideo,
}
