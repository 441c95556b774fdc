"""The money paths' statement runner on each database: reads sent together, writes
combined, and row counts checked before the commit (PostgreSQL runs them in a pipeline)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from ledger.db import BEGIN_PENDING, Database
from ledger.store import UPSERT_DAILY, Sql, Store

INSERT = Sql("INSERT INTO scratch (id, state) VALUES (:id, :state)")
RESOLVE = Sql("UPDATE scratch SET state = 'done' WHERE id = :id AND state = 'open'")
BUMP = Sql("UPDATE scratch SET hits = hits + 1 WHERE id = :id")
LOG = Sql("INSERT INTO scratch_log (id, note) VALUES (:id, :note)")
COPY = Sql("INSERT INTO scratch_free (note) SELECT state FROM scratch WHERE id = :id")
LOG_FREE = Sql("INSERT INTO scratch_free (note) VALUES (:note)")
STATE = Sql("SELECT state FROM scratch WHERE id = :id")


class Refused(Exception):
    pass


@pytest.fixture
def scratch(db: Database) -> Database:
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE scratch (id INTEGER PRIMARY KEY, state TEXT NOT NULL, "
            "hits INTEGER NOT NULL DEFAULT 0)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE scratch_log (id INTEGER PRIMARY KEY REFERENCES scratch (id), "
            "note TEXT NOT NULL)"
        )
        serial = "INTEGER PRIMARY KEY" if db.is_sqlite else "SERIAL PRIMARY KEY"
        conn.exec_driver_sql(f"CREATE TABLE scratch_free (seq {serial}, note TEXT NOT NULL)")
    return db


def states(db: Database) -> dict[int, str]:
    with db.transaction(write=False) as conn:
        return dict(conn.exec_driver_sql("SELECT id, state FROM scratch").all())


def hits(db: Database) -> dict[int, int]:
    with db.transaction(write=False) as conn:
        return dict(conn.exec_driver_sql("SELECT id, hits FROM scratch").all())


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


def test_a_batchs_writes_take_effect_in_program_order(scratch: Database) -> None:
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=scratch.is_sqlite)
        with store.batch(commit=True):
            store.run(INSERT, {"id": 1, "state": "open"})
            store.run(LOG, {"id": 1, "note": "refers to a row inserted just before"})
            store.run(BUMP, {"id": 1})  # meets the row inserted before it
            store.run(BUMP, {"id": 1})  # changes the row a second time
            store.many(INSERT, [{"id": 2, "state": "open"}, {"id": 3, "state": "open"}])
            store.run(BUMP, {"id": 3})
            store.expect(RESOLVE, {"id": 2}, rows=1, failure=Refused)
            store.run(COPY, {"id": 2})  # reads the row resolved just before
            store.run(BUMP, {"id": 2})
    assert hits(scratch) == {1: 2, 2: 1, 3: 1}
    with scratch.transaction(write=False) as conn:
        assert conn.exec_driver_sql("SELECT note FROM scratch_free").scalars().all() == ["done"]
    assert states(scratch) == {1: "open", 2: "done", 3: "open"}


def test_reads_in_a_batch_see_the_writes_before_them(scratch: Database) -> None:
    with scratch.transaction() as conn:
        store = Store.of(conn)
        with store.batch():
            store.run(INSERT, {"id": 1, "state": "open"})
            assert store.one(STATE, {"id": 1}) == ("open",)
            store.run(RESOLVE, {"id": 1})
            assert store.reads((STATE, {"id": 1})) == [[("done",)]]
            store.run(BUMP, {"id": 1})
            # A write through SQLAlchemy on the same connection comes after them too.
            conn.exec_driver_sql("UPDATE scratch SET hits = hits * 10")
    assert hits(scratch) == {1: 10}


def resolve_two(db: Database) -> None:
    """Resolve row 1, insert row 3, resolve row 2, each logged, in a committing batch."""
    with db.transaction() as conn:
        store = Store(conn, sqlite=db.is_sqlite)
        with store.batch(commit=True):
            store.expect(RESOLVE, {"id": 1}, rows=1, failure=Refused)
            store.run(LOG, {"id": 1, "note": "resolved"})
            store.run(INSERT, {"id": 3, "state": "open"})
            store.expect(RESOLVE, {"id": 2}, rows=1, failure=Refused)
            store.run(LOG, {"id": 3, "note": "inserted"})


def test_each_expected_count_of_a_batch_is_checked(scratch: Database) -> None:
    committing_batch(scratch, (1, "open"), (2, "done"))
    with pytest.raises(Refused):
        resolve_two(scratch)  # row 2 is not open
    assert states(scratch) == {1: "open", 2: "done"}
    with scratch.transaction(write=False) as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM scratch_log").scalar_one() == 0


class RefusedFirst(Refused):
    pass


class RefusedSecond(Refused):
    pass


@pytest.mark.parametrize("wrong", ["first", "second"])
def test_a_count_found_wrong_raises_its_own_failure_and_commits_nothing(
    scratch: Database, wrong: str
) -> None:
    committing_batch(scratch, (1, "open"), (2, "open"), (3, "done"))
    with pytest.raises(RefusedFirst if wrong == "first" else RefusedSecond):  # noqa: PT012
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                store.expect(
                    RESOLVE, {"id": 3 if wrong == "first" else 1}, rows=1, failure=RefusedFirst
                )
                store.run(LOG, {"id": 1, "note": "after the first"})
                # A read sends the writes held before it: a wrong count surfaces here
                # (PostgreSQL: from the server), or at the end of the batch.
                assert store.one(STATE, {"id": 1}) is not None
                store.expect(
                    RESOLVE, {"id": 3 if wrong == "second" else 2}, rows=1, failure=RefusedSecond
                )
                store.run(LOG, {"id": 2, "note": "after the second"})
    assert states(scratch) == {1: "open", 2: "open", 3: "done"}
    with scratch.transaction(write=False) as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM scratch_log").scalar_one() == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_connections_store_keeps_nothing_of_its_batches(scratch: Database) -> None:
    """A store lives as long as its connection: the failures of a batch's count checks
    go with the batch, else a server's every authorization would add one for good."""
    committing_batch(scratch, (1, "open"))
    for _ in range(3):
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                store.run(LOG_FREE, {"note": "x"})
                store.expect(BUMP, {"id": 1}, rows=1, failure=Refused)
            assert store._failures == []
            assert store._held == []
    assert hits(scratch) == {1: 3}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_failed_count_check_not_of_the_batch_is_raised_as_it_is(scratch: Database) -> None:
    # The function's error with a tag no check of this batch gave (a statement of its
    # own, say): the database's error, not a failure picked by an index out of range.
    def check_of_its_own() -> None:
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                store.run(INSERT, {"id": 1, "state": "open"})
                store.one(Sql("SELECT ledger_expect_rows(0, 1, 7)"), {})

    with pytest.raises(psycopg.Error) as raised:
        check_of_its_own()
    assert raised.value.sqlstate == "CL001"
    assert raised.value.diag.message_detail == "7"
    assert states(scratch) == {}


