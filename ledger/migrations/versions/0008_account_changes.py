"""Wallet settings that change: the history of overdraft limits and monthly allocations.

A wallet's overdraft limit and monthly allocation may now change after it was opened
(``PATCH /v1/accounts/{id}``). Each change is kept as a row, from what to what and why.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account_changes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("setting", sa.String(length=32), nullable=False),
        sa.Column("old_value", sa.BigInteger(), nullable=True),
        sa.Column("new_value", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "setting IN ('overdraft_limit', 'monthly_allocation')",
            name="ck_account_changes_setting",
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_account_changes_account",
        "account_changes",
        ["account_id", "changed_at", "id"],
    )


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    # Changes of the settings later revisions added go with those (0010, 0011).
    n = int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM account_changes "
                "WHERE setting IN ('overdraft_limit', 'monthly_allocation')"
            )
        ).scalar_one()
    )
    return (
        f"the history of {n} change(s) of overdraft limits and allocations is deleted"
        if n
        else None
    )


def downgrade() -> None:
    op.drop_index("ix_account_changes_account", table_name="account_changes")
    op.drop_table("account_changes")
