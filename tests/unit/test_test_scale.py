"""``CREDITLEDGER_TEST_SCALE``: a soak runs the property and fuzz tests longer."""

from __future__ import annotations

import pytest

from tests import conftest


@pytest.mark.parametrize(("raw", "scale"), [("1", 1), ("10", 10), ("1000", 1000)])
def test_the_scale_multiplies_the_examples(
    monkeypatch: pytest.MonkeyPatch, raw: str, scale: int
) -> None:
    monkeypatch.setenv("CREDITLEDGER_TEST_SCALE", raw)
    assert conftest._scale() == scale
    monkeypatch.setattr(conftest, "SCALE", scale)
    assert conftest.examples(25) == 25 * scale


def test_without_the_variable_the_scale_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDITLEDGER_TEST_SCALE", raising=False)
    assert conftest._scale() == 1


@pytest.mark.parametrize("raw", ["0", "1001", "-2", "x", "", " 3", "\u00b2", "1.5"])
def test_a_scale_out_of_range_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CREDITLEDGER_TEST_SCALE", raw)
    with pytest.raises(ValueError, match="CREDITLEDGER_TEST_SCALE must be a whole number"):
        conftest._scale()
