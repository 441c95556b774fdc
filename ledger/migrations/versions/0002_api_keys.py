"""API keys: role, the customer's wallet, and a digest of the secret (never the secret).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 10:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(role = 'customer') = (account_id IS NOT NULL)",
            name="ck_api_keys_customer_account",
        ),
        sa.CheckConstraint("role IN ('admin', 'service', 'customer')", name="ck_api_keys_role"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None."""
    n = int(conn.execute(sa.text("SELECT count(*) FROM api_keys")).scalar_one())
    return f"all {n} API key(s) are deleted, the gateway's too" if n else None


def downgrade() -> None:
    op.drop_table("api_keys")
