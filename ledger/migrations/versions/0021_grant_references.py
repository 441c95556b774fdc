"""An index of grants by their ``reference``: the top-ups of one payment, found from it.

A top-up's ``reference`` (an invoice number, a payment provider's id) was kept on its
grant, and in its entry's memo, but nothing found the entries by it: finance matching a
payment, a refund or a chargeback to the ledger read every top-up in a window. The entry
listings now take ``reference=`` (the top-ups that carry it, and their reversals), read
from this index. Partial: grants without a reference (allocations, adjustments) write no
key to it.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "reference IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_grants_reference",
        "grants",
        ["reference"],
        sqlite_where=sa.text(WHERE),
        postgresql_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_grants_reference", table_name="grants")
