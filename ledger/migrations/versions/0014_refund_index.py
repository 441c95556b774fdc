"""An index of each wallet's reversals, for the spend its refunds gave back.

A wallet's spend this period counts only refunds of the period's own captures and
charges, read from the journal: its reversals posted in the period, each joined to the
entry it reverses. By ``ix_entries_account_posted`` that read would step over every entry
the wallet posted in the period, a busy wallet's tens of thousands, on each authorization
and charge under a spend limit. This partial index holds reversals only (refunds and
take-backs are rare), so the read touches those alone; other entries write no key to it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVERSAL = "kind = 'reversal'"


def upgrade() -> None:
    op.create_index(
        "ix_entries_account_reversals",
        "entries",
        ["account_id", "posted_at"],
        sqlite_where=sa.text(REVERSAL),
        postgresql_where=sa.text(REVERSAL),
    )


def downgrade() -> None:
    op.drop_index("ix_entries_account_reversals", table_name="entries")
