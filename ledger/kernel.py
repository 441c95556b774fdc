"""The accounting rules, as pure functions (no database): postings, grants, balances.

Invariants the use cases keep, and ``verify()`` checks:

* each entry has two or more postings that sum to zero per unit;
* an account's ``balance`` is the sum of its postings; its ``pending`` the sum of its
  open holds; available = balance - pending + overdraft_limit;
* the credits remaining in a wallet's grants add up to ``max(balance, 0)``: credits
  first repay debt, debits burn grants, and whatever the grants cannot cover is debt.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, available_timezones

from ledger.errors import BalanceOverflow, UnbalancedEntry

MAX_AMOUNT = 2**63 - 1


def utc_text(value: datetime) -> str:
    """An aware instant as the API writes instants: ISO 8601 in UTC, ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Leg:
    """One posting to be written: a signed amount of minor units on an account."""

    account_id: int
    unit: str
    amount: int


def check_balanced(legs: Sequence[Leg]) -> None:
    """Refuse an entry that is not two or more non-zero legs summing to zero per unit."""
    if len(legs) < 2:
        raise UnbalancedEntry("an entry needs two or more postings")
    sums: dict[str, int] = defaultdict(int)
    for leg in legs:
        if leg.amount == 0:
            raise UnbalancedEntry("a posting of zero")
        if abs(leg.amount) > MAX_AMOUNT:
            raise UnbalancedEntry("a posting beyond 64 bits")
        sums[leg.unit] += leg.amount
    unbalanced = {unit: total for unit, total in sums.items() if total != 0}
    if unbalanced:
        raise UnbalancedEntry(f"postings do not sum to zero: {unbalanced}")


def transfer(debit: int, credit: int, unit: str, amount: int) -> list[Leg]:
    """Move ``amount`` from account ``debit`` to account ``credit``."""
    legs = [Leg(debit, unit, -amount), Leg(credit, unit, amount)]
    check_balanced(legs)
    return legs


def reversal(legs: Sequence[Leg], wallet: int, expired: int, gone: int = 0) -> list[Leg]:
    """The legs of the entry that reverses one of ``legs``: each negated, except for the
    ``gone`` credits it gave ``wallet`` that have left the wallet since by expiring (or
    being revoked) to the expired-credits account ``expired``. Those come back from that
    account, not from the wallet a second time: a top-up whose credits all expired takes
    nothing more from its wallet when it is reversed, and one partly spent takes back
    only what was spent."""
    negated = [Leg(leg.account_id, leg.unit, -leg.amount) for leg in legs]
    if gone == 0:
        check_balanced(negated)
        return negated
    credited = sum(leg.amount for leg in legs if leg.account_id == wallet)
    if not 0 < gone <= credited:
        raise UnbalancedEntry(f"{gone} credits gone of the {credited} the entry gave its wallet")
    unit = next(leg.unit for leg in legs if leg.account_id == wallet)
    moved = [*negated, Leg(wallet, unit, gone), Leg(expired, unit, -gone)]
    merged: dict[tuple[int, str], int] = {}
    for leg in moved:
        merged[(leg.account_id, leg.unit)] = merged.get((leg.account_id, leg.unit), 0) + leg.amount
    out = [Leg(account, unit, amount) for (account, unit), amount in merged.items() if amount]
    check_balanced(out)
    return out


