"""Pricing rules: how a validated request (and later its usage) becomes an exact amount.

A rule is built once from a catalog operation when catalogs load, and then only reads.
Amounts here are exact ``Decimal`` minor units; rounding happens once, in
``pricing.money.to_minor_units``, over the total.

The four rule types cover what the seed documents need:

* ``per_token``  -- tokens times the model tier's multiplier (Cosmic text, seed 000);
* ``fixed``      -- a table by model and one variant parameter (Cosmic media, Veo3);
* ``per_unit``   -- a unit price times a count, per-request add-ons, and agentic
  candidates billed separately (Pixazo text-to-image, seed 002);
* ``per_second`` -- a price per second of output (frames / fps) by resolution tier,
  agentic candidates each a full render (Cosmos image-to-video, seeds 002 and 004).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from pricing.errors import InvalidParameter, InvalidUsage, NotBillable
from pricing.money import Amount, add, decimal_text, div_up, minor_to_major, mul
from pricing.requests import MAX_INT

Params = Any  # a validated pydantic request body; fields are read by name


class Line(NamedTuple):
    """One line of a quote or charge. ``unit_price`` and ``amount`` are exact minor units."""

    description: str
    quantity: int | Decimal
    unit_price: Amount
    amount: Amount

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: Decimals as strings so no float ever carries them."""
        qty = self.quantity if isinstance(self.quantity, int) else decimal_text(self.quantity)
        return {
            "description": self.description,
            "quantity": qty,
            "unit_price": decimal_text(self.unit_price),
            "amount": decimal_text(self.amount),
        }


class Priced(NamedTuple):
    """What a rule computes: exact expected and maximum amounts, lines, quantities."""

    expected: Amount
    maximum: Amount
    lines: tuple[Line, ...]
    #: The usage this priced (estimated for a quote, reported for a charge), by the
    #: metering names: input_tokens, output_tokens, images, videos, seconds, candidates...
    quantities: dict[str, int | Decimal]
    #: Defaults the rule itself applied (for example max_tokens from the model's limit).
    defaults: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model of an operation, as the catalog describes it."""

    id: str
    name: str
    tier: str | None = None
    max_output_tokens: int | None = None
    unsupported_params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One published price, for listings: ``price`` in major units, None when unpriced."""

    model: str
    variant: str | None
    price: Decimal | None
    per: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "variant": self.variant,
            "price": None if self.price is None else decimal_text(self.price),
            "per": self.per,
        }


#: The most video seconds one request may meter (nearly 32 years), to the microsecond:
#: what both databases keep exactly. PostgreSQL's NUMERIC(24, 6) holds 10^18 seconds, but
#: SQLite keeps them as a binary float, exact to the microsecond below 2^51 of them.
MAX_SECONDS = Decimal("999999999.999999")


def meterable(name: str, quantity: int | Decimal, most: int | Decimal, *, quote: bool) -> None:
    """Refuse a quantity past what the ledger's columns keep, made by multiplying counts
    within bounds (agentic candidates) or dividing frames by fps (video seconds): as a
    parameter of the request for a quote, of the usage for a charge."""
    if quantity > most:
        field = "params" if quote else "usage"
        error = InvalidParameter if quote else InvalidUsage
        raise error(
            f"{field}: this would meter {quantity} {name.replace('_', ' ')}, more than the "
            f"ledger can keep (at most {most})",
            field=field,
            allowed={"max": most},
        )


def usage_count(
    usage: Mapping[str, Any], key: str, *, maximum: int | None, default: int | None
) -> int:
    """Read a whole, non-negative count from reported usage, within ``maximum`` (what the
    request asked for; None: no more than 64 bits hold)."""
    value = usage.get(key, default)
    if value is None:
        raise InvalidUsage(f"usage.{key} is required", field=f"usage.{key}")
    most = MAX_INT if maximum is None else min(maximum, MAX_INT)
    if type(value) is not int or not 0 <= value <= most:
        raise InvalidUsage(
            f"usage.{key} must be a whole number from 0 to {most}"
            + (" (what the request asked for)" if most == maximum else ""),
            field=f"usage.{key}",
            allowed={"min": 0, "max": most},
        )
    return value


