"""SQLite: refuse a running sum that leaves 64 bits, as PostgreSQL does.

Balances, pending amounts, grants' remainders and the daily rollups are kept as running
sums (``balance = balance + :delta``). PostgreSQL fails such an UPDATE with ``bigint out
of range``. SQLite instead stores the sum as a REAL, an inexact float: the balance
silently stops being the sum of its postings, and credits are created or lost. These
triggers fail the statement instead, with a message starting ``amount_overflow`` (the
ledger tells it apart by that), so the transaction rolls back with nothing changed.

Nothing to add on PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The running sums, by table. The tag is ``ledger.db.OVERFLOW_TAG`` (a migration does
#: not import the application, which goes on changing after it).
_SUMS = {
    "accounts": ("balance", "pending"),
    "grants": ("remaining",),
    "daily_usage": (
        "requests",
        "amount",
        "input_tokens",
        "output_tokens",
        "images",
        "videos",
        "candidates",
    ),
    "daily_flows": ("credits", "debits", "entries"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns in _SUMS.items():
        beyond = " OR ".join(f"typeof(NEW.{c}) <> 'integer'" for c in columns)
        op.execute(
            f"""
            CREATE TRIGGER {table}_int64 AFTER UPDATE OF {", ".join(columns)} ON {table}
            WHEN {beyond}
            BEGIN
              SELECT RAISE(ABORT, 'amount_overflow: a sum in {table} beyond 64 bits');
            END
            """
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _SUMS:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_int64")