NOTE_LOG = Sql("UPDATE scratch_log SET note = :note WHERE id = :id")


@pytest.mark.parametrize("wrong", ["first", "second"])
def test_two_counted_writes_to_different_tables_are_each_checked(
    scratch: Database, wrong: str
) -> None:
    """Writes to different tables may go as one statement; a second counted write must
    not take the place of the first's check."""
    committing_batch(scratch, (1, "open"), (2, "done"))
    with scratch.transaction() as conn:
        Store.of(conn).run(LOG, {"id": 1, "note": "logged"})

    def resolve_then_note() -> None:
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                target = 2 if wrong == "first" else 1
                store.expect(RESOLVE, {"id": target}, rows=1, failure=RefusedFirst)
                noted = 2 if wrong == "second" else 1  # row 2 has no log line
                store.expect(NOTE_LOG, {"id": noted, "note": "x"}, rows=1, failure=RefusedSecond)

    with pytest.raises(RefusedFirst if wrong == "first" else RefusedSecond):
        resolve_then_note()
    assert states(scratch) == {1: "open", 2: "done"}
    with scratch.transaction(write=False) as conn:
        notes = conn.exec_driver_sql("SELECT note FROM scratch_log").scalars().all()
    assert notes == ["logged"]


def test_a_counted_write_held_after_another_tables_write_is_the_one_checked(
    scratch: Database,
) -> None:
    """In PostgreSQL the two go as one statement: the count checked is the counted
    write's, not that of the write before it (whose one row would pass)."""
    committing_batch(scratch, (1, "open"), (2, "done"))

    def log_then_resolve() -> None:
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                store.run(LOG, {"id": 1, "note": "logged"})
                store.expect(RESOLVE, {"id": 2}, rows=1, failure=Refused)  # row 2 is done

    with pytest.raises(Refused):
        log_then_resolve()
    assert states(scratch) == {1: "open", 2: "done"}
    with scratch.transaction(write=False) as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM scratch_log").scalar_one() == 0


