"""An index of metering records by the gateway's ``request_id``, per wallet.

``GET /v1/accounts/{id}/usage-records?request_id=...`` (a gateway matching its own log
line to what was billed, or the CLI's ``usage-records --request-id``) read the wallet's
records newest first and kept the one whose id matched: on a wallet of a million records,
600 ms on SQLite, growing with every request. The index holds them in the listing's order
(newest first), so that a plan need not choose between finding the records and ordering
them (SQLite, without statistics, chose the order). Partial: records made without a
request id write no key to it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "request_id IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_metering_account_request",
        "metering_records",
        ["account_id", "request_id", "created_at", "id"],
        sqlite_where=sa.text(WHERE),
        postgresql_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_metering_account_request", table_name="metering_records")
