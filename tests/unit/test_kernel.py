"""The accounting rules of ``ledger.kernel``, as pure functions: the bounds the use cases
lean on are tested here at their edges, where a test through the ledger would need a
balance near 2**63 or a clock at the turn of a year."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import kernel
from ledger.errors import BalanceOverflow, UnbalancedEntry
from ledger.kernel import MAX_AMOUNT, GrantState, Leg

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago")


# ------------------------------------------------------------------------------- periods


def test_a_wallets_december_ends_at_its_new_year_not_utcs() -> None:
    berlin = "Europe/Berlin"
    # 23:30 UTC on New Year's Eve is already January in Berlin (UTC+1).
    assert kernel.period_of(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), berlin) == "2027-01"
    assert kernel.period_of(datetime(2026, 12, 31, 22, 59, tzinfo=UTC), berlin) == "2026-12"
    assert kernel.period_bounds("2026-12", berlin) == (
        datetime(2026, 11, 30, 23, 0, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
    )
    assert kernel.period_days("2026-12") == ("2026-12-01", "2027-01-01")
    assert kernel.period_days("2027-01") == ("2027-01-01", "2027-02-01")


def test_a_month_that_changes_to_summer_time_ends_an_hour_earlier_in_utc() -> None:
    # Berlin moves to UTC+2 on 28 March 2027: April starts at 22:00 UTC.
    assert kernel.period_bounds("2027-03", "Europe/Berlin") == (
        datetime(2027, 2, 28, 23, 0, tzinfo=UTC),
        datetime(2027, 3, 31, 22, 0, tzinfo=UTC),
    )
    assert kernel.period_days("2028-02") == ("2028-02-01", "2028-03-01")


@given(
    instant=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES),
)
def test_every_instant_lies_in_its_period_and_periods_tile_time(
    instant: datetime, zone: str
) -> None:
    period = kernel.period_of(instant, zone)
    start, end = kernel.period_bounds(period, zone)
    assert start <= instant < end
    assert kernel.period_of(start, zone) == period
    assert kernel.period_of(end - timedelta(microseconds=1), zone) == period
    following = kernel.period_of(end, zone)
    assert following != period
    assert kernel.period_bounds(following, zone)[0] == end
    first, after = kernel.period_days(period)
    assert first == start.astimezone(ZoneInfo(zone)).date().isoformat()
    assert after == end.astimezone(ZoneInfo(zone)).date().isoformat()
    assert first <= kernel.day_of(instant, zone) < after


@given(
    instant=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(
        [
            *ZONES,
            "America/Santiago",
            "America/Havana",
            "America/Goose_Bay",
            "Asia/Beirut",
            "Australia/Lord_Howe",
        ]
    ),
)
def test_a_day_cut_divides_the_instants_before_it_from_those_after(
    instant: datetime, zone: str
) -> None:
    """The rollups of the dates before the cut hold what was posted before its instant:
    every instant before it falls on an earlier date, every one from it on, on its date
    or later, however the zone's offset changes near it (midnights that come twice or
    not at all, half-hour changes)."""
    cut = kernel.day_cut(instant, zone)
    assert cut is not None
    day, start = cut
    assert start <= instant
    assert day <= kernel.day_of(instant, zone)
    assert instant - start < timedelta(days=8)
    for minutes in range(-31 * 60, 31 * 60 + 1, 10):
        moment = start + timedelta(minutes=minutes)
        assert (kernel.day_of(moment, zone) < day) == (moment < start), moment
    assert (
        kernel.day_of(start - timedelta(microseconds=1), zone) < day == kernel.day_of(start, zone)
    )


def test_a_day_cut_steps_back_from_a_change_of_offset() -> None:
    """A date whose start lies near a change of the zone's offset is passed over for an
    earlier one; a steady date is the instant's own; the calendar's first has none."""
    # New York moves to summer time at 2:00 on 8 March 2026.
    noon = datetime(2026, 3, 9, 17, 0, tzinfo=UTC)
    assert kernel.day_cut(noon, "America/New_York") == (
        "2026-03-06",
        datetime(2026, 3, 6, 5, 0, tzinfo=UTC),
    )
    assert kernel.day_cut(noon, "UTC") == ("2026-03-09", datetime(2026, 3, 9, tzinfo=UTC))
    # Goose Bay's clocks went back at 00:01 on 7 November 2010, to 23:01 on the 6th: the
    # 7th began a first time at 3:00 UTC, then the 6th came back for an hour. Its
    # midnight does not divide the instants, nor does the 6th's (within a day of it).
    cut = kernel.day_cut(datetime(2010, 11, 7, 12, 0, tzinfo=UTC), "America/Goose_Bay")
    assert cut == ("2010-11-05", datetime(2010, 11, 5, 3, 0, tzinfo=UTC))
    assert kernel.day_cut(datetime(1, 1, 1, 5, tzinfo=UTC), "UTC") is None


# ------------------------------------------------------------------------------ entries


@pytest.mark.parametrize(
    ("legs", "says"),
    [
        ([Leg(1, "credit", 0)], "two or more"),
        ([Leg(1, "credit", 5)], "two or more"),
        ([Leg(1, "credit", 0), Leg(2, "credit", 0)], "zero"),
        ([Leg(1, "credit", -5), Leg(2, "credit", 5), Leg(3, "credit", 0)], "zero"),
        ([Leg(1, "credit", -(2**63)), Leg(2, "credit", 2**63)], "64 bits"),
        # A debit beyond 64 bits is refused even where the credits balancing it each fit.
        ([Leg(1, "credit", -(2**63)), Leg(2, "credit", 2**62), Leg(3, "credit", 2**62)], "64 bits"),
        ([Leg(1, "credit", -5), Leg(2, "credit", 4)], "sum to zero"),
        ([Leg(1, "credit", -5), Leg(2, "token", 5)], "sum to zero"),
    ],
)
def test_an_entry_that_is_not_two_non_zero_legs_summing_to_zero_per_unit_is_refused(
    legs: list[Leg], says: str
) -> None:
    with pytest.raises(UnbalancedEntry, match=says):
        kernel.check_balanced(legs)


def test_an_entry_balanced_in_each_of_its_units_is_accepted() -> None:
    kernel.check_balanced(
        [
            Leg(1, "credit", -MAX_AMOUNT),
            Leg(2, "credit", MAX_AMOUNT),
            Leg(3, "token", -1),
            Leg(4, "token", 1),
        ]
    )
    assert kernel.transfer(7, 8, "usd", 40_000) == [Leg(7, "usd", -40_000), Leg(8, "usd", 40_000)]


# ---------------------------------------------------------------------------- reversals

WALLET, FUNDING, EXPIRED, REVENUE = 10, 1, 2, 3
TOP_UP = [Leg(FUNDING, "credit", -300), Leg(WALLET, "credit", 300)]


def test_a_reversal_negates_each_leg_when_nothing_it_gave_has_gone() -> None:
    charge = [Leg(WALLET, "credit", -240), Leg(REVENUE, "credit", 240)]
    assert kernel.reversal(charge, WALLET, EXPIRED) == [
        Leg(WALLET, "credit", 240),
        Leg(REVENUE, "credit", -240),
    ]
    assert kernel.reversal(TOP_UP, WALLET, EXPIRED, 0) == [
        Leg(FUNDING, "credit", 300),
        Leg(WALLET, "credit", -300),
    ]


@pytest.mark.parametrize(
    ("gone", "legs"),
    [
        (
            60,
            [Leg(FUNDING, "credit", 300), Leg(WALLET, "credit", -240), Leg(EXPIRED, "credit", -60)],
        ),
        # All of it expired: the wallet is not touched at all.
        (300, [Leg(FUNDING, "credit", 300), Leg(EXPIRED, "credit", -300)]),
    ],
)
def test_credits_gone_since_come_back_from_the_expired_account(gone: int, legs: list[Leg]) -> None:
    assert kernel.reversal(TOP_UP, WALLET, EXPIRED, gone) == legs


@pytest.mark.parametrize("gone", [-1, 301])
def test_more_credits_gone_than_the_entry_gave_or_fewer_than_none_is_refused(gone: int) -> None:
    with pytest.raises(UnbalancedEntry, match="gone"):
        kernel.reversal(TOP_UP, WALLET, EXPIRED, gone)


# ------------------------------------------------------------------------------- bounds


def test_credits_may_fill_a_wallet_exactly_to_the_64_bit_limit_and_not_one_more() -> None:
    balance, overdraft = 1_000, 500
    room = MAX_AMOUNT - balance - overdraft
    kernel.check_room(balance, overdraft, room)
    kernel.check_room(balance, overdraft, -5)  # a debit never needs room
    with pytest.raises(BalanceOverflow) as refused:
        kernel.check_room(balance, overdraft, room + 1)
    assert refused.value.allowed == {"max": room}
    # A wallet already past its room (it cannot get there, but) is offered 0, not less.
    with pytest.raises(BalanceOverflow) as full:
        kernel.check_room(MAX_AMOUNT, 10, 1)
    assert full.value.allowed == {"max": 0}


def test_an_overdraft_limit_may_take_available_exactly_to_the_64_bit_limit() -> None:
    kernel.check_overdraft_limit(-300, MAX_AMOUNT)  # a wallet in the red: room to spare
    kernel.check_overdraft_limit(1_000, MAX_AMOUNT - 1_000)
    with pytest.raises(BalanceOverflow) as refused:
        kernel.check_overdraft_limit(1_000, MAX_AMOUNT - 999)
    assert (refused.value.field, refused.value.allowed) == (
        "overdraft_limit",
        {"max": MAX_AMOUNT - 1_000},
    )


def test_available_and_debt_count_the_overdraft_limit() -> None:
    assert kernel.available(100, 30, 50) == 120
    assert kernel.debt(-40, 50) == 0  # inside the overdraft
    assert kernel.debt(-70, 50) == 20  # beyond it: capture overage, recorded as debt
    assert kernel.debt(10, 0) == 0


# ------------------------------------------------------------------------------- grants

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def grant(
    gid: str, remaining: int, priority: int = 0, expires: int | None = None, age: int = 0
) -> GrantState:
    """A grant made ``age`` hours before T0, expiring ``expires`` days after it (or never)."""
    return GrantState(
        gid,
        remaining,
        priority,
        None if expires is None else T0 + timedelta(days=expires),
        T0 - timedelta(hours=age),
    )


def test_debits_burn_priority_then_soonest_expiry_then_oldest_and_never_more_than_held() -> None:
    grants = [
        grant("never", 100, age=9),
        # Same priority and expiry: the older first, though its id sorts after the other's.
        grant("late-old", 100, expires=20, age=8),
        grant("late-new", 100, expires=20, age=1),
        grant("soon", 100, expires=2),
        grant("first", 100, priority=-1, expires=40),
    ]
    assert kernel.plan_debit(grants, 350) == [
        ("first", 100),
        ("soon", 100),
        ("late-old", 100),
        ("late-new", 50),
    ]
    # More than all of them hold: each gives what it has, the rest is not covered.
    assert sum(take for _, take in kernel.plan_debit(grants, 10_000)) == 500
    assert kernel.plan_debit(grants, 0) == []
    assert kernel.plan_debit([grant("empty", 0), grant("some", 5, age=1)], 3) == [("some", 3)]


@given(
    remaining=st.lists(st.integers(0, 1_000), max_size=8),
    priorities=st.lists(st.integers(-2, 2), min_size=8, max_size=8),
    amount=st.integers(0, 10_000),
)
def test_a_debit_takes_what_it_can_in_burn_order_from_a_prefix_of_the_grants(
    remaining: list[int], priorities: list[int], amount: int
) -> None:
    grants = [
        grant(f"g{i}", left, priorities[i], expires=i % 3 or None, age=i)
        for i, left in enumerate(remaining)
    ]
    plan = kernel.plan_debit(grants, amount)
    held = {g.id: g.remaining for g in grants}
    assert sum(take for _, take in plan) == min(amount, sum(remaining))
    assert all(0 < take <= held[gid] for gid, take in plan)
    order = [g.id for g in sorted(grants, key=kernel.burn_order) if g.remaining > 0]
    assert [gid for gid, _ in plan] == order[: len(plan)]
    # Only the last grant touched may keep something.
    assert all(take == held[gid] for gid, take in plan[:-1])


def test_credits_repay_debt_then_refill_burned_grants_in_order_then_make_a_new_grant() -> None:
    restorable = [("burned-first", 80), ("burned-next", 100)]
    assert kernel.plan_credit(-50, 200, restorable) == kernel.CreditPlan(
        repaid=50, restores=[("burned-first", 80), ("burned-next", 70)], new_grant=0
    )
    assert kernel.plan_credit(-50, 300, restorable) == kernel.CreditPlan(
        repaid=50, restores=[("burned-first", 80), ("burned-next", 100)], new_grant=70
    )
    assert kernel.plan_credit(-50, 30, restorable) == kernel.CreditPlan(30, [], 0)
    assert kernel.plan_credit(20, 30) == kernel.CreditPlan(0, [], 30)
    # A grant with nothing to take back is passed over, not restored by zero.
    assert kernel.plan_credit(0, 30, [("spent-nothing", 0), ("burned", 10)]) == kernel.CreditPlan(
        0, [("burned", 10)], 20
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("plain", None),
        ("caf\u00e9 \U0001f600", None),  # a whole surrogate pair, as JSON gives it, is one
        ("a\x00b", "must not contain NUL (U+0000)"),
        ("a\ud800", "must be Unicode: a lone surrogate (U+D800 to U+DFFF) is no character"),
        ("z\udfff", "must be Unicode: a lone surrogate (U+D800 to U+DFFF) is no character"),
        ("\udcffy", "must be Unicode: a lone surrogate (U+D800 to U+DFFF) is no character"),
        ("\ud7ff\ue000", None),  # the characters on either side
    ],
)
def test_text_no_database_can_store_is_named(text: str, problem: str | None) -> None:
    assert kernel.text_problem(text) == problem


def test_a_timezone_in_the_wrong_case_is_refused_naming_the_zone_it_meant() -> None:
    """IANA names are case-sensitive (``utc`` is no zone), but a name that differs from
    one only by case is told which it is; another is told what a name looks like."""
    assert kernel.timezone_problem("UTC") is None
    assert kernel.timezone_problem("Europe/Paris") is None
    for name, meant in (("utc", "UTC"), ("europe/paris", "Europe/Paris"), ("Etc/Utc", "Etc/UTC")):
        problem = kernel.timezone_problem(name)
        assert problem is not None
        assert problem.endswith(f"case-sensitive; did you mean {meant!r}?"), problem
    for wrong in ("Mars/Olympus", "localtime", "LOCALTIME", "+02:00", "", 5, None):
        problem = kernel.timezone_problem(wrong)
        assert problem == f"unknown timezone {wrong!r}: use an IANA name such as Europe/Berlin"
