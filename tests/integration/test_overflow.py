"""Sums beyond 64 bits are refused with nothing changed, on both databases.

PostgreSQL fails a BIGINT sum out of range; SQLite would store it as an inexact float
(the balance then stops being the sum of its postings), which migration 0006's triggers
refuse. Either way the ledger answers ``BalanceOverflow`` naming the request's field.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.errors import BalanceOverflow, InvalidInput
from ledger.models import accounts
from ledger.services import Ledger
from ledger.verify import verify
from tests import factories as f
from tests.factories import Clock, key

MAX = 2**63 - 1
VEO_FAST = f.veo3_video(video_model="veo3_fast")


def wallet(ledger: Ledger, name: str, **kw: Any) -> str:
    ledger.open_account(name, "credit", idempotency_key=key("open"), **kw)
    return name


def books(ledger: Ledger, *names: str) -> list[tuple[Any, ...]]:
    """Everything a refused operation must leave as it was, system accounts included."""
    with ledger.db.transaction(write=False) as conn:
        system = conn.execute(
            sa.select(accounts.c.external_id, accounts.c.balance, accounts.c.pending)
            .where(accounts.c.kind != "wallet")
            .order_by(accounts.c.external_id)
        ).all()
    return [tuple(system)] + [
        (
            view.balance,
            view.pending,
            [(g.id, g.remaining) for g in view.grants],
            len(ledger.entries(name, limit=500).items),
        )
        for name in names
        for view in [ledger.account(name)]
    ]


def refused(call: Any, field: str) -> BalanceOverflow:
    with pytest.raises(BalanceOverflow) as caught:
        call()
    assert caught.value.field == field
    assert caught.value.code == "amount_overflow"
    return caught.value


def test_a_wallet_balance_never_leaves_64_bits(ledger: Ledger) -> None:
    user = wallet(ledger, "rich")
    ledger.top_up(user, 1000, idempotency_key=key())
    before = books(ledger, user)
    error = refused(lambda: ledger.top_up(user, MAX, idempotency_key=key()), "amount")
    assert error.allowed == {"max": MAX - 1000}
    error = refused(lambda: ledger.adjust(user, MAX, reason="x", idempotency_key=key()), "amount")
    assert error.allowed == {"max": MAX - 1000}  # the room is named, as for a top-up
    assert books(ledger, user) == before
    # Exactly up to the limit is fine, and spending from there works as usual.
    full = ledger.top_up(user, MAX - 1000, idempotency_key=key())
    assert (full.balance.balance, full.balance.available) == (MAX, MAX)
    refused(lambda: ledger.top_up(user, 1, idempotency_key=key()), "amount")
    spent = ledger.charge(user, VEO_FAST, idempotency_key=key())
    assert spent.credits_remaining == MAX - 240
    # Reversing the charge would refill to MAX; a promotion first leaves it no room.
    ledger.top_up(user, 240, kind="promo", idempotency_key=key())
    before = books(ledger, user)
    assert spent.entry_id is not None
    entry_id = spent.entry_id
    refused(lambda: ledger.reverse(entry_id, reason="refund", idempotency_key=key()), "id")
    assert books(ledger, user) == before


def test_an_adjustment_beyond_64_bits_either_way_is_refused_as_bad_input(
    ledger: Ledger,
) -> None:
    """The CLI passes any integer through: a debit past 64 bits is refused naming the
    amount and its bounds, not left to fail as a posting the ledger cannot keep. Down to
    -MAX is an amount like any other (here it puts the wallet in debt)."""
    user = wallet(ledger, "corrected")
    ledger.top_up(user, 1000, idempotency_key=key())
    before = books(ledger, user)
    for amount in (-(2**63), -(10**30), 2**63, 10**30):
        with pytest.raises(InvalidInput) as caught:
            ledger.adjust(user, amount, reason="x", idempotency_key=key())
        assert caught.value.field == "amount"
        assert caught.value.allowed == {"min": -MAX, "max": MAX}
        assert books(ledger, user) == before
    debt = ledger.adjust(user, -MAX, reason="taken back", idempotency_key=key())
    assert debt.balance.balance == 1000 - MAX


def test_available_stays_within_64_bits_with_an_overdraft(ledger: Ledger) -> None:
    user = wallet(ledger, "lender", overdraft_limit=10)
    top = ledger.top_up(user, MAX - 10, idempotency_key=key())
    assert top.balance.available == MAX
    before = books(ledger, user)
    error = refused(lambda: ledger.top_up(user, 1, idempotency_key=key()), "amount")
    assert error.allowed == {"max": 0}
    assert books(ledger, user) == before


def test_a_refund_takes_available_no_further_than_64_bits_with_an_overdraft(
    ledger: Ledger,
) -> None:
    # The balance itself would fit (the database's own limit): available, with the
    # overdraft on top, would not.
    user = wallet(ledger, "borrower", overdraft_limit=1000)
    ledger.top_up(user, MAX - 1000, idempotency_key=key())
    spent = ledger.charge(user, VEO_FAST, idempotency_key=key())
    ledger.top_up(user, 200, kind="promo", idempotency_key=key())
    assert ledger.balance(user).available == MAX - 40
    before = books(ledger, user)
    assert spent.entry_id is not None
    entry_id = spent.entry_id
    error = refused(lambda: ledger.reverse(entry_id, reason="refund", idempotency_key=key()), "id")
    assert error.allowed == {"max": 40}
    assert books(ledger, user) == before


def test_an_overdraft_limit_raised_past_64_bits_of_available_is_refused(
    ledger: Ledger,
) -> None:
    user = wallet(ledger, "saver")
    ledger.top_up(user, MAX - 50, idempotency_key=key())
    before = books(ledger, user)
    with pytest.raises(BalanceOverflow) as caught:
        ledger.update_account(user, overdraft_limit=51, idempotency_key=key())
    assert (caught.value.field, caught.value.allowed) == ("overdraft_limit", {"max": 50})
    assert books(ledger, user) == before
    assert ledger.account_changes(user).items == []
    raised = ledger.update_account(user, overdraft_limit=50, idempotency_key=key())
    assert raised.available == MAX


def test_the_funding_account_beyond_64_bits_is_refused(ledger: Ledger) -> None:
    # Each wallet fits; the funding account, the sum of every top-up, would not.
    a, b = wallet(ledger, "a"), wallet(ledger, "b")
    ledger.top_up(a, MAX, idempotency_key=key())
    ledger.top_up(b, 1, idempotency_key=key())  # funding: -2**63, the last that fits
    before = books(ledger, a, b)
    refused(lambda: ledger.top_up(b, 1, idempotency_key=key()), "amount")
    assert books(ledger, a, b) == before
    # Spending returns credits to nobody's funding: the books still balance, and the
    # refused key was not stored (the same key succeeds once there is room).
    retry = key()
    refused(lambda: ledger.top_up(b, 1, idempotency_key=retry), "amount")
    ledger.adjust(a, -5, reason="correction", idempotency_key=key())
    assert ledger.top_up(b, 1, idempotency_key=retry).balance.balance == 2


def test_a_daily_rollup_beyond_64_bits_is_refused(ledger: Ledger) -> None:
    # The balances fit all along, but the day's top-up credits would add up past 64 bits.
    user = wallet(ledger, "churn")
    ledger.top_up(user, MAX, idempotency_key=key())
    ledger.adjust(user, -MAX, reason="taken back", idempotency_key=key())
    before = books(ledger, user)
    refused(lambda: ledger.top_up(user, 1, idempotency_key=key()), "amount")
    assert books(ledger, user) == before


def test_a_charge_that_would_overflow_revenue_is_refused_whole(ledger: Ledger) -> None:
    # Revenue is the sum of every charge; put it at the edge by hand to reach its limit
    # through a use case that writes in one batch (PostgreSQL: pipelined).
    user = wallet(ledger, "spender")
    ledger.top_up(user, 1000, idempotency_key=key())
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # creates the revenue account

    def revenue(delta: int) -> None:
        with ledger.db.transaction() as conn:
            conn.execute(
                accounts.update()
                .where(accounts.c.external_id == "system:revenue:credit")
                .values(balance=accounts.c.balance + delta)
            )

    revenue(MAX - 240 - 100)
    try:
        before = books(ledger, user)
        refused(lambda: ledger.charge(user, VEO_FAST, idempotency_key=key()), "params")
        hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
        refused(
            lambda: ledger.capture(
                hold.id, status="COMPLETED", usage={"videos": 1}, idempotency_key=key()
            ),
            "usage",
        )
        assert ledger.hold(hold.id).status == "pending"
        ledger.void(hold.id, idempotency_key=key())
        assert books(ledger, user) == before
    finally:
        revenue(-(MAX - 240 - 100))


def test_a_refused_allocation_does_not_hold_up_the_others(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    full = wallet(ledger, "full")
    ledger.top_up(full, MAX - 50, kind="promo", idempotency_key=key())
    with caplog.at_level(logging.ERROR, logger="creditledger.ledger"):
        # No room for it: the setting is kept, the grant left to the sweeper's rounds.
        view = ledger.update_account(full, idempotency_key=key(), monthly_allocation=100)
    assert (view.monthly_allocation, view.balance) == (100, MAX - 50)
    assert "monthly allocation of account full refused" in caplog.text
    other = wallet(ledger, "other", monthly_allocation=100)  # granted as it opens
    assert ledger.account(other).balance == 100
    caplog.clear()
    clock.advance(days=10)  # December: both are due
    with caplog.at_level(logging.ERROR, logger="creditledger.ledger"):
        assert ledger.roll_allocations() == 1
    assert "monthly allocation of account" in caplog.text
    assert ledger.account(other).balance == 100  # November's expired, December's granted
    assert ledger.account(full).balance == MAX - 50
    # Once there is room, the next round grants it.
    ledger.adjust(full, -100, reason="make room", idempotency_key=key())
    assert ledger.roll_allocations() == 1
    assert ledger.account(full).balance == MAX - 50


def test_an_allocation_the_database_refuses_leaves_the_opening_whole(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The funding account is at the edge: a new wallet's allocation fails in the
    database itself (its sum, not the wallet's room). The opening still goes through,
    with its setting kept, and the grant is left to the rounds."""
    rich = wallet(ledger, "rich")
    ledger.top_up(rich, MAX, idempotency_key=key())
    with caplog.at_level(logging.ERROR, logger="creditledger.ledger"):
        late = wallet(ledger, "late", monthly_allocation=2)
    assert "monthly allocation of account late refused" in caplog.text
    view = ledger.account(late)
    assert (view.monthly_allocation, view.balance, view.grants) == (2, 0, [])
    ledger.adjust(rich, -10, reason="make room", idempotency_key=key())
    assert ledger.roll_allocations() == 1
    assert ledger.account(late).balance == 2
    assert verify(ledger.db) == []