BUMP_STATE = Sql("UPDATE scratch SET hits = hits + 1 WHERE state = :state")


@pytest.mark.parametrize(("rows", "ok"), [(2, True), (1, False), (3, False)])
def test_an_expected_count_other_than_one_is_checked_as_given(
    scratch: Database, rows: int, ok: bool
) -> None:
    committing_batch(scratch, (1, "open"), (2, "open"), (3, "done"))

    def bump_open() -> None:
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                store.expect(BUMP_STATE, {"state": "open"}, rows=rows, failure=Refused)

    if ok:
        bump_open()
        assert hits(scratch) == {1: 1, 2: 1, 3: 0}
    else:
        with pytest.raises(Refused):
            bump_open()
        assert hits(scratch) == {1: 0, 2: 0, 3: 0}


RESOLVE_RETURNING = Sql(
    "UPDATE scratch SET state = 'done' WHERE id = :id AND state = 'open' RETURNING id"
)


@pytest.mark.parametrize("target", [1, 2])
def test_a_count_of_a_write_that_cannot_be_held_back_is_checked_too(
    scratch: Database, target: int
) -> None:
    committing_batch(scratch, (1, "open"), (2, "done"))

    def resolve() -> None:
        with scratch.transaction() as conn:
            store = Store.of(conn)
            with store.batch(commit=True):
                store.run(BUMP, {"id": 1})
                assert RESOLVE_RETURNING.table is None  # it has a result: sent at once
                store.expect(RESOLVE_RETURNING, {"id": target}, rows=1, failure=Refused)
                store.run(BUMP, {"id": 2})

    if target == 2:  # already done: no row changes
        with pytest.raises(Refused):
            resolve()
        assert (states(scratch), hits(scratch)) == ({1: "open", 2: "done"}, {1: 0, 2: 0})
    else:
        resolve()
        assert (states(scratch), hits(scratch)) == ({1: "done", 2: "done"}, {1: 1, 2: 1})


def insert_then_refuse(db: Database, stores: list[Store]) -> None:
    with db.transaction() as conn:
        stores.append(Store.of(conn))
        with stores[0].batch():
            stores[0].run(INSERT, {"id": 1, "state": "open"})
            raise Refused


def test_writes_held_by_a_batch_that_raised_go_nowhere(scratch: Database) -> None:
    stores: list[Store] = []
    with pytest.raises(Refused):
        insert_then_refuse(scratch, stores)
    store = stores[0]
    with scratch.transaction() as conn:
        assert Store.of(conn) is store  # the same connection's store: nothing left in it
        with store.batch(commit=True):
            store.run(INSERT, {"id": 2, "state": "open"})
    assert states(scratch) == {2: "open"}


def sending(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the text of every statement psycopg's cursors run (PostgreSQL)."""
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def counting(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    return sent


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_batch_sends_its_writes_combined(
    scratch: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=False)
        sent = sending(monkeypatch)
        with store.batch(commit=True):
            store.many(INSERT, [{"id": 1, "state": "open"}, {"id": 2, "state": "open"}])
            store.run(LOG, {"id": 1, "note": "beside the row it refers to"})
            store.run(INSERT, {"id": 3, "state": "open"})  # the table's second write: apart
            store.expect(RESOLVE, {"id": 1}, rows=1, failure=Refused)  # and its third
            store.run(LOG, {"id": 2, "note": "beside the checked write"})
        monkeypatch.undo()
    # The transaction's BEGIN goes with the first write; the COMMIT with the last, since
    # the server checks the row count inside its statement.
    assert [q.split(" ", 1)[0] for q in sent] == ["BEGIN", "WITH", "INSERT", "WITH", "COMMIT"]
    assert "ledger_expect_rows" in sent[3]
    assert "), (" in sent[1]  # the rows of ``many``: one multi-row INSERT
    assert states(scratch) == {1: "done", 2: "open", 3: "open"}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_more_rows_than_a_multirow_insert_holds_go_one_by_one(
    scratch: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Store, "MULTIROW", 2)
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=False)
        sent = sending(monkeypatch)
        with store.batch(commit=True):
            store.many(LOG_FREE, [{"note": n} for n in ("a", "b")])
            store.many(LOG_FREE, [{"note": n} for n in ("c", "d", "e")])
        monkeypatch.undo()
    assert [q.split(" ", 1)[0] for q in sent] == ["BEGIN"] + ["INSERT"] * 4 + ["COMMIT"]
    with scratch.transaction(write=False) as conn:
        notes = conn.exec_driver_sql("SELECT note FROM scratch_free ORDER BY seq").scalars()
        assert list(notes) == ["a", "b", "c", "d", "e"]


def test_no_rows_of_a_multirow_insert_send_nothing(scratch: Database) -> None:
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=scratch.is_sqlite)
        with store.batch(commit=True):
            store.many(LOG_FREE, [])
            store.run(INSERT, {"id": 1, "state": "open"})
    assert states(scratch) == {1: "open"}
    with scratch.transaction(write=False) as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM scratch_free").scalar_one() == 0


