"""The money paths' statement runner on each database: reads sent together, and row
counts checked before the commit (PostgreSQL runs both inside a pipeline)."""

from __future__ import annotations

import pytest

from ledger.db import Database
from ledger.store import Sql, Store

INSERT = Sql("INSERT INTO scratch (id, state) VALUES (:id, :state)")
RESOLVE = Sql("UPDATE scratch SET state = 'done' WHERE id = :id AND state = 'open'")
STATE = Sql("SELECT state FROM scratch WHERE id = :id")


class Refused(Exception):
    pass


@pytest.fixture
def scratch(db: Database) -> Database:
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
    return db


def states(db: Database) -> dict[int, str]:
    with db.transaction(write=False) as conn:
        return dict(conn.exec_driver_sql("SELECT id, state FROM scratch").all())


def test_reads_return_each_querys_rows_in_order(scratch: Database) -> None:
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=scratch.is_sqlite)
        with store.batch():
            store.run(INSERT, {"id": 1, "state": "open"})
            store.run(INSERT, {"id": 2, "state": "done"})
            first, missing, second = store.reads(
                (STATE, {"id": 1}), (STATE, {"id": 3}), (STATE, {"id": 2})
            )
    assert (first, missing, second) == ([("open",)], [], [("done",)])


def test_an_expected_count_that_is_met_commits(scratch: Database) -> None:
    with scratch.transaction() as conn:
        Store(conn, sqlite=scratch.is_sqlite).run(INSERT, {"id": 1, "state": "open"})
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=scratch.is_sqlite)
        with store.batch():
            store.expect(RESOLVE, {"id": 1}, rows=1, failure=Refused)
            store.run(INSERT, {"id": 2, "state": "open"})
    assert states(scratch) == {1: "done", 2: "open"}


def insert_resolve_insert(db: Database) -> None:
    with db.transaction() as conn:
        store = Store(conn, sqlite=db.is_sqlite)
        with store.batch():
            store.run(INSERT, {"id": 2, "state": "open"})
            # Changes no row: row 1 is no longer 'open'.
            store.expect(RESOLVE, {"id": 1}, rows=1, failure=Refused)
            store.run(INSERT, {"id": 3, "state": "open"})


def test_an_expected_count_that_is_missed_rolls_everything_back(scratch: Database) -> None:
    with scratch.transaction() as conn:
        Store(conn, sqlite=scratch.is_sqlite).run(INSERT, {"id": 1, "state": "done"})
    with pytest.raises(Refused):
        insert_resolve_insert(scratch)
    assert states(scratch) == {1: "done"}


def test_a_committing_batch_commits_where_it_ends(scratch: Database) -> None:
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=scratch.is_sqlite)
        with store.batch(commit=True):
            store.run(INSERT, {"id": 1, "state": "open"})
            store.run(INSERT, {"id": 2, "state": "open"})
        if not scratch.is_sqlite:
            # PostgreSQL: the COMMIT went with the writes; others see them already.
            assert states(scratch) == {1: "open", 2: "open"}
    assert states(scratch) == {1: "open", 2: "open"}


def committing_batch(
    db: Database, *rows: tuple[int, str], resolve: int | None = None, fail: bool = False
) -> None:
    """Insert ``rows`` (then resolve row ``resolve``, expecting one row; then raise Refused
    when ``fail``) in a committing batch."""
    with db.transaction() as conn:
        store = Store(conn, sqlite=db.is_sqlite)
        with store.batch(commit=True):
            for id_, state in rows:
                store.run(INSERT, {"id": id_, "state": state})
            if resolve is not None:
                store.expect(RESOLVE, {"id": resolve}, rows=1, failure=Refused)
            if fail:
                raise Refused


def test_a_committing_batch_checks_its_counts_before_the_commit(scratch: Database) -> None:
    committing_batch(scratch, (1, "done"))
    with pytest.raises(Refused):
        committing_batch(scratch, (2, "open"), resolve=1)
    assert states(scratch) == {1: "done"}


def test_a_committing_batch_that_raises_commits_nothing(scratch: Database) -> None:
    with pytest.raises(Refused):
        committing_batch(scratch, (1, "open"), fail=True)
    assert states(scratch) == {}


# PostgreSQL only: its deferred constraint triggers run at COMMIT.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_commit_refused_in_the_pipeline_leaves_nothing_and_the_next_commits(
    scratch: Database,
) -> None:
    with scratch.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION scratch_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.state = 'poison' THEN RAISE EXCEPTION 'refused at commit'; END IF; "
            "RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER scratch_refuse AFTER INSERT ON scratch "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION scratch_refuse()"
        )
    with pytest.raises(Exception, match="refused at commit"):
        committing_batch(scratch, (1, "open"), (2, "poison"))
    assert states(scratch) == {}
    committing_batch(scratch, (3, "open"))
    assert states(scratch) == {3: "open"}