class Rule(ABC):
    """A compiled pricing rule."""

    kind: str
    #: The usage keys ``charge`` accepts; anything else is rejected, never ignored.
    usage_keys: frozenset[str]

    @property
    @abstractmethod
    def billable(self) -> bool:
        """False when the catalog publishes no price for this operation at all."""

    @abstractmethod
    def quote(self, p: Params, model: ModelInfo) -> Priced:
        """The expected and maximum amounts of a validated request."""

    @abstractmethod
    def charge(self, p: Params, model: ModelInfo, usage: Mapping[str, Any]) -> Priced:
        """The amount of what a completed request reports it used."""

    @abstractmethod
    def price_rows(self, models: Mapping[str, ModelInfo], scale: int) -> list[PriceRow]:
        """The published prices, one row per model (and variant)."""

    def check_usage_keys(self, usage: Mapping[str, Any]) -> None:
        unknown = sorted(set(usage) - self.usage_keys)
        if unknown:
            raise InvalidUsage(
                f"unknown usage field '{unknown[0]}' for this operation",
                field=f"usage.{unknown[0]}",
                allowed=sorted(self.usage_keys),
            )


# --------------------------------------------------------------------------- per token

#: Tokens of framing per message (role name and separators) and for the reply primer.
#: See :func:`estimate_input_tokens`.
MESSAGE_FRAMING_TOKENS = 4
REPLY_PRIMER_TOKENS = 3


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def estimate_input_tokens(prompt: str | None, messages: list[Any] | None) -> int:
    """A conservative upper bound on the input tokens of a text request, offline.

    Byte-level BPE tokenizers (Claude's, GPT's) and SentencePiece with byte fallback
    (Gemini's) never emit more tokens than the text has UTF-8 bytes, so the byte length
    bounds the text's tokens from above. Each prompt or message adds
    ``MESSAGE_FRAMING_TOKENS`` for its role and separators and the request adds
    ``REPLY_PRIMER_TOKENS`` for the assistant turn. Typical English text has about four
    bytes per token, so this over-reserves input by about 4x; output (``max_tokens``)
    usually dominates a hold. Content behind ``media_url`` cannot be counted offline:
    its tokens arrive in the provider's usage at capture.
    """
    tokens = REPLY_PRIMER_TOKENS
    if prompt is not None:
        tokens += _utf8_len(prompt) + MESSAGE_FRAMING_TOKENS
    if messages:
        for message in messages:
            tokens += _utf8_len(message.content) + MESSAGE_FRAMING_TOKENS
    return tokens


class _Tier(NamedTuple):
    rate: Amount
    quote_in: str
    quote_out: str
    charge_in: str
    charge_out: str


