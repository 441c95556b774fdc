"""The cost engine: quote a request before it runs, price its usage after.

Pure: no database, no web framework, no network. Both functions take the request as the
gateway sees it::

    {"catalog": "veo3", "operation": "video", "params": {...the provider's body...}}

``estimate`` answers what it will cost (``cost``) and the most it can cost (``max_cost``,
what a hold reserves). ``price_usage`` prices what the provider reports it used, given the
outcome status; ERROR is never charged and FAILED follows the version's policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from pricing.catalog import CatalogSet, Operation, load_catalogs
from pricing.errors import (
    AmountOverflow,
    InvalidRequest,
    InvalidUsage,
    NotBillable,
    UnknownCatalog,
    UnknownOperation,
)
from pricing.money import decimal_text, to_minor_units
from pricing.rules import Line

#: The outcome statuses of a generation (seed 002: COMPLETED, FAILED, ERROR).
STATUSES = ("COMPLETED", "FAILED", "ERROR")


_ENVELOPE = ("catalog", "operation", "params")


class Quote(NamedTuple):
    """What a request will cost, in whole minor units of ``unit``.

    ``cost`` is the charge if the request runs as asked; ``max_cost`` the most it can be
    charged within its own limits (what an authorization holds). Text quotes reserve the
    conservative input estimate and the full ``max_tokens``, so for them the two agree.
    """

    catalog: str
    catalog_version: str
    operation: str
    model: str
    unit: str
    scale: int
    cost: int
    max_cost: int
    lines: tuple[Line, ...]
    defaults_applied: dict[str, Any]
    #: The usage this quote assumes, by metering name (input_tokens, images, seconds...).
    estimated_usage: dict[str, int | Decimal]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; amounts are ints, Decimals are strings."""
        body = self._asdict()
        body["lines"] = [line.to_dict() for line in self.lines]
        body["estimated_usage"] = _quantities(self.estimated_usage)
        return body


