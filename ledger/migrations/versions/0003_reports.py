"""Reports: the daily journal rollup (backfilled), report jobs and their files, and the
indexes the monthly statement reads by.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLOWS = "'pack', 'promo', 'allocation', 'adjustment', 'capture', 'charge', 'expiry', 'reversal'"
ACTIVE = "status IN ('queued', 'running')"
MONTH_END = "origin = 'month_end'"


def upgrade() -> None:
    op.create_table(
        "daily_flows",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("flow", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("debits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("entries", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(f"flow IN ({FLOWS})", name="ck_daily_flows_flow"),
        sa.CheckConstraint("credits >= 0 AND debits >= 0", name="ck_daily_flows_signs"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("account_id", "day", "flow"),
    )
    op.create_index("ix_daily_flows_day", "daily_flows", ["day"])
    _backfill_flows()
    op.create_table(
        "report_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("dedupe", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("error", sa.String(length=4000), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_report_jobs_status"
        ),
        sa.CheckConstraint(
            "format IN ('csv', 'json', 'parquet', 'html')", name="ck_report_jobs_format"
        ),
        sa.CheckConstraint("origin IN ('request', 'month_end')", name="ck_report_jobs_origin"),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_report_jobs_progress"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_report_jobs_active",
        "report_jobs",
        ["dedupe"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_index(
        "ux_report_jobs_month_end",
        "report_jobs",
        ["month", "timezone"],
        unique=True,
        sqlite_where=sa.text(MONTH_END),
        postgresql_where=sa.text(MONTH_END),
    )
    op.create_index("ix_report_jobs_status_created", "report_jobs", ["status", "created_at"])
    op.create_table(
        "report_outputs",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["report_jobs.id"]),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_index("ix_holds_resolved", "holds", ["resolved_at"])
    op.create_index(
        "ix_metering_account_completed", "metering_records", ["account_id", "completed_at"]
    )


def _backfill_flows() -> None:
    """Roll up the journal written before this table existed, day by wallet timezone."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT p.account_id, p.amount, p.posted_at, e.kind, a.timezone, "
            "(SELECT MIN(g.kind) FROM grants g WHERE g.entry_id = e.id) AS grant_kind "
            "FROM postings p JOIN entries e ON e.id = p.entry_id "
            "JOIN accounts a ON a.id = p.account_id AND a.kind = 'wallet'"
        ).columns(posted_at=sa.DateTime())
    )
    totals: dict[tuple[int, str, str], list[int]] = {}
    for r in rows:
        posted = r.posted_at
        if posted.tzinfo is None:  # SQLite stores the UTC wall time
            posted = posted.replace(tzinfo=ZoneInfo("UTC"))
        day = posted.astimezone(ZoneInfo(r.timezone)).date().isoformat()
        flow = r.grant_kind if r.kind == "topup" else r.kind
        got = totals.setdefault((r.account_id, day, flow), [0, 0, 0])
        got[0 if r.amount > 0 else 1] += abs(int(r.amount))
        got[2] += 1
    if totals:
        table = sa.table(
            "daily_flows",
            sa.column("account_id"),
            sa.column("day"),
            sa.column("flow"),
            sa.column("credits"),
            sa.column("debits"),
            sa.column("entries"),
        )
        conn.execute(
            table.insert(),
            [
                {"account_id": a, "day": d, "flow": f, "credits": c, "debits": b, "entries": n}
                for (a, d, f), (c, b, n) in totals.items()
            ],
        )


def dropped_by_downgrade(conn: sa.Connection) -> str | None:
    """What undoing this revision takes away (``creditledger migrate --to``), or None.
    (The journal rollup is made again from the journal when it is upgraded again.)"""
    n = int(conn.execute(sa.text("SELECT count(*) FROM report_jobs")).scalar_one())
    return f"{n} report job(s) and their files are deleted" if n else None


def downgrade() -> None:
    op.drop_index("ix_metering_account_completed", table_name="metering_records")
    op.drop_index("ix_holds_resolved", table_name="holds")
    op.drop_table("report_outputs")
    op.drop_index("ix_report_jobs_status_created", table_name="report_jobs")
    op.drop_index("ux_report_jobs_month_end", table_name="report_jobs")
    op.drop_index("ux_report_jobs_active", table_name="report_jobs")
    op.drop_table("report_jobs")
    op.drop_index("ix_daily_flows_day", table_name="daily_flows")
    op.drop_table("daily_flows")
