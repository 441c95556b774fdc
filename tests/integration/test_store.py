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
