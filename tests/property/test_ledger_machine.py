"""A state machine over the ledger, checked against a simple model after every step.

The model knows only what a customer could know: what was topped up, charged, refunded,
adjusted and is held. Grants are the one thing the model reads from the ledger (which
were due, which an adjustment made), because which credits remain in which grant is the
ledger's business. From those it knows what left each grant by expiring or being revoked:
a reversal of the grant's top-up takes that back from the expired-credits account, not
from the wallet.

The wallet lives in a timezone drawn per example: its months (allocations, spend limits,
daily rollups) are local ones. Each month that closes is reported, in the wallet's
timezone and in UTC, from the rollups and from the journal: the two agree, the statement
reconciles and says what the model says of that month, and it never changes afterwards.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger.db import Database
from ledger.errors import (
    AccountBlocked,
    AlreadyReversed,
    GrantNotOpen,
    HoldNotPending,
    InsufficientCredits,
    LedgerError,
    SpendLimitReached,
)
from ledger.services import Ledger
from ledger.verify import verify
from pricing import default_catalogs, price_usage
from pricing.errors import PricingError
from reports.queries import records
from reports.statement import ACCOUNT_COLUMNS, Statement
from tests import factories as f
from tests.conftest import examples
from tests.factories import Clock, make_statement
from tests.pg import TempPostgres

W = "w"
REQUESTS = {
    "text": lambda n: f.text("x" * n, model="gpt-5-nano", max_tokens=max(1, n)),
    "image": lambda n: f.request("cosmic", "image", prompt="p", model="dall-e-3"),
    "video": lambda n: f.cosmic_video(duration=[4, 6, 8][n % 3]),
}
#: The wallet's timezone: whole hours behind UTC with DST, half an hour ahead, 13:45
#: ahead (its months begin on the previous UTC day), and UTC itself.
TIMEZONES = ["UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"]
#: How long after ``f.NOW`` (November 21, 12:00 UTC) the wallet opens: then, or hours
#: before the end of November in Chatham (November 30, 10:15 UTC) or in UTC, so that
#: months close within an example's few steps. At each start, some of the timezones are
#: on another day than UTC.
STARTS = [timedelta(0), timedelta(days=8, hours=18, minutes=15), timedelta(days=9, hours=10)]


class LedgerMachine(RuleBasedStateMachine):
    make_db: Callable[[], Database]

    holds = Bundle("holds")
    entries = Bundle("entries")

    def __init__(self) -> None:
        super().__init__()
        self.db = self.make_db()
        self.clock = Clock()
        self.ledger = Ledger(self.db, default_catalogs(), clock=self.clock)
        self.keys = itertools.count()
        self.balance = 0
        self.pending: dict[str, int] = {}
        self.expires: dict[str, datetime] = {}  # of each hold
        self.overdraft = 0
        self.allocation: int | None = None
        self.blocked = False
        self.spend_limit: int | None = None
        self.spent: dict[str, int] = {}  # what captures and charges debited, by period
        self.refunded: dict[str, int] = {}  # what refunds gave back, by their charge's period
        self.allocated: set[str] = set()  # the periods whose allocation was granted
        self.max_tokens: dict[str, int] = {}  # of each text hold's request
        self.excused = False  # available may be negative (overage, or expiry under holds)
        self.replays: list[tuple[Callable[[], Any], Any]] = []
        self.timezone = "UTC"
        self.refunds_posted: dict[str, int] = {}  # what refunds gave back, by their period
        # Per report timezone: the month the wallet was opened in, and for each month
        # that closed since, the balance and the open holds (count, amount) at its end.
        self.first_month: dict[str, str] = {}
        self.month_ends: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.statements: dict[tuple[str, str], Statement] = {}  # as first reported
        self.grant_of: dict[str, str] = {}  # the grant each top-up or adjustment made
        # The credits of each grant that expired or were revoked: they left the wallet
        # then, and a reversal of the grant's top-up does not take them a second time.
        self.gone: dict[str, int] = {}
        self.returned = 0  # what reversals took back from the expired-credits account
        # The balance and pending at each instant steps ran at, as the last of them left it.
        self.history: dict[datetime, tuple[int, int]] = {}

    def period(self, timezone: str | None = None) -> str:
        """The month it is now in ``timezone`` (default: the wallet's)."""
        return self.clock.now.astimezone(ZoneInfo(timezone or self.timezone)).strftime("%Y-%m")

    def report_zones(self) -> list[str]:
        return sorted({self.timezone, "UTC"})

    def room(self, pending: int | None = None) -> int | None:
        """What the spend limit leaves this period (None: no limit), with ``pending``
        held (default: every open hold's amount)."""
        if self.spend_limit is None:
            return None
        held = sum(self.pending.values()) if pending is None else pending
        return self.spend_limit - self.spent_now() - held

    def fresh_pending(self) -> int:
        """What the open holds not yet past their expiry hold."""
        stale = set(self.stale())
        return sum(a for h, a in self.pending.items() if h not in stale)

    def stale(self) -> list[str]:
        """The open holds past their expiry: no sweeper has released them yet."""
        return [h for h in self.pending if self.expires[h] <= self.clock.now]

    def fits(self, amount: int, pending: int) -> bool:
        """Whether the wallet can hold or spend ``amount`` with ``pending`` held."""
        room = self.room(pending)
        return (
            amount <= self.balance - pending + self.overdraft
            and self.balance + self.overdraft >= 0
            and (room is None or amount <= room)
        )

    def funded(self, amount: int, released: int) -> None:
        """An authorization or charge of ``amount`` went ahead, having released
        ``released`` holds past their expiry: exactly those it needed released, none when
        it fit with them held."""
        if self.fits(amount, sum(self.pending.values())):
            assert released == 0
            return
        stale = self.stale()
        assert released == len(stale) > 0
        event("went ahead by releasing expired holds")
        for h in stale:
            self.pending.pop(h)

    def spent_now(self) -> int:
        """What this period spent: its captures and charges less refunds of those (a
        refund of an earlier period's charge counts in that period)."""
        period = self.period()
        return self.spent.get(period, 0) - self.refunded.get(period, 0)

    def allocate_now(self) -> None:
        """A change that makes this period's allocation due (an allocation set, the wallet
        unblocked) grants it at once, if the period has none yet."""
        period = self.period()
        if self.allocation is not None and not self.blocked and period not in self.allocated:
            self.balance += self.allocation
            self.allocated.add(period)

    def spend(self, amount: int) -> None:
        period = self.period()
        self.spent[period] = self.spent.get(period, 0) + amount

    def refused_by_limit(self, exc: InsufficientCredits) -> bool:
        """Whether ``exc`` is the spend limit's refusal, checked against the model (the
        holds past their expiry released: a refusal releases them first, then rolls back)."""
        if not isinstance(exc, SpendLimitReached):
            return False
        room = self.room(self.fresh_pending())
        assert room is not None, "a spend limit refused a wallet without one"
        assert exc.needed > room
        assert (exc.limit, exc.remaining) == (self.spend_limit, max(0, room))
        return True

    def key(self) -> str:
        return f"m-{next(self.keys)}"

    def teardown(self) -> None:
        self.db.dispose()

    def snapshot(self) -> tuple[Any, ...]:
        view = self.ledger.account(W)
        with self.db.transaction(write=False) as conn:
            counts = tuple(
                conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                for t in ("entries", "holds", "grants", "idempotency_keys")
            )
        return view.balance, view.pending, tuple(g.remaining for g in view.grants), counts

    def rejected(self, call: Callable[[], Any], *errors: type[Exception]) -> Exception:
        before = self.snapshot()
        try:
            call()
        except errors as exc:
            assert self.snapshot() == before, "a rejected operation changed the ledger"
            return exc
        raise AssertionError("expected a rejection")

    def remember(self, call: Callable[[], Any], result: Any) -> Any:
        assert not result.replayed, "a first answer said it was given again"
        self.replays.append((call, result))
        return result

    @initialize(
        overdraft=st.sampled_from([0, 50_000]),
        allocation=st.sampled_from([None, 100_000]),
        timezone=st.sampled_from(TIMEZONES),
        start=st.sampled_from(STARTS),
    )
    def open(self, overdraft: int, allocation: int | None, timezone: str, start: timedelta) -> None:
        self.overdraft, self.allocation, self.timezone = overdraft, allocation, timezone
        self.clock.advance(seconds=start.total_seconds())
        self.ledger.open_account(
            W,
            "token",
            idempotency_key=self.key(),
            overdraft_limit=overdraft,
            monthly_allocation=allocation,
            timezone=timezone,
        )
        self.first_month = {zone: self.period(zone) for zone in self.report_zones()}
        if allocation is not None:  # granted as it opens: the sweeper finds nothing due
            assert self.ledger.roll_allocations() == 0
            self.balance += allocation
            self.allocated.add(self.period())

    # ------------------------------------------------------------------------ rules

    @rule(
        target=entries,
        amount=st.integers(1, 400_000),
        expires_in=st.one_of(st.none(), st.integers(1, 72)),
        priority=st.integers(0, 2),
        kind=st.sampled_from(["pack", "promo"]),
    )
    def top_up(self, amount: int, expires_in: int | None, priority: int, kind: str) -> Any:
        expires = None if expires_in is None else self.clock.now + timedelta(hours=expires_in)
        key = self.key()

        def call() -> Any:
            return self.ledger.top_up(
                W, amount, idempotency_key=key, kind=kind, expires_at=expires, priority=priority
            )

        result = self.remember(call, call())
        self.balance += amount
        if result.grant is not None:
            self.grant_of[result.entry.id] = result.grant.id
        return result.entry.id

    @rule(target=holds, kind=st.sampled_from(sorted(REQUESTS)), size=st.integers(1, 3000))
    def authorize(self, kind: str, size: int) -> Any:
        return self.authorize_request(REQUESTS[kind](size))

    def authorize_request(self, request: dict[str, Any]) -> Any:
        # What a refusal reports: available once the expired holds are released.
        available = self.balance - self.fresh_pending() + self.overdraft
        key = self.key()
        # An estimate asked just before answers as the authorization then does.
        advice = self.ledger.affordability(W, self.ledger.quote(request))
        assert advice.blocked == self.blocked
        if self.blocked:
            assert not advice.affordable
            self.rejected(
                lambda: self.ledger.authorize(W, request, idempotency_key=key), AccountBlocked
            )
            return multiple()
        try:
            hold = self.ledger.authorize(W, request, idempotency_key=key)
        except InsufficientCredits:
            assert not advice.affordable
            assert advice.available == available
            # Refused: the same request again is refused the same way and changes nothing.
            exc = self.rejected(
                lambda: self.ledger.authorize(W, request, idempotency_key=key), InsufficientCredits
            )
            assert isinstance(exc, InsufficientCredits)
            assert exc.available == available
            if not self.refused_by_limit(exc):
                assert exc.needed > available or self.balance + self.overdraft < 0
            return multiple()
        self.funded(hold.held, hold.holds_expired)
        assert hold.credits_remaining == (
            self.balance - sum(self.pending.values()) + self.overdraft - hold.held
        )
        assert advice.affordable
        assert advice.available == hold.credits_remaining + hold.held
        self.pending[hold.id] = hold.held
        self.expires[hold.id] = hold.expires_at
        if request["operation"] == "text":
            self.max_tokens[hold.id] = request["params"]["max_tokens"]
        return hold.id

    @rule(
        target=holds,
        kind=st.sampled_from(sorted(REQUESTS)),
        size=st.integers(1, 3000),
        tight=st.booleans(),
    )
    def retry_after_expiry(self, kind: str, size: int, tight: bool) -> Any:
        """A gateway's hold expires (its provider never answered) and it asks again
        before the hold sweeper's round: the expired hold, still in pending, holds
        nothing, so the retry is refused only where the wallet is short without it.
        ``tight``: the retry asks for just more than the wallet has with it held."""
        first = self.authorize(kind, size)
        if not isinstance(first, str):
            return multiple()
        self.time_passes(15, sweep=False)  # the hold's lifetime to the microsecond
        assert first in self.stale()
        retry = REQUESTS[kind](size)
        if tight and (just_over := self.just_over()) is not None:
            retry = just_over
        return self.authorize_request(retry)

    def just_over(self) -> dict[str, Any] | None:
        """The smallest text request (by max_tokens) that the wallet refuses with its
        expired holds held, if it fits with them released; else None."""
        held, fresh = sum(self.pending.values()), self.fresh_pending()

        def text(max_tokens: int) -> dict[str, Any]:
            return f.text("x", model="gpt-5-nano", max_tokens=max_tokens)

        def cost(max_tokens: int) -> int:
            return self.ledger.quote(text(max_tokens)).max_cost

        lo, hi = 1, 128_000  # the model's most output tokens
        if self.fits(cost(hi), held):
            return None
        while lo < hi:  # the first max_tokens refused with the expired holds held
            mid = (lo + hi) // 2
            if self.fits(cost(mid), held):
                lo = mid + 1
            else:
                hi = mid
        return text(lo) if self.fits(cost(lo), fresh) else None

    @rule(
        target=entries,
        hold=consumes(holds),
        status=st.sampled_from(["COMPLETED", "COMPLETED", "FAILED", "ERROR"]),
        extra_input=st.integers(0, 5_000),
        fraction=st.integers(0, 100),
    )
    def capture(self, hold: str, status: str, extra_input: int, fraction: int) -> Any:
        view = self.ledger.hold(hold)
        quote_usage: dict[str, Any] = {}
        if view.operation == "text":
            # Output up to max_tokens (never past it: a capture that claims more is
            # refused); input from nothing to well past the estimate (capture overage).
            quote_usage = {
                "input_tokens": extra_input,
                "output_tokens": self.max_tokens[hold] * fraction // 100,
            }
        elif fraction < 20:
            quote_usage = {"images" if view.operation == "image" else "videos": 0}
        key = self.key()
        if (
            hold not in self.pending
            or view.status != "pending"
            or view.expires_at <= self.clock.now
        ):
            self.rejected(
                lambda: self.ledger.capture(
                    hold, status=status, usage=quote_usage, idempotency_key=key
                ),
                HoldNotPending,
            )
            return multiple()

        def call() -> Any:
            return self.ledger.capture(hold, status=status, usage=quote_usage, idempotency_key=key)

        done = self.remember(call, call())
        held = self.pending.pop(hold)
        self.spend(done.charged)
        if status != "COMPLETED":
            assert done.charged == 0
        assert done.released == max(0, held - done.charged)
        if done.overage:
            self.excused = True
        self.balance -= done.charged
        return done.entry_id if done.entry_id else multiple()

    @rule(hold=consumes(holds))
    def void(self, hold: str) -> None:
        key = self.key()
        if hold not in self.pending:
            self.rejected(lambda: self.ledger.void(hold, idempotency_key=key), HoldNotPending)
            return

        def call() -> Any:
            return self.ledger.void(hold, idempotency_key=key)

        self.remember(call, call())
        self.pending.pop(hold)

    @rule(hold=holds, minutes=st.sampled_from([1, 30, 60 * 24]))
    def extend(self, hold: str, minutes: int) -> None:
        view = self.ledger.hold(hold)
        key = self.key()
        ttl = timedelta(minutes=minutes)
        if hold not in self.pending or view.expires_at <= self.clock.now:
            self.rejected(
                lambda: self.ledger.extend(hold, ttl=ttl, idempotency_key=key), HoldNotPending
            )
            return

        def call() -> Any:
            return self.ledger.extend(hold, ttl=ttl, idempotency_key=key)

        extended = self.remember(call, call())
        assert extended.expires_at == self.clock.now + ttl
        assert extended.status == "pending"
        self.expires[hold] = extended.expires_at

    @rule(target=entries, kind=st.sampled_from(sorted(REQUESTS)), size=st.integers(1, 3000))
    def charge(self, kind: str, size: int) -> Any:
        request = REQUESTS[kind](size)
        key = self.key()
        if self.blocked:
            self.rejected(
                lambda: self.ledger.charge(W, request, idempotency_key=key), AccountBlocked
            )
            return multiple()
        try:
            done = self.ledger.charge(W, request, idempotency_key=key)
        except InsufficientCredits:
            exc = self.rejected(
                lambda: self.ledger.charge(W, request, idempotency_key=key), InsufficientCredits
            )
            assert isinstance(exc, InsufficientCredits)
            assert exc.available == self.balance - self.fresh_pending() + self.overdraft
            if not self.refused_by_limit(exc):
                assert exc.needed > exc.available or self.balance + self.overdraft < 0
            return multiple()
        self.replays.append((lambda: self.ledger.charge(W, request, idempotency_key=key), done))
        self.funded(done.credits_used, done.holds_expired)
        assert done.credits_remaining == (
            self.balance - sum(self.pending.values()) + self.overdraft - done.credits_used
        )
        self.balance -= done.credits_used
        self.spend(done.credits_used)
        return done.entry_id if done.entry_id else multiple()

    @rule(
        target=entries,
        kind=st.sampled_from(sorted(REQUESTS)),
        size=st.integers(1, 3000),
        status=st.sampled_from(["COMPLETED", "COMPLETED", "FAILED", "ERROR"]),
        input_tokens=st.integers(0, 5_000),
        fraction=st.integers(0, 100),
    )
    def report_usage(
        self, kind: str, size: int, status: str, input_tokens: int, fraction: int
    ) -> Any:
        """Usage reported after it ran: charged at its price whatever the wallet holds,
        however it is blocked or limited (the provider did the work); a shortfall is debt."""
        request = REQUESTS[kind](size)
        usage: dict[str, Any] = {}
        if kind == "text":
            usage = {"input_tokens": input_tokens, "output_tokens": size * fraction // 100}
        key = self.key()

        def call() -> Any:
            return self.ledger.report_usage(
                W, request, status=status, usage=usage, idempotency_key=key
            )

        done = self.remember(call, call())
        assert done.charged == price_usage(request, usage, status, at=self.clock.now).amount
        if status != "COMPLETED":
            assert done.charged == 0
        self.balance -= done.charged
        self.spend(done.charged)
        available = self.balance - sum(self.pending.values()) + self.overdraft
        assert (done.credits_remaining, done.debt) == (
            available,
            max(0, -(self.balance + self.overdraft)),
        )
        if available < 0:
            self.excused = True
        return done.entry_id if done.entry_id else multiple()

    @rule(entry=entries)
    def reverse(self, entry: str) -> None:
        key = self.key()
        original = next((e for e in self.ledger.entries(W, limit=500).items if e.id == entry), None)
        assert original is not None
        delta = sum(p.amount for p in original.postings if p.account_id == W)
        reversed_already = any(
            e.reverses_id == entry for e in self.ledger.entries(W, limit=500).items
        )
        if reversed_already:
            self.rejected(
                lambda: self.ledger.reverse(entry, reason="again", idempotency_key=key),
                AlreadyReversed,
            )
            return

        def call() -> Any:
            return self.ledger.reverse(entry, reason="model refund", idempotency_key=key)

        self.remember(call, call())
        # What expired of a top-up's grant is taken back from the expired-credits account.
        gone = self.gone.get(self.grant_of.get(entry, ""), 0)
        self.returned += gone
        delta -= gone
        self.balance -= delta
        if original.kind in ("capture", "charge"):  # a refund: its charge's period gets it
            period = original.posted_at.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m")
            self.refunded[period] = self.refunded.get(period, 0) - delta
            now = self.period()
            self.refunds_posted[now] = self.refunds_posted.get(now, 0) - delta
        if delta > 0:  # taking credits back can push available below zero
            self.excused = True

    @rule(data=st.data())
    def revoke_grant(self, data: st.DataObject) -> None:
        """Take back what is left of a grant; one already empty (or past due: the revoke
        expires it first, then finds nothing left) is refused and nothing changes."""
        grants = self.ledger.account(W).grants
        if not grants:
            return
        grant = data.draw(st.sampled_from(grants))
        now = self.clock.now
        due = [g for g in grants if g.expires_at is not None and g.expires_at <= now]
        key = self.key()
        if grant in due:
            self.rejected(
                lambda: self.ledger.revoke_grant(grant.id, reason="model", idempotency_key=key),
                GrantNotOpen,
            )
            return

        def call() -> Any:
            return self.ledger.revoke_grant(grant.id, reason="model", idempotency_key=key)

        done = self.remember(call, call())
        assert (done.grant.remaining, done.grant.expires_at) == (0, now)
        self.balance -= grant.remaining + sum(g.remaining for g in due)
        for g in [grant, *due]:
            self.gone[g.id] = self.gone.get(g.id, 0) + g.remaining
        if self.pending:  # credits held may be among those taken back
            self.excused = True
        again = self.key()
        self.rejected(
            lambda: self.ledger.revoke_grant(grant.id, reason="again", idempotency_key=again),
            GrantNotOpen,
        )

    @rule(target=entries, amount=st.integers(-50_000, 50_000).filter(bool))
    def adjust(self, amount: int) -> Any:
        key = self.key()
        before = {g.id for g in self.ledger.grants_of(W)}

        def call() -> Any:
            return self.ledger.adjust(W, amount, reason="model adjustment", idempotency_key=key)

        done = self.remember(call, call())
        self.balance += amount
        if amount < 0:
            self.excused = True
        # Credits beyond the wallet's debt make a grant, which a revocation may empty.
        made = [g.id for g in self.ledger.grants_of(W) if g.id not in before]
        if made:
            self.grant_of[done.entry.id] = made[0]
        return done.entry.id

    @rule(
        minutes=st.sampled_from([1, 14, 16, 90, 60 * 24, 60 * 24 * 12]),
        sweep=st.sampled_from([True, True, False]),
    )
    def time_passes(self, minutes: int, sweep: bool) -> None:
        """Time passes; the sweepers run, the hold sweeper not always (a server down, or
        between its rounds): an authorization or charge then meets expired holds."""
        before = {zone: self.period(zone) for zone in self.report_zones()}
        before_period = before[self.timezone]
        self.record()
        self.clock.advance(minutes=minutes)
        for zone, month in before.items():  # nothing was posted between: a month's end
            if self.period(zone) != month:
                held = self.pending.values()  # expired ones too, until the sweep below
                self.month_ends[(zone, month)] = (self.balance, len(held), sum(held))
        due_grants = [
            g
            for g in self.ledger.account(W).grants
            if g.expires_at is not None and g.expires_at <= self.clock.now
        ]
        due = sum(g.remaining for g in due_grants)
        for g in due_grants:
            self.gone[g.id] = self.gone.get(g.id, 0) + g.remaining
        if due and self.pending:
            self.excused = True
        self.ledger.expire_grants()
        self.balance -= due
        if sweep:
            expired = [h for h in self.pending if self.ledger.hold(h).expires_at <= self.clock.now]
            assert expired == self.stale()
            assert self.ledger.expire_holds() == len(expired)
            for h in expired:
                self.pending.pop(h)
        granted = self.ledger.roll_allocations()
        period = self.period()
        # Once per period, as it begins (one whose allocation was set, or whose wallet was
        # unblocked, had it at that change). A blocked wallet is granted nothing.
        if self.allocation is not None and period not in self.allocated and not self.blocked:
            assert granted == 1, (before_period, period)
            self.balance += self.allocation
            self.allocated.add(period)
        else:
            assert granted == 0
        if any(self.period(zone) != month for zone, month in before.items()):
            self.books_close()

    @rule(
        overdraft=st.one_of(st.none(), st.sampled_from([0, 25_000, 50_000, 100_000])),
        allocation=st.sampled_from(["keep", None, 50_000, 100_000]),
    )
    def change_settings(self, overdraft: int | None, allocation: int | str | None) -> None:
        key = self.key()
        changes: dict[str, Any] = {}
        if overdraft is not None:
            changes["overdraft_limit"] = overdraft
        if allocation != "keep":
            changes["monthly_allocation"] = allocation
        if not changes:
            self.rejected(lambda: self.ledger.update_account(W, idempotency_key=key), LedgerError)
            return

        def call() -> Any:
            return self.ledger.update_account(W, idempotency_key=key, reason="model", **changes)

        view = self.remember(call, call())
        self.overdraft = changes.get("overdraft_limit", self.overdraft)
        if changes.get("monthly_allocation", self.allocation) != self.allocation:
            self.allocation = changes["monthly_allocation"]
            self.allocate_now()
        assert (view.overdraft_limit, view.monthly_allocation) == (self.overdraft, self.allocation)
        if view.available < 0:  # a limit lowered below what is already used
            self.excused = True

    @rule(limit=st.sampled_from([None, 0, 2_000, 20_000, 200_000]))
    def set_spend_limit(self, limit: int | None) -> None:
        """A monthly spend limit: what captures and charges debit this period plus the
        open holds never pass it, except by a capture's overage."""
        key = self.key()

        def call() -> Any:
            return self.ledger.update_account(W, idempotency_key=key, monthly_spend_limit=limit)

        view = self.remember(call, call())
        self.spend_limit = limit
        room = self.room()
        assert view.monthly_spend_limit == limit
        assert view.spent_this_month == self.spent_now()
        assert view.spend_remaining == (None if room is None else max(0, room))

    @rule(blocked=st.sampled_from([False, False, True]))
    def block(self, blocked: bool) -> None:
        """Block or unblock: new authorizations and charges are refused while blocked;
        holds already open still capture, void and extend."""
        key = self.key()

        def call() -> Any:
            return self.ledger.update_account(W, idempotency_key=key, blocked=blocked)

        view = self.remember(call, call())
        unblocked = self.blocked and not blocked
        self.blocked = blocked
        assert view.blocked is blocked
        if unblocked:
            self.allocate_now()

    @rule()
    def books_agree(self) -> None:
        """The month so far and every closed month, reported again after more traffic:
        the rollups and the journal still agree, and a closed month says what it said."""
        self.books_close(so_far=True)

    def books_close(self, *, so_far: bool = False) -> None:
        """Every month closed so far (and with ``so_far`` the current one), reported in
        each timezone from the rollups and from the journal: the two agree, reconcile,
        chain, match the model, and a closed month never changes."""
        for zone in self.report_zones():
            months = sorted(m for z, m in self.month_ends if z == zone)
            assert months[:1] in ([], [self.first_month[zone]])
            opening = 0
            for month in [*months, self.period(zone)] if so_far else months:
                ended = self.month_ends.get((zone, month))
                held = self.pending.values()
                closing, holds, amount = ended or (self.balance, len(held), sum(held))
                made = self.statement(month, zone)
                (row,) = records(made.accounts)
                assert (row["opening"], row["closing"]) == (opening, closing), (zone, month)
                assert (row["open_holds"], row["open_holds_amount"]) == (holds, amount)
                if zone == self.timezone:  # the wallet's own months: its rollups' days
                    assert row["source"] == "rollup"
                    spent = self.spent.get(month, 0)
                    assert (row["usage_amount"], row["debit_usage"]) == (spent, spent)
                    assert row["credit_refund"] == self.refunds_posted.get(month, 0)
                if ended is not None:  # a closed month stays closed
                    first = self.statements.setdefault((zone, month), made)
                    for frame in ("accounts", "usage", "daily"):
                        pd.testing.assert_frame_equal(getattr(made, frame), getattr(first, frame))
                opening = closing

    def statement(self, month: str, zone: str) -> Statement:
        """The wallet's statement of ``month`` in ``zone``, read from the rollups where
        they serve (the wallet's timezone), checked against the one read from the
        journal."""
        made = make_statement(self.db, month, zone, W, generated_at=self.clock.now)
        exact = make_statement(
            self.db, month, zone, W, from_journal=True, generated_at=self.clock.now
        )
        same = [c for c in ACCOUNT_COLUMNS if c != "source"]
        pd.testing.assert_frame_equal(made.accounts[same], exact.accounts[same])
        pd.testing.assert_frame_equal(made.usage, exact.usage)
        pd.testing.assert_frame_equal(made.daily, exact.daily)
        return made

    @precondition(lambda self: bool(self.replays))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        call, result = data.draw(st.sampled_from(self.replays))
        before = self.snapshot()
        again = call()
        assert again == result
        assert again.replayed, "an answer given again did not say so"
        assert self.snapshot() == before, "a replayed request changed the ledger"

    @rule()
    def balances_then(self) -> None:
        """The balance at each instant steps ran at is what the last of them left, and
        just before it what the instant before left: read from the wallet's rollups and
        its holds then, in its timezone, whatever days and months passed."""
        before: tuple[int, int] | None = None
        for instant, (balance, pending) in sorted(self.history.items()):
            view = self.ledger.balance(W, as_of=instant)
            assert (view.balance, view.pending) == (balance, pending), instant
            if before is not None:
                view = self.ledger.balance(W, as_of=instant - timedelta(microseconds=1))
                assert (view.balance, view.pending) == before, instant
            before = (balance, pending)

    @rule()
    def bad_input_is_refused(self) -> None:
        self.rejected(lambda: self.ledger.top_up(W, -5, idempotency_key=self.key()), LedgerError)
        self.rejected(
            lambda: self.ledger.authorize(
                W, f.cosmic_video(duration=5), idempotency_key=self.key()
            ),
            PricingError,
        )

    # ------------------------------------------------------------------- invariants

    @invariant()
    def books_balance(self) -> None:
        assert verify(self.db) == []

    def system_balance(self, kind: str) -> int:
        with self.db.transaction(write=False) as conn:
            held = conn.execute(
                sa.text("SELECT balance FROM accounts WHERE external_id = :id"),
                {"id": f"system:{kind}:token"},
            ).scalar()
        return int(held or 0)

    @invariant()
    def expired_credits_are_counted_once(self) -> None:
        """The expired-credits account holds what expired or was revoked, less what the
        reversals of those credits' top-ups took back: each credit in it once."""
        assert self.system_balance("expired") == sum(self.gone.values()) - self.returned

    @invariant()
    def revenue_is_what_was_charged_less_refunds(self) -> None:
        """Captures, charges and usage reports (their overage included, even into debt)
        less the refunds of them: no charge is lost or counted twice."""
        charged = sum(self.spent.values()) - sum(self.refunded.values())
        assert self.system_balance("revenue") == charged

    @invariant()
    def model_agrees(self) -> None:
        view = self.ledger.balance(W)
        assert view.balance == self.balance
        assert view.pending == sum(self.pending.values())
        assert self.ledger.account(W).spent_this_month == self.spent_now()
        if view.available >= 0:
            self.excused = False
        assert view.available >= 0 or self.excused, view
        self.record()

    def record(self) -> None:
        """The model's balance and pending now, as the last step at this instant left
        them (after each step, and before time passes within one)."""
        self.history[self.clock.now] = (self.balance, sum(self.pending.values()))


def _sqlite(template: Path) -> Database:
    """A new ledger file, a copy of the migrated ``template``."""
    path = Path(tempfile.mkdtemp(prefix="creditledger-machine-")) / "ledger.db"
    shutil.copyfile(template, path)
    return Database.from_url(f"sqlite:///{path}")


MACHINE_SETTINGS = settings(
    max_examples=examples(25 if os.environ.get("CI") else 12),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.long
def test_ledger_state_machine_sqlite(sqlite_template: Path) -> None:
    class OnSQLite(LedgerMachine):
        def make_db(self) -> Database:
            return _sqlite(sqlite_template)

        def teardown(self) -> None:
            super().teardown()
            folder = Path(str(self.db.engine.url.database)).parent
            shutil.rmtree(folder, ignore_errors=True)  # one per example

    run_state_machine_as_test(OnSQLite, settings=MACHINE_SETTINGS)


@pytest.mark.long
def test_ledger_state_machine_postgresql(postgres: TempPostgres | None) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL binaries not installed")
    from tests.conftest import _postgres_database

    server = postgres

    class OnPostgres(LedgerMachine):
        def make_db(self) -> Database:
            self.dropping = ExitStack()  # one database per example, dropped after it
            return Database.from_url(self.dropping.enter_context(_postgres_database(server)))

        def teardown(self) -> None:
            super().teardown()
            self.dropping.close()

    run_state_machine_as_test(OnPostgres, settings=MACHINE_SETTINGS)
