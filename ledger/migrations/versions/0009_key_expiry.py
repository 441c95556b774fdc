"""API keys may expire: ``expires_at`` (null: never), refused from then on like a revoked key.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    now = datetime.now(UTC)
    expiring = conn.execute(
        sa.text(
            "SELECT expires_at FROM api_keys WHERE revoked_at IS NULL AND expires_at IS NOT NULL"
        ).columns(expires_at=sa.DateTime(timezone=True))
    ).scalars()
    ends = [e if e.tzinfo else e.replace(tzinfo=UTC) for e in expiring]
    expired = sum(1 for e in ends if e <= now)
    said = []
    if len(ends) > expired:
        said.append(f"{len(ends) - expired} API key(s) that have yet to expire never will")
    if expired:
        said.append(f"{expired} that expired are revoked as they expired")
    return "; ".join(said) or None


def downgrade() -> None:
    # A key refused since it expired stays refused: revoked as it expired. (One that has
    # yet to expire no longer will: the older version keeps no expiry.)
    keys = sa.table(
        "api_keys",
        sa.column("id", sa.String),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    conn = op.get_bind()
    now = datetime.now(UTC)
    rows = conn.execute(
        sa.select(keys.c.id, keys.c.expires_at).where(
            keys.c.revoked_at.is_(None), keys.c.expires_at.is_not(None)
        )
    ).all()
    for key_id, expires_at in rows:
        if expires_at.tzinfo is None:  # SQLite gives back the UTC wall time
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            conn.execute(
                keys.update().where(keys.c.id == key_id).values(revoked_at=keys.c.expires_at)
            )
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
