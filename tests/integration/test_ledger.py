"""The ledger's use cases on a real database (SQLite, then PostgreSQL)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ledger import kernel
from ledger import store as sql
from ledger.db import Database
from ledger.errors import (
    AccountExists,
    AlreadyReversed,
    CatalogChanged,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    NotReversible,
    SpendLimitReached,
)
from ledger.models import accounts, daily, idempotency, price_versions
from ledger.services import Affordability, Ledger
from ledger.store import Store
from ledger.verify import verify
from pricing import load_catalogs
from pricing.catalog import CatalogSet
from pricing.errors import InvalidParameter, InvalidUsage
from tests import factories as f
from tests.factories import Clock, key

VEO_FAST = f.veo3_video(video_model="veo3_fast")


def wallet(ledger: Ledger, name: str = "user-1", unit: str = "credit", **kw: Any) -> str:
    ledger.open_account(name, unit, idempotency_key=key("open"), **kw)
    return name


def snapshot(ledger: Ledger, account: str) -> tuple[Any, ...]:
    """Everything a rejected operation must leave as it was."""
    view = ledger.account(account)
    page = ledger.entries(account, limit=500)
    return (view.balance, view.pending, [g.remaining for g in view.grants], len(page.items))


# ------------------------------------------------------------------------- accounts


def test_open_account_validates_and_is_idempotent(ledger: Ledger) -> None:
    view = ledger.open_account(
        "bucket",
        "token",
        idempotency_key="open-1",
        overdraft_limit=10,
        monthly_allocation=1000,
        timezone="Europe/Berlin",
    )
    # The period it opens in has its allocation at once, not at the sweeper's next round.
    assert (view.balance, view.available, view.unit, view.timezone) == (
        1000,
        1010,
        "token",
        "Europe/Berlin",
    )
    assert [(g.kind, g.remaining) for g in view.grants] == [("allocation", 1000)]
    assert ledger.roll_allocations() == 0
    again = ledger.open_account(
        "bucket",
        "token",
        idempotency_key="open-1",
        overdraft_limit=10,
        monthly_allocation=1000,
        timezone="Europe/Berlin",
    )
    assert again == view
    with pytest.raises(AccountExists):
        ledger.open_account("bucket", "token", idempotency_key="open-2")
    with pytest.raises(IdempotencyConflict):
        ledger.open_account("other", "token", idempotency_key="open-1")
    with pytest.raises(InvalidInput) as info:
        ledger.open_account("x", "euro", idempotency_key=key())
    assert info.value.allowed == ["credit", "token", "usd"]
    # NUL cannot be stored as text by PostgreSQL: refused alike on both databases.
    with pytest.raises(InvalidInput) as info:
        ledger.open_account("nul\x00", "token", idempotency_key=key())
    assert info.value.field == "account_id"
    with pytest.raises(NotFound):
        ledger.balance("bucket\x00")
    with pytest.raises(NotFound):  # the locking lookup (authorize, charge, top-up)
        ledger.top_up("bucket\x00", 5, idempotency_key=key())
    bad: list[tuple[dict[str, Any], str]] = [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "localtime"}, "timezone"),  # the server's zone, whatever it is
        ({"timezone": "right/UTC"}, "timezone"),
        ({"overdraft_limit": -1}, "overdraft_limit"),
        ({"monthly_allocation": 0}, "monthly_allocation"),
    ]
    for kw, field in bad:
        with pytest.raises(InvalidInput) as info:
            ledger.open_account("y", "token", idempotency_key=key(), **kw)
        assert info.value.field == field
    with pytest.raises(NotFound):
        ledger.account("nobody")


def test_a_lone_surrogate_is_refused_wherever_text_is_stored_or_looked_up(
    ledger: Ledger,
) -> None:
    """Half of a UTF-16 pair (what Python reads from bytes that are not UTF-8, or JSON's
    ``"\\ud800"``) is no character: no UTF-8 encodes it, so neither database can store or
    compare it (a UnicodeEncodeError from the driver, before). Refused by name as NUL is,
    with nothing written; a whole pair is text."""
    ledger.open_account("bucket", "token", idempotency_key=key())
    with pytest.raises(InvalidInput) as info:
        ledger.open_account("lone\udcff", "token", idempotency_key=key())
    assert info.value.field == "account_id"
    assert "lone surrogate" in str(info.value)
    with pytest.raises(InvalidInput) as info:
        ledger.top_up("bucket", 5, idempotency_key=key(), reference="r\ud800")
    assert info.value.field == "reference"
    with pytest.raises(InvalidInput) as info:
        ledger.top_up("bucket", 5, idempotency_key="k\udfff")
    assert info.value.field == "idempotency_key"
    with pytest.raises(InvalidInput) as info:
        ledger.top_up("bucket", 5, idempotency_key="k\x00")
    assert info.value.field == "idempotency_key"
    with pytest.raises(NotFound):
        ledger.balance("bucket\udcff")
    with pytest.raises(NotFound):  # the locking lookup
        ledger.top_up("bucket\udcff", 5, idempotency_key=key())
    assert ledger.balance("bucket").balance == 0
    assert ledger.entries("bucket").items == []
    done = ledger.top_up("bucket", 5, idempotency_key="k\U0001f600", reference="\U0001f600")
    assert done.grant is not None
    assert done.grant.reference == "\U0001f600"
    assert verify(ledger.db) == []


@pytest.mark.parametrize(
    "bad",
    [
        "system:funding:token",  # reserved
        "a/b",  # /v1/accounts/a/b is another path: the wallet could never be addressed
        ".",
        "..",
        " padded",
        "padded ",
        "tab\there",
        "new\nline",
        "bidi\u202eoverride",
        "zero\u200bwidth",
    ],
)
def test_an_account_id_must_be_one_printable_path_segment(ledger: Ledger, bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ledger.open_account(bad, "token", idempotency_key=key())
    assert info.value.field == "account_id"


def test_wallets_are_listed_in_the_order_opened_a_page_at_a_time(ledger: Ledger) -> None:
    names = [wallet(ledger, f"w{i}", "token" if i % 2 else "credit") for i in range(7)]
    ledger.top_up("w3", 500, idempotency_key=key())
    ledger.authorize("w3", f.text(max_tokens=100), idempotency_key=key())
    seen: list[str] = []
    cursor = None
    while True:
        page = ledger.accounts(cursor=cursor, limit=3)
        assert len(page.items) <= 3
        seen += [a.account_id for a in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == names  # every wallet once, none of the system accounts
    listed = {a.account_id: a for a in ledger.accounts(limit=500).items}
    shown = ledger.account("w3")
    assert listed["w3"].model_dump() == shown.model_dump(
        exclude={"grants", "spent_this_month", "spend_remaining"}
    )
    assert listed["w3"].pending > 0
    tokens = ledger.accounts(unit="token", limit=500).items
    assert [a.account_id for a in tokens] == ["w1", "w3", "w5"]
    assert ledger.accounts(limit=7).next_cursor is None
    for bad, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"unit": "gold"}, "unit"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"cursor": "YWNjb3VudHw5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor"),  # 22 digits
    ):
        with pytest.raises(InvalidInput) as info:
            ledger.accounts(**bad)
        assert info.value.field == field


def _low_and_indebted(ledger: Ledger) -> None:
    """Credit wallets whose available balances are 1000, 60, 100, 0 and -140, and a
    token wallet with nothing."""
    wallet(ledger, "rich")
    ledger.top_up("rich", 1000, idempotency_key=key())
    wallet(ledger, "held")
    ledger.top_up("held", 300, idempotency_key=key())
    ledger.authorize("held", VEO_FAST, idempotency_key=key())  # holds 240
    wallet(ledger, "lent", overdraft_limit=100)
    wallet(ledger, "empty")
    wallet(ledger, "debtor", overdraft_limit=300)
    ledger.charge("debtor", VEO_FAST, idempotency_key=key())  # balance -240
    ledger.update_account("debtor", idempotency_key=key(), overdraft_limit=100)  # owes 140
    wallet(ledger, "tokens", "token")


def _listed(ledger: Ledger, **filters: Any) -> dict[str, int]:
    return {a.account_id: a.available for a in ledger.accounts(limit=500, **filters).items}


def test_wallets_are_listed_by_what_they_could_pay_and_by_debt(ledger: Ledger) -> None:
    _low_and_indebted(ledger)
    debtor = ledger.account("debtor")
    assert (debtor.available, debtor.debt) == (-140, 140)
    # The wallets that could not pay a 240-credit video: strictly below 240.
    assert _listed(ledger, unit="credit", available_below=240) == {
        "held": 60,
        "lent": 100,
        "empty": 0,
        "debtor": -140,
    }
    assert _listed(ledger, unit="credit", available_below=60) == {"empty": 0, "debtor": -140}
    assert _listed(ledger, unit="credit", available_below=0) == {"debtor": -140}
    assert _listed(ledger, unit="credit", available_below=-139) == {"debtor": -140}
    assert _listed(ledger, unit="credit", available_below=-140) == {}
    assert len(_listed(ledger, unit="credit", available_below=kernel.MAX_AMOUNT)) == 5
    assert _listed(ledger, unit="token", available_below=1) == {"tokens": 0}
    assert _listed(ledger, in_debt=True) == {"debtor": -140}
    assert set(_listed(ledger, in_debt=False)) == {"rich", "held", "lent", "empty", "tokens"}
    # Filters combine, and a page's cursor goes on with them.
    assert _listed(ledger, unit="credit", available_below=240, in_debt=False) == {
        "held": 60,
        "lent": 100,
        "empty": 0,
    }
    first = ledger.accounts(unit="credit", available_below=240, limit=2)
    assert [a.account_id for a in first.items] == ["held", "lent"]
    rest = ledger.accounts(unit="credit", available_below=240, limit=2, cursor=first.next_cursor)
    assert ([a.account_id for a in rest.items], rest.next_cursor) == (["empty", "debtor"], None)


def test_a_bad_wallet_filter_is_refused_naming_it(ledger: Ledger) -> None:
    wallet(ledger, "someone")
    for bad, field in (
        ({"unit": "credit", "available_below": kernel.MAX_AMOUNT + 1}, "available_below"),
        ({"unit": "credit", "available_below": -kernel.MAX_AMOUNT - 1}, "available_below"),
        ({"unit": "credit", "available_below": 1.5}, "available_below"),
        ({"unit": "credit", "available_below": True}, "available_below"),
        ({"unit": "credit", "available_below": "240"}, "available_below"),
        ({"available_below": 240}, "unit"),  # minor units of which unit?
        ({"in_debt": "yes"}, "in_debt"),
        ({"in_debt": 1}, "in_debt"),
    ):
        with pytest.raises(InvalidInput) as info:
            ledger.accounts(**bad)
        assert info.value.field == field, bad
    refused = pytest.raises(InvalidInput, ledger.accounts, available_below=240).value
    assert refused.allowed == sorted(ledger.units)


@pytest.mark.parametrize("threshold", [-kernel.MAX_AMOUNT, -1, 0, 1, 2**62, kernel.MAX_AMOUNT])
def test_available_below_stays_exact_at_the_ends_of_64_bits(ledger: Ledger, threshold: int) -> None:
    """Balances no request reaches in a test's time (a wallet in debt holding near the
    most), written straight into the rows: the filter must neither overflow nor round,
    on either database, and agree with the kernel's own arithmetic."""
    top, low = kernel.MAX_AMOUNT, -kernel.MAX_AMOUNT - 1
    states = [
        (balance, overdraft, pending)
        for balance in (low, -top, -1, 0, 1, top - 1, top)
        for overdraft in (0, 1, top)
        for pending in (0, 1, top - 1, top)
        if balance + overdraft <= top
    ]
    edges = {wallet(ledger, f"edge-{i}"): state for i, state in enumerate(states)}
    write = sa.update(accounts).where(accounts.c.external_id == sa.bindparam("name"))
    set_to = write.values(
        balance=sa.bindparam("b"), overdraft_limit=sa.bindparam("o"), pending=sa.bindparam("p")
    )
    with ledger.db.transaction() as conn:
        conn.execute(
            set_to, [{"name": n, "b": b, "o": o, "p": p} for n, (b, o, p) in edges.items()]
        )
    try:
        expected = {n for n, (b, o, p) in edges.items() if kernel.available(b, p, o) < threshold}
        assert 0 < len(expected) < len(edges)  # each threshold tells the wallets apart
        found = ledger.accounts(unit="credit", available_below=threshold, limit=500).items
        assert {a.account_id for a in found} == expected
        in_debt = {n for n, (b, o, _) in edges.items() if kernel.debt(b, o) > 0}
        assert {a.account_id for a in ledger.accounts(in_debt=True, limit=500).items} == in_debt
    finally:  # back to the empty wallets the journal says they are
        with ledger.db.transaction() as conn:
            conn.execute(set_to, [{"name": n, "b": 0, "o": 0, "p": 0} for n in edges])


def test_a_wallets_authorizations_are_listed_newest_first(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger, "holder", "credit")
    ledger.top_up(user, 5000, idempotency_key=key())
    made = []
    for _ in range(5):
        made.append(ledger.authorize(user, VEO_FAST, idempotency_key=key()).id)
        clock.advance(seconds=1)
    ledger.capture(made[0], status="COMPLETED", usage={"videos": 1}, idempotency_key=key())
    ledger.void(made[1], idempotency_key=key())
    other = wallet(ledger, "other", "credit")
    ledger.top_up(other, 500, idempotency_key=key())
    ledger.authorize(other, VEO_FAST, idempotency_key=key())
    seen: list[str] = []
    cursor = None
    while True:
        page = ledger.holds_of(user, cursor=cursor, limit=2)
        seen += [h.id for h in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == made[::-1]  # newest first, this wallet's only
    pending = ledger.holds_of(user, status="pending").items
    assert [h.id for h in pending] == made[:1:-1]
    assert sum(h.held for h in pending) == ledger.account(user).pending
    assert [h.status for h in ledger.holds_of(user, status="captured").items] == ["captured"]
    assert ledger.holds_of(user, status="expired").items == []
    assert ledger.holds_of(user, limit=1).items[0] == ledger.hold(made[-1])
    # The pending ones are sorted, not read in order: paged alike, two of one instant
    # by their ids.
    same_instant = [ledger.authorize(user, VEO_FAST, idempotency_key=key()).id for _ in "ab"]
    paged: list[str] = []
    cursor = None
    while True:
        page = ledger.holds_of(user, status="pending", cursor=cursor, limit=1)
        paged += [h.id for h in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert paged == sorted(same_instant, reverse=True) + made[:1:-1]
    nul = base64.urlsafe_b64encode(b"2026-11-21T12:00:00+00:00|a\x00b").decode()
    for bad, field in (
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"cursor": nul}, "cursor"),
    ):
        with pytest.raises(InvalidInput) as info:
            ledger.holds_of(user, **bad)
        assert info.value.field == field
    with pytest.raises(InvalidInput) as info:  # the entries' cursor, likewise
        ledger.entries(user, cursor=nul)
    assert info.value.field == "cursor"
    with pytest.raises(NotFound):
        ledger.holds_of("nobody")