class Charge(NamedTuple):
    """What a finished request costs: ``amount`` whole minor units (0 when not charged)."""

    catalog: str
    catalog_version: str
    operation: str
    model: str
    unit: str
    scale: int
    status: str
    charged: bool
    amount: int
    lines: tuple[Line, ...]
    #: The usage that was priced, by metering name.
    usage: dict[str, int | Decimal]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; amounts are ints, Decimals are strings."""
        body = self._asdict()
        body["lines"] = [line.to_dict() for line in self.lines]
        body["usage"] = _quantities(self.usage)
        return body


def _quantities(values: Mapping[str, int | Decimal]) -> dict[str, int | str]:
    return {k: v if isinstance(v, int) else decimal_text(v) for k, v in values.items()}


@lru_cache(maxsize=1)
def default_catalogs() -> CatalogSet:
    """The shipped catalogs, loaded once. Callers with operator catalogs pass their own set."""
    return load_catalogs()


def _envelope(request: Any) -> tuple[str, str, Any]:
    if type(request) is not dict and not isinstance(request, Mapping):
        raise InvalidRequest(
            "the request must be an object with catalog, operation and params",
            allowed=list(_ENVELOPE),
        )
    for key in request:
        if key not in _ENVELOPE:
            raise InvalidRequest(f"unknown field '{key}'", field=str(key), allowed=list(_ENVELOPE))
    catalog = request.get("catalog")
    operation = request.get("operation")
    if "params" not in request:
        raise InvalidRequest("params is required (the provider's request body)", field="params")
    if not isinstance(catalog, str):
        raise InvalidRequest("catalog is required (a string)", field="catalog")
    if not isinstance(operation, str):
        raise InvalidRequest("operation is required (a string)", field="operation")
    return catalog, operation, request["params"]


def resolve_operation(
    catalogs: CatalogSet,
    catalog_name: str,
    operation: str,
    *,
    at: datetime | None = None,
    catalog_version: str | None = None,
) -> Operation:
    """The operation of the version in force at ``at`` (or of ``catalog_version``)."""
    catalog = catalogs.catalogs.get(catalog_name)
    if catalog is None:
        raise UnknownCatalog(
            f"unknown catalog '{catalog_name}'", field="catalog", allowed=list(catalogs.catalogs)
        )
    version = catalog.version(catalog_version) if catalog_version else catalog.version_at(at)
    op = version.operations.get(operation)
    if op is None:
        raise UnknownOperation(
            f"catalog '{catalog_name}' version {version.id} has no operation '{operation}'",
            field="operation",
            allowed=list(version.operations),
        )
    return op


def _not_billable(op: Operation, what: str) -> NotBillable:
    return NotBillable(
        f"no price is configured for {op.catalog} {op.name} (version {op.version}), {what}; "
        "an operator can supply one in a catalog version under CREDITLEDGER_CATALOG_DIR",
        field="operation",
    )


def estimate(
    request: Mapping[str, Any], at: datetime | None = None, *, catalogs: CatalogSet | None = None
) -> Quote:
    """Quote a request with the catalog version in force at ``at`` (default: now).

    Raises an :class:`~pricing.errors.InvalidRequest` subclass naming the field and the
    allowed values, or :class:`~pricing.errors.NotBillable` for an operation without price.
    """
    name, operation, params = _envelope(request)
    op = resolve_operation(catalogs or default_catalogs(), name, operation, at=at)
    p = op.validate(params)
    model = op.resolve_model(p)
    try:
        priced = op.rule.quote(p, model)
    except NotBillable as exc:
        raise _not_billable(op, exc.message) from None
    defaults = op.defaults_applied(p)
    if priced.defaults is not None:
        defaults.update(priced.defaults)
    try:
        cost, max_cost = to_minor_units(priced.expected), to_minor_units(priced.maximum)
    except AmountOverflow as exc:
        exc.field = "params"  # what asked for it
        raise
    return Quote(
        catalog=op.catalog,
        catalog_version=op.version,
        operation=op.name,
        model=model.id,
        unit=op.unit,
        scale=op.scale,
        cost=cost,
        max_cost=max_cost,
        lines=priced.lines,
        defaults_applied=defaults,
        estimated_usage=priced.quantities,
    )


def error_charge(
    catalog: str, catalog_version: str, operation: str, model: str, unit: str, scale: int
) -> Charge:
    """What a request that ended in ERROR costs: nothing, under any catalog, whatever
    it used. (A capture of one needs no price list: the ledger releases its hold so even
    when the catalogs no longer hold the version it was quoted with.)"""
    reason = "ERROR is a provider system error: never charged"
    return Charge(
        catalog, catalog_version, operation, model, unit, scale, "ERROR", False, 0, (), {}, reason
    )


def price_usage(
    request: Mapping[str, Any],
    usage: Mapping[str, Any] | None,
    status: str,
    *,
    catalog_version: str | None = None,
    at: datetime | None = None,
    catalogs: CatalogSet | None = None,
) -> Charge:
    """Price what a request used, by its outcome ``status``.

    ``catalog_version`` pins the version the request was quoted with (a capture is priced
    by the book its hold was made under, even if a newer one took effect since);
    otherwise the version in force at ``at`` (default: now). ``usage`` is the provider's
    usage object for text (``input_tokens``, ``output_tokens``) or what was produced for
    media (``images``, ``videos``, ``num_frames``, ``candidates``; each defaults to what
    the request asked for, except agentic candidates, which must be reported).
    """
    name, operation, params = _envelope(request)
    op = resolve_operation(
        catalogs or default_catalogs(), name, operation, at=at, catalog_version=catalog_version
    )
    p = op.validate(params)
    model = op.resolve_model(p)
    if status not in STATUSES:
        raise InvalidUsage(f"unknown status {status!r}", field="status", allowed=list(STATUSES))
    if usage is None:
        usage = {}
    if not isinstance(usage, Mapping):
        raise InvalidUsage("usage must be an object", field="usage")

    def free(reason: str) -> Charge:
        return Charge(
            op.catalog,
            op.version,
            op.name,
            model.id,
            op.unit,
            op.scale,
            status,
            False,
            0,
            (),
            {},
            reason,
        )

    if status == "ERROR":
        return error_charge(op.catalog, op.version, op.name, model.id, op.unit, op.scale)
    if status == "FAILED" and op.failed_policy == "not_charged":
        return free("FAILED is not charged under this catalog version's policy")
    try:
        priced = op.rule.charge(p, model, usage)
    except NotBillable as exc:
        raise _not_billable(op, exc.message) from None
    try:
        amount = to_minor_units(priced.expected)
    except AmountOverflow as exc:
        exc.field = "usage"  # what asked for it
        raise
    return Charge(
        op.catalog,
        op.version,
        op.name,
        model.id,
        op.unit,
        op.scale,
        status,
        True,
        amount,
        priced.lines,
        priced.quantities,
        f"{status}: priced from reported usage",
    )