class PerTokenRule(Rule):
    """(input + output tokens) x the model tier's multiplier (seed 000, text)."""

    kind = "per_token"
    usage_keys = frozenset({"input_tokens", "output_tokens", "total_tokens"})

    def __init__(self, multipliers: Mapping[str, Amount]) -> None:
        self.multipliers = dict(multipliers)
        self._tiers = {}
        for tier, rate in self.multipliers.items():
            label = f"{tier} tier x{decimal_text(rate)}"
            self._tiers[tier] = _Tier(
                rate,
                f"input tokens, estimated ({label})",
                f"output tokens, max_tokens ({label})",
                f"input tokens ({label})",
                f"output tokens ({label})",
            )

    @property
    def billable(self) -> bool:
        return True

    def _tier(self, model: ModelInfo) -> _Tier:
        # Load-time validation guarantees every model's tier has a multiplier.
        return self._tiers[model.tier or ""]

    def quote(self, p: Params, model: ModelInfo) -> Priced:
        tier = self._tier(model)
        rate = tier.rate
        input_tokens = estimate_input_tokens(p.prompt, p.messages)
        defaults = None
        output_tokens = p.max_tokens
        limit = model.max_output_tokens
        if output_tokens is None:
            # Without max_tokens the provider may write up to the model's output limit.
            output_tokens = limit
            defaults = {"max_tokens": limit}
        elif limit is not None and output_tokens > limit:
            raise InvalidParameter(
                f"params.max_tokens: {output_tokens} is more than {model.id} can write",
                field="params.max_tokens",
                allowed={"min": 1, "max": limit},
            )
        assert output_tokens is not None  # load-time validation: text models have a limit
        lines = (
            Line(tier.quote_in, input_tokens, rate, mul(input_tokens, rate)),
            Line(tier.quote_out, output_tokens, rate, mul(output_tokens, rate)),
        )
        total = mul(input_tokens + output_tokens, rate)
        quantities: dict[str, int | Decimal] = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        return Priced(total, total, lines, quantities, defaults)

    def charge(self, p: Params, model: ModelInfo, usage: Mapping[str, Any]) -> Priced:
        self.check_usage_keys(usage)
        input_tokens = usage_count(usage, "input_tokens", maximum=None, default=None)
        # The input may run past its estimate (the hold's overage), but the provider
        # writes at most max_tokens (the model's limit without it): more than that is a
        # misreport, never billed.
        most = p.max_tokens if p.max_tokens is not None else model.max_output_tokens
        output_tokens = usage_count(usage, "output_tokens", maximum=most, default=None)
        if "total_tokens" in usage and usage["total_tokens"] != input_tokens + output_tokens:
            raise InvalidUsage(
                "usage.total_tokens must equal input_tokens + output_tokens",
                field="usage.total_tokens",
                allowed=[input_tokens + output_tokens],
            )
        tier = self._tier(model)
        rate = tier.rate
        lines = (
            Line(tier.charge_in, input_tokens, rate, mul(input_tokens, rate)),
            Line(tier.charge_out, output_tokens, rate, mul(output_tokens, rate)),
        )
        total = mul(input_tokens + output_tokens, rate)
        quantities: dict[str, int | Decimal] = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        return Priced(total, total, lines, quantities)

    def price_rows(self, models: Mapping[str, ModelInfo], scale: int) -> list[PriceRow]:
        return [
            PriceRow(
                m.id,
                f"{m.tier} tier",
                minor_to_major(self._tier(m).rate, scale),
                "token (input + output)",
            )
            for m in models.values()
        ]


# --------------------------------------------------------------------------------- fixed


