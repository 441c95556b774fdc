"""Price catalogs: versioned TOML data, validated when loaded, compiled for fast quotes.

A catalog file names a catalog, its unit (code and scale) and one or more versions. A
version has an ``effective_from`` instant, a ``source`` (the document its numbers come
from) and operations. An operation names the provider request body it takes (``body``,
one of ``pricing.requests.SCHEMAS``), the parameter that selects the model, the defaults
and limits of its parameters, its models, and its pricing rule.

Prices are written in the unit's major units, as the seed documents print them ("$0.04",
"240 credits"); TOML floats are read as exact Decimals, never binary floats. A version may
say ``based_on = "<version id>"`` to start from another version of the same catalog and
change only what differs (tables merge key by key; other values replace).

Shipped catalogs live in ``pricing/catalogs``; an operator adds versions or whole new
catalogs with ``*.toml`` files in another directory (``CREDITLEDGER_CATALOG_DIR``). A
version can never be redefined: history is immutable, and a later ``effective_from``
takes over at that instant while earlier versions keep pricing what they priced.

Any problem fails the load with a :class:`~pricing.errors.CatalogError` that names the file,
the key and the reason.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import time
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from pricing.errors import (
    CatalogError,
    InvalidParameter,
    InvalidRequest,
    NoVersionInForce,
    UnknownModel,
)
from pricing.money import (
    EXACT,
    MAX_AMOUNT,
    Amount,
    decimal_text,
    is_whole,
    major_to_minor,
    minor_to_major,
)
from pricing.requests import MAX_INT, SCHEMAS, RequestBody
from pricing.rules import (
    Agentic,
    FixedRule,
    ModelInfo,
    PerSecondRule,
    PerTokenRule,
    PerUnitRule,
    Rule,
)

# ------------------------------------------------------------------------ file schema

Price = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
#: A unit's code: a catalog's amounts are counted in it, and the ledger keeps it with
#: every account and posting (columns of this length).
UNIT_CODE_MAX = 16
UnitCode = Annotated[str, Field(pattern=rf"^[a-z][a-z0-9_]{{0,{UNIT_CODE_MAX - 1}}}$")]
#: The most characters of a model's id: requests name it, and the ledger keeps it with
#: each hold, metering record and daily rollup (columns of this length).
MODEL_ID_MAX = 200
#: The most decimal places of a minor unit a price or multiplier may have (beyond its
#: unit's scale): 0.000001 usd at scale 6 is one minor unit, and a price may go on to
#: 0.000001000000000000000001 usd.
PRICE_PLACES_MAX = 18
ModelId = Annotated[str, Field(min_length=1, max_length=MODEL_ID_MAX)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitSpec(_Spec):
    """The unit every amount of the catalog is counted in, and its minor-unit scale."""

    code: UnitCode
    scale: int = Field(ge=0, le=18)


class ModelSpec(_Spec):
    name: str | None = None
    #: per_token: the tier whose multiplier applies.
    tier: str | None = None
    #: The most output tokens the model writes; the output reserved when a text request
    #: gives no max_tokens, and the upper limit of max_tokens.
    max_output_tokens: int | None = Field(default=None, gt=0, le=MAX_INT)
    #: Parameters this model does not accept (e.g. reference_images on DALL-E 3).
    unsupported_params: list[str] = Field(default_factory=list)


#: A limit's bound: within what a request's whole numbers can be (signed 64 bits).
Bound = Annotated[Decimal, Field(ge=-MAX_INT - 1, le=MAX_INT, allow_inf_nan=False)]


class LimitSpec(_Spec):
    """Bounds of one request parameter. Lengths count characters or list items."""

    ge: Bound | None = None
    le: Bound | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    allowed: list[str | int] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _not_empty(self) -> LimitSpec:
        if all(
            v is None for v in (self.ge, self.le, self.min_length, self.max_length, self.allowed)
        ):
            raise ValueError(
                "a limit needs at least one of ge, le, min_length, max_length, allowed"
            )
        return self

    def describe(self) -> Any:
        """The allowed values as an error reports them."""
        if self.allowed is not None:
            return list(self.allowed)
        out: dict[str, Any] = {}
        if self.ge is not None:
            out["min"] = _plain(self.ge)
        if self.le is not None:
            out["max"] = _plain(self.le)
        if self.min_length is not None:
            out["min_length"] = self.min_length
        if self.max_length is not None:
            out["max_length"] = self.max_length
        return out


def _plain(value: Decimal) -> int | str:
    return int(value) if is_whole(value) else str(value)


class AgenticSpec(_Spec):
    enable_param: str
    iterations_param: str
    samples_param: str
    usage_key: str = "candidates"


class AddonSpec(_Spec):
    param: str
    price: Price
    description: str


class PerTokenSpec(_Spec):
    type: Literal["per_token"]
    multipliers: dict[str, Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]]


class FixedSpec(_Spec):
    type: Literal["fixed"]
    per: str
    usage_key: str
    variant: str | None = None
    prices: dict[str, Price | dict[str, Price]] | None = None


class PerUnitSpec(_Spec):
    type: Literal["per_unit"]
    per: str
    count_param: str
    usage_key: str
    unit_price: Price | None = None
    addons: list[AddonSpec] = Field(default_factory=list)
    agentic: AgenticSpec | None = None


class PerSecondSpec(_Spec):
    type: Literal["per_second"]
    frames_param: str
    fps_param: str
    size_param: str
    usage_key: str = "num_frames"
    tiers: dict[str, Annotated[int, Field(gt=0)]] = Field(min_length=1)
    presets: dict[str, tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]]
    prices: dict[str, Price] | None = None
    agentic: AgenticSpec | None = None


PricingSpec = Annotated[
    PerTokenSpec | FixedSpec | PerUnitSpec | PerSecondSpec, Field(discriminator="type")
]


class OperationSpec(_Spec):
    description: str = ""
    #: The provider request body this operation takes (a key of pricing.requests.SCHEMAS).
    body: str
    #: The body field that selects the model; absent when the API offers one model.
    model_param: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, LimitSpec] = Field(default_factory=dict)
    models: dict[ModelId, ModelSpec] = Field(min_length=1)
    pricing: PricingSpec


class VersionSpec(_Spec):
    id: str = Field(min_length=1, max_length=64)
    effective_from: AwareDatetime
    source: str = Field(min_length=1)
    based_on: str | None = None
    #: What a FAILED outcome costs: "not_charged" (default) or "charged" (priced like a
    #: completed one from its reported usage). ERROR is never charged.
    failed_policy: Literal["not_charged", "charged"] = "not_charged"
    operations: dict[Identifier, OperationSpec] = Field(min_length=1)


class CatalogHeader(_Spec):
    name: Identifier
    title: str = ""
    unit: UnitSpec

    @field_validator("title")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


# ------------------------------------------------------------------------ compiled form


#: Pydantic's errors of a numeric bound: the key an answer's ``allowed`` names it by, and
#: the bound's name in the error's context.
_BOUNDS = {"less_than_equal": ("max", "le"), "greater_than_equal": ("min", "ge")}


class Operation:
    """One operation of one catalog version, ready to validate and price requests."""

    __slots__ = (
        "catalog",
        "version",
        "name",
        "description",
        "unit",
        "scale",
        "failed_policy",
        "body",
        "request_model",
        "model_param",
        "single_model",
        "models",
        "defaults",
        "limits",
        "default_keys",
        "rule",
        "_allowed",
        "_fields",
        "_validate",
    )

    def __init__(
        self,
        *,
        catalog: str,
        version: str,
        name: str,
        description: str,
        unit: str,
        scale: int,
        failed_policy: str,
        body: str,
        request_model: type[RequestBody],
        model_param: str | None,
        models: dict[str, ModelInfo],
        defaults: dict[str, Any],
        limits: dict[str, LimitSpec],
        rule: Rule,
    ) -> None:
        self.catalog = catalog
        self.version = version
        self.name = name
        self.description = description
        self.unit = unit
        self.scale = scale
        self.failed_policy = failed_policy
        self.body = body
        self.request_model = request_model
        self.model_param = model_param
        self.models = models
        self.single_model = next(iter(models.values())) if model_param is None else None
        self.defaults = defaults
        self.limits = limits
        self.default_keys = tuple(defaults)
        self.rule = rule
        self._allowed = {name: spec.describe() for name, spec in limits.items()}
        self._fields = sorted(request_model.model_fields)
        # The compiled validator itself: model_validate's Python wrapper costs a quarter
        # of the validation time on the estimate hot path.
        self._validate = request_model.__pydantic_validator__.validate_python

    @property
    def billable(self) -> bool:
        return self.rule.billable

    def validate(self, params: Any) -> RequestBody:
        """Validate a provider request body; errors name ``params.<field>``."""
        if type(params) is not dict and not isinstance(params, Mapping):
            raise InvalidRequest(
                "params must be a JSON object (the provider's request body)", field="params"
            )
        try:
            body: RequestBody = self._validate(params)
            return body
        except ValidationError as exc:
            raise self._parameter_error(exc) from None

    def _parameter_error(self, exc: ValidationError) -> InvalidParameter:
        errors: list[dict[str, Any]] = []
        for err in exc.errors(include_url=False, include_input=False):
            # Drop the union-branch labels pydantic adds ("str", "ImageSize", literal[...]).
            loc = [p for p in err["loc"] if not (isinstance(p, str) and _is_branch_label(p))]
            name = str(loc[0]) if loc else ""
            field = "params" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "int_parsing_size":
                # Pydantic's words for a whole number past 64 bits where it expected one
                # of a few (a Literal), as though it had been given text.
                msg = "a whole number past 64 bits, not one of the values allowed"
            entry: dict[str, Any] = {"field": field, "message": f"{field}: {msg}"}
            if err["type"] == "extra_forbidden":
                entry["message"] = f"{field}: unknown parameter of {self.catalog} {self.name}"
                entry["allowed"] = self._fields
            elif err["type"] == "missing":
                entry["message"] = f"{field}: is required"
            elif len(loc) == 1 and (name in self._allowed or err["type"] in _BOUNDS):
                allowed = self._allowed.get(name)
                bound = _BOUNDS.get(err["type"])
                if bound is not None and (allowed is None or isinstance(allowed, dict)):
                    # A bound of the body itself (64 bits), which the catalog's leave open.
                    allowed = {bound[0]: err["ctx"][bound[1]], **(allowed or {})}
                entry["allowed"] = allowed
            if not any(e["field"] == field for e in errors):
                errors.append(entry)
        first = errors[0]
        return InvalidParameter(
            first["message"], field=first["field"], allowed=first.get("allowed"), errors=errors
        )

    def resolve_model(self, p: RequestBody) -> ModelInfo:
        """The model a validated request selects, checked against what it may use."""
        if self.single_model is not None:
            model = self.single_model
        else:
            assert self.model_param is not None
            model_id = getattr(p, self.model_param)
            found = self.models.get(model_id)
            if found is None:
                raise UnknownModel(
                    f"params.{self.model_param}: unknown model '{model_id}' for "
                    f"{self.catalog} {self.name}",
                    field=f"params.{self.model_param}",
                    allowed=sorted(self.models),
                )
            model = found
        for param in model.unsupported_params:
            if getattr(p, param) is not None:
                raise InvalidParameter(
                    f"params.{param}: not supported by {model.id}",
                    field=f"params.{param}",
                    allowed=sorted(
                        m for m in self.models if param not in self.models[m].unsupported_params
                    ),
                )
        return model

    def defaults_applied(self, p: RequestBody) -> dict[str, Any]:
        """The defaults the request relied on (parameters it did not give)."""
        given = p.model_fields_set
        return {key: value for key, value in self.defaults.items() if key not in given}


def _is_branch_label(part: str) -> bool:
    return part in {"str", "int", "ImageSize", "list", "dict"} or part.startswith(
        ("literal[", "constrained-", "function-")
    )


def _jsonable(value: Any) -> Any:
    """A parameter value as JSON can carry it (Decimals as numbers only when whole)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):
        return int(value) if is_whole(value) else decimal_text(value)
    return value


