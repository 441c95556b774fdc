"""Who did it: ``entries.actor`` and ``account_changes.actor``.

Each journal entry and each change of a wallet's settings names what made it: the API
key of the caller (``key:<id>``; ``key:environment`` for CREDITLEDGER_ADMIN_KEY), the CLI
and the system user running it (``cli:<user>``), or the ledger itself (``system``: expiries
and monthly allocations). Rows written before this revision have none (null).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("entries", "account_changes")


def upgrade() -> None:
    # In place on both databases (ALTER TABLE ... ADD COLUMN): copying entries would
    # drop SQLite's triggers that keep the journal immutable.
    for table in _TABLES:
        op.add_column(table, sa.Column("actor", sa.String(length=80), nullable=True))


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    counts = [
        int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE actor IS NOT NULL")
            ).scalar_one()
        )
        for table in _TABLES
    ]
    n = sum(counts)
    return f"who made {n} journal entries and settings changes is forgotten" if n else None


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN actor")