def test_verify_sums_a_history_past_64_bits_exactly(ledger: Ledger, clock: Clock) -> None:
    """Credits in and out again, a day apart: every balance and every day's rollup fits,
    the history's sums do not. SQLite's SUM refuses those ("integer overflow"); verify()
    must still check them, exactly."""
    user = wallet(ledger, "churner")
    big = 2**62 + 2**61
    for day in range(3):
        ledger.top_up(user, big, idempotency_key=key())
        ledger.adjust(user, -big, reason=f"back on day {day}", idempotency_key=key())
        clock.advance(days=1)
    assert ledger.account(user).balance == 0
    assert verify(ledger.db) == []
    # And it still finds a balance that is off, in such a history.
    with ledger.db.transaction() as conn:
        conn.execute(accounts.update().where(accounts.c.external_id == user).values(balance=1))
    found = verify(ledger.db)
    assert any(v.check == "account_balance" and user in v.detail for v in found), found
    with ledger.db.transaction() as conn:
        conn.execute(accounts.update().where(accounts.c.external_id == user).values(balance=0))


#: Every running sum the ledger keeps (SQLite: migration 0006's triggers, and 0013's for
#: the flows, which it made again with the table it copied).
SUMS = [
    ("accounts", "balance"),
    ("accounts", "pending"),
    ("grants", "remaining"),
    *(
        ("daily_usage", column)
        for column in (
            "requests",
            "amount",
            "input_tokens",
            "output_tokens",
            "images",
            "videos",
            "candidates",
        )
    ),
    *(("daily_flows", column) for column in ("credits", "debits", "entries")),
]


