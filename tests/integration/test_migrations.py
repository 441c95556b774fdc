"""Migrations on each database: up from empty, down to empty, and models == migrations."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from ledger.db import (
    MIGRATION_LOCK,
    Database,
    DowngradeNotConfirmed,
    Migration,
    Refused,
    SchemaFromNewer,
    Timeouts,
    alembic_config,
    is_lock_timeout,
    known_revisions,
)
from ledger.keys import Keys
from ledger.models import PENDING_HOLD, metadata
from ledger.results import BalanceView
from ledger.services import Ledger
from ledger.store import SPENT
from ledger.verify import verify
from pricing import default_catalogs
from reports.queries import open_holds
from tests import factories as f
from tests.factories import Clock, Traffic, make_statement
from tests.pg import TempPostgres

_names = count()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        database = Database.from_url(f"sqlite:///{tmp_path / 'empty.db'}")
    else:
        server: TempPostgres | None = request.getfixturevalue("postgres")
        if server is None:
            pytest.skip("PostgreSQL binaries not installed")
        name = f"empty_{os.getpid()}_{next(_names)}"
        admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        database = Database.from_url(server.url(name))
    yield database
    database.dispose()


def tables(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names()) - {"alembic_version"}


def test_upgrade_from_empty_and_downgrade_to_empty(empty: Database) -> None:
    assert tables(empty) == set()
    empty.migrate()
    assert tables(empty) == set(metadata.tables)
    empty.downgrade("base")
    assert tables(empty) == set()
    empty.migrate()  # and back up again: the downgrade left nothing behind
    assert tables(empty) == set(metadata.tables)


def test_models_and_migrations_agree(empty: Database) -> None:
    empty.migrate()
    with empty.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def _predicates(conn: sa.Connection, table: str) -> dict[str, str | None]:
    """Each index of ``table`` and its WHERE (None for a full index), as the database
    reports it."""
    found: dict[str, str | None] = {}
    for index in sa.inspect(conn).get_indexes(table):
        options = index.get("dialect_options", {})
        where = options.get("sqlite_where", options.get("postgresql_where"))
        found[str(index["name"])] = None if where is None else " ".join(str(where).split())
    return found


def test_partial_indexes_agree(empty: Database) -> None:
    """Autogenerate does not compare the WHERE of partial indexes: each index the models
    declare, created from the models in a transaction then rolled back (DDL is
    transactional on both databases), has the predicate the migrations gave it, in the
    database's own spelling."""
    empty.migrate()
    partial = 0
    with empty.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for index in table.indexes:
                migrated = _predicates(conn, table.name)[str(index.name)]
                conn.execute(sa.schema.DropIndex(index))
                conn.execute(sa.schema.CreateIndex(index))
                modelled = _predicates(conn, table.name)[str(index.name)]
                conn.rollback()
                assert migrated == modelled, index.name
                partial += migrated is not None
    # holds, metering_records, report_jobs, grants (2 each), entries (3), api_keys (1)
    assert partial == 12


Checks = dict[tuple[str, str], str]


def _checks(conn: sa.Connection, schema: str | None = None) -> Checks:
    """Each CHECK constraint of the models' tables, by table and name, as the database
    reports it."""
    inspector = sa.inspect(conn)
    return {
        (table.name, str(check["name"])): " ".join(check["sqltext"].split())
        for table in metadata.sorted_tables
        for check in inspector.get_check_constraints(table.name, schema=schema)
    }


def test_check_constraints_agree(empty: Database, tmp_path: Path) -> None:
    """Autogenerate does not compare CHECK constraints either: the models' and the
    migrations' are the same, by name and by condition, in the database's own spelling
    (PostgreSQL rewrites each; so the models' are created there too, in a schema of
    their own inside a transaction rolled back). A migration that changed a check and a
    model that did not (the statuses a hold may take, the flows of the rollup) would
    otherwise go unseen until a write the model allows fails in production."""
    empty.migrate()
    with empty.engine.connect() as conn:
        migrated = _checks(conn)
        if empty.is_sqlite:
            modelled_db = sa.create_engine(f"sqlite:///{tmp_path / 'modelled.db'}")
            metadata.create_all(modelled_db)
            with modelled_db.connect() as other:
                modelled = _checks(other)
            modelled_db.dispose()
        else:
            conn.exec_driver_sql("CREATE SCHEMA modelled")
            copy = sa.MetaData()
            for table in metadata.sorted_tables:
                table.to_metadata(copy, schema="modelled")
            copy.create_all(conn)
            modelled = _checks(conn, "modelled")
            conn.rollback()
    assert migrated == modelled
    assert len(migrated) == 21  # units 1, accounts 5, grants 3, holds 2, postings 1,
    # api_keys 2, daily_flows 2, account_changes 1, report_jobs 4