def test_account_ids_may_be_emails_slugs_and_any_script(ledger: Ledger) -> None:
    for good in ("user@example.com", "bucket-1.prod", "a b", "\u6f22\u5b57", "x" * 200):
        assert ledger.open_account(good, "token", idempotency_key=key()).account_id == good
        assert ledger.account(good).account_id == good


# ------------------------------------------------------------------- the seed flows


def test_veo3_user_with_100_credits_gets_the_seed_402_then_pays_240(ledger: Ledger) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 100, idempotency_key=key())
    with pytest.raises(InsufficientCredits) as info:
        ledger.authorize(user, VEO_FAST, idempotency_key=key())
    assert info.value.to_dict() == {
        "error": "insufficient_credits",
        "message": "Insufficient credits. Need 240, have 100",
        "credits_needed": 240,
        "credits_balance": 100,
        "unit": "credit",
        "scale": 0,
    }
    ledger.top_up(user, 400, idempotency_key=key())
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    assert (hold.held, hold.status, hold.credits_remaining) == (240, "pending", 260)
    assert ledger.balance(user).pending == 240
    done = ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    assert (done.charged, done.released, done.credits_remaining) == (240, 0, 260)
    assert ledger.balance(user).model_dump(include={"balance", "pending", "available"}) == {
        "balance": 260,
        "pending": 0,
        "available": 260,
    }


def test_cosmic_text_capture_with_the_provider_usage(ledger: Ledger) -> None:
    bucket = wallet(ledger, "bucket", "token")
    ledger.top_up(bucket, 10_000, idempotency_key=key())
    hold = ledger.authorize(bucket, f.text(max_tokens=500), idempotency_key=key())
    assert hold.held == (51 + 500) * 2
    done = ledger.capture(
        hold.id,
        status="COMPLETED",
        usage={"input_tokens": 10, "output_tokens": 89},
        idempotency_key=key(),
    )
    assert (done.charged, done.released, done.overage) == (198, hold.held - 198, 0)
    assert ledger.balance(bucket).balance == 10_000 - 198


def test_video_ending_in_error_charges_nothing_and_releases(ledger: Ledger) -> None:
    bucket = wallet(ledger, "bucket", "token")
    ledger.top_up(bucket, 300_000, idempotency_key=key())
    hold = ledger.authorize(bucket, f.cosmic_video(), idempotency_key=key())
    assert hold.held == 288_000
    done = ledger.capture(hold.id, status="ERROR", usage=None, idempotency_key=key())
    assert (done.charged, done.released, done.entry_id) == (0, 288_000, None)
    assert ledger.balance(bucket).available == 300_000


def test_pixazo_agentic_early_stop_charges_rendered_candidates(ledger: Ledger) -> None:
    user = wallet(ledger, "pix", "usd")
    ledger.top_up(user, 1_000_000, idempotency_key=key())  # $1
    req = f.pixazo_image(enable_agentic_generation=True)  # up to 2 x 2 candidates
    hold = ledger.authorize(user, req, idempotency_key=key())
    assert hold.held == 160_000
    done = ledger.capture(
        hold.id, status="COMPLETED", usage={"candidates": 2}, idempotency_key=key()
    )
    assert (done.charged, done.released) == (80_000, 80_000)


def test_a_hold_left_alone_expires_and_cannot_be_captured(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    clock.advance(minutes=15)
    with pytest.raises(HoldNotPending, match="expired"):
        ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    # Not revived either, though no sweeper has released it yet.
    with pytest.raises(HoldNotPending, match="is expired"):
        ledger.extend(hold.id, ttl=timedelta(hours=1), idempotency_key=key())
    assert ledger.expire_holds() == 1
    assert ledger.expire_holds() == 0
    assert ledger.hold(hold.id).status == "expired"
    assert ledger.balance(user).model_dump(include={"pending", "available"}) == {
        "pending": 0,
        "available": 500,
    }
    with pytest.raises(HoldNotPending):
        ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())


def test_a_hold_may_be_kept_from_one_second_to_seven_days(ledger: Ledger, clock: Clock) -> None:
    """The bounds of an authorization's ``ttl`` are allowed themselves (those beyond are
    refused: ``test_rejected_operations_change_nothing``)."""
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    for ttl in (timedelta(seconds=1), timedelta(days=7)):
        hold = ledger.authorize(user, VEO_FAST, ttl=ttl, idempotency_key=key())
        assert hold.expires_at == clock.now + ttl
        ledger.void(hold.id, idempotency_key=key())


