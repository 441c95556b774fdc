"""Partial indexes on holds and metering records: fewer index writes per request.

Each of these indexes served only the rows its queries can match, yet took a key for
every row: the sweeper's ``(status, expires_at)`` a key for every hold ever resolved, and
``resolved_at`` and ``completed_at`` a NULL key for every open hold and metering record.
Every authorization wrote those NULL keys and every capture moved them (and the status
key) elsewhere in the index: pages written to the SQLite WAL, index tuples on PostgreSQL.
The replacements index only the rows their queries read:

* ``ix_holds_pending_expires``: pending holds by expiry (the hold sweeper);
* ``ix_holds_resolved``: resolved holds by resolution (holds open at an instant: reports
  and point-in-time balances; holds not resolved at all are the pending ones);
* ``ix_metering_account_completed``: completed records by wallet and completion (usage by
  completion, for reports in another timezone than the wallet's).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "status = 'pending'"
RESOLVED = "resolved_at IS NOT NULL"
COMPLETED = "completed_at IS NOT NULL"


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name, table, columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
    )


def upgrade() -> None:
    op.drop_index("ix_holds_status_expires", table_name="holds")
    _partial("ix_holds_pending_expires", "holds", ["expires_at"], PENDING)
    op.drop_index("ix_holds_resolved", table_name="holds")
    _partial("ix_holds_resolved", "holds", ["resolved_at"], RESOLVED)
    op.drop_index("ix_metering_account_completed", table_name="metering_records")
    _partial(
        "ix_metering_account_completed",
        "metering_records",
        ["account_id", "completed_at"],
        COMPLETED,
    )


def downgrade() -> None:
    op.drop_index("ix_metering_account_completed", table_name="metering_records")
    op.create_index(
        "ix_metering_account_completed", "metering_records", ["account_id", "completed_at"]
    )
    op.drop_index("ix_holds_resolved", table_name="holds")
    op.create_index("ix_holds_resolved", "holds", ["resolved_at"])
    op.drop_index("ix_holds_pending_expires", table_name="holds")
    op.create_index("ix_holds_status_expires", "holds", ["status", "expires_at"])