#: A lone surrogate: half of a UTF-16 pair, no character. JSON can give one (``"\ud800"``)
#: and Python reads one from bytes that are not UTF-8 (a command's arguments); no UTF-8
#: encodes it, so neither database can take it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why no database can store or compare ``text``, or None: NUL (PostgreSQL refuses
    it, so SQLite is refused it alike) or a lone surrogate."""
    if "\x00" in text:
        return "must not contain NUL (U+0000)"
    if not text.isascii() and _SURROGATE.search(text):
        return "must be Unicode: a lone surrogate (U+D800 to U+DFFF) is no character"
    return None


#: Unicode categories an account id may not contain: controls (NUL, tab, newline...),
#: invisible formatting (bidirectional overrides, zero-width characters) and line breaks.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def account_id_problem(account_id: str) -> str | None:
    """What is wrong with ``account_id`` as a new wallet's id, or None.

    The id is one segment of the API's paths (``/v1/accounts/{id}``), so it holds no
    ``/`` and is not ``.`` or ``..`` (which clients resolve as path steps): a wallet one
    could open but never address is refused up front. Ids that print alike must be
    alike: no surrounding white space, no invisible characters.
    """
    if account_id.startswith("system:"):
        return "account ids starting with 'system:' are reserved"
    if "/" in account_id or account_id in (".", ".."):
        return "an account id is one path segment: no '/', and not '.' or '..'"
    if account_id != account_id.strip():
        return "an account id may not start or end with white space"
    if any(unicodedata.category(ch) in _INVISIBLE for ch in account_id):
        return "an account id may not contain control or invisible formatting characters"
    return None


def in_utc_range(instant: datetime) -> bool:
    """Whether an aware instant is a datetime in UTC too (its offset may push it past the
    years 1 to 9999)."""
    try:
        instant.astimezone(UTC)
    except OverflowError:
        return False
    return True


@cache
def _zone_names() -> frozenset[str]:
    # ``localtime`` is whatever zone the machine is set to: a wallet's months (and its
    # allocations) would move with the server. ``right/...`` zones count leap seconds.
    return frozenset(available_timezones() - {"localtime"})


@cache
def _zones_by_folded_name() -> dict[str, str]:
    """Each zone under its name case-folded, for a name given in the wrong case."""
    return {name.casefold(): name for name in _zone_names()}


def timezone_problem(timezone: object) -> str | None:
    """What is wrong with ``timezone`` as the zone of a wallet's or a report's days, or None.

    It must be an IANA name (``Europe/Berlin``, ``UTC``) from the timezone database: names
    the loader would also open but that mean different things on different machines
    (``localtime``) or that are no zone (a path) are refused. A name in the wrong case
    (``utc``) is refused too, naming the zone it differs from only by case.
    """
    if isinstance(timezone, str) and timezone in _zone_names():
        return None
    meant = _zones_by_folded_name().get(timezone.casefold()) if isinstance(timezone, str) else None
    if meant is not None:
        return (
            f"unknown timezone {timezone!r}: IANA names are case-sensitive; did you mean {meant!r}?"
        )
    return f"unknown timezone {timezone!r}: use an IANA name such as Europe/Berlin"


def available(balance: int, pending: int, overdraft_limit: int) -> int:
    """What a new authorization may reserve."""
    return balance - pending + overdraft_limit


def check_room(balance: int, overdraft_limit: int, amount: int) -> None:
    """Refuse credits that would take a wallet's available balance beyond 64 bits.

    ``balance + overdraft_limit`` bounds what the wallet may ever reserve or report as
    available; kept within :data:`MAX_AMOUNT`, every amount the ledger answers with fits
    the signed 64-bit integers clients parse it into.
    """
    room = MAX_AMOUNT - overdraft_limit - balance
    if amount > 0 and amount > room:
        raise BalanceOverflow(
            f"crediting {amount} would take the wallet past the largest balance the ledger "
            f"keeps: balance plus overdraft limit ({overdraft_limit}) may be at most "
            f"{MAX_AMOUNT}, and this wallet has room for {max(room, 0)}",
            allowed={"max": max(room, 0)},
        )


def check_overdraft_limit(balance: int, overdraft_limit: int) -> None:
    """Refuse an overdraft limit that would take ``balance + overdraft_limit`` (what the
    wallet may report as available) beyond 64 bits, as :func:`check_room` does for
    credits."""
    room = MAX_AMOUNT - balance
    if overdraft_limit > room:
        raise BalanceOverflow(
            f"balance plus overdraft limit may be at most {MAX_AMOUNT}: this wallet's limit "
            f"may be at most {room}",
            field="overdraft_limit",
            allowed={"max": room},
        )


def debt(balance: int, overdraft_limit: int) -> int:
    """Minor units posted beyond the overdraft limit (from capture overage)."""
    return max(0, -(balance + overdraft_limit))


@dataclass(frozen=True, slots=True)
class GrantState:
    """The part of a grant that decides burn order."""

    id: str
    remaining: int
    priority: int
    expires_at: datetime | None
    effective_at: datetime


def burn_order(grant: GrantState) -> tuple[int, int, datetime, datetime, str]:
    """Lower priority first, then soonest expiry (never-expiring last), then oldest."""
    never = grant.expires_at is None
    expiry = grant.expires_at or grant.effective_at
    return (grant.priority, 1 if never else 0, expiry, grant.effective_at, grant.id)


def plan_debit(grants: Iterable[GrantState], amount: int) -> list[tuple[str, int]]:
    """(grant id, credits taken) to spend ``amount``, in burn order.

    Takes at most what the grants hold; the rest of ``amount`` is not covered by credits
    (the wallet's balance goes below zero: overdraft or debt).
    """
    plan: list[tuple[str, int]] = []
    left = amount
    for grant in sorted(grants, key=burn_order):
        if left <= 0:
            break
        take = min(grant.remaining, left)
        if take > 0:
            plan.append((grant.id, take))
            left -= take
    return plan


@dataclass(frozen=True, slots=True)
class CreditPlan:
    """How credits entering a wallet are placed."""

    #: Repays the part of the balance below zero first.
    repaid: int
    #: (grant id, credits restored) back into grants an earlier debit burned.
    restores: list[tuple[str, int]]
    #: Credits for a new grant (0: none).
    new_grant: int


def plan_credit(
    balance_before: int, amount: int, restorable: Sequence[tuple[str, int]] = ()
) -> CreditPlan:
    """Place ``amount`` credits: repay debt, then restore burned grants, then a new grant.

    ``restorable`` lists (grant id, at most) in the order they should be refilled.
    """
    repaid = min(amount, max(0, -balance_before))
    left = amount - repaid
    restores: list[tuple[str, int]] = []
    for grant_id, most in restorable:
        if left <= 0:
            break
        give = min(most, left)
        if give > 0:
            restores.append((grant_id, give))
            left -= give
    return CreditPlan(repaid, restores, left)


def exact_seconds(micros: int) -> Decimal:
    """Whole microseconds as seconds in their shortest exact form: 12500000 -> 12.5."""
    number = Decimal(int(micros)).scaleb(-6)
    return Decimal(format(number.normalize(), "f")) if number else Decimal(0)


# ------------------------------------------------------------------------------- periods


def period_of(instant: datetime, timezone: str) -> str:
    """The allocation period ("2026-11") an instant falls in, in ``timezone``."""
    local = instant.astimezone(ZoneInfo(timezone))
    return f"{local.year:04d}-{local.month:02d}"


def period_bounds(period: str, timezone: str) -> tuple[datetime, datetime]:
    """[start, end) of a period in UTC: local midnights of its first and next month."""
    year, month = (int(part) for part in period.split("-"))
    zone = ZoneInfo(timezone)
    start = datetime(year, month, 1, tzinfo=zone)
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    end = datetime(next_year, next_month, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def period_days(period: str) -> tuple[str, str]:
    """The local dates of a period's first day and of the next period's first day, as the
    daily rollups name days: a period's days are ``first <= day < after``."""
    year, month = (int(part) for part in period.split("-"))
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return f"{year:04d}-{month:02d}-01", f"{next_year:04d}-{next_month:02d}-01"


def day_of(instant: datetime, timezone: str) -> str:
    """The local date ("2026-11-21") of an instant, for daily rollups."""
    return instant.astimezone(ZoneInfo(timezone)).date().isoformat()


def day_cut(instant: datetime, timezone: str) -> tuple[str, datetime] | None:
    """A local date no later than the instant's and the instant it begins at, such that
    every instant before that one falls on an earlier date and every instant from it on
    on that date or a later one: the daily rollups of the dates before it hold exactly
    what was posted before it. The instant's own date, unless the zone's offset changes
    near its start (where a date may begin twice, or not at midnight): then an earlier
    one. None when none of the week before will do (or the calendar begins).
    """
    try:
        local = instant.astimezone(ZoneInfo(timezone)).date()
        for back in range(8):
            day = local - timedelta(days=back)
            start = _clean_start(day, timezone)
            if start is not None and start <= instant:
                return day.isoformat(), start
    except OverflowError:  # the first days of the calendar: no date before to sum
        pass
    return None


#: How far around a date's start the zone's offset must stay the same for the start to
#: divide the instants cleanly: beyond it, no two offsets of a zone (-12 h to +14 h
#: today) differ enough for an instant to fall on the wrong side.
_STEADY = timedelta(hours=27)


@lru_cache(maxsize=4096)
def _clean_start(day: date, timezone: str) -> datetime | None:
    """The instant local ``day`` begins at, if the zone's offset is the same for 27 hours
    either side (probed every half hour; none of its changes is shorter); else None."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    probes = range(-_STEADY // timedelta(minutes=30), _STEADY // timedelta(minutes=30) + 1)
    offsets = {(start + k * timedelta(minutes=30)).astimezone(zone).utcoffset() for k in probes}
    return start if len(offsets) == 1 else None