def test_the_hold_sweeper_reads_a_listed_hold_again_under_its_lock(
    ledger: Ledger, database_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper lists due holds, then expires each in a transaction of its own under
    its wallet's lock. Between the two, another server (whose clock is behind) can
    extend or capture a listed hold: read again under the lock, it is left alone."""
    user = wallet(ledger)
    ledger.top_up(user, 1_000, idempotency_key=key())
    extended, captured, due = (
        ledger.authorize(user, VEO_FAST, idempotency_key=key()).id for _ in range(3)
    )
    other = Database.from_url(database_url)
    behind = Ledger(other, ledger.catalogs, clock=Clock(clock.now + timedelta(minutes=10)))
    clock.advance(minutes=20)  # the sweeper's now: all three are past their 15 minutes
    transaction = ledger.db.transaction
    raced: list[bool] = []

    @contextmanager
    def racing(*, write: bool = True) -> Iterator[Any]:
        if write and not raced:  # after the listing, before the first hold's transaction
            raced.append(True)
            behind.extend(extended, ttl=timedelta(hours=1), idempotency_key=key())
            behind.capture(captured, status="COMPLETED", usage={}, idempotency_key=key())
        with transaction(write=write) as conn:
            yield conn

    monkeypatch.setattr(ledger.db, "transaction", racing)
    try:
        assert ledger.expire_holds() == 1
    finally:
        other.dispose()
    assert raced
    assert [ledger.hold(h).status for h in (extended, captured, due)] == [
        "pending",
        "captured",
        "expired",
    ]
    view = ledger.balance(user)
    assert (view.balance, view.pending) == (1_000 - 240, 240)


# ------------------------------------------------------------------------- holds


VEO = f.veo3_video(video_model="veo3")  # 500 credits


def test_an_expired_hold_not_yet_swept_does_not_refuse_an_authorization(
    ledger: Ledger, clock: Clock
) -> None:
    """Past its expiry a hold holds nothing, though it counts in pending until a sweeper
    releases it: an authorization it would refuse releases it first, under the lock."""
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    neighbour = wallet(ledger, "user-2")
    ledger.top_up(neighbour, 1_000, idempotency_key=key())
    theirs = [ledger.authorize(neighbour, VEO, idempotency_key=key()).id for _ in range(2)]
    stale = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    clock.advance(minutes=15)  # expired, not swept: still in pending
    assert ledger.balance(user).pending == 240
    # An estimate answers as the authorization will: without the expired hold.
    assert ledger.affordability(user, ledger.quote(VEO)) == Affordability(
        affordable=True, available=500, blocked=False, spend_remaining=None
    )
    assert ledger.hold(stale.id).status == "pending"  # it only read
    assert ledger.affordability(neighbour, ledger.quote(VEO)).available == 1_000  # its own
    auth_key = key()
    hold = ledger.authorize(user, VEO, idempotency_key=auth_key)
    assert (hold.held, hold.credits_remaining, hold.holds_expired) == (500, 0, 1)
    old = ledger.hold(stale.id)
    assert (old.status, old.resolved_at, old.captured) == ("expired", clock.now, None)
    assert ledger.usage_record(old.metering_id).status == "expired"
    assert ledger.balance(user).model_dump(include={"pending", "available"}) == {
        "pending": 500,
        "available": 0,
    }
    # Another wallet's expired holds are its own: left to the sweeper (or its requests).
    assert [ledger.hold(h).status for h in theirs] == ["pending", "pending"]
    assert ledger.expire_holds() == 2
    again = ledger.authorize(user, VEO, idempotency_key=auth_key)
    assert again == hold
    assert again.replayed
    assert again.holds_expired == 0
    with pytest.raises(HoldNotPending, match="expired"):
        ledger.capture(stale.id, status="COMPLETED", usage={}, idempotency_key=key())
    assert verify(ledger.db) == []


def test_an_authorization_that_fits_leaves_expired_holds_to_the_sweeper(
    ledger: Ledger, clock: Clock
) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 1_000, idempotency_key=key())
    stale = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    clock.advance(minutes=16)
    fits = ledger.affordability(user, ledger.quote(VEO))
    assert (fits.affordable, fits.available) == (True, 760)  # as the authorization says
    hold = ledger.authorize(user, VEO, idempotency_key=key())
    assert (hold.credits_remaining, hold.holds_expired) == (260, 0)
    assert ledger.hold(stale.id).status == "pending"
    assert ledger.expire_holds() == 1


def test_a_refusal_after_releasing_expired_holds_changes_nothing(
    ledger: Ledger, clock: Clock
) -> None:
    """Still short once the expired holds are released: 402 naming what would be
    available without them, and the transaction, their release included, rolls back."""
    user = wallet(ledger)
    ledger.top_up(user, 600, idempotency_key=key())
    voided = ledger.authorize(user, VEO_FAST, idempotency_key=key())  # resolved: not held
    ledger.void(voided.id, idempotency_key=key())
    stale = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    live = ledger.authorize(user, VEO_FAST, idempotency_key=key())  # kept alive
    clock.advance(minutes=10)
    ledger.extend(live.id, ttl=timedelta(hours=1), idempotency_key=key())
    clock.advance(minutes=6)
    before = snapshot(ledger, user)
    assert ledger.affordability(user, ledger.quote(VEO)) == Affordability(
        affordable=False, available=360, blocked=False, spend_remaining=None
    )
    fast = ledger.affordability(user, ledger.quote(VEO_FAST))  # 120: fits once released
    assert (fast.affordable, fast.available) == (True, 360)
    for attempt in (ledger.authorize, ledger.charge):
        with pytest.raises(InsufficientCredits) as refused:
            attempt(user, VEO, idempotency_key=key())
        assert (refused.value.needed, refused.value.available) == (500, 360)
    assert snapshot(ledger, user) == before
    assert [ledger.hold(h.id).status for h in (stale, live)] == ["pending", "pending"]
    assert ledger.expire_holds() == 1
    assert ledger.hold(live.id).status == "pending"


def test_a_hold_not_yet_expired_is_not_released(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    held = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    clock.advance(minutes=14, seconds=59)
    with pytest.raises(InsufficientCredits) as refused:
        ledger.authorize(user, VEO, idempotency_key=key())
    assert refused.value.available == 260
    assert ledger.hold(held.id).status == "pending"


def test_a_charge_and_the_spend_limit_release_expired_holds_too(
    ledger: Ledger, clock: Clock
) -> None:
    """An immediate charge is refused by held credits as an authorization is, and so is
    a spend limit, which counts open holds: both release the expired ones first."""
    user = wallet(ledger, monthly_spend_limit=600)
    ledger.top_up(user, 5_000, idempotency_key=key())
    stale = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    clock.advance(minutes=15)
    assert ledger.affordability(user, ledger.quote(VEO)) == Affordability(
        affordable=True, available=5_000, blocked=False, spend_remaining=600
    )
    ledger.update_account(user, idempotency_key=key(), blocked=True)
    blocked = ledger.affordability(user, ledger.quote(VEO))
    assert (blocked.affordable, blocked.available) == (False, 4_760)  # as it refuses
    ledger.update_account(user, idempotency_key=key(), blocked=False)
    done = ledger.charge(user, VEO, idempotency_key=key())  # room 600 - 240 before
    assert (done.credits_used, done.credits_remaining, done.holds_expired) == (500, 4_500, 1)
    assert ledger.hold(stale.id).status == "expired"
    assert ledger.account(user).spent_this_month == 500
    assert verify(ledger.db) == []


def test_an_expired_hold_of_one_credit_is_released_too(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """The smallest pending there is (one credit, all of it expired) still makes the
    refused request look for expired holds."""
    f.write_catalog(tmp_path, "acme.toml", f.MINIMAL_CATALOG.format(limits="", price=1))
    ledger = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(ledger, "penny")
    ledger.top_up(user, 1, idempotency_key=key())
    tiny = f.request("acme", "video", prompt="a dot")
    stale = ledger.authorize(user, tiny, idempotency_key=key())
    assert ledger.balance(user).available == 0
    clock.advance(minutes=15)
    again = ledger.authorize(user, tiny, idempotency_key=key())
    assert (again.held, again.holds_expired, again.credits_remaining) == (1, 1, 0)
    assert ledger.hold(stale.id).status == "expired"
    assert verify(ledger.db) == []


def test_a_wallet_in_debt_is_refused_even_a_request_priced_at_nothing(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """Debt blocks new authorizations and charges until a top-up repays it: a request
    its catalog prices at nothing too (available is below zero: short even of 0)."""
    f.write_catalog(tmp_path, "acme.toml", f.MINIMAL_CATALOG.format(limits="", price=0))
    ledger = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(ledger, "owing")
    ledger.adjust(user, -100, reason="a chargeback", idempotency_key=key())
    assert ledger.balance(user).debt == 100
    free = f.request("acme", "video", prompt="a dot")
    with pytest.raises(InsufficientCredits):
        ledger.authorize(user, free, idempotency_key=key())
    with pytest.raises(InsufficientCredits):
        ledger.charge(user, free, idempotency_key=key())
    ledger.top_up(user, 100, idempotency_key=key())
    assert ledger.authorize(user, free, idempotency_key=key()).held == 0
    assert ledger.charge(user, free, idempotency_key=key()).credits_used == 0
    assert verify(db) == []


def test_a_capture_is_priced_by_the_catalog_version_its_hold_was_quoted_with(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """A new price list takes effect while a request runs: its capture pays the price it
    was authorized at, and the next request the new one."""
    f.fal_price_change(tmp_path)
    clock.now = datetime(2026, 5, 31, 23, 55, tzinfo=UTC)
    ledger = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(ledger, "studio", "usd")
    ledger.top_up(user, 1_000_000, idempotency_key=key())
    hold = ledger.authorize(user, f.fal_video(), idempotency_key=key())
    assert (hold.catalog_version, hold.held) == ("operator-1", 157_500)  # $0.02 x 189/24 s
    clock.advance(minutes=10)  # operator-2 is in force now: $0.03 a second
    done = ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    assert (done.charged, done.charge["catalog_version"]) == (157_500, "operator-1")
    later = ledger.authorize(user, f.fal_video(), idempotency_key=key())
    assert (later.catalog_version, later.held) == ("operator-2", 236_250)
    assert verify(db) == []


def test_a_hold_whose_catalog_version_is_gone_is_not_captured_and_its_usage_errors_stay_422(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """Captures of holds quoted with a version the catalogs lost are CatalogChanged,
    the server's to fix, with nothing written; a usage the gateway got wrong is still its
    InvalidUsage. ``unpriceable_holds`` names them, by version and operation."""
    f.fal_price_change(tmp_path)
    clock.now = datetime(2026, 6, 2, tzinfo=UTC)
    old = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(old, "studio", "usd")
    old.top_up(user, 10_000_000, idempotency_key=key())
    fal = old.authorize(user, f.fal_video(), idempotency_key=key(), ttl=timedelta(minutes=5))
    veo_user = wallet(old, "veo", "credit")
    old.top_up(veo_user, 500, idempotency_key=key())
    veo = old.authorize(veo_user, VEO_FAST, idempotency_key=key())
    assert old.unpriceable_holds() == []
    assert fal.catalog_version == "operator-2"
    (tmp_path / "fal-2.toml").unlink()  # the price list the fal hold was quoted with
    new = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    (gone,) = new.unpriceable_holds()
    assert (gone.catalog, gone.catalog_version, gone.operation, gone.holds) == (
        "fal",
        "operator-2",
        "image_to_video",
        1,
    )
    assert gone.until == fal.expires_at
    assert "no version 'operator-2'" in gone.reason
    before = verify(db), new.balance(user)
    with pytest.raises(InvalidUsage):  # the gateway's own error, while the version is there
        old.capture(fal.id, status="DONE", usage={}, idempotency_key=key())
    with pytest.raises(CatalogChanged, match="nothing was charged") as refused:
        new.capture(fal.id, status="COMPLETED", usage={}, idempotency_key="c-1")
    assert (refused.value.catalog, refused.value.catalog_version) == ("fal", "operator-2")
    assert (verify(db), new.balance(user)) == before
    # The other catalogs' holds are captured as ever.
    assert new.capture(veo.id, status="COMPLETED", usage={}, idempotency_key=key()).charged == 240
    # Back as it was: the same capture goes through.
    done = old.capture(fal.id, status="COMPLETED", usage={}, idempotency_key="c-1")
    assert (done.charged, done.charge["catalog_version"]) == (236_250, "operator-2")
    assert new.unpriceable_holds() == []
    assert verify(db) == []


def test_a_hold_whose_catalog_version_is_gone_is_released_by_an_error_capture(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """A provider ERROR is never charged, by any version: its capture needs no price list,
    so it releases the hold even while the catalogs lack the version it was quoted with
    (it would otherwise stay held until it expired). Bad input is still the caller's."""
    f.fal_price_change(tmp_path)
    clock.now = datetime(2026, 6, 2, tzinfo=UTC)
    old = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(old, "studio", "usd")
    old.top_up(user, 10_000_000, idempotency_key=key())
    fal = old.authorize(user, f.fal_video(), idempotency_key=key())
    (tmp_path / "fal-2.toml").unlink()
    new = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    assert new.balance(user).pending == fal.held
    for status, usage, field in (("DONE", {}, "status"), ("ERROR", 5, "usage")):
        with pytest.raises(InvalidUsage) as refused:
            new.capture(fal.id, status=status, usage=usage, idempotency_key=key())  # type: ignore[arg-type]
        assert refused.value.field == field
    with pytest.raises(CatalogChanged):  # what it cost needs the version
        new.capture(fal.id, status="COMPLETED", usage={}, idempotency_key=key())

    done = new.capture(fal.id, status="ERROR", usage={"videos": 1}, idempotency_key="e-1")
    assert (done.outcome, done.charged, done.released, done.entry_id) == (
        "ERROR",
        0,
        fal.held,
        None,
    )
    assert (done.charge["catalog_version"], done.charge["charged"], done.charge["reason"]) == (
        "operator-2",
        False,
        "ERROR is a provider system error: never charged",
    )
    after = new.balance(user)
    assert (after.balance, after.pending) == (10_000_000, 0)
    assert new.hold(fal.id).status == "captured"
    (record,) = new.usage_records("studio").items
    assert (record.status, record.charged) == ("ERROR", 0)
    assert new.unpriceable_holds() == []
    # Replayed, with the version back or not: the same answer, nothing more.
    assert old.capture(fal.id, status="ERROR", usage={"videos": 1}, idempotency_key="e-1") == done
    assert verify(db) == []


def test_a_catalog_version_in_force_is_kept_and_one_changed_in_place_is_refused(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """A version that has taken effect is history (holds are captured by it, records and
    statements name it): the ledger keeps its digest before its first write in force, and
    a ledger whose version differs writes nothing. A version not yet in force may still
    be corrected."""
    f.fal_price_change(tmp_path)  # operator-1 from 2026-01-01, operator-2 from 2026-06-01
    clock.now = datetime(2026, 5, 31, 23, 0, tzinfo=UTC)
    first = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(first, "studio", "usd")  # the first write keeps the versions in force
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(price_versions.c.version, price_versions.c.digest))
        kept = dict(rows.all())
    assert kept["operator-1"] == first.catalogs.catalogs["fal"].version("operator-1").digest
    assert "operator-2" not in kept  # not in force yet
    assert {"seed-003", "seed-004", "2025-12-20", "2026-03-31"} <= set(kept)

    def edited(folder: str, old: str, new: str) -> Ledger:
        other = tmp_path / folder
        other.mkdir()
        for file in tmp_path.glob("*.toml"):
            (other / file.name).write_text(file.read_text().replace(old, new))
        return Ledger(db, load_catalogs([other]), clock=clock)

    # operator-2 corrected before it takes effect: nothing priced by it yet.
    corrected = edited("corrected", '"480p" = 0.03', '"480p" = 0.025')
    assert corrected.pin_catalogs() == []
    # operator-1 changed in place: refused, and no write goes through.
    changed = edited("changed", '"480p" = 0.02', '"480p" = 0.021')
    (refused,) = changed.pin_catalogs()
    assert (refused.catalog, refused.version, refused.recorded_at) == (
        "fal",
        "operator-1",
        clock.now,
    )
    assert refused.file.endswith("fal.toml")
    before = verify(db), first.balance(user)
    for write in (
        lambda: changed.top_up(user, 100, idempotency_key=key()),
        lambda: changed.authorize(user, f.fal_video(), idempotency_key=key()),
    ):
        with pytest.raises(CatalogChanged, match="'operator-1' .* changed in place") as told:
            write()
        assert str(tmp_path) not in told.value.message  # a caller is not shown the files
    assert (verify(db), first.balance(user)) == before
    # At 2026-06-01 the corrected operator-2 takes effect with the first write after it,
    # and is kept as it was then: the first ledger's operator-2 is now the changed one.
    clock.now = datetime(2026, 6, 1, 0, 1, tzinfo=UTC)
    corrected.top_up(user, 10**6, idempotency_key=key())
    hold = corrected.authorize(user, f.fal_video(), idempotency_key=key())
    assert (hold.catalog_version, hold.held) == ("operator-2", 196_875)  # $0.025 a second
    (stale,) = first.pin_catalogs()
    assert (stale.version, stale.recorded_at) == ("operator-2", clock.now)
    with pytest.raises(CatalogChanged):
        first.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    done = corrected.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    assert done.charged == 196_875
    assert verify(db) == []


def test_capture_above_the_hold_charges_overage_and_records_debt(ledger: Ledger) -> None:
    bucket = wallet(ledger, "bucket", "token")
    ledger.top_up(bucket, 1_200, idempotency_key=key())
    hold = ledger.authorize(
        bucket, f.text("hi", model="gpt-5-nano", max_tokens=100), idempotency_key=key()
    )
    assert hold.held == 2 + 7 + 100
    # A PDF behind media_url made the real input far longer than estimated.
    done = ledger.capture(
        hold.id,
        status="COMPLETED",
        usage={"input_tokens": 1_500, "output_tokens": 100},
        idempotency_key=key(),
    )
    assert (done.charged, done.released, done.overage) == (1_600, 0, 1_600 - 109)
    assert done.credits_remaining == -400
    view = ledger.balance(bucket)
    assert (view.balance, view.debt) == (-400, 400)
    with pytest.raises(InsufficientCredits):
        ledger.authorize(
            bucket, f.text("hi", model="gpt-5-nano", max_tokens=1), idempotency_key=key()
        )
    # A top-up repays the debt first; the grant keeps only what is left.
    top = ledger.top_up(bucket, 1_000, idempotency_key=key())
    assert top.grant is not None
    assert (top.grant.amount, top.grant.remaining, top.balance.debt) == (1_000, 600, 0)


def test_void_releases_and_resolves_once(ledger: Ledger) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    voided = ledger.void(hold.id, idempotency_key="void-1")
    assert (voided.status, voided.credits_remaining) == ("voided", 500)
    assert ledger.void(hold.id, idempotency_key="void-1") == voided  # replay
    with pytest.raises(HoldNotPending):
        ledger.void(hold.id, idempotency_key=key())
    with pytest.raises(HoldNotPending):
        ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    with pytest.raises(NotFound):
        ledger.void("no-such-hold", idempotency_key=key())


def test_the_resolving_update_itself_refuses_a_hold_already_resolved(
    ledger: Ledger, clock: Clock
) -> None:
    """Each hold resolves once: its resolvers take the wallet's lock and read the hold
    under it, and the update that resolves it is conditional on its status besides. A
    resolver that reached it without the lock (a bug, another program on the database)
    changes nothing: the update finds no pending hold, and its transaction is refused."""
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    done = ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    before = (ledger.hold(hold.id), snapshot(ledger, user))

    def resolve(status: str) -> None:
        with ledger.db.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                values = {"status": status, "now": clock(), "captured": 0, "entry_id": None}
                store.expect(
                    sql.RESOLVE_HOLD,
                    {**values, "id": hold.id},
                    rows=1,
                    failure=lambda: HoldNotPending("resolved already"),
                )

    for status in ("voided", "expired", "captured"):
        with pytest.raises(HoldNotPending):
            resolve(status)
    assert (ledger.hold(hold.id), snapshot(ledger, user)) == before
    assert (before[0].status, before[0].captured, before[0].entry_id) == (
        "captured",
        240,
        done.entry_id,
    )
    assert verify(ledger.db) == []


def test_a_video_requests_seconds_are_metered_to_the_microsecond_rounded_up(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """100 frames at 24 fps are 4.1666... seconds: the record and the daily rollup keep
    4.166667, never less than was rendered (the price itself is exact: $0.02 x 100/24,
    83,334 micro-dollars rounded up once)."""
    f.write_catalog(
        tmp_path, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    ledger = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(ledger, "studio", "usd")
    ledger.top_up(user, 1_000_000, idempotency_key=key())
    video = f.fal_video(num_frames=100, fps=24)
    hold = ledger.authorize(user, video, idempotency_key=key())
    pending = ledger.usage_record(hold.metering_id)
    assert (hold.held, str(pending.usage.seconds)) == (83_334, "4.166667")
    done = ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    charged = ledger.usage_record(hold.metering_id)
    assert (done.charged, str(charged.usage.seconds)) == (83_334, "4.166667")
    assert str(ledger.usage(user).totals.seconds) == "4.166667"
    assert verify(db) == []


def test_a_days_video_seconds_sum_exactly_however_large_the_day(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """SQLite keeps NUMERIC seconds as binary floats: near 10^9 seconds in a day, 100
    clips of a third of a second each drifted 3 microseconds from their records' sum
    (PostgreSQL's NUMERIC is exact). The rollup is the records' exact sum on both, as the
    usage read and ``verify()`` see it."""
    f.write_catalog(
        tmp_path, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    ledger = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(ledger, "studio", "usd")

    def report(frames: int, fps: int) -> None:
        video = f.fal_video(num_frames=frames, fps=fps)
        ledger.report_usage(user, video, status="COMPLETED", usage={}, idempotency_key=key())

    report(10**15 - 1, 10**6)  # 999,999,999.999999 seconds, the most one request meters
    for _ in range(100):
        report(8, 24)  # a third of a second: 0.333334 metered
    exact = Decimal("999999999.999999") + 100 * Decimal("0.333334")
    assert ledger.usage(user).totals.seconds == exact
    with db.transaction(write=False) as conn:
        rolled = conn.exec_driver_sql(
            "SELECT CAST(round(seconds * 1000000) AS BIGINT) FROM daily_usage"
        ).scalar_one()
    assert rolled == 10**15 - 1 + 100 * 333_334
    assert verify(db) == []


def test_the_longest_video_a_request_may_meter_keeps_its_last_microsecond(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """999,999,999.999999 seconds, the most one request may meter: its record, its
    rollup and the usage read keep every microsecond on both databases (SQLite's float
    would lose some past 2^51 of them, which is why no request may meter more)."""
    f.write_catalog(
        tmp_path, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    ledger = Ledger(db, load_catalogs([tmp_path]), clock=clock)
    user = wallet(ledger, "studio", "usd")
    video = f.fal_video(num_frames=10**15 - 1, fps=10**6)
    done = ledger.report_usage(user, video, status="COMPLETED", usage={}, idempotency_key=key())
    longest = Decimal("999999999.999999")
    assert ledger.usage_record(done.id).usage.seconds == longest
    assert ledger.usage(user).totals.seconds == longest
    with db.transaction(write=False) as conn:
        kept = (
            conn.exec_driver_sql(
                "SELECT CAST(round(seconds * 1000000) AS BIGINT) FROM metering_records "
                "UNION ALL SELECT CAST(round(seconds * 1000000) AS BIGINT) FROM daily_usage"
            )
            .scalars()
            .all()
        )
    assert kept == [10**15 - 1] * 2
    with pytest.raises(InvalidUsage):  # a microsecond more (the usage it reports)
        ledger.report_usage(
            user,
            f.fal_video(num_frames=10**15, fps=10**6),
            status="COMPLETED",
            usage={},
            idempotency_key=key(),
        )


def test_failed_outcome_is_not_charged(ledger: Ledger) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    done = ledger.capture(hold.id, status="FAILED", usage={}, idempotency_key=key())
    assert done.charged == 0
    assert ledger.balance(user).balance == 500


def test_overdraft_limit_extends_available(ledger: Ledger) -> None:
    user = wallet(ledger, overdraft_limit=300)
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    assert hold.credits_remaining == 60
    ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    view = ledger.balance(user)
    assert (view.balance, view.available, view.debt) == (-240, 60, 0)


def test_rejected_operations_change_nothing(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 300, idempotency_key=key())
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    before = snapshot(ledger, user)
    attempts: list[tuple[type[Exception], Any]] = [
        (InsufficientCredits, lambda: ledger.authorize(user, VEO_FAST, idempotency_key=key())),
        (InsufficientCredits, lambda: ledger.charge(user, VEO_FAST, idempotency_key=key())),
        (
            InvalidParameter,
            lambda: ledger.authorize(user, f.veo3_video(aspect_ratio="4:3"), idempotency_key=key()),
        ),
        (InvalidInput, lambda: ledger.authorize(user, f.text(), idempotency_key=key())),  # tokens
        *(
            (
                InvalidInput,
                lambda ttl=ttl: ledger.authorize(user, VEO_FAST, ttl=ttl, idempotency_key=key()),
            )
            for ttl in (timedelta(0), timedelta(milliseconds=999), timedelta(days=7, seconds=1))
        ),
        (
            InvalidUsage,
            lambda: ledger.capture(
                hold.id, status="COMPLETED", usage={"videos": 2}, idempotency_key=key()
            ),
        ),
        (
            InvalidUsage,
            lambda: ledger.capture(hold.id, status="DONE", usage={}, idempotency_key=key()),
        ),
        (InvalidInput, lambda: ledger.top_up(user, 0, idempotency_key=key())),
        (InvalidInput, lambda: ledger.top_up(user, 2**63, idempotency_key=key())),
        (InvalidInput, lambda: ledger.top_up(user, 10.5, idempotency_key=key())),  # type: ignore[arg-type]
        (InvalidInput, lambda: ledger.top_up(user, True, idempotency_key=key())),
        (InvalidInput, lambda: ledger.top_up(user, 5, kind="gift", idempotency_key=key())),
        (  # credits that expire the instant they arrive
            InvalidInput,
            lambda: ledger.top_up(user, 5, expires_at=clock.now, idempotency_key=key()),
        ),
        (InvalidInput, lambda: ledger.top_up(user, 5, idempotency_key="")),
        (InvalidInput, lambda: ledger.adjust(user, 0, reason="x", idempotency_key=key())),
        (NotFound, lambda: ledger.top_up("ghost", 5, idempotency_key=key())),
    ]
    for error, attempt in attempts:
        with pytest.raises(error):
            attempt()
        assert snapshot(ledger, user) == before


def test_idempotency_replays_and_conflicts(ledger: Ledger) -> None:
    user = wallet(ledger)
    first = ledger.top_up(user, 500, idempotency_key="top")
    again = ledger.top_up(user, 500, idempotency_key="top")
    assert again == first  # the same answer, which says it is given back again
    assert (first.replayed, again.replayed) == (False, True)
    assert ledger.balance(user).balance == 500
    with pytest.raises(IdempotencyConflict):
        ledger.top_up(user, 501, idempotency_key="top")
    with pytest.raises(IdempotencyConflict):
        ledger.authorize(user, VEO_FAST, idempotency_key="top")
    hold = ledger.authorize(user, VEO_FAST, idempotency_key="auth")
    assert ledger.authorize(user, VEO_FAST, idempotency_key="auth") == hold
    assert ledger.balance(user).pending == 240


# ----------------------------------------------------------------------- charges


def test_immediate_charge_and_its_refund(ledger: Ledger) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 600, idempotency_key=key())
    charge = ledger.charge(user, f.veo3_video(video_model="veo3"), idempotency_key=key())
    assert (charge.credits_used, charge.credits_remaining) == (500, 100)
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge(user, VEO_FAST, idempotency_key=key())
    assert (info.value.needed, info.value.available) == (240, 100)
    assert charge.entry_id is not None
    refund = ledger.reverse(charge.entry_id, reason="generation failed", idempotency_key=key())
    assert refund.balance.balance == 600
    assert [p.amount for p in refund.entry.postings] == [500, -500]
    with pytest.raises(AlreadyReversed, match=f"reversed by '{refund.entry.id}'"):
        ledger.reverse(charge.entry_id, reason="again", idempotency_key=key())
    with pytest.raises(NotReversible):
        ledger.reverse(refund.entry.id, reason="undo", idempotency_key=key())


# ------------------------------------------------------------------------ grants


def test_spending_burns_priority_then_soonest_expiry_then_oldest(
    ledger: Ledger, clock: Clock
) -> None:
    user = wallet(ledger)
    soon, later = clock.now + timedelta(days=2), clock.now + timedelta(days=20)
    # Each grant an hour younger than the one before: age alone would burn them in the
    # order made, a to f, and priority and expiry must override it.
    for reference, amount, terms in (
        ("a", 100, {}),
        ("b", 100, {"expires_at": later}),
        ("c", 100, {"expires_at": soon}),
        ("d", 100, {"priority": -1}),
        ("e", 200, {"expires_at": later}),
        ("f", 200, {"expires_at": later}),
    ):
        ledger.top_up(user, amount, idempotency_key=key(), reference=reference, **terms)
        clock.advance(hours=1)
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240: d, then c, then 40 of b
    remaining = {g.reference: g.remaining for g in ledger.grants_of(user)}
    assert remaining == {"d": 0, "c": 0, "b": 60, "e": 200, "f": 200, "a": 100}
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240: b, then 180 of e (older)
    remaining = {g.reference: g.remaining for g in ledger.grants_of(user)}
    assert remaining == {"d": 0, "c": 0, "b": 0, "e": 20, "f": 200, "a": 100}


def test_expired_credits_move_to_the_expired_account(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    promo = ledger.top_up(
        user, 100, idempotency_key=key(), expires_at=clock.now + timedelta(days=1), kind="promo"
    )
    # A promotion is funded by the promotions account, not by funding (bought credits).
    assert {p.account_id: p.amount for p in promo.entry.postings} == {
        "system:promotions:credit": -100,
        user: 100,
    }
    ledger.top_up(user, 50, idempotency_key=key())
    assert ledger.expire_grants() == 0
    clock.advance(days=1)
    assert ledger.expire_grants() == 1
    assert ledger.balance(user).balance == 50
    expiry = ledger.entries(user, limit=1).items[0]
    assert expiry.kind == "expiry"
    assert {p.account_id: p.amount for p in expiry.postings} == {
        user: -100,
        "system:expired:credit": 100,
    }
    with pytest.raises(NotReversible):
        ledger.reverse(expiry.id, reason="revive", idempotency_key=key())


def test_a_grant_spent_to_nothing_is_not_expired(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    due = clock.now + timedelta(days=1)
    ledger.top_up(user, 240, idempotency_key=key(), expires_at=due, reference="spent")
    ledger.top_up(user, 100, idempotency_key=key(), expires_at=due, reference="left")
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # burns the older one whole
    clock.advance(days=1)
    # Only the grant that still held credits expires: one grant, one movement.
    assert ledger.expire_grants() == 1
    expiry = ledger.entries(user, limit=1).items[0]
    assert (expiry.kind, expiry.memo) == ("expiry", "1 grant(s) expired")
    assert ledger.expire_grants() == 0
    assert {g.reference: g.remaining for g in ledger.grants_of(user)} == {"spent": 0, "left": 0}


@pytest.mark.parametrize("spend", ["capture", "charge"])
def test_spending_expires_only_the_grants_that_still_hold_credits(
    ledger: Ledger, clock: Clock, spend: str
) -> None:
    user = wallet(ledger)
    due = clock.now + timedelta(hours=1)
    ledger.top_up(user, 240, idempotency_key=key(), expires_at=due, reference="spent")
    ledger.top_up(user, 100, idempotency_key=key(), expires_at=due, reference="left")
    ledger.top_up(user, 500, idempotency_key=key(), reference="kept")
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # burns the oldest whole
    hold = ledger.authorize(user, VEO_FAST, ttl=timedelta(hours=2), idempotency_key=key())
    clock.advance(hours=1)  # both short grants are due; the sweeper has not run
    if spend == "capture":
        ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    else:
        ledger.charge(user, VEO_FAST, idempotency_key=key())
    spent, expiry = ledger.entries(user, limit=2).items
    assert (spent.kind, expiry.kind, expiry.memo) == (spend, "expiry", "1 grant(s) expired")
    assert {g.reference: g.remaining for g in ledger.grants_of(user)} == {
        "spent": 0,
        "left": 0,
        "kept": 260,
    }


def test_a_top_up_expires_what_is_due_first_and_answers_with_the_balance_without_it(
    ledger: Ledger, clock: Clock
) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 100, idempotency_key=key(), expires_at=clock.now + timedelta(hours=1))
    clock.advance(hours=1)  # due; the sweeper has not run
    done = ledger.top_up(user, 50, idempotency_key=key())
    assert (done.balance.balance, done.balance.available) == (50, 50)
    assert [e.kind for e in ledger.entries(user).items] == ["topup", "expiry", "topup"]
    assert ledger.expire_grants() == 0


def test_expired_credits_cannot_be_spent_before_the_sweeper(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key(), expires_at=clock.now + timedelta(hours=1))
    clock.advance(hours=1)  # the very instant it expires: gone
    with pytest.raises(InsufficientCredits):
        ledger.authorize(user, VEO_FAST, idempotency_key=key())
    # The rejected authorization rolled back; the sweeper still finds the grant due.
    assert ledger.balance(user).balance == 500
    assert ledger.expire_grants() == 1
    assert ledger.balance(user).balance == 0


def test_reversing_a_top_up_takes_back_its_credits(ledger: Ledger) -> None:
    user = wallet(ledger)
    top = ledger.top_up(user, 300, idempotency_key=key())
    ledger.top_up(user, 300, idempotency_key=key())
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # burns 240 of the first
    back = ledger.reverse(top.entry.id, reason="chargeback", idempotency_key=key())
    assert back.balance.balance == 60
    assert sum(g.remaining for g in ledger.grants_of(user)) == 60


def test_reversing_a_top_up_takes_back_its_own_grant_first(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    pack = ledger.top_up(user, 300, idempotency_key=key(), reference="pack")
    ledger.top_up(
        user, 300, idempotency_key=key(), kind="promo", expires_at=clock.now + timedelta(days=10)
    )
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240 of the promo (expires first)
    ledger.reverse(pack.entry.id, reason="chargeback", idempotency_key=key())
    # Burn order would have taken the promo's 60 first and left 60 of the pack.
    assert {g.kind: g.remaining for g in ledger.grants_of(user)} == {"pack": 0, "promo": 60}


def system_balances(ledger: Ledger, unit: str = "credit") -> dict[str, int]:
    """The balances of the unit's system accounts, by their kind."""
    with ledger.db.transaction(write=False) as conn:
        rows = conn.execute(
            sa.select(accounts.c.external_id, accounts.c.balance).where(
                accounts.c.external_id.like(f"system:%:{unit}")
            )
        ).all()
    return {r.external_id.split(":")[1]: int(r.balance) for r in rows}


def test_reversing_a_top_up_whose_credits_expired_takes_nothing_more_from_the_wallet(
    ledger: Ledger, clock: Clock
) -> None:
    """The expiry took the credits out of the wallet once: the reversal takes them back
    from the expired-credits account, not from the wallet a second time (which left a
    wallet that spent nothing 300 in debt, blocked until topped up)."""
    user = wallet(ledger)
    day = clock.now + timedelta(days=1)
    promo = ledger.top_up(user, 300, idempotency_key=key(), kind="promo", expires_at=day)
    before = system_balances(ledger)
    clock.advance(days=2)
    assert ledger.expire_grants() == 1
    back = ledger.reverse(promo.entry.id, reason="campaign void", idempotency_key=key())
    assert (back.balance.balance, back.balance.debt) == (0, 0)
    assert {p.account_id: p.amount for p in back.entry.postings} == {
        "system:promotions:credit": 300,
        "system:expired:credit": -300,
    }
    after = system_balances(ledger)
    assert (after["promotions"], after["expired"]) == (before["promotions"] + 300, 0)
    assert [e.kind for e in ledger.entries(user).items] == ["reversal", "expiry", "topup"]
    assert verify(ledger.db) == []
    with pytest.raises(AlreadyReversed):
        ledger.reverse(promo.entry.id, reason="again", idempotency_key=key())


def test_reversing_a_top_up_partly_spent_then_expired_takes_back_only_what_was_spent(
    ledger: Ledger, clock: Clock
) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 300, idempotency_key=key(), reference="pack")
    day = clock.now + timedelta(days=1)
    promo = ledger.top_up(user, 300, idempotency_key=key(), kind="promo", expires_at=day)
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240 of the promo (expires first)
    clock.advance(days=2)
    assert ledger.expire_grants() == 1  # its last 60
    assert ledger.balance(user).balance == 300
    back = ledger.reverse(promo.entry.id, reason="chargeback", idempotency_key=key())
    # The 240 spent come out of the pack; the 60 that expired come from the expired account.
    assert {p.account_id: p.amount for p in back.entry.postings} == {
        "system:promotions:credit": 300,
        user: -240,
        "system:expired:credit": -60,
    }
    assert back.balance.balance == 60
    assert {g.reference or g.kind: g.remaining for g in ledger.grants_of(user)} == {
        "pack": 60,
        "promo": 0,
    }
    assert system_balances(ledger)["expired"] == 0
    assert verify(ledger.db) == []


def test_reversing_a_top_up_whose_grant_was_revoked_takes_back_only_what_was_spent(
    ledger: Ledger,
) -> None:
    user = wallet(ledger)
    pack = ledger.top_up(user, 500, idempotency_key=key())
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240 of it
    grant = ledger.grants_of(user)[0]
    ledger.revoke_grant(grant.id, reason="card fraud", idempotency_key=key())  # its 260
    assert ledger.balance(user).balance == 0
    back = ledger.reverse(pack.entry.id, reason="chargeback", idempotency_key=key())
    # The chargeback takes back the 240 spent (the wallet owes them); not the 260 again.
    assert (back.balance.balance, back.balance.debt) == (-240, 240)
    assert system_balances(ledger)["expired"] == 0
    assert verify(ledger.db) == []


def test_the_grant_sweeper_reads_only_the_grants_yet_to_expire(
    ledger: Ledger, clock: Clock
) -> None:
    """Each round looks for the wallets holding a grant due with credits left in
    ``ix_grants_expiring`` (those that hold credits and expire), not in every grant ever
    made; and expires those, not the spent ones, nor those that never expire."""
    user, other = wallet(ledger), wallet(ledger, "user-2")
    soon, later = clock.now + timedelta(hours=1), clock.now + timedelta(days=30)
    ledger.top_up(user, 240, idempotency_key=key(), expires_at=soon)  # spent below
    ledger.top_up(user, 100, idempotency_key=key(), expires_at=soon)
    ledger.top_up(user, 500, idempotency_key=key())
    ledger.top_up(other, 70, idempotency_key=key(), expires_at=later)
    ledger.charge(user, VEO_FAST, idempotency_key=key())
    with _statements(ledger.db.engine, "DISTINCT grants.account_id") as statements:
        assert ledger.expire_grants() == 0
        clock.now = soon
        assert ledger.expire_grants() == 1
        assert ledger.expire_grants() == 0
    assert [g.remaining for g in ledger.grants_of(user)] == [0, 0, 500]
    assert [g.remaining for g in ledger.grants_of(other)] == [70]
    assert len(statements) == 3
    for text in _plans(ledger.db, statements):
        assert "ix_grants_expiring" in text, text
        assert "ix_grants_account_remaining" not in text, text


def test_a_top_ups_reversal_finds_what_of_it_expired_among_its_wallets_few_entries(
    ledger: Ledger, clock: Clock
) -> None:
    """What of a top-up's grant expired is read from its wallet's expiry entries and
    their movements of that grant: not the other grants that expired in the same entry,
    nor another wallet's. Looked up by key, never by stepping over every grant's
    movements or every grant (both grow with every request: a chargeback held the
    write lock while it read them all)."""
    user, other = wallet(ledger), wallet(ledger, "user-2")
    day = clock.now + timedelta(days=1)
    promo = ledger.top_up(user, 300, idempotency_key=key(), kind="promo", expires_at=day)
    ledger.top_up(user, 70, idempotency_key=key(), expires_at=day)  # expires beside it
    ledger.top_up(other, 500, idempotency_key=key(), expires_at=day)
    ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240 of the promo
    ledger.charge(other, VEO_FAST, idempotency_key=key())
    clock.advance(days=2)
    assert ledger.expire_grants() == 3
    expiry = ledger.entries(user, kind="expiry").items[0]
    assert {p.account_id: p.amount for p in expiry.postings} == {
        user: -130,
        "system:expired:credit": 130,
    }
    ledger.top_up(user, 400, idempotency_key=key())
    writer = getattr(ledger.db, "_write_engine", None) or ledger.db.engine  # SQLite's
    with _statements(writer, "grant_movements", "grants.entry_id =") as statements:
        back = ledger.reverse(promo.entry.id, reason="chargeback", idempotency_key=key())
    # The promo's 60 that expired come back from the expired account, not the 130.
    assert {p.account_id: p.amount for p in back.entry.postings} == {
        "system:promotions:credit": 300,
        user: -240,
        "system:expired:credit": -60,
    }
    assert back.balance.balance == 400 - 240
    reads = [s for s in statements if s[0].lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2  # its grant; what of it expired
    plans = _plans(ledger.db, reads)
    movements_key = (
        "grant_movements_pkey" if not ledger.db.is_sqlite else "sqlite_autoindex_grant_movements_1"
    )
    for text in plans:
        assert "Seq Scan" not in text, text
        assert "SCAN grant" not in text, text
    created, expired = plans
    assert "ix_grants_account_remaining" in created, created
    assert "ix_entries_account_occasional" in expired, expired
    assert movements_key in expired, expired


def test_reversing_a_top_up_that_repaid_debt_and_then_expired_brings_the_debt_back(
    ledger: Ledger, clock: Clock
) -> None:
    user = wallet(ledger)
    ledger.adjust(user, -100, reason="owed", idempotency_key=key())
    day = clock.now + timedelta(days=1)
    top = ledger.top_up(user, 300, idempotency_key=key(), kind="promo", expires_at=day)
    assert [g.remaining for g in ledger.grants_of(user)] == [200]  # 100 repaid the debt
    clock.advance(days=2)
    assert ledger.expire_grants() == 1
    back = ledger.reverse(top.entry.id, reason="void", idempotency_key=key())
    assert (back.balance.balance, back.balance.debt) == (-100, 100)
    assert {p.account_id: p.amount for p in back.entry.postings} == {
        "system:promotions:credit": 300,
        user: -100,
        "system:expired:credit": -200,
    }
    assert verify(ledger.db) == []


def test_a_refund_refills_the_grants_its_charge_burned_unless_they_expired_since(
    ledger: Ledger, clock: Clock
) -> None:
    user = wallet(ledger)
    week = clock.now + timedelta(days=7)
    ledger.top_up(user, 100, idempotency_key=key(), kind="promo", expires_at=week)
    ledger.top_up(user, 200, idempotency_key=key(), reference="pack")
    first = ledger.charge(user, VEO_FAST, idempotency_key=key())  # promo 100, pack 140
    assert first.entry_id is not None
    ledger.reverse(first.entry_id, reason="provider refund", idempotency_key=key())
    # Back where each credit came from, with its expiry: no new grant.
    grants = ledger.grants_of(user)
    assert sorted((g.kind, g.remaining, g.expires_at) for g in grants) == [
        ("pack", 200, None),
        ("promo", 100, week),
    ]
    second = ledger.charge(user, VEO_FAST, idempotency_key=key())  # promo 100, pack 140 again
    assert second.entry_id is not None
    clock.advance(days=8)  # the promo expired (with nothing left in it)
    assert ledger.expire_grants() == 0
    refund = ledger.reverse(second.entry_id, reason="late refund", idempotency_key=key())
    assert refund.balance.balance == 300
    # The pack is refilled; the promo's 100 come back in a grant of their own, not into
    # credits that expired.
    by_kind = {g.kind: g for g in ledger.grants_of(user)}
    assert (by_kind["pack"].remaining, by_kind["promo"].remaining) == (200, 0)
    assert by_kind["adjustment"].remaining == 100
    assert by_kind["adjustment"].reference == f"reversal of {second.entry_id}"


def test_a_refund_at_the_instant_its_grant_expires_comes_back_in_a_grant_of_its_own(
    ledger: Ledger, clock: Clock
) -> None:
    """A grant expires at its ``expires_at`` (from then on it is due), so a refund at
    that very instant does not refill it: its credits would leave again at the next
    sweep. They come back in a grant of their own, and stay."""
    user = wallet(ledger)
    week = clock.now + timedelta(days=7)
    ledger.top_up(user, 300, idempotency_key=key(), kind="promo", expires_at=week)
    charged = ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240 of the promo
    assert charged.entry_id is not None
    clock.now = week
    refund = ledger.reverse(charged.entry_id, reason="provider refund", idempotency_key=key())
    ledger.expire_grants()
    by_kind = {g.kind: g for g in ledger.grants_of(user)}
    assert (by_kind["promo"].remaining, by_kind["adjustment"].remaining) == (0, 240)
    assert ledger.balance(user).balance == refund.balance.balance == 240


def test_a_refund_refills_no_grant_whose_top_up_was_reversed_since(
    ledger: Ledger, clock: Clock
) -> None:
    """A charge spent a pack that was then taken back (a chargeback): its refund gives
    the credits back in a grant of their own. Put back into the reversed pack, they
    expired with it, and the books then held the reversal to have taken back too much
    (the ledger's state machine found this: verify's ``reversal_takeback``)."""
    user = wallet(ledger)
    day = clock.now + timedelta(days=1)
    pack = ledger.top_up(user, 300, idempotency_key=key(), expires_at=day, reference="pack")
    charge = ledger.charge(user, VEO_FAST, idempotency_key=key())  # 240 of the pack
    assert charge.entry_id is not None
    ledger.reverse(pack.entry.id, reason="chargeback", idempotency_key=key())
    assert ledger.balance(user).debt == 240
    ledger.top_up(user, 500, idempotency_key=key(), reference="second")  # repays the 240
    refund = ledger.reverse(charge.entry_id, reason="provider refund", idempotency_key=key())
    assert refund.balance.balance == 500
    assert {g.reference: (g.remaining, g.expires_at) for g in ledger.grants_of(user)} == {
        "pack": (0, day),
        "second": (260, None),
        f"reversal of {charge.entry_id}": (240, None),
    }
    clock.advance(days=2)
    assert ledger.expire_grants() == 0  # nothing was left in the reversed pack
    assert ledger.balance(user).balance == 500
    assert verify(ledger.db) == []


def test_a_refund_that_first_repays_debt_refills_the_longest_lived_grants_first(
    ledger: Ledger, clock: Clock
) -> None:
    """What is left of a refund once it has repaid the wallet's debt refills the grants
    its charge burned from the last burned back: the credits that would have lasted
    longest come back first."""
    user = wallet(ledger)
    week = clock.now + timedelta(days=7)
    ledger.top_up(user, 100, idempotency_key=key(), kind="promo", expires_at=week)
    ledger.top_up(user, 200, idempotency_key=key())
    charge = ledger.charge(user, VEO_FAST, idempotency_key=key())  # promo 100, pack 140
    assert charge.entry_id is not None
    ledger.adjust(user, -100, reason="correction", idempotency_key=key())  # 60 - 100: debt 40
    assert ledger.balance(user).debt == 40
    ledger.reverse(charge.entry_id, reason="refund", idempotency_key=key())
    remaining = {g.kind: g.remaining for g in ledger.grants_of(user)}
    assert remaining == {"pack": 140, "promo": 60}
    assert ledger.balance(user).balance == 200


def test_monthly_allocation_is_granted_once_per_period_in_the_account_timezone(
    ledger: Ledger, clock: Clock
) -> None:
    clock.now = datetime(2026, 10, 31, 22, 30, tzinfo=UTC)  # 23:30 in Berlin (CET)
    user = wallet(ledger, "berlin", "token", monthly_allocation=1_000, timezone="Europe/Berlin")
    assert ledger.roll_allocations() == 0  # October's was granted as the wallet opened
    first = ledger.grants_of(user)[0]
    assert (first.period, first.expires_at) == (
        "2026-10",
        datetime(2026, 10, 31, 23, 0, tzinfo=UTC),
    )
    with pytest.raises(InsufficientCredits):  # 4,800 > 1,000
        ledger.charge(
            user, f.request("cosmic", "image", prompt="x", model="dall-e-3"), idempotency_key=key()
        )
    clock.advance(minutes=30)  # 00:00 on 1 November in Berlin
    assert ledger.roll_allocations() == 1
    assert ledger.roll_allocations() == 0
    view = ledger.account(user)
    assert view.balance == 1_000
    assert [(g.period, g.remaining) for g in view.grants] == [("2026-11", 1_000)]
    made = [(e.kind, e.actor) for e in ledger.entries(user).items]
    assert made == [("allocation", "system"), ("expiry", "system"), ("allocation", "system")]


def test_a_process_whose_clock_is_behind_grants_no_period_before_one_granted(
    ledger: Ledger, clock: Clock
) -> None:
    """Two processes whose clocks differ by 20 ms as November begins. One opens a wallet
    at 00:00:00.010 by its clock, which grants November's allocation at once; the other,
    at 23:59:59.990 of October by its own, then runs a round. It grants nothing: granting
    October would expire November's allocation (an allocation of another period) and
    grant October's, gone 10 ms later; November, on record as granted, would never be
    granted again, and the wallet would go the month without its allocation."""
    clock.now = datetime(2026, 11, 1, 0, 0, 0, 10_000, tzinfo=UTC)
    user = wallet(ledger, "skewed", "token", monthly_allocation=1_000)
    clock.now = datetime(2026, 10, 31, 23, 59, 59, 990_000, tzinfo=UTC)
    assert ledger.roll_allocations() == 0
    # Nor does a change that makes an allocation due there (here: one set again).
    ledger.update_account(user, monthly_allocation=2_000, idempotency_key=key())
    clock.now = datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)
    assert ledger.roll_allocations() == 0
    view = ledger.account(user)
    assert view.balance == 1_000
    assert [(g.period, g.remaining) for g in view.grants] == [("2026-11", 1_000)]
    assert [e.kind for e in ledger.entries(user).items] == ["allocation"]
    # December is granted as ever, the new amount.
    clock.now = datetime(2026, 12, 1, tzinfo=UTC)
    assert ledger.roll_allocations() == 1
    assert [(g.period, g.remaining) for g in ledger.account(user).grants] == [("2026-12", 2_000)]
    assert verify(ledger.db) == []


def test_the_roll_over_takes_back_only_the_allocations_it_granted(
    ledger: Ledger, clock: Clock
) -> None:
    """An admin's top-up of kind ``allocation`` is credits on the terms it was given (its
    own expiry, none here): the next period's roll-over expires the period's automatic
    allocation, not it."""
    clock.now = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    user = wallet(ledger, "mixed", "token", monthly_allocation=1_000)  # October's, at once
    ledger.top_up(user, 300, kind="allocation", idempotency_key=key(), reference="by hand")
    clock.now = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    assert ledger.roll_allocations() == 1
    view = ledger.account(user)
    assert view.balance == 1_300
    assert sorted((g.reference or "", g.period or "", g.remaining) for g in view.grants) == [
        ("", "2026-11", 1_000),
        ("by hand", "", 300),
    ]


def test_an_allocation_that_only_repays_debt_is_still_granted_for_its_period(
    ledger: Ledger, clock: Clock
) -> None:
    """November's 1,000 all goes to repay debt: the period's allocation grant is still
    made (1,000 given, nothing left in it), so its grant is on record and the period is
    done."""
    clock.now = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    user = wallet(ledger, "indebted", "token", monthly_allocation=1_000)  # October's
    ledger.adjust(user, -2_500, reason="chargeback", idempotency_key=key())  # -1,500
    clock.now = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    assert ledger.roll_allocations() == 1
    assert ledger.roll_allocations() == 0
    assert (ledger.balance(user).balance, ledger.balance(user).debt) == (-500, 500)
    november = [g for g in ledger.grants_of(user) if g.period == "2026-11"]
    assert [(g.kind, g.amount, g.remaining) for g in november] == [("allocation", 1_000, 0)]
    assert ledger.account(user).grants == []
    assert verify(ledger.db) == []


def test_a_capture_answers_credits_remaining_net_of_grants_that_expired_meanwhile(
    ledger: Ledger, clock: Clock
) -> None:
    """A promotion runs out while the video renders: the capture expires it first, and
    what it says remains is what the wallet then has."""
    user = wallet(ledger)
    ledger.top_up(user, 1_000, idempotency_key=key())
    ledger.top_up(
        user, 300, idempotency_key=key(), kind="promo", expires_at=clock.now + timedelta(minutes=5)
    )
    held = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    assert held.credits_remaining == 1_300 - 240
    clock.advance(minutes=10)
    done = ledger.capture(held.id, status="COMPLETED", usage={}, idempotency_key=key())
    assert (done.charged, done.credits_remaining) == (240, 1_000 - 240)
    assert ledger.balance(user).available == done.credits_remaining
    # So does usage reported after the fact.
    ledger.top_up(
        user, 100, idempotency_key=key(), kind="promo", expires_at=clock.now + timedelta(minutes=5)
    )
    clock.advance(minutes=10)
    reported = ledger.report_usage(
        user, VEO_FAST, status="COMPLETED", usage={}, idempotency_key=key()
    )
    assert (reported.charged, reported.credits_remaining) == (240, 760 - 240)
    assert ledger.balance(user).available == reported.credits_remaining
    assert verify(ledger.db) == []


def test_a_spend_limit_is_reached_exactly_at_its_last_credit(ledger: Ledger) -> None:
    """Held and spent credits may add up to the limit, not one credit past it."""
    user = wallet(ledger, monthly_spend_limit=263)
    ledger.top_up(user, 5_000, idempotency_key=key())
    ledger.authorize(user, VEO_FAST, idempotency_key=key())  # 240 held, 23 left
    image = f.request("veo3", "image", prompt="x")  # 24
    with pytest.raises(SpendLimitReached) as refused:
        ledger.charge(user, image, idempotency_key=key())
    assert (refused.value.needed, refused.value.remaining) == (24, 23)
    # The estimate's advisory answer agrees, at the same last credit.
    assert not ledger.affordability(user, ledger.quote(image)).affordable
    ledger.update_account(user, idempotency_key=key(), monthly_spend_limit=264)
    fits = ledger.affordability(user, ledger.quote(image))
    assert (fits.affordable, fits.spend_remaining) == (True, 24)
    assert ledger.charge(user, image, idempotency_key=key()).credits_used == 24  # 264 of 264
    assert ledger.account(user).spend_remaining == 0
    with pytest.raises(SpendLimitReached):
        ledger.charge(user, image, idempotency_key=key())


def test_the_roll_over_also_expires_other_grants_due_at_the_period_start(
    ledger: Ledger, clock: Clock
) -> None:
    """A promotion that ends with the month goes with October's allocation, in the same
    roll-over, before November's is granted."""
    clock.now = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    user = wallet(ledger, "promo-end", "token", monthly_allocation=1_000)
    november = datetime(2026, 11, 1, tzinfo=UTC)
    ledger.top_up(user, 300, kind="promo", expires_at=november, idempotency_key=key())
    clock.now = november
    assert ledger.roll_allocations() == 1
    view = ledger.account(user)
    assert view.balance == 1_000
    assert [(g.kind, g.period, g.remaining) for g in view.grants] == [
        ("allocation", "2026-11", 1_000)
    ]
    expiry = next(e for e in ledger.entries(user).items if e.kind == "expiry")
    assert [p.amount for p in expiry.postings if p.account_id == user] == [-1_300]
    assert verify(ledger.db) == []


def test_a_wallet_blocked_after_the_round_listed_it_is_granted_nothing(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round lists the wallets due, then grants each under its lock: one blocked in
    between is read again there and skipped, and gets its period when unblocked."""
    clock.now = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    user = wallet(ledger, "late", "token", monthly_allocation=1_000)
    clock.now = datetime(2026, 11, 1, tzinfo=UTC)
    with ledger.db.transaction(write=False) as conn:
        due = Ledger._allocations_due(conn, clock.now)
    assert len(due) == 1
    ledger.update_account(user, idempotency_key=key(), blocked=True)
    monkeypatch.setattr(Ledger, "_allocations_due", staticmethod(lambda conn, now: due))
    assert ledger.roll_allocations() == 0
    assert [g for g in ledger.grants_of(user) if g.period == "2026-11"] == []
    ledger.update_account(user, idempotency_key=key(), blocked=False)
    assert [g.remaining for g in ledger.grants_of(user) if g.period == "2026-11"] == [1_000]
    assert verify(ledger.db) == []


def test_an_actor_longer_than_its_column_is_refused_before_anything_is_written(
    ledger: Ledger,
) -> None:
    user = wallet(ledger)
    for actor in ("k" * 81, "", "key:\x00"):
        with pytest.raises(InvalidInput) as refused:
            ledger.top_up(user, 5, idempotency_key=key(), actor=actor)
        assert refused.value.field == "actor"
    assert ledger.account(user).balance == 0
    done = ledger.top_up(user, 5, idempotency_key=key(), actor="k" * 80)
    assert done.entry.actor == "k" * 80


def test_a_blocked_wallet_is_granted_no_allocation_until_unblocked(
    ledger: Ledger, clock: Clock
) -> None:
    clock.now = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    user = wallet(ledger, "paused", "token", monthly_allocation=1_000)  # October's, at once
    assert ledger.roll_allocations() == 0
    ledger.update_account(user, idempotency_key=key(), blocked=True)
    clock.now = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    assert ledger.roll_allocations() == 0  # November: blocked, nothing granted
    assert ledger.expire_grants() == 1  # October's rest expires all the same
    assert ledger.account(user).balance == 0
    clock.now = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
    # Unblocked: November's at once (not October's again), not at the sweeper's next round.
    view = ledger.update_account(user, idempotency_key=key(), blocked=False)
    assert view.balance == 1_000
    assert ledger.roll_allocations() == 0
    assert [(g.period, g.remaining) for g in view.grants] == [("2026-11", 1_000)]


def test_blocking_a_wallet_before_its_months_round_grants_it_nothing(
    ledger: Ledger, clock: Clock
) -> None:
    """Blocked as November begins, before the sweeper's round: the block is read as the
    change leaves it, so November's allocation waits for the unblocking."""
    clock.now = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
    user = wallet(ledger, "late", "token", monthly_allocation=1_000)
    clock.now = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    view = ledger.update_account(user, idempotency_key=key(), blocked=True)
    assert "2026-11" not in {g.period for g in view.grants}
    assert ledger.roll_allocations() == 0
    view = ledger.update_account(user, idempotency_key=key(), blocked=False)
    assert {g.period: g.remaining for g in view.grants}["2026-11"] == 1_000


def test_an_allocation_round_opens_a_write_transaction_only_for_wallets_due(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 22:30 UTC on 31 October: 23:30 in Berlin, already 04:00 on 1 November in Kolkata.
    clock.now = datetime(2026, 10, 31, 22, 30, tzinfo=UTC)
    for name, zone in (("utc", "UTC"), ("berlin", "Europe/Berlin"), ("kolkata", "Asia/Kolkata")):
        wallet(ledger, name, "token", monthly_allocation=100, timezone=zone)
    wallet(ledger, "no-allocation", "token")
    paused = wallet(ledger, "paused", "token")
    ledger.update_account(paused, idempotency_key=key(), blocked=True)
    # Blocked: an allocation set now is granted neither now nor by the rounds.
    ledger.update_account(paused, idempotency_key=key(), monthly_allocation=100)
    assert ledger.roll_allocations() == 0  # the others had theirs as they opened
    writes: list[str] = []
    opened = ledger.db.transaction

    def counted(*, write: bool = True, settle: bool = False) -> Any:
        if write:
            writes.append(clock.now.isoformat())
        return opened(write=write, settle=settle)

    monkeypatch.setattr(ledger.db, "transaction", counted)
    # Every wallet has its period: the sweeper's next rounds write nothing at all.
    assert [ledger.roll_allocations(), ledger.roll_allocations()] == [0, 0]
    assert writes == []
    clock.advance(minutes=30)  # midnight in Berlin: its November begins, not UTC's
    assert ledger.roll_allocations() == 1
    assert len(writes) == 1
    assert [g.period for g in ledger.account("berlin").grants] == ["2026-11"]
    assert [g.period for g in ledger.account("utc").grants] == ["2026-10"]
    assert [g.period for g in ledger.account("kolkata").grants] == ["2026-11"]
    assert ledger.account(paused).grants == []


# ----------------------------------------------------------------------- reading


#: A journal of a production's shape for PostgreSQL's planner, written and analyzed for
#: one plan and rolled back (foreign keys and the ledger's triggers off, as for a
#: restore): 2,000 wallets' 40,000 entries, one in twenty a top-up (a grant of its own
#: reference, half of them spent, a third of them expiring) and the rest charges
#: spending from it. A test's own tables are a few pages, which the planner would rather
#: read whole than look a few rows up in; the plans the tests forbid are those that
#: would read a production's whole.
_PRODUCTION = (
    "SET LOCAL session_replication_role = replica",
    "INSERT INTO entries (id, kind, account_id, posted_at, memo) "
    "SELECT 'bg-' || n, CASE WHEN n % 20 = 0 THEN 'topup' ELSE 'charge' END, "
    "1000000 + n % 2000, TIMESTAMPTZ '2026-01-01' + n * INTERVAL '1 minute', '' "
    "FROM generate_series(1, 40000) n",
    "INSERT INTO grants (id, account_id, kind, amount, remaining, priority, effective_at, "
    "expires_at, reference, entry_id) SELECT 'bg-' || n, 1000000 + n % 2000, 'pack', 1000, "
    "CASE WHEN n % 40 = 0 THEN 0 ELSE 1000 END, 0, TIMESTAMPTZ '2026-01-01', "
    "CASE WHEN n % 60 = 0 THEN TIMESTAMPTZ '2027-06-01' END, 'bg-ref-' || n, 'bg-' || n "
    "FROM generate_series(20, 40000, 20) n",
    "INSERT INTO grant_movements (entry_id, grant_id, amount) "
    "SELECT 'bg-' || n, 'bg-' || (n - n % 20 + 20), -1 FROM generate_series(1, 40000) n",
    "ANALYZE entries, grants, grant_movements",
    "SET LOCAL enable_seqscan = off",
)


def _plans(db: Database, statements: Sequence[tuple[str, Any]]) -> list[str]:
    """The plans of statements as the ledger ran them (PostgreSQL: among a production's
    rows, ``_PRODUCTION``, with sequential scans priced out besides)."""
    with db.engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        if not db.is_sqlite:
            for setting in _PRODUCTION:
                raw.execute(setting)
        explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
        plans = [
            " ".join(str(row[-1]) for row in raw.execute(explain + text, parameters).fetchall())
            for text, parameters in statements
        ]
        conn.rollback()
    return plans


@contextmanager
def _statements(engine: sa.Engine, *markers: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with their parameters) run on ``engine`` meanwhile that contain
    one of ``markers``."""
    seen: list[tuple[str, Any]] = []

    def note(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if any(marker in statement for marker in markers):
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)


def test_entries_of_one_kind_page_alike_and_the_few_kinds_are_read_from_their_index(
    ledger: Ledger, clock: Clock
) -> None:
    """A wallet's top-ups (adjustments, reversals...) are a few among its requests'
    captures and charges: listed by kind, page by page, they are read from
    ``ix_entries_account_occasional``, and every wallet's (the journal) from
    ``ix_entries_occasional``, not found by stepping over every request."""
    user, other = wallet(ledger), wallet(ledger, "user-2")
    ledger.top_up(user, 10_000, idempotency_key=key())
    ledger.top_up(other, 1_000, idempotency_key=key())
    for i in range(12):
        clock.advance(minutes=1)
        ledger.charge(user, VEO_FAST, idempotency_key=key())
        if i % 4 == 0:
            ledger.top_up(user, 100 + i, idempotency_key=key())
            ledger.charge(other, VEO_FAST, idempotency_key=key())
        if i == 5:
            ledger.adjust(user, -3, reason="clawback", idempotency_key=key())
    everything = [(e.kind, e.id) for e in ledger.entries(user, limit=500).items]
    journal = [(e.kind, e.id) for e in ledger.journal(limit=500).items]

    def listed(read: Callable[..., Any], kind: str) -> list[tuple[str, str]]:
        found, cursor = [], None
        while True:
            page = read(kind=kind, cursor=cursor, limit=2)
            found += [(e.kind, e.id) for e in page.items]
            if (cursor := page.next_cursor) is None:
                return found

    with _statements(ledger.db.engine, "ORDER BY entries.posted_at DESC") as statements:
        for kind in ("topup", "charge", "adjustment", "reversal"):
            mine = listed(lambda **kw: ledger.entries(user, **kw), kind)
            assert mine == [(k, i) for k, i in everything if k == kind]
            assert listed(ledger.journal, kind) == [(k, i) for k, i in journal if k == kind]
    assert [k for k, _ in everything].count("topup") == 4
    assert [k for k, _ in journal].count("topup") == 5

    planned = list(zip(statements, _plans(ledger.db, statements), strict=True))

    def partial(text: str) -> bool:
        """Whether a plan reads the entries of the few kinds alone: from one of the
        partial indexes that hold only those, never a scan of every entry."""
        few = ("ix_entries_occasional", "ix_entries_account_occasional", "reversals")
        return any(name in text for name in few) and "ix_entries_account_posted" not in text

    wallets = [(s, p) for s, p in planned if "entries.account_id =" in s[0]]
    every = [(s, p) for s, p in planned if "entries.account_id =" not in s[0]]
    # The wallet's: the first page of top-ups, then a page after a cursor; the
    # adjustments; the reversals. Its charges by the wallet's index of every entry.
    occasional = [p for s, p in wallets if "'charge'" in s[0]]
    assert len(occasional) == 2 + 1 + 1
    assert all(partial(text) for text in occasional), occasional
    charges = [p for s, p in wallets if "'charge'" not in s[0]]
    assert len(charges) == 6
    assert all("ix_entries_account_posted" in text for text in charges), charges
    # The journal's: top-ups (3 pages), adjustments, reversals (SQLite: by the index in
    # the order of the pages).
    occasional = [p for s, p in every if "'charge'" in s[0]]
    assert len(occasional) == 3 + 1 + 1
    assert all(partial(text) for text in occasional), occasional
    if ledger.db.is_sqlite:
        assert all("ix_entries_occasional" in text for text in occasional), occasional


def test_a_wallets_records_of_a_gateway_request_id_are_read_from_their_index(
    ledger: Ledger, clock: Clock
) -> None:
    """A gateway looks up what one of its requests was billed by its own request id:
    the records are read from ``ix_metering_account_request``, newest first and page by
    page, not found by stepping over every record of the wallet (600 ms on a wallet of a
    million records)."""
    user, other = wallet(ledger), wallet(ledger, "user-2")
    ledger.top_up(user, 100_000, idempotency_key=key())
    ledger.top_up(other, 100_000, idempotency_key=key())
    for i in range(9):
        clock.advance(minutes=1)
        # A request id seen three times (a gateway retrying with new keys), and records
        # without one, and another wallet's of the same id.
        ledger.charge(user, VEO_FAST, idempotency_key=key(), request_id=f"req-{i % 3}")
        ledger.charge(user, VEO_FAST, idempotency_key=key())
        ledger.charge(other, VEO_FAST, idempotency_key=key(), request_id="req-0")
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key(), request_id="req-0")
    everything = ledger.usage_records(user, limit=500).items
    with _statements(ledger.db.engine, "metering_records.request_id =") as statements:
        for request_id in ("req-0", "req-1", "req-9"):
            found, cursor = [], None
            while True:
                page = ledger.usage_records(user, request_id=request_id, cursor=cursor, limit=2)
                found += page.items
                if (cursor := page.next_cursor) is None:
                    break
            assert found == [r for r in everything if r.request_id == request_id]
            assert len(found) == {"req-0": 4, "req-1": 3, "req-9": 0}[request_id]
    assert everything[0].hold_id == hold.id  # an authorization's record is found alike
    assert len(statements) == 2 + 2 + 1  # pages of two: of 4 records, of 3, of none
    plans = _plans(ledger.db, statements)
    assert all("ix_metering_account_request" in text for text in plans), plans


def test_the_entries_of_one_payment_are_found_by_its_reference_from_their_index(
    ledger: Ledger, clock: Clock
) -> None:
    """Finance matches a payment (an invoice, a provider's payment id) to the ledger: the
    top-ups given its reference, the reversals that took them back (a chargeback) and the
    expiries and revocations that took back what was left of them, newest first, page by
    page; not another payment's, nor its wallet's other expiries, nor the wallet's
    requests, nor the refund of a charge. Read from ``ix_grants_reference``, the wallets'
    entries of the few kinds and the entries' keys, never by stepping over the journal,
    the wallet's entries or the grants' movements."""
    user, other = wallet(ledger), wallet(ledger, "user-2")
    paid = ledger.top_up(user, 1_000, idempotency_key=key(), reference="inv-7")
    clock.advance(minutes=1)
    ledger.top_up(user, 500, idempotency_key=key(), reference="inv-8")
    charged = ledger.charge(user, VEO_FAST, idempotency_key=key())
    clock.advance(minutes=1)
    # One invoice paying for two wallets, in two top-ups.
    shared = ledger.top_up(other, 300, idempotency_key=key(), reference="inv-7", kind="promo")
    clock.advance(minutes=1)
    # And for a pack that expires, on its own; the wallet's unpaid promotion a day later.
    due = clock.now + timedelta(hours=1)
    pack = ledger.top_up(user, 50, idempotency_key=key(), reference="inv-7", expires_at=due)
    ledger.top_up(user, 20, idempotency_key=key(), kind="promo", expires_at=due + timedelta(days=1))
    clock.advance(minutes=1)
    assert charged.entry_id is not None
    ledger.reverse(charged.entry_id, reason="blank video", idempotency_key=key())
    taken = ledger.reverse(paid.entry.id, reason="chargeback", idempotency_key=key())
    ledger.top_up(user, 100, idempotency_key=key())  # no reference
    clock.now = due
    assert ledger.expire_grants() == 1
    clock.advance(minutes=1)
    assert shared.grant is not None
    withdrawn = ledger.revoke_grant(
        shared.grant.id, reason="promotion withdrawn", idempotency_key=key()
    )
    clock.advance(days=1)
    assert ledger.expire_grants() == 1  # the unpaid promotion: of no payment
    expired = ledger.entries(user, kind="expiry").items
    assert [e.memo for e in expired] == ["1 grant(s) expired"] * 2
    lapsed = expired[1]

    def every(read: Callable[..., Any], **filters: Any) -> list[str]:
        found, cursor = [], None
        while True:
            page = read(cursor=cursor, limit=1, **filters)
            found += [e.id for e in page.items]
            if (cursor := page.next_cursor) is None:
                return found

    with _statements(ledger.db.engine, "grants.reference =") as statements:
        journal = every(ledger.journal, reference="inv-7")
        mine = every(lambda **kw: ledger.entries(user, **kw), reference="inv-7")
        theirs = every(lambda **kw: ledger.entries(other, **kw), reference="inv-7")
        topups = every(ledger.journal, reference="inv-7", kind="topup")
        nothing = every(ledger.journal, reference="inv-9")
    revoked = withdrawn.entry.id
    assert journal == [
        revoked,
        lapsed.id,
        taken.entry.id,
        pack.entry.id,
        shared.entry.id,
        paid.entry.id,
    ]
    assert mine == [lapsed.id, taken.entry.id, pack.entry.id, paid.entry.id]
    assert theirs == [revoked, shared.entry.id]
    assert topups == [pack.entry.id, shared.entry.id, paid.entry.id]
    assert nothing == []
    assert [e.memo for e in ledger.journal(reference="inv-8").items] == ["pack top-up (inv-8)"]
    bads: list[Any] = ["", "x" * 201, 7]
    for bad in bads:
        for read in (ledger.journal, lambda **kw: ledger.entries(user, **kw)):
            with pytest.raises(InvalidInput) as info:
                read(reference=bad)
            assert info.value.field == "reference"
    plans = _plans(ledger.db, statements)
    assert len(plans) == 6 + 4 + 2 + 3 + 1  # pages of one, and the last page's look
    key_index = "entries_pkey" if not ledger.db.is_sqlite else "sqlite_autoindex_entries_1"
    for text in plans:
        assert key_index in text, text
        assert "ix_entries_account_posted" not in text, text
        assert "ix_entries_occasional" not in text, text
        if ledger.db.is_sqlite:
            assert "SCAN entries" not in text, text
        else:
            assert "Seq Scan" not in text, text
    journal_plans = [
        p for p, s in zip(plans, statements, strict=True) if "grants.account_id =" not in s[0]
    ]
    assert len(journal_plans) == 6 + 3 + 1
    assert all("ix_grants_reference" in text for text in journal_plans), journal_plans
    for text in plans:
        if ledger.db.is_sqlite:
            assert "SCAN grant" not in text, text
        assert "ix_entries_account_occasional" in text, text
        assert ("grant_movements_pkey" if not ledger.db.is_sqlite else "movements_1") in text


def test_a_page_of_entries_is_read_in_as_many_queries_whatever_its_length(
    ledger: Ledger,
) -> None:
    """Each entry of a page with its postings, in a few queries for the whole page (a
    customer's billing page, ``GET /v1/entries``), not two per entry."""
    user = wallet(ledger)
    reversed_ = ledger.top_up(user, 10_000, idempotency_key=key())
    for _ in range(30):
        ledger.charge(user, VEO_FAST, idempotency_key=key())
    ledger.reverse(reversed_.entry.id, reason="paid twice", idempotency_key=key())
    counted: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        counted.append(statement)

    queries = {}
    sa.event.listen(ledger.db.engine, "before_cursor_execute", count)
    try:
        for limit in (1, 32):
            counted.clear()
            page = ledger.entries(user, limit=limit)
            queries[limit] = len(counted)
    finally:
        sa.event.remove(ledger.db.engine, "before_cursor_execute", count)
    assert queries[32] == queries[1] <= 6, queries
    kinds = [e.kind for e in page.items]
    assert kinds == ["reversal", *["charge"] * 30, "topup"]
    # Each with its own postings, the wallet's leg where the entry put it.
    assert [(p.account_id, p.amount) for p in page.items[0].postings] == [
        ("system:funding:credit", 10_000),
        (user, -10_000),
    ]
    for charge in page.items[1:31]:
        assert [p.amount for p in charge.postings] == [-240, 240]
        assert charge.postings[0].account_id == user
    assert page.items[31].id == reversed_.entry.id
    assert page.items[31].postings == reversed_.entry.postings


def test_a_point_in_time_balance_counts_the_holds_open_then(ledger: Ledger, clock: Clock) -> None:
    """A hold counts in ``pending`` from its authorization until it resolved: not before,
    and not after, whether it was captured or voided since."""
    user = wallet(ledger)
    ledger.top_up(user, 1_000, idempotency_key=key())
    clock.advance(minutes=1)
    captured = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    voided = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    both_open = clock.now
    clock.advance(minutes=1)
    ledger.capture(captured.id, status="COMPLETED", usage={}, idempotency_key=key())
    clock.advance(minutes=1)
    ledger.void(voided.id, idempotency_key=key())
    clock.advance(minutes=1)
    at = ledger.balance
    assert (at(user, as_of=both_open - timedelta(minutes=1)).pending, at(user).pending) == (0, 0)
    then = at(user, as_of=both_open)
    assert (then.balance, then.pending, then.available) == (1_000, 480, 520)
    middle = at(user, as_of=both_open + timedelta(minutes=1, seconds=30))
    assert (middle.balance, middle.pending, middle.available) == (760, 240, 520)
    assert at(user, as_of=clock.now) == at(user).model_copy(update={"as_of": clock.now})


def test_a_point_in_time_balance_is_its_postings_and_holds_then_at_any_instant(
    ledger: Ledger, clock: Clock
) -> None:
    """The balance at an instant is read from the wallet's daily rollups of the dates
    before it and its postings since: at every instant, around its local midnights and a
    change of its offset (Santiago's clocks go back an hour at midnight on 4 April
    2027), it is what summing each posting and hold of the wallet then gives."""
    user = wallet(ledger, timezone="America/Santiago")
    ledger.top_up(user, 100_000, idempotency_key=key())
    clock.advance(days=(datetime(2027, 4, 1, tzinfo=UTC) - clock.now).days)
    first = clock.now
    open_holds = []
    for n in range(70):  # six days, every 2 h 7 min
        if n % 3 == 0:
            ledger.top_up(user, 1_000 + n, idempotency_key=key())
        elif n % 3 == 1:
            ledger.charge(user, VEO_FAST, idempotency_key=key())
        else:
            hold = ledger.authorize(user, VEO_FAST, ttl=timedelta(hours=24), idempotency_key=key())
            open_holds.append(hold.id)
        if len(open_holds) > 2:
            resolved = open_holds.pop(0)
            if n % 2:
                ledger.capture(resolved, status="COMPLETED", usage={}, idempotency_key=key())
            else:
                ledger.void(resolved, idempotency_key=key())
        clock.advance(hours=2, minutes=7)
    postings = [
        (e.posted_at, p.amount)
        for e in ledger.entries(user, limit=500).items
        for p in e.postings
        if p.account_id == user
    ]
    holds = ledger.holds_of(user, limit=500).items
    instant = first - timedelta(days=1)
    while instant <= clock.now:
        then = ledger.balance(user, as_of=instant)
        assert then.balance == sum(amount for at, amount in postings if at <= instant), instant
        assert then.pending == sum(
            h.held
            for h in holds
            if h.created_at <= instant and (h.resolved_at is None or h.resolved_at > instant)
        ), instant
        instant += timedelta(minutes=43)
    assert ledger.balance(user, as_of=clock.now).balance == ledger.balance(user).balance


def test_a_balance_at_an_instant_has_the_overdraft_limit_of_that_wallet_then(
    ledger: Ledger, clock: Clock
) -> None:
    """The limit in force at an instant is the wallet's own last overdraft limit set by
    then (before any was set: the one the first change replaced), whatever other wallets'
    limits and this wallet's other settings did meanwhile."""
    user = wallet(ledger, "mine")
    other = wallet(ledger, "other", overdraft_limit=7)
    opened = clock.now
    steps: list[tuple[str, dict[str, Any]]] = [
        (user, {"overdraft_limit": 100}),
        (other, {"overdraft_limit": 999}),
        (user, {"monthly_spend_limit": 5_000}),
        (user, {"overdraft_limit": 300}),
        (other, {"overdraft_limit": 1}),
        (user, {"monthly_allocation": 50}),
    ]
    then = []
    for account, change in steps:
        clock.advance(minutes=1)
        ledger.update_account(account, idempotency_key=key(), **change)
        then.append(clock.now)
    clock.advance(minutes=1)

    def limit(instant: datetime) -> int:
        return ledger.balance(user, as_of=instant).overdraft_limit

    assert limit(opened) == 0
    assert [limit(instant) for instant in then] == [100, 100, 100, 300, 300, 300]
    assert ledger.balance(other, as_of=then[0]).overdraft_limit == 7


def test_a_posting_at_the_very_start_of_a_local_day_counts_in_that_day(
    ledger: Ledger, clock: Clock
) -> None:
    """A balance at an instant of a day sums the rollups of the days before and the
    postings since that day began: one posted at its first microsecond (midnight in the
    wallet's timezone) is among the latter, counted once, neither left out nor twice."""
    user = wallet(ledger, timezone="Asia/Tokyo")
    ledger.top_up(user, 1_000, idempotency_key=key())
    midnight = datetime(2026, 12, 1, tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    clock.now = midnight
    ledger.top_up(user, 70, idempotency_key=key())
    clock.now = midnight + timedelta(days=1, hours=3)
    ledger.top_up(user, 5, idempotency_key=key())
    clock.now = midnight + timedelta(days=2)
    for instant, balance in (
        (midnight - timedelta(microseconds=1), 1_000),
        (midnight, 1_070),
        (midnight + timedelta(hours=5), 1_070),
        (midnight + timedelta(days=1), 1_070),
        (midnight + timedelta(days=1, hours=4), 1_075),
    ):
        assert ledger.balance(user, as_of=instant).balance == balance, instant


def test_point_in_time_balance_and_pagination(ledger: Ledger, clock: Clock) -> None:
    user = wallet(ledger)
    marks = []
    for i in range(7):
        ledger.top_up(user, 10 * (i + 1), idempotency_key=key())
        marks.append(clock.now)
        clock.advance(minutes=1)
    assert ledger.balance(user, as_of=marks[2]).balance == 10 + 20 + 30
    assert ledger.balance(user, as_of=marks[0] - timedelta(seconds=1)).balance == 0
    seen, cursor = [], None
    while True:
        page = ledger.entries(user, cursor=cursor, limit=3)
        seen += [e.postings[-1].amount for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [70, 60, 50, 40, 30, 20, 10]
    with pytest.raises(InvalidInput):
        ledger.entries(user, cursor="garbage")
    with pytest.raises(InvalidInput):
        ledger.balance(user, as_of=datetime(2026, 1, 1))
    # A local time no UTC date can hold: refused, where it used to fail (SQLite) or to
    # store a year 10000 that could not be read back (PostgreSQL).
    beyond = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    before = datetime(1, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))
    for instant in (beyond, before):
        with pytest.raises(InvalidInput) as info:
            ledger.balance(user, as_of=instant)
        assert info.value.field == "as_of"
        with pytest.raises(InvalidInput) as info:
            ledger.top_up(user, 5, idempotency_key=key(), expires_at=instant)
        assert info.value.field == "expires_at"
    latest = datetime.max.replace(tzinfo=UTC)
    ledger.top_up(user, 5, idempotency_key=key(), expires_at=latest)
    assert latest in [g.expires_at for g in ledger.account(user).grants]
    assert ledger.balance(user, as_of=clock.now).balance == 10 + 20 + 30 + 40 + 50 + 60 + 70 + 5
    # Later than now: not known yet (the 5 expire at the end of time, the 70 may be spent).
    for later in (clock.now + timedelta(microseconds=1), latest):
        with pytest.raises(InvalidInput) as info:
            ledger.balance(user, as_of=later)
        assert (info.value.field, info.value.allowed) == (
            "as_of",
            {"max": clock.now.isoformat().replace("+00:00", "Z")},
        )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("how", ["startup options", "a pooler dropped them"])
def test_postgresql_sessions_read_instants_in_utc_whatever_the_server_says(
    database_url: str,
    catalogs: CatalogSet,
    clock: Clock,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server sends a ``timestamptz`` in the session's time zone. The test server's
    default is Asia/Kolkata (UTC+05:30, ``tests/pg.py``); here the database's default is
    further east still and the URL asks for Kolkata too: the ledger's sessions are in UTC
    all the same, by their startup options or, where a pooler such as PgBouncer dropped
    those, by a ``SET`` on connecting. Otherwise the latest instant the ledger takes came
    back as year 10000, which no datetime holds: the wallet's grants could not be read."""
    name = sa.engine.make_url(database_url).database
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"ALTER DATABASE {name} SET TimeZone = 'Pacific/Kiritimati'")
    admin.dispose()
    if how == "a pooler dropped them":
        monkeypatch.setattr("ledger.db.SESSION_TIMEZONE", "")
    url = database_url + "?options=-c%20TimeZone%3DAsia/Kolkata"
    db = Database.from_url(url)
    try:
        # The first transaction of the connection fails, and is rolled back: its session
        # stays in UTC all the same.
        with pytest.raises(sa.exc.ProgrammingError), db.transaction(write=False) as conn:
            conn.exec_driver_sql("SELECT no_such_column FROM accounts")
        with db.transaction(write=False) as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        ledger = Ledger(db, catalogs, clock=clock)
        user = wallet(ledger)
        latest = datetime.max.replace(tzinfo=UTC)
        topup = ledger.top_up(user, 500, idempotency_key=key(), expires_at=latest)
        assert topup.grant is not None
        assert topup.grant.expires_at == latest
        hold = ledger.authorize(user, f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
        for instant in (
            *(g.expires_at for g in ledger.account(user).grants),
            ledger.holds_of(user).items[0].expires_at,
            hold.expires_at,
        ):
            assert instant is not None
            assert instant.utcoffset() == timedelta(0), instant
        assert [g.expires_at for g in ledger.account(user).grants] == [latest]
        # Each connection of the pool, not only the first one.
        with db.transaction(write=False) as a, db.transaction(write=False) as b:
            zones = {c.exec_driver_sql("SHOW TimeZone").scalar() for c in (a, b)}
        assert zones == {"UTC"}
    finally:
        db.dispose()


def test_usage_reads_video_seconds_exactly(ledger: Ledger, clock: Clock) -> None:
    """Seconds are NUMERIC, which SQLite sums as floats: they are read as microseconds."""
    user = wallet(ledger, timezone="Asia/Tokyo")
    with ledger.db.transaction() as conn:
        account_id = conn.execute(
            sa.select(accounts.c.id).where(accounts.c.external_id == user)
        ).scalar_one()
        row = {"account_id": account_id, "unit": "credit", "catalog": "fal", "operation": "v"}
        conn.execute(
            daily.insert(),
            [
                {**row, "model": "a", "day": "2026-11-02", "seconds": Decimal("12.5")},
                {**row, "model": "b", "day": "2026-11-02", "seconds": Decimal("0.000001")},
                {**row, "model": "a", "day": "2026-11-03", "seconds": Decimal("0.1")},
            ],
        )
    try:
        usage = ledger.usage(user)
        assert [str(i.seconds) for i in usage.items] == ["12.5", "0.000001", "0.1"]
        assert str(usage.totals.seconds) == "12.600001"
        assert (usage.first_day.isoformat(), usage.last_day.isoformat()) == (
            "2026-11-01",
            "2026-11-21",  # 21:00 on the 21st in Tokyo
        )
        assert ledger.usage(user, from_day=date(2026, 11, 3)).totals.seconds == Decimal("0.1")
        # From a day after today, with no last day: that day alone, nothing used yet.
        ahead = ledger.usage(user, from_day=date(2026, 11, 25))
        assert (ahead.first_day, ahead.last_day, ahead.items) == (
            date(2026, 11, 25),
            date(2026, 11, 25),
            [],
        )
        # At most 366 days, both ends included.
        year = ledger.usage(user, from_day=date(2025, 11, 3), to_day=date(2026, 11, 3))
        assert (year.last_day - year.first_day).days + 1 == 366
        assert [str(i.seconds) for i in year.items] == ["12.5", "0.000001", "0.1"]
        for bad, field in (
            ({"from_day": "2026-11-01"}, "from"),
            ({"to_day": datetime(2026, 11, 1, tzinfo=UTC)}, "to"),
            ({"from_day": date(2025, 11, 2), "to_day": date(2026, 11, 3)}, "to"),  # 367 days
            ({"from_day": date(2026, 11, 4), "to_day": date(2026, 11, 3)}, "from"),
        ):
            with pytest.raises(InvalidInput) as info:
                ledger.usage(user, **bad)
            assert info.value.field == field
    finally:  # verify() checks the rollup against the metering records
        with ledger.db.transaction() as conn:
            conn.execute(daily.delete().where(daily.c.account_id == account_id))


# ---------------------------------------------------------- the database guards itself


def test_ledger_from_settings_reads_the_environment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.services import ledger_from_settings
    from ledger.settings import Settings

    monkeypatch.setenv("CREDITLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("CREDITLEDGER_HOLD_TTL_SECONDS", "60")
    f.write_catalog(
        tmp_path / "catalogs",
        "fal.toml",
        f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z"),
    )
    monkeypatch.setenv("CREDITLEDGER_CATALOG_DIR", str(tmp_path / "catalogs"))
    configured = ledger_from_settings(Settings())
    configured.db.migrate()
    configured.open_account("u", "usd", idempotency_key="o")
    configured.top_up("u", 1_000_000, idempotency_key="t")
    hold = configured.authorize("u", f.fal_video(), idempotency_key="h")  # priced by the operator
    assert hold.expires_at - hold.created_at == timedelta(seconds=60)
    assert hold.held == 157_500
    assert configured.idempotency_retention == timedelta(days=30)
    configured.db.dispose()


def test_idempotency_keys_are_pruned_a_batch_at_a_time_oldest_first(
    ledger: Ledger, clock: Clock, db: Database
) -> None:
    user = wallet(ledger)
    assert ledger.prune_idempotency_keys() == 0  # no retention: every key is kept
    ledger.idempotency_retention = timedelta(hours=1)
    for i in range(5):
        ledger.top_up(user, 1, idempotency_key=f"old-{i}")
        clock.advance(seconds=1)
    clock.advance(minutes=59, seconds=58.5)  # "old-0" to "old-3" are over an hour old
    ledger.top_up(user, 1, idempotency_key="new")

    def keys() -> list[str]:
        with db.transaction(write=False) as conn:
            return sorted(conn.execute(sa.select(idempotency.c.key)).scalars())

    assert ledger.prune_idempotency_keys(limit=3) == 3  # the opening, "old-0", "old-1"
    assert keys() == ["new", "old-2", "old-3", "old-4"]
    assert ledger.prune_idempotency_keys(limit=3) == 2
    assert keys() == ["new", "old-4"]
    assert ledger.prune_idempotency_keys(limit=3) == 0
    before = ledger.balance(user).balance
    ledger.top_up(user, 1, idempotency_key="old-4")  # still kept: replayed
    assert ledger.balance(user).balance == before
    ledger.top_up(user, 1, idempotency_key="old-0")  # deleted: a new top-up
    assert ledger.balance(user).balance == before + 1


def test_idempotency_retention_is_configured_in_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from ledger.settings import Settings

    assert Settings().idempotency_retention() == timedelta(days=30)
    monkeypatch.setenv("CREDITLEDGER_IDEMPOTENCY_RETENTION_HOURS", "0")
    assert Settings().idempotency_retention() is None  # for ever
    monkeypatch.setenv("CREDITLEDGER_IDEMPOTENCY_RETENTION_HOURS", "48")
    assert Settings().idempotency_retention() == timedelta(hours=48)
    for bad in ("0.5", "-1", "1e9"):
        monkeypatch.setenv("CREDITLEDGER_IDEMPOTENCY_RETENTION_HOURS", bad)
        with pytest.raises(ValidationError, match="idempotency_retention_hours"):
            Settings()


def test_the_ledger_survives_a_reconnected_pool_connection(ledger: Ledger, db: Database) -> None:
    user = wallet(ledger)
    ledger.top_up(user, 500, idempotency_key=key())
    # Invalidate every pooled connection: the pool entries reconnect on next use.
    held = [db.engine.connect() for _ in range(3)]
    for conn in held:
        conn.invalidate()
        conn.close()
    hold = ledger.authorize(user, VEO_FAST, idempotency_key=key())
    assert (
        ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key()).charged == 240
    )


def test_a_refund_counts_in_the_month_of_its_charge_in_the_wallets_timezone(
    ledger: Ledger, clock: Clock
) -> None:
    """Tokyo's December begins while UTC's November goes on: a charge of Tokyo's
    November refunded in its December makes no room in December, though both instants
    fall in the same UTC month."""
    user = wallet(ledger, "tokyo", timezone="Asia/Tokyo", monthly_spend_limit=500)
    ledger.top_up(user, 10_000, idempotency_key=key())
    clock.now = datetime(2026, 11, 30, 14, 30, tzinfo=UTC)  # 23:30 on the 30th in Tokyo
    november = ledger.charge(user, f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.advance(hours=1)  # 00:30 on 1 December in Tokyo
    december = ledger.charge(user, f.request("veo3", "image", prompt="x"), idempotency_key=key())
    assert (november.credits_used, december.credits_used) == (240, 24)
    assert november.entry_id is not None
    assert december.entry_id is not None
    ledger.reverse(november.entry_id, reason="blank video", idempotency_key=key())
    view = ledger.account(user)
    assert (view.spent_this_month, view.spend_remaining, view.balance) == (24, 476, 10_000 - 24)
    ledger.reverse(december.entry_id, reason="blurry", idempotency_key=key())
    assert (ledger.account(user).spent_this_month, ledger.account(user).spend_remaining) == (0, 500)


def test_a_charge_dated_in_the_next_month_does_not_count_in_this_one(
    ledger: Ledger, clock: Clock
) -> None:
    """Servers whose clocks differ: one charged at 00:30 on the 1st (Tokyo) while
    another still reads 23:30 on the 30th. Its spend limit counts this month's days."""
    user = wallet(ledger, "tokyo", timezone="Asia/Tokyo", monthly_spend_limit=500)
    ledger.top_up(user, 10_000, idempotency_key=key())
    clock.now = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)  # 00:30 on 1 December in Tokyo
    ledger.charge(user, f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
    assert ledger.account(user).spent_this_month == 240
    clock.advance(hours=-1)  # the slower clock: still 30 November in Tokyo
    view = ledger.account(user)
    assert (view.spent_this_month, view.spend_remaining) == (0, 500)
    ledger.charge(user, f.veo3_video(video_model="veo3"), idempotency_key=key())  # all 500


def test_a_refund_across_servers_clocks_counts_in_its_charges_month(
    ledger: Ledger, clock: Clock
) -> None:
    """A charge dated on 1 December (Tokyo) by a clock an hour ahead, refunded by one
    still on 30 November: the refund gives back December's spend, though dated before
    December, and takes nothing off November's."""
    user = wallet(ledger, "tokyo", timezone="Asia/Tokyo", monthly_spend_limit=500)
    ledger.top_up(user, 10_000, idempotency_key=key())
    clock.now = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)  # 00:30 on 1 December in Tokyo
    december = ledger.charge(user, f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
    assert december.entry_id is not None
    clock.advance(hours=-1)  # the slower clock: 23:30 on 30 November in Tokyo
    ledger.charge(user, f.veo3_video(video_model="veo3"), idempotency_key=key())  # all 500
    ledger.reverse(december.entry_id, reason="blank video", idempotency_key=key())
    view = ledger.account(user)
    assert (view.spent_this_month, view.spend_remaining) == (500, 0)
    with pytest.raises(SpendLimitReached):
        ledger.charge(user, f.veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.advance(hours=2)  # December on every clock: its one charge was refunded
    view = ledger.account(user)
    assert (view.spent_this_month, view.spend_remaining) == (0, 500)


def test_a_reason_of_the_most_characters_is_kept_and_one_more_is_refused(ledger: Ledger) -> None:
    """A reason may be 500 characters (not bytes: these take two each): an adjustment's
    and a reversal's entry keep it whole as their memo, a settings change keeps it, and
    a revocation's memo, which names the grant before it, is cut to the 500 a memo
    holds. One character more is refused, and changes nothing."""
    acme = wallet(ledger, "acme")
    most, beyond = "\u00e9" * 500, "\u00e9" * 501
    ledger.top_up(acme, 100, kind="promo", idempotency_key=key())
    before = snapshot(ledger, acme)
    grant = ledger.account(acme).grants[0].id
    refused: list[Callable[[str], object]] = [
        lambda why: ledger.adjust(acme, 5, reason=why, idempotency_key=key()),
        lambda why: ledger.update_account(
            acme, overdraft_limit=10, reason=why, idempotency_key=key()
        ),
        lambda why: ledger.revoke_grant(grant, reason=why, idempotency_key=key()),
    ]
    for use_case in refused:
        with pytest.raises(InvalidInput) as info:
            use_case(beyond)
        assert info.value.field == "reason"
    assert snapshot(ledger, acme) == before
    adjusted = ledger.adjust(acme, 5, reason=most, idempotency_key=key())
    assert adjusted.entry.memo == most
    ledger.update_account(acme, overdraft_limit=10, reason=most, idempotency_key=key())
    assert ledger.account_changes(acme).items[0].reason == most
    with pytest.raises(InvalidInput):
        ledger.reverse(adjusted.entry.id, reason=beyond, idempotency_key=key())
    assert ledger.reverse(adjusted.entry.id, reason=most, idempotency_key=key()).entry.memo == most
    revoked = ledger.revoke_grant(grant, reason=most, idempotency_key=key())
    assert revoked.entry.memo == f"grant {grant} revoked: {most}"[:500]
    assert len(revoked.entry.memo) == 500
    assert [e.memo for e in ledger.entries(acme, limit=3).items] == [
        revoked.entry.memo,
        most,
        most,
    ]