COUNT = Sql(
    "INSERT INTO scratch (id, state, hits) VALUES (:id, 'open', :hits) "
    # Ends with a parenthesis, as the daily rollup's upsert does (its ``round(...)``).
    "ON CONFLICT (id) DO UPDATE SET hits = (scratch.hits + excluded.hits)"
)


def test_rows_of_an_upsert_go_one_by_one_so_rows_of_one_key_add_up(scratch: Database) -> None:
    # One multi-row INSERT ... ON CONFLICT DO UPDATE could not update a row twice
    # (PostgreSQL refuses it), and would repeat its ON CONFLICT clause after each row.
    assert INSERT.multirow
    assert not COUNT.multirow
    assert not UPSERT_DAILY.multirow
    with scratch.transaction() as conn:
        store = Store(conn, sqlite=scratch.is_sqlite)
        with store.batch(commit=True):
            store.many(COUNT, [{"id": 1, "hits": 2}, {"id": 1, "hits": 3}, {"id": 2, "hits": 4}])
    assert hits(scratch) == {1: 5, 2: 4}


# PostgreSQL write transactions send their own BEGIN with their first statement (the
# driver runs them in autocommit mode): whoever sends first, every statement must still
# run in the one transaction that the unit of work commits or rolls back.

TXID = Sql("SELECT txid_current()")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("first", ["sqlalchemy", "store", "batch"])
def test_a_write_transaction_is_one_transaction_whoever_sends_first(
    scratch: Database, first: str
) -> None:
    seen: list[int] = []
    with scratch.transaction() as conn:
        store = Store.of(conn)
        if first == "store":
            seen.append(txid(store.one(TXID, {})))
        elif first == "batch":
            with store.batch():
                store.run(INSERT, {"id": 1, "state": "open"})  # held back, then sent
                [[row]] = store.reads((TXID, {}))
                seen.append(txid(row))
        seen.append(txid(conn.exec_driver_sql(TXID.sqlite).one()))
        seen.append(txid(store.one(TXID, {})))
    assert len(set(seen)) == 1, seen


def txid(row: Any) -> int:
    return int(row[0])


def insert_each_way(db: Database, first: str) -> None:
    """Insert rows 1 to 3 (the first by ``first``, then by the store, in a batch and by
    SQLAlchemy), then fail."""
    with db.transaction() as conn:
        store = Store.of(conn)
        if first == "sqlalchemy":
            conn.exec_driver_sql("INSERT INTO scratch (id, state) VALUES (1, 'open')")
        else:
            store.run(INSERT, {"id": 1, "state": "open"})
        with store.batch():
            store.run(INSERT, {"id": 2, "state": "open"})
            assert store.one(STATE, {"id": 2}) == ("open",)
        conn.exec_driver_sql("INSERT INTO scratch (id, state) VALUES (3, 'open')")
        assert states_in(conn) == {1: "open", 2: "open", 3: "open"}
        raise Refused


def states_in(conn: Any) -> dict[int, str]:
    return dict(conn.exec_driver_sql("SELECT id, state FROM scratch").all())


@pytest.mark.parametrize("first", ["sqlalchemy", "store"])
def test_a_failed_write_transaction_leaves_nothing_whoever_sent_first(
    scratch: Database, first: str
) -> None:
    with pytest.raises(Refused):
        insert_each_way(scratch, first)
    assert states(scratch) == {}


