"""Initial schema: accounts, the journal, grants, holds, metering, idempotency.

The journal is guarded by the database itself, not only by the code that writes it:

* an entry has two or more postings and they sum to zero per unit. PostgreSQL checks it
  at commit with deferred constraint triggers (on the entry and on each posting, so no
  posting can be added to an entry later). SQLite has no deferred triggers: postings are
  written first (their foreign key to the entry is deferred) and the entry's insert
  checks them; a posting for an entry already written is refused;
* postings and entries can never be updated or deleted;
* a posting's unit is its account's unit.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 14:48:22.002566
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "units",
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("scale", sa.Integer(), nullable=False),
        sa.CheckConstraint("scale >= 0 AND scale <= 18", name="ck_units_scale"),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("overdraft_limit", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("monthly_allocation", sa.BigInteger(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("pending", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('wallet', 'funding', 'revenue', 'expired', 'promotions')",
            name="ck_accounts_kind",
        ),
        sa.CheckConstraint(
            "monthly_allocation IS NULL OR monthly_allocation > 0", name="ck_accounts_allocation"
        ),
        sa.CheckConstraint("overdraft_limit >= 0", name="ck_accounts_overdraft"),
        sa.CheckConstraint("pending >= 0", name="ck_accounts_pending"),
        sa.ForeignKeyConstraint(
            ["unit"],
            ["units.code"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    op.create_table(
        "daily_usage",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("catalog", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("images", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("videos", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("candidates", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("seconds", sa.Numeric(precision=24, scale=6), server_default="0", nullable=False),
        sa.Column("amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("account_id", "unit", "catalog", "operation", "model", "day"),
    )
    op.create_table(
        "entries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("reverses_id", sa.String(length=32), nullable=True),
        sa.Column("hold_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["entries.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("reverses_id"),
    )
    with op.batch_alter_table("entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_entries_account_posted", ["account_id", "posted_at", "id"], unique=False
        )

    op.create_table(
        "metering_records",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("hold_id", sa.String(length=32), nullable=True),
        sa.Column("entry_id", sa.String(length=32), nullable=True),
        sa.Column("catalog", sa.String(length=64), nullable=False),
        sa.Column("catalog_version", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("charged", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("images", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("videos", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("candidates", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("seconds", sa.Numeric(precision=24, scale=6), server_default="0", nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("metering_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_metering_account_created", ["account_id", "created_at"], unique=False
        )

    op.create_table(
        "grants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period", sa.String(length=7), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("entry_id", sa.String(length=32), nullable=False),
        sa.CheckConstraint(
            "kind IN ('allocation', 'pack', 'promo', 'adjustment')", name="ck_grants_kind"
        ),
        sa.CheckConstraint("amount > 0", name="ck_grants_amount"),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_grants_remaining"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["entries.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_grants_account_remaining", ["account_id", "remaining"], unique=False
        )

    op.create_table(
        "holds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("captured", sa.BigInteger(), nullable=True),
        sa.Column("entry_id", sa.String(length=32), nullable=True),
        sa.Column("metering_id", sa.String(length=32), nullable=False),
        sa.Column("catalog", sa.String(length=64), nullable=False),
        sa.Column("catalog_version", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'captured', 'voided', 'expired')", name="ck_holds_status"
        ),
        sa.CheckConstraint("amount >= 0", name="ck_holds_amount"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["entries.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_holds_account_id"), ["account_id"], unique=False)
        batch_op.create_index("ix_holds_status_expires", ["status", "expires_at"], unique=False)

    op.create_table(
        "postings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount <> 0", name="ck_postings_amount_nonzero"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["entries.id"], initially="DEFERRED", deferrable=True
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_postings_account_posted", ["account_id", "posted_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_postings_entry_id"), ["entry_id"], unique=False)

    op.create_table(
        "allocation_periods",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["grants.id"],
        ),
        sa.PrimaryKeyConstraint("account_id", "period"),
    )
    op.create_table(
        "grant_movements",
        sa.Column("entry_id", sa.String(length=32), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["entries.id"],
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["grants.id"],
        ),
        sa.PrimaryKeyConstraint("entry_id", "grant_id"),
    )
    _create_guards()


def downgrade() -> None:
    _drop_guards()
    op.drop_table("grant_movements")
    op.drop_table("allocation_periods")
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_postings_entry_id"))
        batch_op.drop_index("ix_postings_account_posted")

    op.drop_table("postings")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_status_expires")
        batch_op.drop_index(batch_op.f("ix_holds_account_id"))

    op.drop_table("holds")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_account_remaining")

    op.drop_table("grants")
    with op.batch_alter_table("metering_records", schema=None) as batch_op:
        batch_op.drop_index("ix_metering_account_created")

    op.drop_table("metering_records")
    with op.batch_alter_table("entries", schema=None) as batch_op:
        batch_op.drop_index("ix_entries_account_posted")

    op.drop_table("entries")
    op.drop_table("daily_usage")
    op.drop_table("accounts")
    op.drop_table("units")
    op.drop_table("idempotency_keys")


_SQLITE_GUARDS = [
    """
    CREATE TRIGGER entries_balanced BEFORE INSERT ON entries
    WHEN (SELECT COUNT(*) FROM postings WHERE entry_id = NEW.id) < 2
      OR EXISTS (SELECT 1 FROM postings WHERE entry_id = NEW.id
                 GROUP BY unit HAVING SUM(amount) <> 0)
    BEGIN
      SELECT RAISE(ABORT, 'unbalanced entry: two or more postings summing to zero per unit');
    END
    """,
    """
    CREATE TRIGGER postings_sealed BEFORE INSERT ON postings
    WHEN EXISTS (SELECT 1 FROM entries WHERE id = NEW.entry_id)
    BEGIN
      SELECT RAISE(ABORT, 'entry is sealed: no posting can be added to a written entry');
    END
    """,
    """
    CREATE TRIGGER postings_unit BEFORE INSERT ON postings
    WHEN NEW.unit IS NOT (SELECT unit FROM accounts WHERE id = NEW.account_id)
    BEGIN
      SELECT RAISE(ABORT, 'posting unit differs from its account unit');
    END
    """,
    *(
        f"""
        CREATE TRIGGER {table}_no_{action} BEFORE {action.upper()} ON {table}
        BEGIN
          SELECT RAISE(ABORT, '{table} are immutable: correct with a reversing entry');
        END
        """
        for table in ("entries", "postings")
        for action in ("update", "delete")
    ),
]

_SQLITE_TRIGGERS = [
    "entries_balanced",
    "postings_sealed",
    "postings_unit",
    "entries_no_update",
    "entries_no_delete",
    "postings_no_update",
    "postings_no_delete",
]

_POSTGRES_GUARDS = [
    """
    CREATE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      target varchar;
    BEGIN
      IF TG_TABLE_NAME = 'entries' THEN target := NEW.id; ELSE target := NEW.entry_id; END IF;
      IF (SELECT COUNT(*) FROM postings WHERE entry_id = target) < 2
         OR EXISTS (SELECT 1 FROM postings WHERE entry_id = target
                    GROUP BY unit HAVING SUM(amount) <> 0) THEN
        RAISE EXCEPTION 'unbalanced entry %: two or more postings summing to zero per unit',
          target USING ERRCODE = 'check_violation';
      END IF;
      RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER entries_balanced AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_entry()
    """,
    """
    CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_entry()
    """,
    """
    CREATE FUNCTION ledger_posting_unit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.unit IS DISTINCT FROM (SELECT unit FROM accounts WHERE id = NEW.account_id) THEN
        RAISE EXCEPTION 'posting unit differs from its account unit'
          USING ERRCODE = 'check_violation';
      END IF;
      RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER postings_unit BEFORE INSERT ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_posting_unit()
    """,
    """
    CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION '% are immutable: correct with a reversing entry', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
    END $$
    """,
    *(
        f"""
        CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION ledger_immutable()
        """
        for table in ("entries", "postings")
    ),
    *(
        f"""
        CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable()
        """
        for table in ("entries", "postings")
    ),
]

_POSTGRES_DROPS = [
    "DROP TRIGGER IF EXISTS entries_balanced ON entries",
    "DROP TRIGGER IF EXISTS postings_balanced ON postings",
    "DROP TRIGGER IF EXISTS postings_unit ON postings",
    "DROP TRIGGER IF EXISTS entries_immutable ON entries",
    "DROP TRIGGER IF EXISTS postings_immutable ON postings",
    "DROP TRIGGER IF EXISTS entries_no_truncate ON entries",
    "DROP TRIGGER IF EXISTS postings_no_truncate ON postings",
    "DROP FUNCTION IF EXISTS ledger_check_entry()",
    "DROP FUNCTION IF EXISTS ledger_posting_unit()",
    "DROP FUNCTION IF EXISTS ledger_immutable()",
]


def _create_guards() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        statements = _SQLITE_GUARDS
    elif dialect == "postgresql":
        statements = _POSTGRES_GUARDS
    else:
        raise NotImplementedError(f"no journal guards for {dialect}")
    for statement in statements:
        op.execute(statement)


def _drop_guards() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        for statement in _POSTGRES_DROPS:
            op.execute(statement)
