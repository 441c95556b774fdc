"""Who made and who revoked each API key: ``api_keys.created_by`` and
``api_keys.revoked_by``.

As ``entries.actor`` names what made each journal entry: the admin key of the caller
(``key:<id>``; ``key:environment`` for CREDITLEDGER_ADMIN_KEY), the CLI and the system user
running it (``cli:<user>``), or the ledger itself (``system``: the admin key a first start
makes). After a key leaked, the keys it made (a way back in) are found by it. Keys made
or revoked before this revision have none (null).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 12:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("created_by", "revoked_by")


def upgrade() -> None:
    for column in _COLUMNS:
        op.add_column("api_keys", sa.Column(column, sa.String(length=80), nullable=True))


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    n = int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM api_keys "
                "WHERE created_by IS NOT NULL OR revoked_by IS NOT NULL"
            )
        ).scalar_one()
    )
    return f"who made or revoked {n} API key(s) is forgotten" if n else None


def downgrade() -> None:
    for column in _COLUMNS:
        op.execute(f"ALTER TABLE api_keys DROP COLUMN {column}")
