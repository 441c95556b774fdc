"""The catalog versions in force, as they were: a digest of what each charges.

A catalog version that has taken effect is history: quotes, holds, metering records and
statements name it, and a hold is captured by it. A version changed in place afterwards
(its file edited, keeping its ``id``) would charge pending holds and explain past charges
by prices they were not made at. Each version is now kept, once it is in force, with the
SHA-256 of its content (``pricing.catalog.digest``); catalogs that differ are refused.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 17:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "price_versions",
        sa.Column("catalog", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("catalog", "version"),
    )


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    n = int(conn.execute(sa.text("SELECT count(*) FROM price_versions")).scalar_one())
    return (
        f"the digests of {n} catalog version(s) in force are dropped: this version keeps "
        "them again as it next writes, from the catalogs it then has"
        if n
        else None
    )


def downgrade() -> None:
    op.drop_table("price_versions")
