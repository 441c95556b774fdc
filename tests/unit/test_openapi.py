"""The OpenAPI document's integer bounds are the ones the API enforces, exactly."""

from __future__ import annotations

import pytest

from api.openapi import InexactBound, exact_integer_bounds

BIG = 2**63 - 1


def test_an_integer_schemas_bounds_become_integers_and_a_rounded_one_its_exact_value() -> None:
    document = {
        "components": {
            "schemas": {
                "TopUp": {
                    "properties": {
                        "amount": {"type": "integer", "minimum": 1.0, "maximum": float(BIG)},
                        "signed": {
                            "anyOf": [
                                {"type": "integer", "minimum": -float(BIG), "maximum": 500.0},
                                {"type": "null"},
                            ]
                        },
                    }
                }
            }
        },
        "paths": {"/x": {"get": {"parameters": [{"schema": {"type": "integer", "maximum": 500}}]}}},
    }
    exact_integer_bounds(document, exact=(BIG, -BIG))
    properties = document["components"]["schemas"]["TopUp"]["properties"]  # type: ignore[index]
    amount = properties["amount"]
    assert (amount["minimum"], amount["maximum"]) == (1, BIG)
    assert all(type(amount[name]) is int for name in ("minimum", "maximum"))
    signed = properties["signed"]["anyOf"][0]
    assert (signed["minimum"], signed["maximum"]) == (-BIG, 500)
    assert type(signed["maximum"]) is int


def test_a_number_schema_keeps_its_float_bounds() -> None:
    schema = {"type": "number", "minimum": 0.5, "maximum": 2.0}
    exact_integer_bounds(schema, exact=())
    assert schema == {"type": "number", "minimum": 0.5, "maximum": 2.0}
    assert type(schema["maximum"]) is float


@pytest.mark.parametrize("bound", [float(2**60), 1.5])
def test_a_bound_that_cannot_be_made_exact_is_refused_not_published(bound: float) -> None:
    with pytest.raises(InexactBound, match="maximum"):
        exact_integer_bounds({"type": "integer", "maximum": bound}, exact=(BIG,))