@dataclass(frozen=True)
class CatalogVersion:
    id: str
    effective_from: datetime
    source: str
    failed_policy: str
    file: str
    operations: dict[str, Operation]
    #: What the version charges, as a SHA-256 of its resolved content (``digest``): the
    #: ledger keeps it for each version in force, so that a version changed in place,
    #: once it has priced requests, is refused.
    digest: str = ""


#: What a version may change without changing what it charges: words for people.
_WORDS_ONLY = ("source", "based_on")


def digest(unit: str, scale: int, data: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of a resolved version's content in one canonical spelling: its
    unit and scale, effective date, policies, operations, defaults, limits, models and
    prices, with numbers by value (``0.020`` is ``0.02``); not its ``source``, its
    ``based_on`` (what it is made of, not what it is), an operation's ``description`` or
    a model's display ``name``, which only say it in words."""
    content = {k: v for k, v in data.items() if k not in _WORDS_ONLY}
    operations = content.get("operations")
    if isinstance(operations, Mapping):
        ops = {}
        for name, op in operations.items():
            if isinstance(op, Mapping):
                op = {k: v for k, v in op.items() if k != "description"}
                models = op.get("models")
                if isinstance(models, Mapping):
                    op["models"] = {
                        m: {k: v for k, v in spec.items() if k != "name"}
                        if isinstance(spec, Mapping)
                        else spec
                        for m, spec in models.items()
                    }
            ops[name] = op
        content["operations"] = ops
    canonical = json.dumps(
        {"unit": unit, "scale": scale, "version": content},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_canonical,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):  # 4.0 is 4; 0.020 is 0.02
        return int(value) if is_whole(value) else {"decimal": decimal_text(value)}
    if isinstance(value, datetime) and value.tzinfo is not None:
        return {"instant": value.astimezone(UTC).isoformat()}
    if isinstance(value, datetime | date | dt_time):  # TOML's local date-times, dates, times
        return {"instant": value.isoformat()}
    raise TypeError(f"{type(value).__name__} has no canonical spelling")


class Catalog:
    """A catalog and its versions, ordered by ``effective_from``."""

    def __init__(
        self, name: str, title: str, unit: str, scale: int, versions: list[CatalogVersion]
    ):
        self.name = name
        self.title = title
        self.unit = unit
        self.scale = scale
        self.versions = sorted(versions, key=lambda v: v.effective_from)
        self._by_id = {v.id: v for v in self.versions}
        self._starts = [_micros(v.effective_from) for v in self.versions]

    def version_at(self, at: datetime | None = None) -> CatalogVersion:
        """The version in force at ``at`` (timezone-aware; default: now)."""
        if at is None:
            instant = time.time_ns() // 1000
        else:
            if at.tzinfo is None or at.utcoffset() is None:
                raise InvalidRequest("at must be timezone-aware", field="at")
            instant = _micros(at)
        index = bisect.bisect_right(self._starts, instant) - 1
        if index < 0:
            first = self.versions[0]
            raise NoVersionInForce(
                f"catalog '{self.name}' has no version in force at {at}; the first takes "
                f"effect at {first.effective_from.isoformat()}",
                field="at",
                allowed={"from": first.effective_from.isoformat()},
            )
        return self.versions[index]

    def version(self, version_id: str) -> CatalogVersion:
        """A version by id (to price usage with the version a quote used)."""
        found = self._by_id.get(version_id)
        if found is None:
            raise InvalidRequest(
                f"catalog '{self.name}' has no version '{version_id}'",
                field="catalog_version",
                allowed=list(self._by_id),
            )
        return found


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, in integers (no float)."""
    return (at - _EPOCH) // _MICROSECOND


# ------------------------------------------------------------------------------ loading


@dataclass
class _RawVersion:
    file: str
    index: int
    data: dict[str, Any]


@dataclass
class _RawCatalog:
    header: CatalogHeader
    header_file: str
    versions: list[_RawVersion]


def shipped_catalog_files() -> list[tuple[str, str]]:
    """(name, text) of every catalog shipped in ``pricing/catalogs``."""
    folder = resources.files("pricing.catalogs")
    return sorted(
        (f"pricing/catalogs/{entry.name}", entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    )


def load_catalogs(extra_dirs: Sequence[Path | str] = (), *, shipped: bool = True) -> CatalogSet:
    """Load the shipped catalogs and every ``*.toml`` file of ``extra_dirs``.

    Raises :class:`CatalogError` naming the file, key and reason of the first problem.
    """
    sources: list[tuple[str, str]] = shipped_catalog_files() if shipped else []
    for directory in extra_dirs:
        folder = Path(directory)
        if not folder.is_dir():
            raise CatalogError(str(folder), "", "catalog directory does not exist")
        for path in sorted(folder.glob("*.toml")):
            try:
                sources.append((str(path), path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise CatalogError(str(path), "", f"cannot read: {exc}") from None
    return CatalogSet.from_sources(sources)


def _parse(file: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(file, "", f"not valid TOML: {exc}") from None


_RULE_TYPES = {"per_token", "fixed", "per_unit", "per_second"}


def _key_parts(loc: Sequence[int | str]) -> list[str]:
    """A pydantic error location as the TOML key path, without union/tag labels."""
    parts: list[str] = []
    for part in loc:
        text = str(part)
        if parts and parts[-1] == "pricing" and text in _RULE_TYPES:
            continue  # the discriminator tag
        if (
            text in {"decimal", "int", "str", "bool"}
            or "[" in text
            or "-" in text
            and (text.startswith(("function-", "constrained-")))
        ):
            continue  # the name of a union branch
        parts.append(f"[{part}]" if isinstance(part, int) else text)
    return parts


def _spec_error(file: str, prefix: str, exc: ValidationError) -> CatalogError:
    err = exc.errors(include_url=False)[0]
    parts = ([prefix] if prefix else []) + _key_parts(err["loc"])
    key = ".".join(parts).replace(".[", "[")
    return CatalogError(file, key, err["msg"])


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_NOT_INHERITED = {"id", "effective_from", "source", "based_on"}


def _resolve(raw: _RawCatalog) -> list[tuple[_RawVersion, dict[str, Any]]]:
    by_id: dict[str, _RawVersion] = {}
    for rv in raw.versions:
        vid = rv.data.get("id")
        if isinstance(vid, str):
            if vid in by_id:
                other = by_id[vid]
                raise CatalogError(
                    rv.file,
                    f"versions[{rv.index}].id",
                    f"version '{vid}' of catalog '{raw.header.name}' is already defined in "
                    f"{other.file}; versions are immutable, add a new one",
                )
            by_id[vid] = rv
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(rv: _RawVersion, chain: tuple[str, ...]) -> dict[str, Any]:
        vid = str(rv.data.get("id"))
        if vid in resolved:
            return resolved[vid]
        base_id = rv.data.get("based_on")
        if base_id is None:
            data = rv.data
        else:
            key = f"versions[{rv.index}].based_on"
            if base_id not in by_id:
                raise CatalogError(
                    rv.file, key, f"unknown version '{base_id}'; known: {sorted(by_id)}"
                )
            if base_id in chain:
                raise CatalogError(rv.file, key, f"cycle: {' -> '.join((*chain, base_id))}")
            base = resolve(by_id[base_id], (*chain, base_id))
            inherited = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
            data = _merge(inherited, rv.data)
        resolved[vid] = data
        return data

    return [(rv, resolve(rv, (str(rv.data.get("id")),))) for rv in raw.versions]


class CatalogSet:
    """Every loaded catalog by name: the pricing engine's view of the price books."""

    def __init__(self, catalogs: Mapping[str, Catalog]) -> None:
        self.catalogs = dict(sorted(catalogs.items()))

    def __iter__(self) -> typing.Iterator[Catalog]:
        return iter(self.catalogs.values())

    @classmethod
    def from_sources(cls, sources: Iterable[tuple[str, str]]) -> CatalogSet:
        """Build from (file name, TOML text) pairs; later files add versions."""
        raws: dict[str, _RawCatalog] = {}
        for file, text in sources:
            data = _parse(file, text)
            versions = data.pop("versions", None)
            try:
                header = CatalogHeader.model_validate(data)
            except ValidationError as exc:
                raise _spec_error(file, "", exc) from None
            if not isinstance(versions, list) or not versions:
                raise CatalogError(
                    file, "versions", "a catalog file needs at least one [[versions]]"
                )
            raw = raws.get(header.name)
            if raw is None:
                raw = raws[header.name] = _RawCatalog(header, file, [])
            elif raw.header.unit != header.unit:
                raise CatalogError(
                    file,
                    "unit",
                    f"catalog '{header.name}' is counted in {raw.header.unit.code} "
                    f"(scale {raw.header.unit.scale}) by {raw.header_file}; a unit never changes",
                )
            for index, version in enumerate(versions):
                if not isinstance(version, dict):
                    raise CatalogError(file, f"versions[{index}]", "a version must be a table")
                raw.versions.append(_RawVersion(file, index, version))
        catalogs = {name: _compile_catalog(raw) for name, raw in raws.items()}
        return cls(catalogs)


# ------------------------------------------------------------------------------ compiling


def _compile_catalog(raw: _RawCatalog) -> Catalog:
    header = raw.header
    versions = []
    for rv, data in _resolve(raw):
        prefix = f"versions[{rv.index}]"
        try:
            spec = VersionSpec.model_validate(data)
        except ValidationError as exc:
            raise _spec_error(rv.file, prefix, exc) from None
        operations = {
            name: _compile_operation(header, spec, name, op, rv.file, f"{prefix}.operations.{name}")
            for name, op in spec.operations.items()
        }
        versions.append(
            CatalogVersion(
                spec.id,
                spec.effective_from,
                spec.source,
                spec.failed_policy,
                rv.file,
                operations,
                digest(header.unit.code, header.unit.scale, data),
            )
        )
    starts: dict[datetime, str] = {}
    for v in versions:
        if v.effective_from in starts:
            raise CatalogError(
                v.file,
                "effective_from",
                f"versions '{starts[v.effective_from]}' and '{v.id}' of catalog '{header.name}' "
                "take effect at the same instant",
            )
        starts[v.effective_from] = v.id
    return Catalog(header.name, header.title, header.unit.code, header.unit.scale, versions)


def _strip_none(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007
    return annotation


def _with_literal(annotation: Any, allowed: list[str | int]) -> Any:
    """Replace the scalar member(s) of ``annotation`` matching ``allowed`` by a Literal."""
    literal = Literal[tuple(allowed)]  # type: ignore[valid-type]
    kinds = {type(v) for v in allowed}
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = tuple(literal if a in kinds else a for a in args)
        if literal not in members:
            return None
        return typing.Union[members]  # noqa: UP007
    return literal if annotation in kinds else None


def _narrow(
    base: type[RequestBody],
    name: str,
    defaults: Mapping[str, Any],
    limits: Mapping[str, LimitSpec],
    file: str,
    prefix: str,
) -> type[RequestBody]:
    """The body model with this operation's limits and defaults built in."""
    fields: dict[str, Any] = {}
    for fname in {*defaults, *limits}:
        info = base.model_fields.get(fname)
        if info is None:
            where = "defaults" if fname in defaults else "limits"
            raise CatalogError(
                file,
                f"{prefix}.{where}.{fname}",
                f"'{fname}' is not a parameter of this body; "
                f"parameters: {sorted(base.model_fields)}",
            )
        annotation: Any = info.annotation
        metadata: list[Any] = list(info.metadata)
        limit = limits.get(fname)
        if limit is not None:
            if limit.allowed is not None:
                narrowed = _with_literal(annotation, limit.allowed)
                if narrowed is None:
                    raise CatalogError(
                        file,
                        f"{prefix}.limits.{fname}.allowed",
                        f"allowed values {limit.allowed} do not match the type of '{fname}'",
                    )
                annotation = narrowed
                # Listed values need no range of the body's (and a literal checked for
                # one takes pydantic a slower validator).
                metadata = [
                    m
                    for m in metadata
                    if not isinstance(m, annotated_types.Ge | annotated_types.Le)
                ]
            if limit.ge is not None:
                metadata.append(annotated_types.Ge(limit.ge))
            if limit.le is not None:
                metadata.append(annotated_types.Le(limit.le))
            if limit.min_length is not None:
                metadata.append(annotated_types.MinLen(limit.min_length))
            if limit.max_length is not None:
                metadata.append(annotated_types.MaxLen(limit.max_length))
        default: Any = info.default if info.default is not PydanticUndefined else ...
        if fname in defaults:
            annotation = _strip_none(annotation)
        full: Any = Annotated[(annotation, *metadata)] if metadata else annotation
        if fname in defaults:
            try:
                # Strict like the body itself (a field's own Strict(False) still applies).
                default = TypeAdapter(full, config=ConfigDict(strict=True)).validate_python(
                    defaults[fname]
                )
            except ValidationError as exc:
                raise CatalogError(
                    file,
                    f"{prefix}.defaults.{fname}",
                    f"default {defaults[fname]!r} is not allowed: {exc.errors()[0]['msg']}",
                ) from None
        fields[fname] = (full, Field(default=default))
    return create_model(name, __base__=base, **fields)


def _values(body: type[RequestBody], param: str) -> list[str] | None:
    """The values a parameter may take, as a price table's keys write them, when the body
    lists them (a Literal of its own, or narrowed to a limit's ``allowed``); None when it
    takes any value of its type."""
    annotation = _strip_none(body.model_fields[param].annotation)
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def _body_field(body: type[RequestBody], param: str, file: str, key: str) -> None:
    if param not in body.model_fields:
        raise CatalogError(
            file,
            key,
            f"'{param}' is not a parameter of this body; parameters: {sorted(body.model_fields)}",
        )


def _minor(price: Decimal, scale: int, file: str, key: str) -> Amount:
    """A catalog's price (or multiplier) in minor units, refused unless it is a rate the
    money arithmetic keeps exact: at most :data:`MAX_AMOUNT` minor units (no request
    could ever be charged a dearer one, however little it used) and at most
    :data:`PRICE_PLACES_MAX` decimal places of a minor unit. Then a rate has at most 37
    significant digits and its product with a 64-bit quantity at most 56, which the
    money context holds exactly (a longer rate would be rounded where it is read)."""
    most = minor_to_major(MAX_AMOUNT, scale)
    if price > most:
        raise CatalogError(
            file,
            key,
            f"{price} is more than any amount can be: at most {decimal_text(most)}"
            + (f" ({MAX_AMOUNT} minor units)" if scale else ""),
        )
    places = scale + PRICE_PLACES_MAX
    if EXACT.quantize(price, Decimal(1).scaleb(-places)) != price:
        raise CatalogError(
            file,
            key,
            f"{price} has more decimal places than a price can: at most {places} "
            f"({PRICE_PLACES_MAX} places of a minor unit at scale {scale})",
        )
    return major_to_minor(price, scale)


def _agentic(
    spec: AgenticSpec | None, body: type[RequestBody], file: str, key: str
) -> Agentic | None:
    if spec is None:
        return None
    for attr in ("enable_param", "iterations_param", "samples_param"):
        _body_field(body, getattr(spec, attr), file, f"{key}.{attr}")
    return Agentic(spec.enable_param, spec.iterations_param, spec.samples_param, spec.usage_key)


def _needs_default(defaults: Mapping[str, Any], param: str, file: str, key: str) -> None:
    if param not in defaults:
        raise CatalogError(file, key, f"'{param}' needs a default in this operation's defaults")


def _compile_rule(
    spec: PricingSpec,
    op: OperationSpec,
    body: type[RequestBody],
    scale: int,
    file: str,
    prefix: str,
) -> Rule:
    key = f"{prefix}.pricing"
    if isinstance(spec, PerTokenSpec):
        for field_name in ("prompt", "messages", "max_tokens"):
            _body_field(body, field_name, file, f"{prefix}.body")
        for mid, model in op.models.items():
            if model.tier not in spec.multipliers:
                raise CatalogError(
                    file,
                    f"{prefix}.models.{mid}.tier",
                    f"tier {model.tier!r} has no multiplier; tiers: {sorted(spec.multipliers)}",
                )
            if model.max_output_tokens is None:
                raise CatalogError(
                    file,
                    f"{prefix}.models.{mid}.max_output_tokens",
                    "required for per_token pricing",
                )
        # A multiplier multiplies tokens (minor units): it is a rate, scaled like a price.
        return PerTokenRule(
            {
                t: _minor(m, scale, file, f"{key}.multipliers.{t}")
                for t, m in spec.multipliers.items()
            }
        )
    if isinstance(spec, FixedSpec):
        if spec.variant is not None:
            _body_field(body, spec.variant, file, f"{key}.variant")
            _needs_default(op.defaults, spec.variant, file, f"{key}.variant")
        prices: dict[str, Amount | dict[str, Amount]] | None = None
        takes = _values(body, spec.variant) if spec.variant is not None else None
        if spec.prices is not None:
            prices = {}
            for mid, entry in spec.prices.items():
                if mid not in op.models:
                    raise CatalogError(
                        file, f"{key}.prices.{mid}", f"unknown model; models: {sorted(op.models)}"
                    )
                if isinstance(entry, Decimal):
                    if spec.variant is not None:
                        raise CatalogError(
                            file, f"{key}.prices.{mid}", f"needs a table by '{spec.variant}'"
                        )
                    prices[mid] = _minor(entry, scale, file, f"{key}.prices.{mid}")
                else:
                    if spec.variant is None:
                        raise CatalogError(
                            file, f"{key}.prices.{mid}", "a table needs pricing.variant"
                        )
                    if not entry:
                        raise CatalogError(file, f"{key}.prices.{mid}", "empty price table")
                    for k in entry:
                        if takes is not None and k not in takes:
                            raise CatalogError(
                                file,
                                f"{key}.prices.{mid}.{k}",
                                f"'{spec.variant}' never takes {k!r}, so no request could be "
                                f"charged this price; it takes: {takes}",
                            )
                    prices[mid] = {
                        k: _minor(v, scale, file, f"{key}.prices.{mid}.{k}")
                        for k, v in entry.items()
                    }
        return FixedRule(
            variant=spec.variant, prices=prices, usage_key=spec.usage_key, per=spec.per
        )
    if isinstance(spec, PerUnitSpec):
        _body_field(body, spec.count_param, file, f"{key}.count_param")
        _needs_default(op.defaults, spec.count_param, file, f"{key}.count_param")
        for i, addon in enumerate(spec.addons):
            _body_field(body, addon.param, file, f"{key}.addons[{i}].param")
            _needs_default(op.defaults, addon.param, file, f"{key}.addons[{i}].param")
        agentic = _agentic(spec.agentic, body, file, f"{key}.agentic")
        if agentic is not None:
            for param in (agentic.enable_param, agentic.iterations_param, agentic.samples_param):
                _needs_default(op.defaults, param, file, f"{key}.agentic")
        return PerUnitRule(
            count_param=spec.count_param,
            usage_key=spec.usage_key,
            unit_price=None
            if spec.unit_price is None
            else _minor(spec.unit_price, scale, file, f"{key}.unit_price"),
            addons=tuple(
                (a.param, _minor(a.price, scale, file, f"{key}.addons[{i}].price"), a.description)
                for i, a in enumerate(spec.addons)
            ),
            agentic=agentic,
            per=spec.per,
        )
    assert isinstance(spec, PerSecondSpec)
    for attr in ("frames_param", "fps_param", "size_param"):
        param = getattr(spec, attr)
        _body_field(body, param, file, f"{key}.{attr}")
        _needs_default(op.defaults, param, file, f"{key}.{attr}")
    agentic = _agentic(spec.agentic, body, file, f"{key}.agentic")
    if agentic is not None:
        for param in (agentic.enable_param, agentic.iterations_param, agentic.samples_param):
            _needs_default(op.defaults, param, file, f"{key}.agentic")
    size_limit = op.limits.get(spec.size_param)
    presets = size_limit.allowed if size_limit is not None and size_limit.allowed else []
    missing = sorted(str(p) for p in presets if p not in spec.presets)
    if missing:
        raise CatalogError(file, f"{key}.presets", f"no dimensions for presets {missing}")
    if spec.prices is not None:
        unknown = sorted(set(spec.prices) - set(spec.tiers))
        if unknown:
            raise CatalogError(
                file, f"{key}.prices.{unknown[0]}", f"unknown tier; tiers: {sorted(spec.tiers)}"
            )
    return PerSecondRule(
        frames_param=spec.frames_param,
        fps_param=spec.fps_param,
        size_param=spec.size_param,
        usage_key=spec.usage_key,
        tiers=spec.tiers,
        presets=spec.presets,
        prices=None
        if spec.prices is None
        else {t: _minor(p, scale, file, f"{key}.prices.{t}") for t, p in spec.prices.items()},
        agentic=agentic,
    )


def _floors(spec: PricingSpec, body: type[RequestBody]) -> dict[str, int]:
    """The parameters of ``body`` a rule counts what it bills by, and the least each can
    be: a count is never negative, and frames are divided by at least one per second."""
    floors: dict[str, int] = {}
    if isinstance(spec, PerTokenSpec):
        floors["max_tokens"] = 0
    elif isinstance(spec, PerUnitSpec):
        floors[spec.count_param] = 0
    elif isinstance(spec, PerSecondSpec):
        floors[spec.frames_param] = 0
        floors[spec.fps_param] = 1
    agentic = getattr(spec, "agentic", None)
    if agentic is not None:
        floors[agentic.iterations_param] = floors[agentic.samples_param] = 0
    # A parameter the body lacks is the rule's error to name, when it is compiled.
    return {param: floor for param, floor in floors.items() if param in body.model_fields}


def _floored(
    limits: Mapping[str, LimitSpec], floors: Mapping[str, int], file: str, prefix: str
) -> dict[str, LimitSpec]:
    """``limits`` with each counted parameter's floor: its own ``ge`` where it has one
    (never below the floor), else the floor, so a negative count is refused by name."""
    out = dict(limits)
    for param, floor in floors.items():
        limit = out.get(param)
        if limit is None:
            out[param] = LimitSpec(ge=Decimal(floor))
            continue
        key = f"{prefix}.limits.{param}"
        if limit.allowed is not None:
            low = [v for v in limit.allowed if isinstance(v, int) and v < floor]
            if low:
                raise CatalogError(
                    file,
                    f"{key}.allowed",
                    f"{low[0]} is less than {floor}: '{param}' counts what is billed",
                )
        elif limit.ge is None:
            out[param] = limit.model_copy(update={"ge": Decimal(floor)})
        elif limit.ge < floor:
            raise CatalogError(
                file,
                f"{key}.ge",
                f"{limit.ge} is less than {floor}: '{param}' counts what is billed",
            )
    return out


def _compile_operation(
    header: CatalogHeader,
    version: VersionSpec,
    name: str,
    spec: OperationSpec,
    file: str,
    prefix: str,
) -> Operation:
    base = SCHEMAS.get(spec.body)
    if base is None:
        raise CatalogError(
            file, f"{prefix}.body", f"unknown request body; known: {sorted(SCHEMAS)}"
        )
    if spec.model_param is None:
        if len(spec.models) != 1:
            raise CatalogError(
                file, f"{prefix}.models", "without model_param an operation has exactly one model"
            )
    else:
        _body_field(base, spec.model_param, file, f"{prefix}.model_param")
        default_model = spec.defaults.get(spec.model_param)
        if default_model not in spec.models:
            raise CatalogError(
                file,
                f"{prefix}.defaults.{spec.model_param}",
                f"the default model {default_model!r} is not one of the models: "
                f"{sorted(spec.models)}",
            )
    for mid, model in spec.models.items():
        for param in model.unsupported_params:
            _body_field(base, param, file, f"{prefix}.models.{mid}.unsupported_params")
            if param in spec.defaults:
                raise CatalogError(
                    file,
                    f"{prefix}.models.{mid}.unsupported_params",
                    f"'{param}' has a default, so every request to {mid} would be refused",
                )
    limits = _floored(spec.limits, _floors(spec.pricing, base), file, prefix)
    request_model = _narrow(
        base, f"{header.name}.{version.id}.{name}", spec.defaults, limits, file, prefix
    )
    rule = _compile_rule(spec.pricing, spec, request_model, header.unit.scale, file, prefix)
    models = {
        mid: ModelInfo(
            id=mid,
            name=m.name or mid,
            tier=m.tier,
            max_output_tokens=m.max_output_tokens,
            unsupported_params=tuple(m.unsupported_params),
        )
        for mid, m in spec.models.items()
    }
    return Operation(
        catalog=header.name,
        version=version.id,
        name=name,
        description=spec.description,
        unit=header.unit.code,
        scale=header.unit.scale,
        failed_policy=version.failed_policy,
        body=spec.body,
        request_model=request_model,
        model_param=spec.model_param,
        models=models,
        defaults={k: _jsonable(request_model.model_fields[k].default) for k in spec.defaults},
        limits=limits,
        rule=rule,
    )


# ------------------------------------------------------------------------------ listing


def describe(catalogs: CatalogSet, at: datetime | None = None) -> list[dict[str, Any]]:
    """Every catalog, version, operation, model and price, JSON-ready.

    ``in_force`` marks the version in force at ``at`` (default: now); prices are in major
    units as strings, ``null`` where none is configured.
    """
    out: list[dict[str, Any]] = []
    for catalog in catalogs:
        try:
            current: str | None = catalog.version_at(at).id
        except NoVersionInForce:
            current = None
        versions = []
        for version in catalog.versions:
            operations = []
            for op in version.operations.values():
                operations.append(
                    {
                        "name": op.name,
                        "description": op.description,
                        "body": op.body,
                        "billable": op.billable,
                        "model_param": op.model_param,
                        "defaults": op.defaults,
                        "limits": {k: v.describe() for k, v in op.limits.items()},
                        "models": [
                            {"id": m.id, "name": m.name, **({"tier": m.tier} if m.tier else {})}
                            for m in op.models.values()
                        ],
                        "prices": [
                            row.to_dict() for row in op.rule.price_rows(op.models, op.scale)
                        ],
                    }
                )
            versions.append(
                {
                    "id": version.id,
                    "effective_from": version.effective_from.isoformat(),
                    "source": version.source,
                    "in_force": version.id == current,
                    "failed_policy": version.failed_policy,
                    "operations": operations,
                }
            )
        out.append(
            {
                "name": catalog.name,
                "title": catalog.title,
                "unit": catalog.unit,
                "scale": catalog.scale,
                "versions": versions,
            }
        )
    return out