def test_a_periods_refunds_are_read_from_the_reversals_index(empty: Database) -> None:
    """The spend a wallet's refunds gave back is read under its spend limit on every
    authorization and charge: by ``ix_entries_account_reversals``, which holds its
    reversals alone, not by stepping over every entry it posted in the period."""
    empty.migrate()
    with empty.engine.connect() as conn:
        if empty.is_sqlite:
            rows = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + SPENT.sqlite,
                {"account_id": 1, "first": "2026-11-01", "after": "2026-12-01",
                 "start": "2026-11-01 00:00:00.000000", "end": "2026-12-01 00:00:00.000000",
                 "since": "2026-10-31 00:00:00.000000"},
            )  # fmt: skip
        else:
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("SET enable_seqscan = off")
            text = SPENT.sqlite
            names = ("account_id", "first", "after", "start", "end", "since")
            for number, name in enumerate(names, 1):
                text = text.replace(f":{name}", f"${number}")
            conn.exec_driver_sql(
                "PREPARE spent (bigint, varchar, varchar, timestamptz, timestamptz, timestamptz) "
                f"AS {text}"
            )
            rows = conn.exec_driver_sql(
                "EXPLAIN EXECUTE spent (1, '2026-11-01', '2026-12-01', now(), now(), now())"
            )
        plan = " ".join(str(row[-1]) for row in rows)
        conn.rollback()
    assert "ix_entries_account_reversals" in plan, plan
    # Each reversal's postings by its entry, never by the wallet's index of all of them.
    assert "ix_postings_entry_id" in plan, plan
    assert "ix_postings_account_posted" not in plan, plan


def test_pending_holds_can_use_their_partial_index_in_any_plan(empty: Database) -> None:
    """The sweeper and the reports select pending holds with ``PENDING_HOLD``: the value
    in the SQL text, so that even a plan made for any parameter value (PostgreSQL's
    generic plans of prepared statements) can use ``ix_holds_account_pending``; with
    ``status = $1`` such a plan scans the whole table."""
    empty.migrate()
    compiled = PENDING_HOLD.compile(empty.engine)
    assert compiled.params == {}, f"pending holds selected by a bound parameter: {compiled}"
    pending = str(compiled)
    due = (
        f"SELECT id FROM holds WHERE {pending} AND expires_at <= {{}} ORDER BY expires_at LIMIT 10"
    )
    with empty.engine.connect() as conn:
        if empty.is_sqlite:
            rows = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + due.format("?"), ("2026-11-22 00:00:00.000000",)
            )
        else:
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql(f"PREPARE due (timestamptz) AS {due.format('$1')}")
            rows = conn.exec_driver_sql("EXPLAIN EXECUTE due (now())")
        plan = " ".join(str(row[-1]) for row in rows)
        conn.rollback()
    assert "ix_holds_account_pending" in plan, plan


_CHANGE = (
    "INSERT INTO account_changes (id, account_id, setting, old_value, new_value, changed_at) "
    "VALUES (:id, 1, :setting, 0, 1, :now)"
)


def _an_old_wallet_with_a_change(db: Database) -> str:
    """Wallet 1 ('old', credits) and its change 'c1' of the overdraft limit, written as
    rows at an earlier revision; the instant they were written at."""
    now = "2026-11-22 10:00:00"
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO units (code, scale) VALUES ('credit', 0)"))
        conn.execute(
            sa.text(
                "INSERT INTO accounts (id, external_id, kind, unit, overdraft_limit, timezone, "
                "balance, pending, created_at) VALUES (1, 'old', 'wallet', 'credit', 0, 'UTC', "
                "0, 0, :now)"
            ),
            {"now": now},
        )
        conn.execute(sa.text(_CHANGE), {"id": "c1", "setting": "overdraft_limit", "now": now})
    return now


