"""Refunds in the journal rollup: the flow ``refund``.

A reversal of a capture or a charge (a refund) is rolled up in ``daily_flows`` as the flow
``refund`` instead of ``reversal``, so that refunds are told apart from other reversals
in the rollup (the statement shows them; a wallet's spend this period, which first read
them from here, now counts only refunds of the period's own charges, from the journal,
so that a refund makes room in the month of its charge). Existing refunds
move from ``reversal`` to ``refund`` on the day (in the wallet's timezone) they were posted.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 06:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_daily_flows_flow"
_BEFORE = "'pack', 'promo', 'allocation', 'adjustment', 'capture', 'charge', 'expiry', 'reversal'"
_AFTER = f"{_BEFORE}, 'refund'"
#: 0006's guard, which SQLite drops with the table it copies to change a CHECK.
_INT64_TRIGGER = """
    CREATE TRIGGER daily_flows_int64 AFTER UPDATE OF credits, debits, entries ON daily_flows
    WHEN typeof(NEW.credits) <> 'integer' OR typeof(NEW.debits) <> 'integer'
      OR typeof(NEW.entries) <> 'integer'
    BEGIN
      SELECT RAISE(ABORT, 'amount_overflow: a sum in daily_flows beyond 64 bits');
    END
"""


def _flow_check(flows: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS daily_flows_int64")
    with op.batch_alter_table("daily_flows") as batch:
        batch.drop_constraint(_CHECK, type_="check")
        batch.create_check_constraint(_CHECK, f"flow IN ({flows})")
    if sqlite:
        op.execute(_INT64_TRIGGER)


def _move(source: str, target: str, moved: dict[tuple[int, str], list[int]]) -> None:
    """Move credits, debits and entries per (wallet, day) from flow ``source`` to
    ``target``; a ``source`` row left empty is deleted."""
    conn = op.get_bind()
    for (account_id, day), (credits, debits, count) in moved.items():
        values = {"a": account_id, "d": day, "c": credits, "b": debits, "n": count}
        conn.execute(
            sa.text(
                "UPDATE daily_flows SET credits = credits - :c, debits = debits - :b, "
                "entries = entries - :n WHERE account_id = :a AND day = :d "
                f"AND flow = '{source}'"
            ),
            values,
        )
        conn.execute(
            sa.text(
                "INSERT INTO daily_flows (account_id, day, flow, credits, debits, entries) "
                f"VALUES (:a, :d, '{target}', :c, :b, :n) "
                "ON CONFLICT (account_id, day, flow) DO UPDATE SET "
                "credits = daily_flows.credits + excluded.credits, "
                "debits = daily_flows.debits + excluded.debits, "
                "entries = daily_flows.entries + excluded.entries"
            ),
            values,
        )
    op.execute(f"DELETE FROM daily_flows WHERE flow = '{source}' AND entries = 0")


def _refunds() -> dict[tuple[int, str], list[int]]:
    """What refunds credited and debited each wallet per day, and how many there were."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT p.account_id, p.amount, e.posted_at, a.timezone "
            "FROM entries e JOIN entries o ON o.id = e.reverses_id "
            "JOIN postings p ON p.entry_id = e.id AND p.account_id = e.account_id "
            "JOIN accounts a ON a.id = e.account_id "
            "WHERE e.kind = 'reversal' AND o.kind IN ('capture', 'charge')"
        ).columns(posted_at=sa.DateTime())
    )
    totals: dict[tuple[int, str], list[int]] = {}
    for r in rows:
        posted = r.posted_at
        if posted.tzinfo is None:  # SQLite stores the UTC wall time
            posted = posted.replace(tzinfo=ZoneInfo("UTC"))
        day = posted.astimezone(ZoneInfo(r.timezone)).date().isoformat()
        got = totals.setdefault((r.account_id, day), [0, 0, 0])
        got[0 if r.amount > 0 else 1] += abs(int(r.amount))
        got[2] += 1
    return totals


def upgrade() -> None:
    _flow_check(_AFTER)
    _move("reversal", "refund", _refunds())


def downgrade() -> None:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT account_id, day, credits, debits, entries FROM daily_flows "
            "WHERE flow = 'refund'"
        )
    )
    _move("refund", "reversal", {(r[0], r[1]): [r[2], r[3], r[4]] for r in rows})
    _flow_check(_BEFORE)
