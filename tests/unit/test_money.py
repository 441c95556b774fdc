"""The money arithmetic keeps what ``pricing.money`` promises: sums and products exact at
any size a 64-bit amount and a catalog rate can make, one rounding (up) to whole minor
units, and a refusal for what no column holds.

A context of Python's default 28 digits, or int-and-Decimal arithmetic outside the money
context (which uses that default and rounds half-even), would round a fraction away
below the 28th digit: up to a minor unit undercharged once the total is rounded.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, Overflow

import pytest

from pricing.errors import AmountOverflow
from pricing.money import (
    MAX_AMOUNT,
    add,
    decimal_text,
    div_up,
    is_whole,
    major_text,
    major_to_minor,
    minor_to_major,
    mul,
    to_minor_units,
)


def test_a_sum_keeps_a_fraction_far_below_a_large_whole_amount() -> None:
    large, tiny = 5 * 10**18, Decimal("1E-10")  # 29 significant digits together
    total = add(large, tiny)
    assert total == Decimal("5000000000000000000.0000000001")
    assert to_minor_units(total) == large + 1  # not undercharged by the fraction
    assert add(tiny, large) == total
    assert add(2, 3) == 5
    assert type(add(2, 3)) is int


def test_a_product_of_two_19_digit_quantities_and_a_rate_is_exact() -> None:
    quantities = mul(10**18 + 1, 10**18 + 3)
    assert quantities == 10**36 + 4 * 10**18 + 3
    amount = mul(quantities, Decimal("1E-25"))
    assert amount == Decimal("100000000000.0000004000000000000000003")  # 37 digits
    assert mul(Decimal("1E-25"), quantities) == amount
    assert to_minor_units(amount) == 100_000_000_001


def test_a_quotient_rounds_up_to_exactly_its_ceiling() -> None:
    assert to_minor_units(div_up(1, 3)) == 1
    assert div_up(Decimal(6), 3) == 2
    # In whatever context the caller runs (Python's default of 28 digits here).
    for dividend, divisor in [
        (10**18, 3),
        (2**62, 7),
        (MAX_AMOUNT, 10**18),
        # A fraction 31 digits below a 19-digit whole: 28 digits would round it away.
        (2**62 * 10**12 + 1, 10**12),
    ]:
        ceiling = -(-dividend // divisor)
        assert to_minor_units(div_up(dividend, divisor)) == ceiling, (dividend, divisor)
    # What has no value is an error, never a NaN carried into a total.
    with pytest.raises(InvalidOperation):
        div_up(0, 0)
    with pytest.raises(InvalidOperation):
        mul(Decimal("Infinity"), 0)


def test_whole_minor_units_are_the_ceiling_and_fit_64_bits() -> None:
    assert MAX_AMOUNT == 9_223_372_036_854_775_807  # a signed 64-bit BIGINT's largest
    assert to_minor_units(MAX_AMOUNT) == MAX_AMOUNT
    assert to_minor_units(Decimal(MAX_AMOUNT) - Decimal("0.5")) == MAX_AMOUNT
    assert to_minor_units(Decimal("0.0000001")) == 1
    assert to_minor_units(0) == 0
    for beyond in (MAX_AMOUNT + 1, Decimal(MAX_AMOUNT) + Decimal("1E-7")):
        with pytest.raises(AmountOverflow) as refused:
            to_minor_units(beyond)
        assert refused.value.allowed == {"max": MAX_AMOUNT}
    # A negative amount is a bug in a catalog's validation, not input: never money.
    for negative in (-1, Decimal("-1.5")):
        with pytest.raises(ValueError, match="negative amount"):
            to_minor_units(negative)


def test_major_and_minor_units_shift_the_point_without_rounding() -> None:
    cents = major_to_minor(Decimal("0.04"), 6)
    assert (cents, type(cents)) == (40_000, int)
    assert major_to_minor(Decimal("0.0000001"), 6) == Decimal("0.1")
    assert minor_to_major(40_000, 6) == Decimal("0.04")
    assert minor_to_major(1, 6) == Decimal("0.000001")
    # The longest rate a catalog accepts: 19 whole digits and 18 places of a minor unit.
    longest = Decimal("9223372036854775807.123456789012345678")
    assert major_to_minor(Decimal("9223372036854.775807123456789012345678"), 6) == longest
    assert minor_to_major(longest, 6) == Decimal("9223372036854.775807123456789012345678")


def test_major_text_is_exact_with_every_place_of_the_scale() -> None:
    assert major_text(123_456, 2) == "1,234.56"
    assert major_text(20_000_000, 6) == "20.000000"
    assert major_text(-1, 6) == "-0.000001"
    assert major_text(200_000, 0) == "200,000"
    # A 64-bit amount, digit for digit (no float on the way).
    assert major_text(MAX_AMOUNT, 6) == "9,223,372,036,854.775807"
    # A statement's total past 64 bits too: Decimal's default 28 digits would round it.
    assert major_text(10**40 + 7, 6).endswith(",000.000007")


def test_a_product_of_the_longest_rate_and_a_64_bit_quantity_is_exact() -> None:
    rate = Decimal("9223372036854775807.123456789012345678")  # 37 digits
    quantity = MAX_AMOUNT  # 19 digits
    exact = Decimal(f"{9223372036854775807123456789012345678 * quantity}E-18")
    assert mul(rate, quantity) == mul(quantity, rate)
    assert mul(rate, quantity) == exact  # 56 digits, none rounded away
    # Products with no place to hold them are an error, never an infinity.
    with pytest.raises(Overflow):
        mul(Decimal("1E+999999"), 10)


def test_whole_and_text() -> None:
    assert is_whole(Decimal("40000.000"))
    assert not is_whole(Decimal("0.5"))
    for endless in ("Infinity", "-Infinity", "NaN"):
        assert not is_whole(Decimal(endless)), endless
    assert decimal_text(Decimal("0.0400")) == "0.04"
    assert decimal_text(Decimal("4E+4")) == "40000"
    assert decimal_text(12) == "12"
