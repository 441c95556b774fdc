"""Blocked wallets: ``accounts.blocked``, and ``blocked`` among the settings whose changes
are kept.

An admin blocks a wallet (abuse, a chargeback, an unpaid invoice) with ``PATCH
/v1/accounts/{id} {"blocked": true}``: new authorizations and charges are refused, what
it already holds can still be captured or voided. The change is kept in
``account_changes`` like the others, with 0 and 1 for false and true.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_account_changes_setting"
_BEFORE = "setting IN ('overdraft_limit', 'monthly_allocation')"
_AFTER = "setting IN ('overdraft_limit', 'monthly_allocation', 'blocked')"


def _setting_check(condition: str) -> None:
    # SQLite changes a CHECK by copying the table (account_changes has no triggers).
    with op.batch_alter_table("account_changes") as batch:
        batch.drop_constraint(_CHECK, type_="check")
        batch.create_check_constraint(_CHECK, condition)


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    _setting_check(_AFTER)


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    n = int(conn.execute(sa.text("SELECT count(*) FROM accounts WHERE blocked")).scalar_one())
    changes = int(
        conn.execute(
            sa.text("SELECT count(*) FROM account_changes WHERE setting = 'blocked'")
        ).scalar_one()
    )
    said = []
    if n:
        said.append(f"{n} blocked wallet(s) are open again: nothing refuses their requests")
    if changes:
        said.append(f"the history of {changes} block(s) and unblock(s) is deleted")
    return "; ".join(said) or None


def downgrade() -> None:
    op.execute("DELETE FROM account_changes WHERE setting = 'blocked'")
    _setting_check(_BEFORE)
    # Not by copying the table: that would drop SQLite's triggers on accounts (0006).
    # SQLite drops a plain column in place since 3.35.
    op.execute("ALTER TABLE accounts DROP COLUMN blocked")
