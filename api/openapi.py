"""``/openapi.json`` with the integer bounds the API enforces, exactly.

FastAPI passes the document through its own OpenAPI model, whose ``maximum`` and
``minimum`` are floats: an amount's bound, 9223372036854775807 (2**63 - 1), came out as
``9.223372036854776e+18``, which is 2**63, a value the API refuses. A client generated
from the document, or a tool checking requests against it, then takes a limit one unit
higher than the real one. Here every bound of an integer schema is an integer again, and
the bounds a float cannot hold are given back exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")

#: Beyond this magnitude not every integer has a float of its own.
_FLOAT_EXACT = 2**53


class InexactBound(ValueError):
    """An integer bound too large for a float that is not among the exact ones given."""


def exact_integer_bounds(document: Any, exact: Iterable[int]) -> None:
    """Make every bound of an integer schema in ``document`` (in place) an ``int``.
    A bound beyond 2**53 is mapped back to the one of ``exact`` it was rounded from;
    one that none of them rounds to raises ``InexactBound``, rather than publishing a
    limit the API does not enforce."""
    rounded = {float(value): value for value in exact}
    _walk(document, rounded)


def _walk(node: Any, rounded: dict[float, int]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for name in _BOUNDS:
                if isinstance(node.get(name), float):
                    node[name] = _exact(node[name], name, rounded)
        for child in node.values():
            _walk(child, rounded)
    elif isinstance(node, list):
        for child in node:
            _walk(child, rounded)


def _exact(value: float, name: str, rounded: dict[float, int]) -> int:
    if abs(value) < _FLOAT_EXACT and value.is_integer():
        return int(value)
    if value in rounded:
        return rounded[value]
    raise InexactBound(f"{name} {value!r} of an integer schema is not one of the exact bounds")


def install(app: FastAPI, exact: Iterable[int]) -> None:
    """Serve ``app``'s OpenAPI document with exact integer bounds."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    exact = tuple(exact)
    made: list[dict[str, Any]] = []  # the document last made exact

    def openapi() -> dict[str, Any]:
        document = generate()  # FastAPI's, made once and kept in app.openapi_schema
        if not made or made[0] is not document:
            exact_integer_bounds(document, exact)
            made[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]
