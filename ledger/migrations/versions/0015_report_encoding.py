"""Report files stored compressed: ``report_outputs.content_encoding``.

A month-end statement of every wallet is large in JSON (about 14 KB per wallet with daily
usage of two models: 700 MB for 50,000 wallets), and it was kept as it was rendered, in
one row, written in one transaction. Stored gzip-compressed it takes a twentieth to a
hundredth of that. The column says how ``content`` is encoded: ``gzip``, or NULL for a
file kept as rendered (Parquet, already compressed, and every file stored before this).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 07:00:00.000000
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("report_outputs") as batch:
        batch.add_column(sa.Column("content_encoding", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # The files stored compressed are kept as rendered again, which the old code reads.
    outputs = sa.table(
        "report_outputs",
        sa.column("job_id", sa.String),
        sa.column("content", sa.LargeBinary),
        sa.column("content_encoding", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(outputs.c.job_id).where(outputs.c.content_encoding == "gzip")
    ).scalars()
    for job_id in list(rows):
        packed = conn.execute(
            sa.select(outputs.c.content).where(outputs.c.job_id == job_id)
        ).scalar_one()
        conn.execute(
            outputs.update()
            .where(outputs.c.job_id == job_id)
            .values(content=gzip.decompress(packed), content_encoding=None)
        )
    with op.batch_alter_table("report_outputs") as batch:
        batch.drop_column("content_encoding")