@pytest.mark.parametrize(
    ("before", "after", "column", "fresh"),
    [("0009", "0010", "blocked", (False, 0)), ("0010", "0011", "monthly_spend_limit", (None,))],
)
def test_new_wallet_settings_migrate_up_and_down_keeping_the_rest(
    empty: Database, before: str, after: str, column: str, fresh: tuple[object, ...]
) -> None:
    """0010 and 0011 each add a column to ``accounts`` (what it holds for the wallets
    already there: ``fresh``) and a setting, named as the column, to those whose changes
    are kept; down again they forget only those changes. SQLite copies
    ``account_changes`` to change its CHECK: its index must come along, and the triggers
    of ``accounts`` (0006) must survive both ways."""
    empty.migrate(before)
    now = _an_old_wallet_with_a_change(empty)

    def refused(statement: str, **params: str) -> bool:
        """Whether the database refuses the statement (it is rolled back either way)."""
        with empty.engine.connect() as conn:
            try:
                conn.execute(sa.text(statement), params)
            except sa.exc.IntegrityError:
                return True
            finally:
                conn.rollback()
        return False

    def triggers() -> set[str]:
        if not empty.is_sqlite:
            return set()
        with empty.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'accounts'"
            )
            return {str(r[0]) for r in rows}

    kept = triggers()
    assert refused(_CHANGE, id="x", setting=column, now=now)
    empty.migrate(after)
    with empty.engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT {column} FROM accounts")).scalar_one() in fresh
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("account_changes")}
    assert "ix_account_changes_account" in indexes
    assert triggers() == kept
    assert not refused(_CHANGE, id="x", setting=column, now=now)
    assert refused(_CHANGE, id="y", setting="bogus", now=now)
    if column == "monthly_spend_limit":
        assert refused("UPDATE accounts SET monthly_spend_limit = -1")
        assert not refused("UPDATE accounts SET monthly_spend_limit = 0")
    with empty.engine.begin() as conn:
        conn.execute(sa.text(_CHANGE), {"id": "c2", "setting": column, "now": now})
    empty.downgrade(before)
    with empty.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM account_changes")).scalars().all()
        columns = {c["name"] for c in sa.inspect(conn).get_columns("accounts")}
    assert rows == ["c1"]
    assert column not in columns
    assert triggers() == kept
    assert refused(_CHANGE, id="x", setting=column, now=now)


def test_actors_migrate_up_and_down_in_place(empty: Database) -> None:
    """0012 adds ``actor`` to ``entries`` and ``account_changes`` (null for the rows
    already there) without copying either table: on SQLite a copy of ``entries`` would
    drop the triggers that keep the journal immutable. Down again, the columns go and
    the rows and triggers stay."""
    empty.migrate("0011")
    _an_old_wallet_with_a_change(empty)

    def triggers() -> set[str]:
        return _triggers(empty)

    def columns(table: str) -> set[str]:
        with empty.engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns(table)}

    kept = triggers()
    assert any("entries" in name or "postings" in name for name in kept)
    empty.migrate("0012")
    assert "actor" in columns("entries")
    assert "actor" in columns("account_changes")
    with empty.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT actor FROM account_changes")).scalar_one() is None
    assert triggers() == kept
    empty.downgrade("0011")
    assert "actor" not in columns("entries")
    assert "actor" not in columns("account_changes")
    with empty.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM account_changes")).scalar_one() == "c1"
    assert triggers() == kept


def test_key_actors_migrate_up_and_down_keeping_the_keys(empty: Database) -> None:
    """0020 adds who made and who revoked each API key (null for the keys already there,
    which keep working); down again, the columns go and every key stays, as it was."""
    empty.migrate("0019")
    # A key as 0019's creditledger made it (its table as it was then).
    old_id, secret = "00112233445566aa", "an-old-secret"
    with empty.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, role, secret_sha256, created_at) "
                "VALUES (:id, 'gateway', 'service', :digest, :at)"
            ),
            {
                "id": old_id,
                "digest": hashlib.sha256(secret.encode()).hexdigest(),
                "at": datetime(2026, 11, 1, tzinfo=UTC),
            },
        )
    empty.migrate("0020")
    keys = Keys(empty, cache_seconds=0)
    [before] = keys.page().items
    assert (before.id, before.created_by, before.revoked_by) == (old_id, None, None)
    assert keys.authenticate(f"clk_{old_id}_{secret}") is not None
    made = keys.create("service", name="second", actor="cli:ops")
    keys.revoke(old_id, actor="key:0123456789abcdef")
    keys.revoke(old_id, actor="cli:someone-else")  # the first revocation is kept
    assert [(k.created_by, k.revoked_by) for k in keys.page().items] == [
        (None, "key:0123456789abcdef"),
        ("cli:ops", None),
    ]
    assert [k.id for k in keys.page(created_by="cli:ops").items] == [made.id]
    empty.downgrade("0019")
    with empty.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("api_keys")}
        stored = conn.execute(sa.text("SELECT id FROM api_keys ORDER BY created_at")).all()
    assert not columns & {"created_by", "revoked_by"}
    assert [r[0] for r in stored] == [old_id, made.id]