class FixedRule(Rule):
    """A fixed price per item by model and, optionally, one variant parameter.

    ``prices[model]`` is either the price, or a table ``{variant value: price}``; its keys
    are the values the variant parameter may take for that model (the Cosmic image sizes,
    the Veo durations). One item is produced per request.
    """

    kind = "fixed"

    def __init__(
        self,
        *,
        variant: str | None,
        prices: Mapping[str, Amount | Mapping[str, Amount]] | None,
        usage_key: str,
        per: str,
    ) -> None:
        self.variant = variant
        self.prices = None if prices is None else dict(prices)
        self.usage_key = usage_key
        self.per = per
        self.usage_keys = frozenset({usage_key})
        self._labels: dict[tuple[str, str | None], str] = {}

    @property
    def billable(self) -> bool:
        return self.prices is not None

    def _price(self, p: Params, model: ModelInfo) -> tuple[Amount, str | None]:
        entry = None if self.prices is None else self.prices.get(model.id)
        if entry is None:
            raise NotBillable(f"model '{model.id}'", field="model")
        if not isinstance(entry, Mapping):
            return entry, None
        assert self.variant is not None  # load-time validation
        key = str(getattr(p, self.variant))
        price = entry.get(key)
        if price is None:
            raise InvalidParameter(
                f"params.{self.variant}: '{key}' is not offered by {model.id}",
                field=f"params.{self.variant}",
                allowed=_natural(entry),
            )
        return price, key

    def _line(self, model: ModelInfo, key: str | None, count: int, price: Amount) -> Line:
        label = self._labels.get((model.id, key))
        if label is None:
            variant = "" if key is None else f", {self.variant} {key}"
            label = self._labels[(model.id, key)] = f"{self.per}, {model.name}{variant}"
        return Line(label, count, price, mul(count, price))

    def quote(self, p: Params, model: ModelInfo) -> Priced:
        price, key = self._price(p, model)
        line = self._line(model, key, 1, price)
        return Priced(line.amount, line.amount, (line,), {self.usage_key: 1})

    def charge(self, p: Params, model: ModelInfo, usage: Mapping[str, Any]) -> Priced:
        self.check_usage_keys(usage)
        count = usage_count(usage, self.usage_key, maximum=1, default=1)
        price, key = self._price(p, model)
        line = self._line(model, key, count, price)
        return Priced(line.amount, line.amount, (line,), {self.usage_key: count})

    def price_rows(self, models: Mapping[str, ModelInfo], scale: int) -> list[PriceRow]:
        rows: list[PriceRow] = []
        for model in models.values():
            entry = None if self.prices is None else self.prices.get(model.id)
            if entry is None:
                rows.append(PriceRow(model.id, None, None, self.per))
            elif not isinstance(entry, Mapping):
                rows.append(PriceRow(model.id, None, minor_to_major(entry, scale), self.per))
            else:
                for key in _natural(entry):
                    price = minor_to_major(entry[key], scale)
                    rows.append(PriceRow(model.id, f"{self.variant}={key}", price, self.per))
        return rows


def _natural(table: Mapping[str, Any]) -> list[str]:
    """Keys in natural order: "4" < "6" < "8" < "10", then text.

    A key of ASCII digits is ordered by its value without ``int()``, which raises for
    other digits ``isdigit`` accepts ("²") and past 4,300 digits: an operator's catalog
    with such a key could not be listed.
    """

    def order(key: str) -> tuple[int, int, str, str]:
        if key.isascii() and key.isdigit():
            value = key.lstrip("0")
            return (0, len(value), value, key)
        return (1, 0, key, key)

    return sorted(table, key=order)


# ------------------------------------------------------------------------------- agentic


@dataclass(frozen=True, slots=True)
class Agentic:
    """Agentic generation: each candidate is billed as a full item (seeds 002 and 004).

    At most ``iterations x samples`` candidates are rendered per requested output.
    """

    enable_param: str
    iterations_param: str
    samples_param: str
    usage_key: str

    def enabled(self, p: Params) -> bool:
        return bool(getattr(p, self.enable_param))

    def shape(self, p: Params) -> tuple[int, int]:
        """(iterations, samples per iteration) a request asks for."""
        return int(getattr(p, self.iterations_param)), int(getattr(p, self.samples_param))

    def renders(self, p: Params) -> int:
        """The most candidates rendered per requested output: 1 when agentic is off."""
        if not self.enabled(p):
            return 1
        iterations, samples = self.shape(p)
        return iterations * samples

    def reported(self, p: Params, usage: Mapping[str, Any], maximum: int) -> int | None:
        """Candidates an agentic request reports rendering (required, at most ``maximum``).

        None when agentic is off, where reporting candidates is an error.
        """
        if self.enabled(p):
            return usage_count(usage, self.usage_key, maximum=maximum, default=None)
        if self.usage_key in usage:
            raise InvalidUsage(
                f"usage.{self.usage_key} applies only to agentic generation",
                field=f"usage.{self.usage_key}",
            )
        return None


def _renders(agentic: Agentic | None, p: Params) -> int:
    return 1 if agentic is None else agentic.renders(p)


def _reported(
    agentic: Agentic | None, p: Params, usage: Mapping[str, Any], maximum: int
) -> int | None:
    return None if agentic is None else agentic.reported(p, usage, maximum)


