"""PostgreSQL: ``ledger_expect_rows``, a row count checked by the server.

A hold resolves exactly once: its resolving UPDATE is conditional on the hold's status and
must change one row. The client learnt the count from the statement's result, so the
COMMIT waited for that result: a round trip of its own for every capture. With
this function the statement checks its own count (``SELECT ledger_expect_rows(count(*),
1, tag) FROM (the write ... RETURNING 1)``) and fails when it differs, which stops the
COMMIT queued behind it in the same pipeline. The error's SQLSTATE is ``CL001`` and its
detail the tag the statement gave, by which the client tells whose check failed.

SQLite runs in-process and counts rows for free: nothing to add there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION ledger_expect_rows(actual bigint, expected bigint, tag integer)
        RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN
          IF actual IS DISTINCT FROM expected THEN
            RAISE EXCEPTION 'a write changed % rows where % were expected', actual, expected
              USING ERRCODE = 'CL001', DETAIL = tag::text;
          END IF;
          RETURN actual;
        END $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION ledger_expect_rows(bigint, bigint, integer)")
