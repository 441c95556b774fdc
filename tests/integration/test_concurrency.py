"""Races on one wallet, on each database: no overspend, one effect per idempotency key."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from ledger.errors import HoldNotPending, InsufficientCredits
from ledger.keys import Keys
from ledger.services import Ledger
from ledger.verify import verify
from tests import factories as f
from tests.factories import Clock, key

THREADS = 32
VEO_FAST = f.veo3_video(video_model="veo3_fast")


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once (released together by a barrier); results or exceptions."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def test_racing_authorizations_never_hold_more_than_available(ledger: Ledger) -> None:
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 240 * 10 + 100, idempotency_key=key())
    outcomes = race(
        [
            (lambda: ledger.authorize("wallet", VEO_FAST, idempotency_key=key("race")))
            for _ in range(THREADS)
        ]
    )
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"HoldView": 10, "InsufficientCredits": THREADS - 10}, outcomes
    assert all(o.available == 100 for o in outcomes if isinstance(o, InsufficientCredits))
    view = ledger.balance("wallet")
    assert (view.balance, view.pending, view.available) == (2_500, 2_400, 100)


def test_racing_charges_and_captures_never_overspend(ledger: Ledger) -> None:
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 240 * 8, idempotency_key=key())
    holds = [ledger.authorize("wallet", VEO_FAST, idempotency_key=key()) for _ in range(4)]

    def capture(hold_id: str) -> Callable[[], Any]:
        return lambda: ledger.capture(hold_id, status="COMPLETED", usage={}, idempotency_key=key())

    calls: list[Callable[[], Any]] = [capture(h.id) for h in holds]
    calls += [
        (lambda: ledger.charge("wallet", VEO_FAST, idempotency_key=key()))
        for _ in range(THREADS - len(holds))
    ]
    outcomes = race(calls)
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"CaptureResult": 4, "ChargeResult": 4, "InsufficientCredits": THREADS - 8}, (
        outcomes
    )
    view = ledger.balance("wallet")
    assert (view.balance, view.pending, view.available) == (0, 0, 0)


def test_racing_spending_never_passes_the_monthly_spend_limit(ledger: Ledger) -> None:
    """Plenty of credits, a limit of 7 videos a month: 2 captured, 2 held, and 28
    authorizations and charges racing the 2 captures for the 3 that are left."""
    ledger.open_account("capped", "credit", idempotency_key=key(), monthly_spend_limit=240 * 7)
    ledger.top_up("capped", 100_000, idempotency_key=key())
    holds = [ledger.authorize("capped", VEO_FAST, idempotency_key=key()) for _ in range(4)]
    calls: list[Callable[[], Any]] = [capture(ledger, h.id) for h in holds[:2]]
    spend: list[Callable[..., Any]] = [ledger.authorize, ledger.charge]
    calls += [
        functools.partial(spend[n % 2], "capped", VEO_FAST, idempotency_key=key("race"))
        for n in range(THREADS - 2)
    ]
    outcomes = race(calls)
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds["CaptureResult"] == 2, outcomes
    assert kinds["HoldView"] + kinds["ChargeResult"] == 3, outcomes
    assert kinds["SpendLimitReached"] == THREADS - 5, outcomes
    view = ledger.account("capped")
    assert view.spent_this_month is not None
    assert view.spent_this_month + view.pending == 240 * 7
    assert view.spend_remaining == 0
    assert view.balance == 100_000 - view.spent_this_month


def test_identical_idempotent_requests_have_exactly_one_effect(ledger: Ledger) -> None:
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 10_000, idempotency_key=key())
    outcomes = race(
        [
            (lambda: ledger.authorize("wallet", VEO_FAST, idempotency_key="same-key"))
            for _ in range(THREADS)
        ]
    )
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert len({o.id for o in outcomes}) == 1
    assert ledger.balance("wallet").pending == 240
    # One answer is the effect; every other says it is that answer given again.
    assert sorted(o.replayed for o in outcomes) == [False] + [True] * (THREADS - 1)

    hold = outcomes[0]
    captures = race(
        [
            (lambda: ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key="cap"))
            for _ in range(THREADS)
        ]
    )
    assert all(not isinstance(o, Exception) for o in captures), captures
    assert len({(c.charged, c.entry_id) for c in captures}) == 1
    assert sorted(c.replayed for c in captures) == [False] + [True] * (THREADS - 1)
    assert ledger.balance("wallet").balance == 10_000 - 240

    top_ups = race(
        [(lambda: ledger.top_up("wallet", 7, idempotency_key="top-same")) for _ in range(THREADS)]
    )
    assert len({t.entry.id for t in top_ups if not isinstance(t, Exception)}) == 1
    assert all(not isinstance(t, Exception) for t in top_ups), top_ups
    assert sorted(t.replayed for t in top_ups) == [False] + [True] * (THREADS - 1)
    assert ledger.balance("wallet").balance == 10_000 - 240 + 7


def test_racing_usage_reports_are_each_charged_once_in_full(ledger: Ledger) -> None:
    """Usage reported after the fact, racing authorizations on a short wallet: every
    report is charged (the work was done), each retried report once, and no
    authorization is granted against credits the reports took."""
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 240 * 10, idempotency_key=key())

    def reported(n: int) -> Callable[[], Any]:
        return lambda: ledger.report_usage(
            "wallet", VEO_FAST, status="COMPLETED", usage={}, idempotency_key=f"usage-{n % 12}"
        )

    calls: list[Callable[[], Any]] = [reported(n) for n in range(24)]
    calls += [
        (lambda: ledger.authorize("wallet", VEO_FAST, idempotency_key=key("race")))
        for _ in range(THREADS - 24)
    ]
    outcomes = race(calls)
    reports = [o for o in outcomes[:24] if not isinstance(o, Exception)]
    assert len(reports) == 24, outcomes
    # 12 keys, each sent twice: 12 charges, each retry answered with the first's result.
    assert len({r.id for r in reports}) == 12
    assert all(r.charged == 240 for r in reports)
    held = [o for o in outcomes[24:] if not isinstance(o, InsufficientCredits)]
    assert all(type(h).__name__ == "HoldView" for h in held), outcomes
    # Each hold was taken against what was there then: the reports that came after it
    # may take the wallet below zero (debt), a hold never does.
    assert all(h.credits_remaining >= 0 for h in held), held
    view = ledger.balance("wallet")
    assert view.balance == 240 * 10 - 12 * 240
    assert view.pending == 240 * len(held)
    records = ledger.usage_records("wallet", limit=100).items
    assert sum(r.kind == "usage" for r in records) == 12


def void(ledger: Ledger, hold_id: str) -> Callable[[], Any]:
    return lambda: ledger.void(hold_id, idempotency_key=key())


def capture(ledger: Ledger, hold_id: str) -> Callable[[], Any]:
    return lambda: ledger.capture(hold_id, status="COMPLETED", usage={}, idempotency_key=key())


def test_a_hold_raced_by_captures_and_voids_resolves_once(ledger: Ledger) -> None:
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 1_000, idempotency_key=key())
    for _round in range(3):
        hold = ledger.authorize("wallet", VEO_FAST, idempotency_key=key())
        calls: list[Callable[[], Any]] = [
            (void if i % 2 else capture)(ledger, hold.id) for i in range(THREADS)
        ]
        outcomes = race(calls)
        won = [o for o in outcomes if not isinstance(o, Exception)]
        assert len(won) == 1, outcomes
        assert all(isinstance(o, HoldNotPending) for o in outcomes if o not in won), outcomes
        assert ledger.balance("wallet").pending == 0
    view = ledger.balance("wallet")
    charged = 1_000 - view.balance
    assert charged % 240 == 0
    assert 0 <= charged <= 3 * 240
    assert len(ledger.entries("wallet", limit=50).items) == 1 + charged // 240


def test_retries_racing_the_sweeper_release_each_expired_hold_once(
    ledger: Ledger, clock: Clock
) -> None:
    """Ten holds take the whole wallet and expire; thirty retries and two sweepers race
    to release them: each is released once (by a retry or a sweeper), and the retries
    hold exactly what the wallet has."""
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 240 * 10, idempotency_key=key())
    stale = [ledger.authorize("wallet", VEO_FAST, idempotency_key=key()).id for _ in range(10)]
    clock.advance(minutes=15)
    calls: list[Callable[[], Any]] = [ledger.expire_holds, ledger.expire_holds]
    calls += [
        (lambda: ledger.authorize("wallet", VEO_FAST, idempotency_key=key("retry")))
        for _ in range(THREADS - 2)
    ]
    outcomes = race(calls)
    swept, answers = outcomes[:2], outcomes[2:]
    assert all(isinstance(n, int) for n in swept), swept
    kinds = Counter(type(o).__name__ for o in answers)
    assert kinds == {"HoldView": 10, "InsufficientCredits": THREADS - 12}, answers
    assert all(o.available < 240 for o in answers if isinstance(o, InsufficientCredits))
    released = sum(o.holds_expired for o in answers if not isinstance(o, Exception))
    assert released + sum(swept) == 10
    assert {ledger.hold(h).status for h in stale} == {"expired"}
    view = ledger.balance("wallet")
    assert (view.balance, view.pending, view.available) == (2_400, 2_400, 0)
    assert ledger.expire_holds() == 0


def test_racing_reversals_of_one_entry_reverse_it_once(ledger: Ledger) -> None:
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 1_000, idempotency_key=key())
    charged = ledger.charge("wallet", VEO_FAST, idempotency_key=key())
    assert charged.entry_id is not None
    entry_id = charged.entry_id
    outcomes = race(
        [
            (lambda: ledger.reverse(entry_id, reason="refund", idempotency_key=key("rev")))
            for _ in range(THREADS)
        ]
    )
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"ReversalResult": 1, "AlreadyReversed": THREADS - 1}, outcomes
    assert ledger.balance("wallet").balance == 1_000


def test_racing_revocations_of_one_grant_take_it_back_once(ledger: Ledger) -> None:
    ledger.open_account("wallet", "credit", idempotency_key=key())
    ledger.top_up("wallet", 1_000, idempotency_key=key())
    promo = ledger.top_up("wallet", 300, kind="promo", idempotency_key=key()).grant
    assert promo is not None
    outcomes = race(
        [
            (lambda: ledger.revoke_grant(promo.id, reason="withdrawn", idempotency_key=key()))
            for _ in range(THREADS)
        ]
    )
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"RevocationResult": 1, "GrantNotOpen": THREADS - 1}, outcomes
    assert ledger.balance("wallet").balance == 1_000


def test_allocation_roll_on_many_workers_grants_once(ledger: Ledger, clock: Clock) -> None:
    ledger.open_account("bucket", "token", idempotency_key=key(), monthly_allocation=1_000)
    clock.advance(days=10)  # December begins: November's expires, December's is due
    granted = race([ledger.roll_allocations for _ in range(8)])
    assert all(not isinstance(g, Exception) for g in granted), granted
    assert sum(granted) == 1
    assert ledger.balance("bucket").balance == 1_000
    grants = sorted((g.period, g.remaining) for g in ledger.grants_of("bucket"))
    assert grants == [("2026-11", 0), ("2026-12", 1_000)]


def test_grant_expiry_on_many_workers_expires_each_grant_once(ledger: Ledger, clock: Clock) -> None:
    """The sweepers of several servers come for the same expired grants at once: each
    remainder moves to expired credits once."""
    ledger.open_account("wallet", "credit", idempotency_key=key())
    for wallet in ("wallet", "other"):
        if wallet == "other":
            ledger.open_account(wallet, "credit", idempotency_key=key())
        for amount in (100, 200, 300):
            ledger.top_up(
                wallet,
                amount,
                kind="promo",
                expires_at=clock.now + timedelta(days=1),
                idempotency_key=key(),
            )
        ledger.top_up(wallet, 50, idempotency_key=key())  # never expires
    clock.advance(days=1)
    expired = race([ledger.expire_grants for _ in range(8)])
    assert all(not isinstance(e, Exception) for e in expired), expired
    assert sum(expired) == 6
    for wallet in ("wallet", "other"):
        assert ledger.balance(wallet).balance == 50
        expiries = [e for e in ledger.entries(wallet).items if e.kind == "expiry"]
        moved: Counter[str] = Counter()
        for posting in (p for e in expiries for p in e.postings):
            moved[posting.account_id] += posting.amount
        assert moved == {wallet: -600, "system:expired:credit": 600}
    assert verify(ledger.db) == []


def test_identical_account_openings_create_one_account(ledger: Ledger) -> None:
    outcomes = race(
        [
            (lambda: ledger.open_account("new", "credit", idempotency_key="open-same"))
            for _ in range(THREADS)
        ]
    )
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert len({o.model_dump_json() for o in outcomes}) == 1
    assert sorted(o.replayed for o in outcomes) == [False] + [True] * (THREADS - 1)

    def opening(i: int) -> Callable[[], Any]:
        return lambda: ledger.open_account("other", "credit", idempotency_key=f"open-{i}")

    different = race([opening(i) for i in range(8)])
    kinds = Counter(type(o).__name__ for o in different)
    assert kinds == {"AccountView": 1, "AccountExists": 7}, different


def test_replicas_started_together_make_one_admin_key(ledger: Ledger) -> None:
    """Replicas of ``serve`` started together on a new ledger each look for an admin key:
    one makes it and prints it, the others find it (there is no second admin key that
    only some replica's log shows)."""
    replicas = [Keys(ledger.db) for _ in range(8)]
    made = race([keys.bootstrap_admin for keys in replicas])
    assert not [m for m in made if isinstance(m, Exception)], made
    assert len([m for m in made if m is not None]) == 1, made
    admins = replicas[0].page(role="admin").items
    assert len(admins) == 1, admins
    assert admins[0].created_by == "system"  # the ledger made it, at a first start
