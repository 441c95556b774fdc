"""A statement refuses a wallet whose month of usage it cannot sum exactly in 64 bits.

Each day's rollup fits 64 bits (the ledger refuses one that would not), but a month of
days may not: video seconds, kept in microseconds, grow a hundred times faster than a
USD amount at $0.01 a second. int64 would wrap such a sum to a wrong number without a
word, so ``statement.build`` names the wallet in a ``ReportOverflow`` instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from reports import queries, statement
from reports.errors import ReportOverflow

MONTH = queries.period("2026-10", "UTC")


def frames(usage: list[dict[str, object]]) -> queries.Frames:
    """Two USD wallets with no flows and ``usage`` (rows of wallet 1 or 2)."""
    wallets = pd.DataFrame(
        {
            "account": [1, 2],
            "account_id": ["big", "small"],
            "unit": ["usd", "usd"],
            "scale": [6, 6],
            "timezone": ["UTC", "UTC"],
            "source": ["rollup", "rollup"],
            "opening": [0, 0],
            "ledger_closing": [0, 0],
            "open_holds": [0, 0],
            "open_holds_amount": [0, 0],
        }
    )
    rows = [
        {
            "catalog": "fal",
            "operation": "image_to_video",
            "model": "cosmos-3-super",
            **dict.fromkeys(queries.QUANTITIES, 0),
            "seconds_us": 0,
            "amount": 0,
            **row,
        }
        for row in usage
    ]
    return queries.Frames(
        period=MONTH,
        wallets=wallets,
        flows=pd.DataFrame(columns=list(queries.FLOW_COLUMNS)).astype("int64"),
        usage=pd.DataFrame(rows, columns=list(queries.USAGE_COLUMNS)),
    )


def build(made: queries.Frames) -> statement.Statement:
    return statement.build(made, account_id=None, generated_at=datetime(2026, 11, 2, tzinfo=UTC))


@pytest.mark.parametrize("quantity", ["seconds_us", "input_tokens", "requests"])
def test_a_month_of_usage_past_64_bits_is_refused_by_name(quantity: str) -> None:
    day = 2**62 + 2**61  # one day's rollup fits; two do not
    made = frames(
        [
            {"account": 1, "day": "2026-10-01", quantity: day},
            {"account": 1, "day": "2026-10-02", quantity: day},
            {"account": 2, "day": "2026-10-01", quantity: 5},
        ]
    )
    with pytest.raises(ReportOverflow) as refused:
        build(made)
    assert refused.value.accounts == ["big"]


def test_a_month_of_usage_within_64_bits_is_summed_exactly() -> None:
    day = 2**61 + 1
    made = build(
        frames(
            [
                {"account": 1, "day": "2026-10-01", "seconds_us": day, "requests": 1},
                {"account": 1, "day": "2026-10-02", "seconds_us": day, "requests": 1},
            ]
        )
    )
    (monthly,) = queries.records(made.usage)
    assert monthly["seconds_us"] == 2 * day
    assert monthly["requests"] == 2
    assert [r["seconds_us"] for r in queries.records(made.daily)] == [day, day]


def test_the_bound_is_inclusive_with_its_margin_below_two_to_the_63() -> None:
    """Sums are bounded in float64, so the bound keeps a margin below 2^63 (wider than
    float64's rounding of a month's rows): a month of magnitudes adding up to the bound
    itself is refused, and one a margin below it is summed exactly."""
    bound = 2**63 - 2**44

    def month(day: int) -> queries.Frames:
        return frames(
            [
                {"account": 1, "day": "2026-10-01", "seconds_us": day, "requests": 1},
                {"account": 1, "day": "2026-10-02", "seconds_us": day, "requests": 1},
            ]
        )

    with pytest.raises(ReportOverflow) as refused:
        build(month(bound // 2))
    assert refused.value.accounts == ["big"]
    below = (bound - 2**44) // 2
    (monthly,) = queries.records(build(month(below)).usage)
    assert monthly["seconds_us"] == 2 * below


def test_the_opening_balance_counts_in_the_bound() -> None:
    """The closing is the opening plus the month's credits, less its debits, in int64: a
    wallet whose opening is near 2^63 is refused though its month moved little, where
    the credits, added before the debits come off, could pass 64 bits."""
    opening = 2**63 - 2**43
    made = frames([])
    wallets = made.wallets.assign(opening=[opening, 0], ledger_closing=[opening, 0])
    flows = pd.DataFrame(
        [
            {"account": 1, "day": "2026-10-01", "flow": "pack", "credits": 2**44, "debits": 0},
            {
                "account": 1,
                "day": "2026-10-02",
                "flow": "adjustment",
                "credits": 0,
                "debits": 2**44,
            },
        ],
        columns=list(queries.FLOW_COLUMNS),
    ).assign(entries=1)
    with pytest.raises(ReportOverflow) as refused:
        build(queries.Frames(period=MONTH, wallets=wallets, flows=flows, usage=made.usage))
    assert refused.value.accounts == ["big"]
    # The same month from an opening of zero is summed.
    (big, _) = queries.records(
        build(
            queries.Frames(
                period=MONTH,
                wallets=made.wallets,
                flows=flows,
                usage=made.usage,
            )
        ).accounts
    )
    assert (big["credits"], big["debits"], big["closing"]) == (2**44, 2**44, 0)