def _triggers(db: Database) -> set[str]:
    """The names of the database's own triggers."""
    with db.engine.connect() as conn:
        if not db.is_sqlite:
            rows = conn.exec_driver_sql("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        else:
            rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        return {str(r[0]) for r in rows}


def test_the_refund_flow_migrates_up_and_down_keeping_the_guards(empty: Database) -> None:
    """0013 changes the CHECK on ``daily_flows.flow`` (SQLite: by copying the table) and
    keeps every trigger, the 64-bit guard on the rollup's sums included."""
    empty.migrate("0012")
    kept = _triggers(empty)
    _an_old_wallet_with_a_change(empty)
    flow = (
        "INSERT INTO daily_flows (account_id, day, flow, credits, debits, entries) "
        "VALUES (1, '2026-11-22', :flow, 5, 0, 1)"
    )
    with pytest.raises(sa.exc.IntegrityError), empty.engine.begin() as conn:
        conn.execute(sa.text(flow), {"flow": "refund"})  # not a flow before 0013
    empty.migrate("0013")
    assert _triggers(empty) == kept
    with empty.engine.begin() as conn:
        conn.execute(sa.text(flow), {"flow": "refund"})
    beyond = "UPDATE daily_flows SET credits = credits + 9223372036854775807"
    with pytest.raises(sa.exc.DatabaseError, match="out of range|amount_overflow"):
        with empty.engine.begin() as conn:
            conn.execute(sa.text(beyond))
    empty.downgrade("0012")
    assert _triggers(empty) == kept
    with empty.engine.connect() as conn:  # the refund is a reversal again
        assert conn.execute(sa.text("SELECT flow, credits FROM daily_flows")).all() == [
            ("reversal", 5)
        ]


_POSTING = (
    "INSERT INTO postings (entry_id, account_id, unit, amount, posted_at) "
    "VALUES (:entry, :account, :unit, :amount, '2026-12-04 10:00:00')"
)


def _add(db: Database, entry: str, *legs: tuple[int, str, int], write_entry: bool = False) -> None:
    with db.engine.begin() as conn:
        for account, unit, amount in legs:
            values = {"entry": entry, "account": account, "unit": unit, "amount": amount}
            conn.execute(sa.text(_POSTING), values)
        if write_entry:
            conn.execute(
                sa.text(
                    "INSERT INTO entries (id, kind, account_id, posted_at, memo) "
                    "VALUES (:entry, 'adjustment', 1, '2026-12-04 10:00:00', '')"
                ),
                {"entry": entry},
            )


def test_entries_are_sealed_on_postgresql_from_0018_and_down_again_not(empty: Database) -> None:
    """Before 0018 PostgreSQL let a later transaction add postings that kept a written
    entry balanced (SQLite never did); from 0018 it refuses them, in the check of the
    entry's sum at the commit. Down again, that check is 0001's once more, and the unit
    of a posting is checked throughout."""
    empty.migrate("0017")
    _an_old_wallet_with_a_change(empty)
    with empty.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO accounts (id, external_id, kind, unit, overdraft_limit, timezone, "
                "balance, pending, created_at) VALUES (2, 'system:funding:credit', 'funding', "
                "'credit', 0, 'UTC', 0, 0, '2026-12-04 10:00:00')"
            )
        )
    _add(empty, "e1", (1, "credit", 5), (2, "credit", -5), write_entry=True)
    kept = _triggers(empty)

    def adding() -> str:
        """What becomes of a balanced pair of postings added to the written entry."""
        try:
            _add(empty, "e1", (1, "credit", 1), (2, "credit", -1))
        except sa.exc.DBAPIError as refused:
            return "sealed" if "sealed" in str(refused) else str(refused)
        return "added"

    before = "sealed" if empty.is_sqlite else "added"

    def unit_checked() -> None:
        with pytest.raises(sa.exc.DBAPIError, match="unit differs from its account unit"):
            _add(empty, "e2", (1, "usd", 5), (2, "credit", -5), write_entry=True)

    unit_checked()
    assert adding() == before
    empty.migrate("0018")
    unit_checked()
    assert adding() == "sealed"
    empty.downgrade("0017")
    assert _triggers(empty) == kept
    unit_checked()
    assert adding() == before


def _url(database: Database) -> str:
    return database.engine.url.render_as_string(hide_password=False)


def _revision(database: Database) -> str | None:
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


HEAD = "0024"
REVISIONS = known_revisions()

#: A process that migrates ``sys.argv[1]`` at the instant ``sys.argv[2]`` (so that all
#: start together, whatever their start-up took).
MIGRATE_AT = textwrap.dedent(
    """
    import sys, time
    from ledger.db import Database
    database = Database.from_url(sys.argv[1])
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    database.migrate()
    """
)


def test_processes_that_migrate_at_once_run_one_after_another(empty: Database) -> None:
    """Replicas of ``serve`` started together on a new database each migrate it: one
    creates the schema while the others wait for it, then find nothing to do. Without the
    migration lock all but one failed (tables that another was creating)."""
    at = time.time() + 4
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, _url(empty), str(at)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    failures = [e for p, e in zip(processes, errors, strict=True) if p.returncode != 0]
    assert failures == []
    assert _revision(empty) == HEAD
    with empty.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1


