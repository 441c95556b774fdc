"""An index of the grants yet to expire, by their expiry: what the sweeper looks for.

Each round of the grant sweeper (every ``CREDITLEDGER_SWEEP_INTERVAL_SECONDS``) asked
which wallets hold a grant past its expiry with credits left, and found them by reading
the index of every grant ever made (230 ms a round on SQLite with a million grants: a
year of monthly allocations for 100,000 wallets), however few were due. This index holds
only the grants with credits left that expire at all, a few per wallet, ordered by
expiry: a round reads those due and no more. Grants that never expire are not in it, so
spending them costs it nothing.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "remaining > 0 AND expires_at IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_grants_expiring",
        "grants",
        ["expires_at"],
        sqlite_where=sa.text(WHERE),
        postgresql_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_grants_expiring", table_name="grants")