def test_a_write_transaction_that_sent_nothing_commits_nothing(
    scratch: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with scratch.transaction() as conn:
        store = Store.of(conn)
        sent = sending(monkeypatch)
        with store.batch(commit=True):
            pass
        monkeypatch.undo()
    assert sent == []  # PostgreSQL: no COMMIT without its BEGIN (nor a round trip)
    committing_batch(scratch, (1, "open"))
    assert states(scratch) == {1: "open"}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_read_after_a_write_on_the_same_connection_is_a_transaction(
    database_url: str,
) -> None:
    db = Database.from_url(database_url, pool_size=1, max_overflow=0)
    try:
        with db.transaction() as conn:
            raw: Any = conn.connection.driver_connection
            assert raw.autocommit  # the unit of work sends its own BEGIN
            Store.of(conn).one(TXID, {})
        with db.snapshot() as conn:
            assert not raw.autocommit  # back to the driver's transactions
            assert conn.connection.driver_connection is raw
            isolation = conn.exec_driver_sql("SHOW transaction_isolation").scalar_one()
            assert isolation == "repeatable read"
    finally:
        db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_write_that_sent_nothing_leaves_no_begin_to_the_next_transaction(
    database_url: str,
) -> None:
    """A write transaction's BEGIN goes with its first statement; one that ran none (a use
    case that refused before reading anything) takes it along when it ends: the next
    transaction on the connection, a read, does not send a BEGIN inside its own."""
    db = Database.from_url(database_url, pool_size=1, max_overflow=0)
    notices: list[str] = []
    used: list[Any] = []

    def refuse() -> None:
        with db.transaction() as conn:
            used.append(conn.connection.driver_connection)
            used[0].add_notice_handler(lambda diag: notices.append(diag.message_primary))
            assert conn.info[BEGIN_PENDING]
            raise LookupError("refused before any statement")

    try:
        with pytest.raises(LookupError, match="refused before any statement"):
            refuse()
        (raw,) = used
        with db.transaction(write=False) as conn:
            assert conn.connection.driver_connection is raw
            assert BEGIN_PENDING not in conn.info
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert notices == []  # "there is already a transaction in progress"
    finally:
        db.dispose()


def round_trips(trace: str) -> list[str]:
    """The client's messages of each round trip in a libpq trace (``PQtrace``), one text
    per round trip: each run of frontend messages that the client then waits on the
    backend's answer to."""
    trips: list[list[str]] = []
    sending = False
    for line in trace.splitlines():
        direction, _, message = line.split("\t", 2)
        if direction == "F" and not sending:
            trips.append([])
        if direction == "F":
            trips[-1].append(message)
        sending = direction == "F"
    return ["\n".join(trip) for trip in trips]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_authorization_its_capture_and_a_charge_take_two_round_trips_each(
    database_url: str, tmp_path: Any
) -> None:
    from psycopg.pq import Trace

    from ledger.services import Ledger
    from pricing import default_catalogs
    from tests import factories as f
    from tests.factories import key

    db = Database.from_url(database_url, pool_size=1, max_overflow=0)
    try:
        ledger = Ledger(db, default_catalogs())
        ledger.open_account("traced", "token", idempotency_key=key())
        ledger.top_up("traced", 10**9, idempotency_key=key())
        with db.engine.connect() as conn:  # the pool's one connection
            raw = conn.connection.driver_connection
            assert raw is not None
        trips: dict[str, list[str]] = {}
        for step in ("authorize", "capture", "charge"):
            path = tmp_path / f"{step}.trace"
            with path.open("w") as out:
                raw.pgconn.trace(out.fileno())
                raw.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
                try:
                    if step == "authorize":
                        hold = ledger.authorize(
                            "traced", f.text(max_tokens=100), idempotency_key=key()
                        )
                    elif step == "charge":
                        ledger.charge("traced", f.cosmic_image(), idempotency_key=key())
                    else:
                        ledger.capture(
                            hold.id,
                            status="COMPLETED",
                            usage={"input_tokens": 10, "output_tokens": 20},
                            idempotency_key=key(),
                        )
                finally:
                    raw.pgconn.untrace()
            trips[step] = round_trips(path.read_text())
    finally:
        db.dispose()
    # Each: BEGIN with the wallet lock and the reads under it; then the writes with the
    # COMMIT (the capture's resolving write checks its own row count). BEGIN never goes
    # alone, and it goes first: no statement runs outside the transaction.
    assert {step: len(sent) for step, sent in trips.items()} == dict.fromkeys(trips, 2), trips
    for sent in trips.values():
        assert sent[0].startswith('Parse\t "" "BEGIN"'), sent  # before any statement
        assert sent[0].count("Execute") > 1, sent  # and not alone
        assert '"COMMIT"' in sent[-1], sent