@contextmanager
def _migration_lock(database: Database) -> Iterator[None]:
    """Hold what a migration takes first, as another process's migration would."""
    with database.engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        if database.is_sqlite:
            raw.execute("BEGIN IMMEDIATE")
        else:
            raw.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            yield
        finally:
            if database.is_sqlite:
                raw.execute("ROLLBACK")
            else:
                raw.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def test_a_migration_waits_for_one_in_progress_and_gives_up_after_its_wait(
    empty: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Lock waits shorter than another process's migration are waited out, up to the
    migration's ``wait``; past it, the migration fails as a lock timeout, having done
    nothing. The wait is said once per migration, however many lock timeouts it spans."""
    quick = Database.from_url(_url(empty), timeouts=Timeouts(lock=0.2))
    waiting = "migration: waiting for a lock another process holds"

    def said() -> int:
        return sum(r.getMessage() == waiting for r in caplog.records)

    caplog.set_level(logging.WARNING, logger="creditledger.db")
    try:
        with _migration_lock(empty):
            with pytest.raises(sa.exc.OperationalError) as refused:
                quick.migrate(wait=0.5)
            assert is_lock_timeout(refused.value)
            assert _revision(empty) is None
            assert said() == 1
            done = threading.Event()

            def migrate() -> None:
                quick.migrate(wait=60)
                done.set()

            waiter = threading.Thread(target=migrate)
            waiter.start()
            # Several of its lock timeouts go by: it is still waiting, nothing migrated.
            assert not done.wait(1.5)
            assert _revision(empty) is None
        waiter.join(timeout=60)
        assert done.is_set()
        assert _revision(empty) == HEAD
        assert said() == 2
    finally:
        quick.dispose()


def test_a_schema_a_newer_version_upgraded_is_refused_and_left_as_it_is(
    empty: Database,
) -> None:
    """A deployment rolled back after its newer creditledger migrated the database: the
    revision it left is none of this version's. ``migrate`` (and so ``serve``) refuses
    it, naming the revision and what to do, and changes nothing; Alembic's own error was
    a traceback. The CLI's commands ask the same first. Any other failure of Alembic is
    raised as it was."""
    empty.migrate()
    with empty.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO units (code, scale) VALUES ('credit', 0)"))
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    before = tables(empty)
    with pytest.raises(SchemaFromNewer) as refused:
        empty.migrate()
    assert isinstance(refused.value.orig, Refused)  # the CLI adds no hint to it
    assert str(refused.value.orig) == (
        "the database's schema is at revision 9999, which this creditledger does not know "
        f"(its newest is {HEAD}): a newer creditledger upgraded it. Run that version (or a "
        f"later one) on it, or take the schema back to {HEAD} with it first (`creditledger "
        f"migrate --to {HEAD} --yes`); nothing was changed"
    )
    with pytest.raises(SchemaFromNewer):
        empty.migrate_to(HEAD, down=True)  # nor down: this version knows no way from 9999
    assert not is_lock_timeout(refused.value)  # refused at once, not waited on
    with pytest.raises(SchemaFromNewer, match="revision 9999, which"):
        empty.refuse_newer_schema()  # what each CLI command asks first
    assert _revision(empty) == "9999"
    assert tables(empty) == before
    with empty.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT code FROM units")).scalars().all() == ["credit"]
    with empty.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{HEAD}'")
    with pytest.raises(CommandError, match="no-such-revision"):
        empty.migrate("no-such-revision")  # a known schema: Alembic's error stands
    empty.migrate()
    assert _revision(empty) == HEAD
    empty.refuse_newer_schema()  # at this version's head: passes


def test_a_database_with_no_schema_yet_or_an_older_one_is_not_refused_as_newer(
    empty: Database,
) -> None:
    empty.refuse_newer_schema()
    empty.migrate("0009")
    empty.refuse_newer_schema()  # older: 'migrate' takes it up


def test_the_known_revisions_are_alembics_own() -> None:
    """``known_revisions`` reads the migrations' file names, not the migrations: each
    file's number is its revision, and the newest is Alembic's head."""
    script = ScriptDirectory.from_config(alembic_config())
    alembics = sorted(s.revision for s in script.walk_revisions())
    assert known_revisions() == tuple(alembics)
    assert known_revisions()[-1] == script.get_current_head() == HEAD


#: The tables that keep the ledger's money and what it was for, each in its primary key's
#: order: a round trip down and up again must give back every row of them.
_BOOKS = (
    "accounts",
    "entries",
    "postings",
    "grants",
    "grant_movements",
    "holds",
    "metering_records",
    "daily_usage",
    "daily_flows",
    "allocation_periods",
    "idempotency_keys",
)

#: What the revisions undone keep, and so lose on the way down: who made each entry
#: (0012), whether a wallet is blocked (0010) and its spend limit (0011), given back as
#: they are for a row made before them (none, not blocked, no limit).
_KEPT_BY_REVISIONS = {
    "0010": {("accounts", "blocked")},
    "0011": {("accounts", "monthly_spend_limit")},
    "0012": {("entries", "actor")},
}


def _books(db: Database, dropped: set[tuple[str, str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ``_BOOKS`` tables, without the ``dropped`` columns."""
    meta = sa.MetaData()
    with db.engine.connect() as conn:
        read = {}
        for name in _BOOKS:
            table = sa.Table(name, meta, autoload_with=conn)
            kept = [c for c in table.c if (name, c.name) not in dropped]
            order = list(table.primary_key.columns)
            read[name] = [tuple(r) for r in conn.execute(sa.select(*kept).order_by(*order))]
    return read


_POSTED = "SELECT account_id, SUM(amount) FROM postings GROUP BY account_id"
_ROLLED_UP = "SELECT account_id, SUM(credits) - SUM(debits) FROM daily_flows GROUP BY account_id"


def _sums(db: Database, query: str, *, wallets_only: bool = False) -> dict[int, int]:
    """``query``'s (account, amount) rows, of wallets only if asked, without zeros."""
    with db.engine.connect() as conn:
        wallets = set(
            conn.execute(sa.text("SELECT id FROM accounts WHERE kind = 'wallet'")).scalars().all()
        )
        rows = conn.execute(sa.text(query)).all()
    return {int(a): int(n) for a, n in rows if n and (not wallets_only or a in wallets)}


@pytest.mark.parametrize("target", [REVISIONS[0], "0012", REVISIONS[-2]])
def test_a_ledger_taken_back_to_an_older_schema_and_up_again_keeps_every_credit(
    db: Database, traffic: Traffic, target: str
) -> None:
    """A rollback: the schema is taken down to an older creditledger's newest revision
    (``creditledger migrate --to``), then up again by a later upgrade. Each revision
    undone gives back what it changed (October's journal, holds, grants, rollups and
    idempotency keys are all there again, row for row, and the month's statement is the
    same), and loses only what it alone kept. Going down is refused unless asked for."""
    undone = tuple(r for r in reversed(REVISIONS) if r > target)
    dropped = set().union(*(_KEPT_BY_REVISIONS.get(r, set()) for r in undone))
    books = _books(db, dropped)
    statement = make_statement(db, traffic.month, "Asia/Tokyo").accounts

    with pytest.raises(DowngradeNotConfirmed) as refused:
        db.migrate_to(target)
    assert (refused.value.current, refused.value.target) == (HEAD, target)
    assert refused.value.undone == undone
    assert _revision(db) == HEAD  # nothing changed

    down = db.migrate_to(target, down=True)
    assert down == Migration(HEAD, target, undone=undone, losses=refused.value.losses)
    # October's prices were kept as they took effect: their digests go with 0019.
    if "0019" in undone:
        assert down.losses["0019"].startswith("the digests of ")
    assert _revision(db) == target
    # As the older version finds it: balances that are the sums of their postings, and
    # (from 0003 on) a journal rollup that adds up to them, wallet by wallet.
    assert _sums(db, "SELECT id, balance FROM accounts") == _sums(db, _POSTED)
    if target >= "0003":
        assert _sums(db, _ROLLED_UP) == _sums(db, _POSTED, wallets_only=True)
    assert db.migrate_to(target) == Migration(target, target)  # there already
    up = db.migrate_to("head")
    assert up == Migration(target, HEAD, applied=tuple(reversed(undone)))

    assert verify(db) == []
    assert _books(db, dropped) == books
    assert make_statement(db, traffic.month, "Asia/Tokyo").accounts.equals(statement)
    if ("entries", "actor") in dropped:  # lost, as for an entry made before 0012
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT DISTINCT actor FROM entries")).all() == [(None,)]


def test_a_revision_this_version_does_not_have_is_refused_before_anything_connects() -> None:
    db = Database.from_url("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match="no revision 'base'"):
        db.migrate_to("base")
    db.dispose()


def _indexes(db: Database, table: str) -> dict[str, list[str | None]]:
    """The named indexes of ``table``: their columns."""
    with db.engine.connect() as conn:
        found = sa.inspect(conn).get_indexes(table)
    return {i["name"]: i["column_names"] for i in found if i["name"]}


def test_a_key_that_expired_stays_refused_below_0009_as_revoked_when_it_expired(
    empty: Database,
) -> None:
    """Below 0009 a key has no expiry: one that expired (refused since) is revoked as it
    expired rather than accepted again; one yet to expire, or never, stays as it is, and
    so does one revoked before."""
    empty.migrate()
    made = datetime.now(UTC) - timedelta(days=2)
    keys = Keys(empty, clock=lambda: made)
    expired = keys.create("service", expires_at=made + timedelta(days=1))
    later = keys.create("service", expires_at=made + timedelta(days=30))
    never = keys.create("service")
    revoked = keys.create("service", expires_at=made + timedelta(hours=1))
    keys.revoke(revoked.id)
    revoked_at = keys.get(revoked.id).revoked_at

    empty.migrate_to("0008", down=True)
    with empty.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, revoked_at FROM api_keys")).all()
    at = {
        k: v if v is None or isinstance(v, datetime) else datetime.fromisoformat(v) for k, v in rows
    }
    on_utc = {k: None if v is None else v.replace(tzinfo=v.tzinfo or UTC) for k, v in at.items()}
    assert on_utc == {
        expired.id: made + timedelta(days=1),
        later.id: None,
        never.id: None,
        revoked.id: revoked_at,
    }
    empty.migrate()
    now = Keys(empty)
    assert now.authenticate(expired.key) is None
    assert now.authenticate(revoked.key) is None
    assert now.authenticate(later.key) is not None  # its expiry is lost: noted in README
    assert now.get(later.id).expires_at is None
    assert now.authenticate(never.key) is not None


def test_the_grants_reference_index_comes_and_goes_with_0021(empty: Database) -> None:
    """0021 indexes grants by reference (only those with one); down again, it is gone
    and the references stay."""

    empty.migrate("0020")
    ledger = Ledger(empty, default_catalogs())
    ledger.open_account("acme", "credit", idempotency_key="o1")
    ledger.top_up("acme", 50, idempotency_key="t1", reference="inv-7")
    assert "ix_grants_reference" not in _indexes(empty, "grants")
    empty.migrate("0021")
    assert _indexes(empty, "grants")["ix_grants_reference"] == ["reference"]
    assert [e.memo for e in ledger.journal(reference="inv-7").items] == ["pack top-up (inv-7)"]
    empty.downgrade("0020")
    assert "ix_grants_reference" not in _indexes(empty, "grants")
    with empty.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT reference FROM grants")).scalar_one() == "inv-7"


def test_the_expiring_grants_index_comes_and_goes_with_0022(empty: Database) -> None:
    """0022 indexes the grants with credits left that expire, by expiry; the sweeper
    expires the same grants with it or without it; down again, it is gone."""

    clock = Clock()
    empty.migrate("0021")
    ledger = Ledger(empty, default_catalogs(), clock=clock)
    ledger.open_account("acme", "credit", idempotency_key="o1")
    for n, hours in enumerate((1, 2, None)):
        due = None if hours is None else clock.now + timedelta(hours=hours)
        ledger.top_up("acme", 50, idempotency_key=f"t{n}", expires_at=due)
    assert "ix_grants_expiring" not in _indexes(empty, "grants")
    clock.advance(hours=1)
    assert ledger.expire_grants() == 1
    empty.migrate("0022")
    assert _indexes(empty, "grants")["ix_grants_expiring"] == ["expires_at"]
    clock.advance(hours=1)
    assert ledger.expire_grants() == 1
    assert ledger.expire_grants() == 0
    empty.downgrade("0021")
    assert "ix_grants_expiring" not in _indexes(empty, "grants")
    assert [g.remaining for g in ledger.grants_of("acme")] == [0, 0, 50]


def test_the_holds_by_wallet_come_and_go_with_0023(empty: Database) -> None:
    """0023 indexes the holds by wallet (made, pending, resolved) in place of the three
    indexes before; a wallet's authorizations, its balance at an instant and the holds a
    report finds open read the same with either, and the old ones come back down."""

    clock = Clock()
    empty.migrate("0022")
    ledger = Ledger(empty, default_catalogs(), clock=clock)
    ledger.open_account("acme", "credit", idempotency_key="o1")
    ledger.top_up("acme", 5_000, idempotency_key="t1")
    veo = f.veo3_video(video_model="veo3_fast")
    held = [ledger.authorize("acme", veo, idempotency_key=f"a{n}").id for n in range(4)]
    clock.advance(minutes=1)
    then = clock.now
    clock.advance(minutes=1)
    ledger.capture(held[0], status="COMPLETED", usage=None, idempotency_key="c0")
    ledger.void(held[1], idempotency_key="v1")
    ledger.authorize("acme", veo, idempotency_key="a4")

    def read() -> tuple[list[str], list[str], BalanceView, list[dict[Any, Any]]]:
        with empty.engine.connect() as conn:
            report = open_holds(conn, then).to_dict("records")
        return (
            [h.id for h in ledger.holds_of("acme").items],
            [h.id for h in ledger.holds_of("acme", status="pending").items],
            ledger.balance("acme", as_of=then),
            report,
        )

    before = read()
    assert before[2].pending == 4 * 240
    assert before[3][0]["open_holds"] == 4
    old = {"ix_holds_account_id", "ix_holds_pending_expires", "ix_holds_resolved"}
    assert old <= set(_indexes(empty, "holds"))
    empty.migrate("0023")
    assert not old & set(_indexes(empty, "holds"))
    assert _indexes(empty, "holds")["ix_holds_account_created"] == [
        "account_id",
        "created_at",
        "id",
    ]
    assert _indexes(empty, "holds")["ix_holds_account_pending"] == ["account_id", "expires_at"]
    assert _indexes(empty, "holds")["ix_holds_account_resolved"] == ["account_id", "resolved_at"]
    assert read() == before
    empty.downgrade("0022")
    assert old <= set(_indexes(empty, "holds"))
    assert "ix_holds_account_created" not in _indexes(empty, "holds")
    assert read() == before


def test_the_keys_in_order_come_and_go_with_0024(empty: Database) -> None:
    """0024 indexes the API keys in the order they are listed, and one wallet's customer
    keys; the pages read the same with the indexes or without them, and they go again
    with 0024."""

    made = datetime(2026, 12, 1, tzinfo=UTC)
    empty.migrate("0023")
    ledger = Ledger(empty, default_catalogs(), clock=lambda: made)
    for wallet in ("acme", "beta"):
        ledger.open_account(wallet, "credit", idempotency_key=f"o-{wallet}")
    keys = Keys(empty, clock=lambda: made)  # made at one instant: ordered by their ids
    for n in range(7):
        keys.create("customer", account_id=("acme", "beta")[n % 2], name=f"k{n}")
    keys.create("service", name="gateway")

    def pages(**filters: Any) -> list[list[str]]:
        read, cursor = [], None
        while True:
            page = keys.page(limit=2, cursor=cursor, **filters)
            read.append([k.id for k in page.items])
            if (cursor := page.next_cursor) is None:
                return read

    def read() -> tuple[list[list[str]], ...]:
        return pages(), pages(account_id="acme"), pages(account_id="beta", role="customer")

    before = read()
    everything = [key_id for page in before[0] for key_id in page]
    assert len(everything) == 8
    assert everything == sorted(everything)  # made at one instant: by id
    assert [len(page) for page in before[1]] == [2, 2]
    assert [len(page) for page in before[2]] == [2, 1]
    assert not {"ix_api_keys_created", "ix_api_keys_account"} & set(_indexes(empty, "api_keys"))
    empty.migrate("0024")
    assert _indexes(empty, "api_keys")["ix_api_keys_created"] == ["created_at", "id"]
    assert _indexes(empty, "api_keys")["ix_api_keys_account"] == [
        "account_id",
        "created_at",
        "id",
    ]
    assert read() == before
    empty.downgrade("0023")
    assert not {"ix_api_keys_created", "ix_api_keys_account"} & set(_indexes(empty, "api_keys"))
    assert read() == before


def test_going_down_says_what_it_takes_from_this_database_counted(empty: Database) -> None:
    """Before it undoes anything, a downgrade counts what each revision undone drops
    that only it keeps (a blocked wallet opened again, a key's expiry, who did what),
    and says it when asked to confirm and when done; what drops nothing says nothing."""
    empty.migrate()
    made = datetime.now(UTC) - timedelta(days=2)
    ledger = Ledger(empty, default_catalogs(), clock=lambda: made)
    ledger.open_account("acme", "credit", monthly_spend_limit=100, idempotency_key="o1")
    ledger.open_account("beta", "credit", idempotency_key="o2")
    ledger.update_account(
        "acme", blocked=True, reason="abuse", actor="cli:ops", idempotency_key="u1"
    )
    ledger.update_account(
        "beta", overdraft_limit=10, reason="trusted", actor="cli:ops", idempotency_key="u2"
    )
    ledger.top_up("beta", 50, idempotency_key="t1", actor="key:gateway")
    keys = Keys(empty, clock=lambda: made)
    keys.create("service", expires_at=made + timedelta(days=1))  # expired by now
    keys.create("service", expires_at=made + timedelta(days=30), actor="cli:ops")
    keys.create("customer", account_id="beta")

    with pytest.raises(DowngradeNotConfirmed) as refused:
        empty.migrate_to("0001")
    expected = {
        "0020": "who made or revoked 1 API key(s) is forgotten",
        "0019": refused.value.losses["0019"],  # as many digests as versions in force
        "0012": "who made 3 journal entries and settings changes is forgotten",
        "0011": "1 wallet(s) lose their monthly spend limit",
        "0010": "1 blocked wallet(s) are open again: nothing refuses their requests; the "
        "history of 1 block(s) and unblock(s) is deleted",
        "0009": "1 API key(s) that have yet to expire never will; 1 that expired are revoked "
        "as they expired",
        "0008": "the history of 1 change(s) of overdraft limits and allocations is deleted",
        "0002": "all 3 API key(s) are deleted, the gateway's too",
    }
    assert refused.value.losses == expected
    assert re.fullmatch(
        r"the digests of \d+ catalog version\(s\) in force are dropped: .*", expected["0019"]
    )
    assert _revision(empty) == HEAD
    assert empty.migrate_to("0009", down=True).losses == {
        r: expected[r] for r in ("0020", "0019", "0012", "0011", "0010")
    }
    assert empty.migrate_to("0008", down=True).losses == {"0009": expected["0009"]}
    assert empty.migrate_to("0003", down=True).losses == {"0008": expected["0008"]}
