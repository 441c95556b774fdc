"""Money arithmetic: exact Decimals in, whole minor units out, rounded in one place.

Every amount the ledger stores is an ``int`` of the unit's minor units (tokens, credits,
micro-dollars). Rates and intermediate amounts are ``Decimal`` values in minor units,
computed in :data:`EXACT`, a context wide enough that products of catalog prices and
request quantities are exact. The only conversion to whole minor units is
:func:`to_minor_units`, which rounds up: we never undercharge.
"""

from __future__ import annotations

from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    InvalidOperation,
    Overflow,
)

from pricing.errors import AmountOverflow

#: The largest amount a signed 64-bit ``BIGINT`` column holds.
MAX_AMOUNT = 2**63 - 1

#: Sixty significant digits hold any product of a 19-digit quantity and a catalog rate (at
#: most 37 digits: catalogs refuse a rate of more than 19 whole digits or 18 decimal places
#: of a minor unit), and any sum of such products up to 10**42 minor units: those are
#: exact. What a further factor makes larger is rounded up, and stays beyond any amount a
#: column holds. A quotient that does not terminate is rounded *up* at the sixtieth digit;
#: rounding that result up to a whole minor unit then gives exactly the ceiling of the true
#: quotient (a whole number is representable, so the first rounding can never step past it).
EXACT = Context(prec=60, rounding=ROUND_CEILING, traps=[InvalidOperation, Overflow])


#: An exact amount in minor units: an ``int`` when whole (fast, exact), else a Decimal.
Amount = int | Decimal


def to_minor_units(amount: Amount) -> int:
    """Round an exact amount in minor units *up* to a whole number of minor units.

    This is the one place a Decimal becomes money. Raises :class:`AmountOverflow` when the
    result does not fit a signed 64-bit column, and ``ValueError`` for a negative amount
    (prices are validated non-negative when catalogs load, so that is a bug, not input).
    """
    if isinstance(amount, int):
        whole = amount
    else:
        whole = int(amount.to_integral_value(rounding=ROUND_CEILING))
    if whole < 0:
        raise ValueError(f"negative amount {amount}")
    if whole > MAX_AMOUNT:
        raise AmountOverflow(
            f"the amount {whole} does not fit a signed 64-bit integer of minor units",
            allowed={"max": MAX_AMOUNT},
        )
    return whole


def major_to_minor(amount: Decimal, scale: int) -> Amount:
    """A rate in major units (as a catalog writes it: ``0.04`` usd) in minor units.

    Exact for any price a catalog accepts (at most 37 digits): a shift of the decimal point,
    never a rounding. Whole results become ``int``.
    """
    minor = EXACT.scaleb(amount, scale)
    return int(minor) if is_whole(minor) else minor


def minor_to_major(amount: Amount, scale: int) -> Decimal:
    """An amount in minor units back in major units, exactly (for display only)."""
    return EXACT.scaleb(Decimal(amount), -scale)


def major_text(amount: int, scale: int) -> str:
    """Minor units as exact major-unit text with thousands separators, for people:
    123456 at scale 2 -> "1,234.56"; 20000000 at scale 6 -> "20.000000"."""
    return f"{minor_to_major(int(amount), int(scale)):,.{int(scale)}f}"


def is_whole(amount: Decimal) -> bool:
    """True when ``amount`` is finite and has no fractional part."""
    return amount.is_finite() and amount == amount.to_integral_value()


def decimal_text(value: Amount) -> str:
    """An amount in plain positional notation without trailing zeros ("40000", "0.04")."""
    if isinstance(value, int):
        return str(value)
    return format(value.normalize(EXACT), "f")


def add(a: Amount, b: Amount) -> Amount:
    """Exact sum: int arithmetic when both are whole, else the money context."""
    if type(a) is int and type(b) is int:
        return a + b
    return EXACT.add(a, b)


def mul(a: Amount, b: Amount) -> Amount:
    """Exact product: int arithmetic when both are whole, else the money context."""
    if type(a) is int and type(b) is int:
        return a * b
    return EXACT.multiply(a, b)


def div_up(a: Amount, b: Amount) -> Decimal:
    """Quotient in the money context, rounded up at the sixtieth digit (see :data:`EXACT`)."""
    return EXACT.divide(a, b)


__all__ = [
    "EXACT",
    "MAX_AMOUNT",
    "Amount",
    "add",
    "decimal_text",
    "div_up",
    "is_whole",
    "major_to_minor",
    "minor_to_major",
    "mul",
    "to_minor_units",
]