def _usage_keys(key: str, agentic: Agentic | None) -> frozenset[str]:
    return frozenset({key} if agentic is None else {key, agentic.usage_key})


def _addon_lines(p: Params, addons: tuple[tuple[str, Amount, str], ...]) -> tuple[Line, ...]:
    return tuple(
        Line(text, 1, amount, amount) for param, amount, text in addons if getattr(p, param)
    )


def _total(lines: tuple[Line, ...]) -> Amount:
    total: Amount = 0
    for line in lines:
        total = add(total, line.amount)
    return total


# ------------------------------------------------------------------------------ per unit


class PerUnitRule(Rule):
    """A unit price times a count, plus per-request add-ons (seed 002 text-to-image)."""

    kind = "per_unit"

    def __init__(
        self,
        *,
        count_param: str,
        usage_key: str,
        unit_price: Amount | None,
        addons: tuple[tuple[str, Amount, str], ...],
        agentic: Agentic | None,
        per: str,
    ) -> None:
        self.count_param = count_param
        self.usage_key = usage_key
        self.unit_price = unit_price
        self.addons = addons
        self.agentic = agentic
        self.per = per
        self.usage_keys = _usage_keys(usage_key, agentic)

    @property
    def billable(self) -> bool:
        return self.unit_price is not None

    def _unit_price(self, model: ModelInfo) -> Amount:
        if self.unit_price is None:
            raise NotBillable(f"model '{model.id}'", field="model")
        return self.unit_price

    def _units_line(self, p: Params, count: int, price: Amount, *, quote: bool) -> Line:
        if self.agentic is not None and self.agentic.enabled(p):
            iterations, samples = self.agentic.shape(p)
            text = (
                f"candidate {self.per}s, at most {iterations} iterations x {samples} samples"
                f" per {self.per}"
                if quote
                else f"candidate {self.per}s rendered"
            )
        else:
            text = f"{self.per}s"
        return Line(text, count, price, mul(count, price))

    def quote(self, p: Params, model: ModelInfo) -> Priced:
        price = self._unit_price(model)
        outputs = int(getattr(p, self.count_param))
        quantities: dict[str, int | Decimal] = {self.usage_key: outputs}
        units = outputs * _renders(self.agentic, p)
        if self.agentic is not None and self.agentic.enabled(p):
            meterable(self.agentic.usage_key, units, MAX_INT, quote=True)
            quantities[self.agentic.usage_key] = units
        lines = (self._units_line(p, units, price, quote=True), *_addon_lines(p, self.addons))
        total = _total(lines)
        return Priced(total, total, lines, quantities)

    def charge(self, p: Params, model: ModelInfo, usage: Mapping[str, Any]) -> Priced:
        self.check_usage_keys(usage)
        price = self._unit_price(model)
        outputs = int(getattr(p, self.count_param))
        produced = usage_count(usage, self.usage_key, maximum=outputs, default=outputs)
        quantities: dict[str, int | Decimal] = {self.usage_key: produced}
        candidates = _reported(self.agentic, p, usage, outputs * _renders(self.agentic, p))
        units = produced
        if candidates is not None and self.agentic is not None:
            units = quantities[self.agentic.usage_key] = candidates
        lines = (self._units_line(p, units, price, quote=False), *_addon_lines(p, self.addons))
        total = _total(lines)
        return Priced(total, total, lines, quantities)

    def price_rows(self, models: Mapping[str, ModelInfo], scale: int) -> list[PriceRow]:
        rows: list[PriceRow] = []
        for model in models.values():
            price = None if self.unit_price is None else minor_to_major(self.unit_price, scale)
            rows.append(PriceRow(model.id, None, price, self.per))
            for param, amount, _text in self.addons:
                rows.append(
                    PriceRow(model.id, f"{param}=true", minor_to_major(amount, scale), "request")
                )
        return rows


# ---------------------------------------------------------------------------- per second


