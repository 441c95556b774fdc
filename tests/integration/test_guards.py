"""The database's own guards on the journal, on both databases: whatever writes to it
(the ledger, a script, an operator at a SQL prompt), an entry is two or more postings
summing to zero per unit, in its account's unit, and once written it is never changed,
deleted or added to. Each refusal is checked for its own message, and a write of the
same shape that keeps the rule is checked to pass, so that a guard refusing everything
could not pass for one that works."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from ledger.db import Database
from ledger.services import Ledger
from ledger.verify import verify
from pricing.catalog import CatalogSet
from tests.factories import key, veo3_video
from tests.pg import TempPostgres

_entries = count()

#: (account, unit, amount) of one posting.
Leg = tuple[int, str, int]

_NOW = datetime(2026, 12, 4, 10, tzinfo=UTC)

postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def ids(db: Database, catalogs: CatalogSet) -> dict[str, int]:
    """Account ids by external id: a credit wallet and a USD wallet, each funded (so that
    each unit's funding account exists and has written an entry). Not the ``ledger``
    fixture, which verifies the books after the test: the entries written here move no
    balance and no daily flow."""
    ledger = Ledger(db, catalogs)
    for name, unit in (("c", "credit"), ("u", "usd")):
        ledger.open_account(name, unit, idempotency_key=key())
        ledger.top_up(name, 100, idempotency_key=key())
    return _ids(db)


def _ids(db: Database) -> dict[str, int]:
    with db.transaction(write=False) as conn:
        return dict(conn.exec_driver_sql("SELECT external_id, id FROM accounts").all())


def _post(conn: sa.Connection, entry_id: str, legs: list[Leg], now: datetime) -> None:
    for account, unit, amount in legs:
        conn.execute(
            sa.text(
                "INSERT INTO postings (entry_id, account_id, unit, amount, posted_at) "
                "VALUES (:entry, :account, :unit, :amount, :now)"
            ),
            {"entry": entry_id, "account": account, "unit": unit, "amount": amount, "now": now},
        )


def _entry(db: Database, legs: list[Leg], wallet: int) -> str:
    """Write one entry in a transaction of its own, in the ledger's order (the postings,
    then their entry) and committed, so that PostgreSQL's deferred check runs; return
    its id."""
    entry_id = f"guard-{next(_entries)}"
    now = datetime.now(UTC)
    with db.transaction() as conn:
        _post(conn, entry_id, legs, now)
        conn.execute(
            sa.text(
                "INSERT INTO entries (id, kind, account_id, posted_at, memo) "
                "VALUES (:entry, 'adjustment', :wallet, :now, '')"
            ),
            {"entry": entry_id, "wallet": wallet, "now": now},
        )
    return entry_id


Rows = list[tuple[object, ...]]


def _rows(db: Database, table: str) -> Rows:
    with db.transaction(write=False) as conn:
        return [tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")]


def _journal(db: Database) -> tuple[Rows, Rows]:
    return _rows(db, "entries"), _rows(db, "postings")


def _refused(db: Database, legs: list[Leg], wallet: int, match: str) -> None:
    """The entry is refused with ``match`` in its message, and the journal is unchanged."""
    before = _journal(db)
    with pytest.raises(sa.exc.DBAPIError, match=match):
        _entry(db, legs, wallet)
    assert _journal(db) == before


def test_balanced_entries_are_written(ids: dict[str, int], db: Database) -> None:
    c, u = ids["c"], ids["u"]
    funding, usd_funding = ids["system:funding:credit"], ids["system:funding:usd"]
    written = [
        _entry(db, [(c, "credit", 5), (funding, "credit", -5)], c),
        _entry(db, [(c, "credit", 5), (funding, "credit", -3), (funding, "credit", -2)], c),
        # Two units in one entry, each summing to zero on its own.
        _entry(
            db,
            [(c, "credit", 5), (funding, "credit", -5), (u, "usd", -7), (usd_funding, "usd", 7)],
            c,
        ),
    ]
    entries, postings = _journal(db)
    assert set(written) <= {row[0] for row in entries}
    assert sum(1 for row in postings if row[1] in written) == 9


def test_an_entry_of_one_posting_or_none_is_refused(ids: dict[str, int], db: Database) -> None:
    c = ids["c"]
    _refused(db, [(c, "credit", 5)], c, "unbalanced entry")
    _refused(db, [], c, "unbalanced entry")


def test_an_entry_whose_postings_do_not_sum_to_zero_is_refused(
    ids: dict[str, int], db: Database
) -> None:
    c, funding = ids["c"], ids["system:funding:credit"]
    _refused(db, [(c, "credit", 5), (funding, "credit", -4)], c, "unbalanced entry")
    _refused(
        db,
        [(c, "credit", 5), (funding, "credit", -3), (funding, "credit", -3)],
        c,
        "unbalanced entry",
    )


def test_an_entry_must_balance_in_each_unit_not_only_overall(
    ids: dict[str, int], db: Database
) -> None:
    """Five credits against five micro-dollars sum to zero, and are no balanced entry."""
    c, u = ids["c"], ids["u"]
    funding, usd_funding = ids["system:funding:credit"], ids["system:funding:usd"]
    _refused(db, [(c, "credit", 5), (u, "usd", -5)], c, "unbalanced entry")
    _refused(
        db,
        [(c, "credit", 5), (funding, "credit", -4), (u, "usd", 4), (usd_funding, "usd", -5)],
        c,
        "unbalanced entry",
    )


def test_postings_of_no_entry_are_refused(ids: dict[str, int], db: Database) -> None:
    """Balanced, but their entry is never written: the deferred foreign key refuses them
    at the commit (on PostgreSQL the sum is the entry's check, which never runs here; on
    SQLite the failed commit is the write group's, ``CommitFailed``)."""
    c, funding = ids["c"], ids["system:funding:credit"]
    before = _journal(db)
    with pytest.raises(sa.exc.DBAPIError, match="(?i)foreign key"), db.transaction() as conn:
        _post(conn, "no-entry", [(c, "credit", 5), (funding, "credit", -5)], _NOW)
    assert _journal(db) == before


def test_a_posting_must_be_in_its_accounts_unit(ids: dict[str, int], db: Database) -> None:
    """Balanced in micro-dollars, but ``c`` is a credit wallet."""
    c, usd_funding = ids["c"], ids["system:funding:usd"]
    _refused(db, [(c, "usd", 5), (usd_funding, "usd", -5)], c, "unit differs from its account")


def test_nothing_can_be_added_to_a_written_entry(ids: dict[str, int], db: Database) -> None:
    """Not even postings that keep it balanced: an entry is what it was when written."""
    c, funding = ids["c"], ids["system:funding:credit"]
    written = _entry(db, [(c, "credit", 5), (funding, "credit", -5)], c)
    before = _journal(db)
    more: list[Leg] = [(c, "credit", 1), (funding, "credit", -1)]
    for legs in (more, more[:1]):
        with pytest.raises(sa.exc.DBAPIError, match="sealed"), db.transaction() as conn:
            _post(conn, written, legs, _NOW)
        assert _journal(db) == before


@pytest.mark.parametrize("table", ["entries", "postings"])
@pytest.mark.parametrize(
    "statement", ["UPDATE {table} SET posted_at = posted_at", "DELETE FROM {table}"]
)
def test_a_written_entry_is_never_changed_or_deleted(
    ids: dict[str, int], db: Database, table: str, statement: str
) -> None:
    """Not even by an UPDATE that changes no value."""
    before = _journal(db)
    assert before[0]  # the top-ups
    with pytest.raises(sa.exc.DBAPIError, match=f"{table} are immutable"), db.transaction() as conn:
        conn.exec_driver_sql(statement.format(table=table))
    assert _journal(db) == before


@postgresql_only
@pytest.mark.parametrize("table", ["entries", "postings"])
def test_the_journal_cannot_be_truncated(ids: dict[str, int], db: Database, table: str) -> None:
    """PostgreSQL's TRUNCATE runs no row trigger (SQLite has no TRUNCATE: its
    ``DELETE FROM`` without a WHERE, which does run them, is refused above)."""
    before = _journal(db)
    with pytest.raises(sa.exc.DBAPIError, match=f"{table} are immutable"), db.transaction() as conn:
        conn.exec_driver_sql(f"TRUNCATE {table} CASCADE")
    assert _journal(db) == before


@postgresql_only
def test_a_postgresql_ledger_restores_whole_from_pg_dump(
    db: Database, catalogs: CatalogSet, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL is backed up with ``pg_dump`` (the README says so): its dump, restored
    into an empty database by ``pg_restore``, loads the journal past these guards (it
    makes triggers after the rows), and is the same ledger: the same rows, the same
    schema revision, every invariant of ``verify()``, and the guards again in force.
    (SQLite is backed up by ``creditledger backup``: ``tests/e2e/test_backup.py``.)"""
    server: TempPostgres = request.getfixturevalue("postgres")
    ledger = Ledger(db, catalogs)
    ledger.open_account("c", "credit", idempotency_key=key())
    topup = ledger.top_up("c", 1_000, idempotency_key=key())
    hold = ledger.authorize("c", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    ledger.capture(hold.id, status="COMPLETED", usage={}, idempotency_key=key())
    ledger.reverse(topup.entry.id, reason="chargeback", idempotency_key=key())
    dump = tmp_path / "ledger.dump"
    source = str(db.engine.url.database)
    target = f"restored_{source}"
    tool = {"-h": "127.0.0.1", "-p": str(server.port), "-U": "postgres"}
    connection = [part for pair in tool.items() for part in pair]
    subprocess.run(
        [str(server.bindir / "pg_dump"), *connection, "-Fc", "-f", str(dump), source],
        check=True,
        capture_output=True,
    )
    subprocess.run([str(server.bindir / "createdb"), *connection, target], check=True)
    restore = [str(server.bindir / "pg_restore"), *connection, "--exit-on-error", "-d", target]
    subprocess.run([*restore, str(dump)], check=True, capture_output=True)
    restored = Database.from_url(server.url(target))
    try:
        assert verify(restored) == []
        assert _journal(restored) == _journal(db)
        for table in ("accounts", "grants", "holds", "metering_records", "alembic_version"):
            assert _rows(restored, table) == _rows(db, table), table
        found = _ids(restored)
        c, funding = found["c"], found["system:funding:credit"]
        _refused(restored, [(c, "credit", 5), (funding, "credit", -4)], c, "unbalanced entry")
        with pytest.raises(sa.exc.DBAPIError, match="sealed"), restored.transaction() as conn:
            _post(conn, topup.entry.id, [(c, "credit", 1), (funding, "credit", -1)], _NOW)
        with pytest.raises(sa.exc.DBAPIError, match="immutable"), restored.transaction() as conn:
            conn.exec_driver_sql("DELETE FROM postings")
    finally:
        restored.dispose()
        admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {target} WITH (FORCE)")
        admin.dispose()
