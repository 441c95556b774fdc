"""verify(): check every invariant of the ledger over the whole database.

Returns one :class:`~ledger.results.Violation` per broken invariant (an empty list when the
books are sound). Used by the tests, by ``creditledger verify`` and by reports.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import kernel
from ledger.db import Database
from ledger.models import (
    QUANTITY_COLUMNS,
    WALLET,
    accounts,
    daily,
    entries,
    entry_flow,
    flows,
    grants,
    holds,
    metering,
    movements,
    postings,
    seconds_micros,
    wide,
    wide_sum,
)
from ledger.results import Violation


def verify(db: Database) -> list[Violation]:
    """Every violated invariant, in one consistent read of the database."""
    with db.snapshot() as conn:
        found: list[Violation] = []
        for check in CHECKS:
            found.extend(check(conn))
        return found


def _v(check: str, detail: str) -> Violation:
    return Violation(check=check, detail=detail)


def _entries_balanced(conn: Connection) -> list[Violation]:
    out = [
        _v("entry_balanced", f"entry {r.entry_id} {r.unit} sums to {r.total}")
        for r in conn.execute(
            sa.select(
                postings.c.entry_id, postings.c.unit, sa.func.sum(postings.c.amount).label("total")
            )
            .group_by(postings.c.entry_id, postings.c.unit)
            .having(sa.func.sum(postings.c.amount) != 0)
        )
    ]
    counts = (
        sa.select(postings.c.entry_id, sa.func.count().label("n"))
        .group_by(postings.c.entry_id)
        .subquery()
    )
    out += [
        _v("entry_postings", f"entry {r.id} has {r.n or 0} posting(s)")
        for r in conn.execute(
            sa.select(entries.c.id, counts.c.n)
            .outerjoin(counts, counts.c.entry_id == entries.c.id)
            .where(sa.or_(counts.c.n.is_(None), counts.c.n < 2))
        )
    ]
    out += [
        _v("posting_entry", f"posting {r.id} belongs to no entry")
        for r in conn.execute(
            sa.select(postings.c.id)
            .outerjoin(entries, entries.c.id == postings.c.entry_id)
            .where(entries.c.id.is_(None))
        )
    ]
    out += [
        _v("posting_unit", f"posting {r.id} is in {r.unit}, its account in {r.account_unit}")
        for r in conn.execute(
            sa.select(postings.c.id, postings.c.unit, accounts.c.unit.label("account_unit"))
            .join(accounts, accounts.c.id == postings.c.account_id)
            .where(postings.c.unit != accounts.c.unit)
        )
    ]
    return out


def _balances(conn: Connection) -> list[Violation]:
    sums = (
        sa.select(postings.c.account_id, *wide_sum(postings.c.amount, "posted"))
        .group_by(postings.c.account_id)
        .subquery()
    )
    open_holds = (
        sa.select(holds.c.account_id, sa.func.sum(holds.c.amount).label("total"))
        .where(holds.c.status == "pending")
        .group_by(holds.c.account_id)
        .subquery()
    )
    out: list[Violation] = []
    rows = conn.execute(
        sa.select(
            accounts.c.external_id,
            accounts.c.balance,
            accounts.c.pending,
            accounts.c.overdraft_limit,
            sums.c.posted_hi,
            sums.c.posted_lo,
            open_holds.c.total.label("held"),
        )
        .outerjoin(sums, sums.c.account_id == accounts.c.id)
        .outerjoin(open_holds, open_holds.c.account_id == accounts.c.id)
    )
    for r in rows:
        posted = wide(r, "posted")
        if r.balance != posted:
            out.append(
                _v(
                    "account_balance",
                    f"{r.external_id}: balance {r.balance}, postings sum to {posted}",
                )
            )
        if r.pending != (r.held or 0):
            out.append(
                _v(
                    "account_pending",
                    f"{r.external_id}: pending {r.pending}, open holds sum to {r.held or 0}",
                )
            )
        if r.balance + r.overdraft_limit > kernel.MAX_AMOUNT:  # Python's ints: exact
            out.append(
                _v(
                    "account_room",
                    f"{r.external_id}: balance {r.balance} plus overdraft limit "
                    f"{r.overdraft_limit} passes {kernel.MAX_AMOUNT}, the most it may report "
                    "as available",
                )
            )
    return out


def _grants(conn: Connection) -> list[Violation]:
    out: list[Violation] = []
    moved = (
        sa.select(movements.c.grant_id, *wide_sum(movements.c.amount, "total"))
        .group_by(movements.c.grant_id)
        .subquery()
    )
    for r in conn.execute(
        sa.select(grants.c.id, grants.c.remaining, moved.c.total_hi, moved.c.total_lo).outerjoin(
            moved, moved.c.grant_id == grants.c.id
        )
    ):
        total = wide(r, "total")
        if r.remaining != total:
            out.append(
                _v(
                    "grant_movements",
                    f"grant {r.id}: remaining {r.remaining}, movements sum to {total}",
                )
            )
    remaining = (
        sa.select(grants.c.account_id, *wide_sum(grants.c.remaining, "held"))
        .group_by(grants.c.account_id)
        .subquery()
    )
    for w in conn.execute(
        sa.select(
            accounts.c.external_id, accounts.c.balance, remaining.c.held_hi, remaining.c.held_lo
        )
        .outerjoin(remaining, remaining.c.account_id == accounts.c.id)
        .where(accounts.c.kind == WALLET)
    ):
        expected, held = max(int(w.balance), 0), wide(w, "held")
        if held != expected:
            out.append(
                _v(
                    "wallet_grants",
                    f"{w.external_id}: grants hold {held}, balance above zero is {expected}",
                )
            )
    return out


def _holds(conn: Connection) -> list[Violation]:
    out: list[Violation] = []
    for r in conn.execute(
        sa.select(holds).where(
            sa.or_(
                sa.and_(holds.c.status != "pending", holds.c.resolved_at.is_(None)),
                sa.and_(holds.c.status == "pending", holds.c.resolved_at.is_not(None)),
                sa.and_(holds.c.status == "captured", holds.c.captured.is_(None)),
                sa.and_(holds.c.status != "captured", holds.c.captured.is_not(None)),
            )
        )
    ):
        out.append(
            _v(
                "hold_state",
                f"hold {r.id}: status {r.status} with resolved_at "
                f"{r.resolved_at} and captured {r.captured}",
            )
        )
    captured_sum = (
        sa.select(postings.c.entry_id, sa.func.sum(postings.c.amount).label("total"))
        .where(postings.c.amount > 0)
        .group_by(postings.c.entry_id)
        .subquery()
    )
    for r in conn.execute(
        sa.select(holds.c.id, holds.c.captured, captured_sum.c.total)
        .outerjoin(captured_sum, captured_sum.c.entry_id == holds.c.entry_id)
        .where(holds.c.status == "captured")
    ):
        if (r.total or 0) != r.captured:
            out.append(
                _v(
                    "hold_capture",
                    f"hold {r.id}: captured {r.captured}, entry moved {r.total or 0}",
                )
            )
    for r in conn.execute(
        sa.select(
            holds.c.id,
            holds.c.status,
            metering.c.status.label("metered"),
            holds.c.captured,
            metering.c.charged,
        ).join(metering, metering.c.id == holds.c.metering_id)
    ):
        expected = {"pending": "pending", "voided": "voided", "expired": "expired"}.get(r.status)
        if expected is not None and r.metered != expected:
            out.append(
                _v("metering_status", f"hold {r.id} is {r.status}, its metering record {r.metered}")
            )
        if r.status == "captured" and r.charged != r.captured:
            out.append(
                _v("metering_charged", f"hold {r.id}: captured {r.captured}, metered {r.charged}")
            )
    return out


#: What a daily rollup sums of its metering records besides their number: the amount
#: charged and every quantity (video seconds as whole microseconds).
_ROLLED = ("amount", *QUANTITY_COLUMNS, "seconds_us")


def _rolled_sums(table: sa.Table, amount: str) -> list[sa.Label[Any]]:
    columns: list[sa.ColumnElement[Any]] = [
        table.c[amount],
        *(table.c[q] for q in QUANTITY_COLUMNS),
        seconds_micros(table.c.seconds).element,
    ]
    return [
        part
        for name, column in zip(_ROLLED, columns, strict=True)
        for part in wide_sum(column, name)
    ]


def _rollups(conn: Connection) -> list[Violation]:
    """Each rollup, over its days, is the sum of its completed metering records: their
    number, the amount charged and every quantity (what the reports read)."""
    keys = [metering.c.account_id, metering.c.catalog, metering.c.operation, metering.c.model]
    metered = {
        tuple(r[:4]): (int(r.requests), *(wide(r, name) for name in _ROLLED))
        for r in conn.execute(
            sa.select(*keys, sa.func.count().label("requests"), *_rolled_sums(metering, "charged"))
            .where(
                metering.c.completed_at.is_not(None),
                metering.c.status.not_in(["voided", "expired"]),
            )
            .group_by(*keys)
        )
    }
    rolled = {
        tuple(r[:4]): (wide(r, "requests"), *(wide(r, name) for name in _ROLLED))
        for r in conn.execute(
            sa.select(
                daily.c.account_id,
                daily.c.catalog,
                daily.c.operation,
                daily.c.model,
                *wide_sum(daily.c.requests, "requests"),
                *_rolled_sums(daily, "amount"),
            ).group_by(daily.c.account_id, daily.c.catalog, daily.c.operation, daily.c.model)
        )
    }
    out: list[Violation] = []
    for key in sorted(set(metered) | set(rolled), key=str):
        if metered.get(key) != rolled.get(key):
            out.append(
                _v("daily_rollup", f"{key}: metering {metered.get(key)}, rollup {rolled.get(key)}")
            )
    return out


def _reversals(conn: Connection) -> list[Violation]:
    target = entries.alias("target")
    out: list[Violation] = []
    for r in conn.execute(
        sa.select(
            entries.c.id,
            entries.c.reverses_id,
            target.c.account_id.label("target_account"),
            entries.c.account_id,
        ).join(target, target.c.id == entries.c.reverses_id)
    ):
        if r.target_account != r.account_id:
            out.append(
                _v("reversal_account", f"reversal {r.id} is on another wallet than {r.reverses_id}")
            )
    return out


def _takebacks(conn: Connection) -> list[Violation]:
    """A reversal of an entry that made a grant (a top-up, an adjustment) takes from the
    wallet what the entry gave it, less what of the grant expired or was revoked before:
    those credits left the wallet once already."""
    original, expiry = entries.alias("original"), entries.alias("expiry")

    def on_wallet(entry: sa.ColumnElement[Any], wallet: sa.ColumnElement[Any]) -> Any:
        return (
            sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0))
            .where(postings.c.entry_id == entry, postings.c.account_id == wallet)
            .scalar_subquery()
        )

    gone = (
        sa.select(sa.func.coalesce(sa.func.sum(movements.c.amount), 0))
        .join(expiry, expiry.c.id == movements.c.entry_id)
        .where(movements.c.grant_id == grants.c.id, expiry.c.kind == "expiry")
        .scalar_subquery()
    )
    out: list[Violation] = []
    for r in conn.execute(
        sa.select(
            entries.c.id,
            entries.c.reverses_id,
            on_wallet(entries.c.id, entries.c.account_id).label("taken"),
            on_wallet(original.c.id, original.c.account_id).label("given"),
            gone.label("gone"),
        )
        .join(original, original.c.id == entries.c.reverses_id)
        .join(grants, grants.c.entry_id == original.c.id)
    ):
        given, expired = int(r.given), -int(r.gone)
        if int(r.taken) != -(given - expired):
            out.append(
                _v(
                    "reversal_takeback",
                    f"reversal {r.id} moved {int(r.taken)} on the wallet; {r.reverses_id} gave "
                    f"{given}, of which {expired} expired before: {expired - given} expected",
                )
            )
    return out


def _reversed_grants(conn: Connection) -> list[Violation]:
    """A grant whose top-up or adjustment was reversed gave up its credits then, and holds
    none after: a refund of what it paid for comes back in a grant of its own (put back
    into the reversed grant, it would expire with it)."""
    reversal = entries.alias("reversal")
    return [
        _v(
            "reversed_grant",
            f"grant {r.id} holds {r.remaining}, although {r.reversal} reversed its "
            f"entry {r.entry_id}",
        )
        for r in conn.execute(
            sa.select(
                grants.c.id,
                grants.c.remaining,
                grants.c.entry_id,
                reversal.c.id.label("reversal"),
            )
            .join(reversal, reversal.c.reverses_id == grants.c.entry_id)
            .where(grants.c.remaining != 0)
        )
    ]


def _flows(conn: Connection) -> list[Violation]:
    """The journal rollup holds each wallet's credits and debits per flow."""
    flow = entry_flow()
    journal = {
        (r.account_id, r.flow): (wide(r, "credits"), wide(r, "debits"))
        for r in conn.execute(
            sa.select(
                postings.c.account_id,
                flow.label("flow"),
                *wide_sum(sa.case((postings.c.amount > 0, postings.c.amount), else_=0), "credits"),
                *wide_sum(sa.case((postings.c.amount < 0, -postings.c.amount), else_=0), "debits"),
            )
            .join(entries, entries.c.id == postings.c.entry_id)
            .join(accounts, accounts.c.id == postings.c.account_id)
            .where(accounts.c.kind == WALLET)
            .group_by(postings.c.account_id, flow)
        )
    }
    rolled = {
        (r.account_id, r.flow): (wide(r, "credits"), wide(r, "debits"))
        for r in conn.execute(
            sa.select(
                flows.c.account_id,
                flows.c.flow,
                *wide_sum(flows.c.credits, "credits"),
                *wide_sum(flows.c.debits, "debits"),
            ).group_by(flows.c.account_id, flows.c.flow)
        )
    }
    return [
        _v("daily_flows", f"{key}: journal {journal.get(key)}, rollup {rolled.get(key)}")
        for key in sorted(set(journal) | set(rolled), key=str)
        if journal.get(key, (0, 0)) != rolled.get(key, (0, 0))
    ]


CHECKS: list[Any] = [
    _entries_balanced,
    _balances,
    _grants,
    _holds,
    _rollups,
    _flows,
    _reversals,
    _takebacks,
    _reversed_grants,
]
