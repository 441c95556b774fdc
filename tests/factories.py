"""Builders of requests and catalog files for the tests (no copy-pasted setup)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def write_catalog(directory: Path, name: str, text: str) -> Path:
    """Write one operator catalog file and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


class Clock:
    """A controllable clock for the ledger: starts at NOW, moves only when told."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


_keys = iter(range(10**9))


def key(prefix: str = "k") -> str:
    """A fresh idempotency key."""
    return f"{prefix}-{next(_keys)}"