class PerSecondRule(Rule):
    """A price per second of output video by resolution tier; seconds = frames / fps.

    The size parameter (a preset name or ``{width, height}``) is snapped to the nearest
    tier by its shorter side after clamping into the tiers' range, as seed 004 describes
    ("clamped and snapped to the nearest supported NVIDIA tier"); a tie goes to the
    higher tier, so we never undercharge.
    """

    kind = "per_second"

    def __init__(
        self,
        *,
        frames_param: str,
        fps_param: str,
        size_param: str,
        usage_key: str,
        tiers: Mapping[str, int],
        presets: Mapping[str, tuple[int, int]],
        prices: Mapping[str, Amount] | None,
        agentic: Agentic | None,
    ) -> None:
        self.frames_param = frames_param
        self.fps_param = fps_param
        self.size_param = size_param
        self.usage_key = usage_key
        self.tiers = sorted(tiers.items(), key=lambda item: item[1])
        self.presets = dict(presets)
        self.prices = None if prices is None else dict(prices)
        self.agentic = agentic
        self.usage_keys = _usage_keys(usage_key, agentic)

    @property
    def billable(self) -> bool:
        return self.prices is not None

    def tier(self, size: Any) -> str:
        """The resolution tier a size snaps to."""
        if isinstance(size, str):
            width, height = self.presets[size]
        else:
            width, height = size.width, size.height
        low, high = self.tiers[0][1], self.tiers[-1][1]
        short = min(max(min(width, height), low), high)
        best_name, best_px = self.tiers[0]
        for name, px in self.tiers:
            if abs(px - short) <= abs(best_px - short):
                best_name, best_px = name, px
        return best_name

    def _price(self, p: Params, model: ModelInfo) -> tuple[str, Amount]:
        tier = self.tier(getattr(p, self.size_param))
        price = None if self.prices is None else self.prices.get(tier)
        if price is None:
            raise NotBillable(f"model '{model.id}' at the {tier} tier", field="model")
        return tier, price

    def _priced(
        self, p: Params, tier: str, price: Amount, frames: int, renders: int, *, quote: bool
    ) -> Priced:
        fps = int(getattr(p, self.fps_param))
        seconds = div_up(frames, fps)
        meterable("seconds", seconds, MAX_SECONDS, quote=quote)
        what = f"{tier} video seconds ({frames} frames at {fps} fps)"
        if renders != 1:
            what += f" x {renders} candidate renders"
        amount = div_up(mul(mul(price, frames), renders), fps)
        line = Line(what, mul(seconds, renders), price, amount)
        quantities: dict[str, int | Decimal] = {"seconds": seconds, self.usage_key: frames}
        if self.agentic is not None and self.agentic.enabled(p):
            meterable(self.agentic.usage_key, renders, MAX_INT, quote=quote)
            quantities[self.agentic.usage_key] = renders
        return Priced(amount, amount, (line,), quantities)

    def quote(self, p: Params, model: ModelInfo) -> Priced:
        tier, price = self._price(p, model)
        frames = int(getattr(p, self.frames_param))
        return self._priced(p, tier, price, frames, _renders(self.agentic, p), quote=True)

    def charge(self, p: Params, model: ModelInfo, usage: Mapping[str, Any]) -> Priced:
        self.check_usage_keys(usage)
        tier, price = self._price(p, model)
        requested = int(getattr(p, self.frames_param))
        frames = usage_count(usage, self.usage_key, maximum=requested, default=requested)
        candidates = _reported(self.agentic, p, usage, _renders(self.agentic, p))
        renders = 1 if candidates is None else candidates
        return self._priced(p, tier, price, frames, renders, quote=False)

    def price_rows(self, models: Mapping[str, ModelInfo], scale: int) -> list[PriceRow]:
        rows: list[PriceRow] = []
        for model in models.values():
            for name, _px in self.tiers:
                price = None if self.prices is None else self.prices.get(name)
                major = None if price is None else minor_to_major(price, scale)
                rows.append(PriceRow(model.id, name, major, "second of video"))
        return rows