@pytest.mark.parametrize(("table", "column"), SUMS)
def test_every_running_sum_refuses_to_leave_64_bits_whatever_writes_it(
    ledger: Ledger, table: str, column: str
) -> None:
    """Not only the ledger's own writes: a script's UPDATE that takes a sum past 2^63 - 1
    fails, on SQLite with ``amount_overflow`` as on PostgreSQL with ``bigint out of
    range``, and the row is as it was. (A grant's remainder is kept within its amount by
    a CHECK, which on SQLite refuses it first.)"""
    user = wallet(ledger, "w")
    ledger.top_up(user, 1_000, idempotency_key=key())
    ledger.authorize(user, VEO_FAST, idempotency_key=key())  # pending
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # the day's usage
    db = ledger.db
    with db.transaction(write=False) as conn:
        before = conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all()
    assert before
    top = f"amount = {MAX}, remaining = {MAX}" if table == "grants" else f"{column} = {MAX}"
    if db.is_sqlite:
        reason = "CHECK constraint failed" if table == "grants" else "amount_overflow"
    else:
        reason = "out of range"

    def past_the_top() -> None:
        with db.transaction() as conn:
            conn.exec_driver_sql(f"UPDATE {table} SET {top}")  # at the top: it fits
            conn.exec_driver_sql(f"UPDATE {table} SET {column} = {column} + 1")

    with pytest.raises(sa.exc.DBAPIError, match=reason):
        past_the_top()
    with db.transaction(write=False) as conn:
        assert conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all() == before
