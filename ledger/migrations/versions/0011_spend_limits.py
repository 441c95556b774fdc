"""Monthly spend limits: ``accounts.monthly_spend_limit``, and the setting among those
whose changes are kept.

A wallet may be limited to spending so much per period (its calendar month, in its
timezone): what captures and charges debited this period plus its open holds. An
authorization or charge that would pass it is refused (402 ``spend_limit_reached``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_account_changes_setting"
_BEFORE = "setting IN ('overdraft_limit', 'monthly_allocation', 'blocked')"
_AFTER = "setting IN ('overdraft_limit', 'monthly_allocation', 'blocked', 'monthly_spend_limit')"


def _setting_check(condition: str) -> None:
    # SQLite changes a CHECK by copying the table (account_changes has no triggers).
    with op.batch_alter_table("account_changes") as batch:
        batch.drop_constraint(_CHECK, type_="check")
        batch.create_check_constraint(_CHECK, condition)


def upgrade() -> None:
    # The column with its own CHECK, in place on both databases: copying accounts would
    # drop SQLite's triggers on it (0006).
    op.execute(
        "ALTER TABLE accounts ADD COLUMN monthly_spend_limit BIGINT "
        "CONSTRAINT ck_accounts_spend_limit "
        "CHECK (monthly_spend_limit IS NULL OR monthly_spend_limit >= 0)"
    )
    _setting_check(_AFTER)


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    n = int(
        conn.execute(
            sa.text("SELECT count(*) FROM accounts WHERE monthly_spend_limit IS NOT NULL")
        ).scalar_one()
    )
    changes = int(
        conn.execute(
            sa.text("SELECT count(*) FROM account_changes WHERE setting = 'monthly_spend_limit'")
        ).scalar_one()
    )
    said = []
    if n:
        said.append(f"{n} wallet(s) lose their monthly spend limit")
    if changes:
        said.append(f"the history of {changes} change(s) of spend limits is deleted")
    return "; ".join(said) or None


def downgrade() -> None:
    op.execute("DELETE FROM account_changes WHERE setting = 'monthly_spend_limit'")
    _setting_check(_BEFORE)
    # SQLite drops a column whose only CHECK is its own in place (since 3.35).
    op.execute("ALTER TABLE accounts DROP COLUMN monthly_spend_limit")
