"""Every statement the use cases run is served by an index: none reads a table whole,
nor all of one wallet's history.

A table read whole costs nothing in a test and grows with every request in production:
a chargeback once summed a grant's expiries by reading every grant's movements, under
SQLite's write lock (2 million movements: 100 ms for every writer). Each statement of a
day's use cases (of the gateway, the admin, finance and the sweepers) is planned as the
database ran it:

- SQLite, from the statements as they ran (with their parameters): its planner keeps
  no statistics here, so its plan says what the indexes allow. No ``SCAN`` of a table,
  nor of a whole index; and no search of a table that grows with every request by the
  wallet alone (a wallet's holds, postings, entries), but for the first page of them in
  order: that too grows with every request, of a customer at a time (a refused
  authorization once looked for lapsed holds among all of its wallet's, under the write
  lock; each next page of a listing walked past the rows of all the pages before).
- PostgreSQL, by the server itself as it runs them (``auto_explain``, its trigger
  functions' statements included), with sequential scans priced out: one is chosen only
  where no index serves the statement at all. (On a test's few rows it rightly prefers
  walking a small index whole to looking a row up, so only sequential scans are telling.)
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from ledger.db import Database
from ledger.keys import Keys
from ledger.services import Ledger
from ledger.verify import verify
from pricing.catalog import CatalogSet
from reports.jobs import Reports
from tests import factories as f
from tests.factories import Clock, key

VEO_FAST = f.veo3_video(video_model="veo3_fast")
#: The server's plan of each statement, sent to the client as a notice.
EXPLAINED = (
    "-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0 "
    "-c auto_explain.log_level=notice -c auto_explain.log_nested_statements=on "
    "-c client_min_messages=notice -c enable_seqscan=off"
)
#: Statements that may read a table whole by design, with why. The monthly allocation
#: round reads every wallet that has one (``Ledger._allocations_due``: 50 ms a round for
#: 100,000 wallets, on a reader, never under the write lock). A page of wallets is read
#: in the order they were opened, until it is full (of a unit few wallets count in, that
#: may be all of them: an admin's listing, not a request path). A statement of every
#: wallet lists them all, in batches, and the holds open at its end of each (once a job,
#: wallet by wallet). A page of API keys is read in the order they were made, until it
#: is full, as a page of wallets is (one wallet's keys by an index of their own).
WHOLE_BY_DESIGN = (
    "accounts.monthly_allocation IS NOT NULL",
    "ORDER BY accounts.id LIMIT",
    "ORDER BY accounts.external_id",
    "WITH listed AS (SELECT accounts.id AS id FROM accounts WHERE accounts.kind = ?)",
    "ON accounts.id = api_keys.account_id ORDER BY api_keys.created_at, api_keys.id LIMIT",
)
#: Tables of a few rows whatever the traffic (the catalog's units, the schema's version).
SMALL = {"units", "alembic_version", "price_versions"}
#: Indexes of a few rows of a wallet whatever its traffic, which may be read whole: the
#: holds open now (the requests in flight; the hold sweeper walks them all), and the
#: wallet's top-ups, expiries and corrections (not its requests).
FEW = {"ix_holds_account_pending", "ix_entries_account_occasional"}
#: Tables that take rows with every request a wallet makes: a statement that reads all
#: of one wallet's rows of them grows with its history.
PER_REQUEST = {"holds", "postings", "entries", "metering_records", "grant_movements"}


def _day(ledger: Ledger, clock: Clock) -> None:
    """A day of the use cases on two wallets: the gateway's, the admin's, finance's and
    the sweepers'."""
    ledger.open_account("acme", "credit", idempotency_key=key(), monthly_allocation=500)
    ledger.open_account("beta", "credit", idempotency_key=key(), overdraft_limit=100)
    soon = clock.now + timedelta(hours=1)
    pack = ledger.top_up("acme", 5_000, idempotency_key=key(), reference="pi_1", expires_at=soon)
    ledger.top_up("acme", 700, idempotency_key=key(), kind="promo", reference="pi_2")
    ledger.top_up("beta", 500, idempotency_key=key())
    hold = ledger.authorize("acme", VEO_FAST, idempotency_key=key(), request_id="r-1")
    ledger.capture(hold.id, status="COMPLETED", usage=None, idempotency_key=key())
    voided = ledger.authorize("acme", VEO_FAST, idempotency_key=key())
    ledger.void(voided.id, idempotency_key=key())
    extended = ledger.authorize("beta", VEO_FAST, idempotency_key=key())
    ledger.extend(extended.id, ttl=timedelta(minutes=30), idempotency_key=key())
    lapsing = ledger.authorize("beta", VEO_FAST, ttl=timedelta(minutes=1), idempotency_key=key())
    charged = ledger.charge("acme", VEO_FAST, idempotency_key=key(), request_id="r-2")
    ledger.report_usage("acme", VEO_FAST, status="COMPLETED", usage=None, idempotency_key=key())
    ledger.adjust("acme", -5, reason="rounding", idempotency_key=key())
    assert charged.entry_id is not None
    ledger.reverse(charged.entry_id, reason="blank video", idempotency_key=key())
    promo = next(g for g in ledger.account("acme").grants if g.kind == "promo")
    ledger.revoke_grant(promo.id, reason="withdrawn", idempotency_key=key())
    ledger.update_account("beta", idempotency_key=key(), overdraft_limit=200, reason="trusted")
    # A spend limit (each request then sums the month's spending), a block and its end.
    ledger.update_account("acme", idempotency_key=key(), monthly_spend_limit=100_000)
    ledger.authorize("acme", VEO_FAST, idempotency_key=key())
    ledger.charge("acme", VEO_FAST, idempotency_key=key())
    ledger.update_account("beta", idempotency_key=key(), blocked=True, reason="abuse")
    ledger.update_account("beta", idempotency_key=key(), blocked=False)
    ledger.check_top_up("acme", 10, kind="promo")
    ledger.check_usage_report("acme", VEO_FAST, status="COMPLETED", usage=None)
    clock.advance(hours=1)
    # Short without the holds past their expiry, which no sweeper has released yet.
    ledger.affordability("beta", ledger.quote(VEO_FAST))
    ledger.authorize("beta", VEO_FAST, idempotency_key=key())
    assert ledger.hold(lapsing.id).status == "expired"  # released by that authorization
    ledger.expire_holds()
    ledger.expire_grants()
    ledger.roll_allocations()
    ledger.prune_idempotency_keys()
    ledger.reverse(pack.entry.id, reason="chargeback", idempotency_key=key())
    clock.advance(minutes=1)
    assert ledger.hold(lapsing.id).status == "expired"
    ledger.balance("acme")
    ledger.balance("acme", as_of=clock.now - timedelta(minutes=30))
    ledger.account("acme")
    ledger.accounts(unit="credit")
    ledger.entries("acme")
    ledger.entries("acme", kind="topup")
    ledger.entries("acme", reference="pi_1")
    ledger.journal(reference="pi_2")
    ledger.usage_records("acme", request_id="r-1")
    ledger.usage_record(charged.id)
    ledger.holds_of("beta", status="pending")
    ledger.holds_of("acme", status="captured")
    ledger.holds_of("acme")
    ledger.entries("acme", since=clock.now - timedelta(hours=2), until=clock.now)
    ledger.usage_records("acme")
    ledger.usage_records("acme", status="COMPLETED", since=clock.now - timedelta(hours=2))
    # The next page of each: read on from the cursor.
    ledger.entries("acme", cursor=ledger.entries("acme", limit=1).next_cursor)
    ledger.usage_records("acme", cursor=ledger.usage_records("acme", limit=1).next_cursor)
    ledger.holds_of("acme", cursor=ledger.holds_of("acme", limit=1).next_cursor)
    ledger.account_changes("beta", cursor=ledger.account_changes("beta", limit=1).next_cursor)
    ledger.grants_of("acme")
    ledger.unpriceable_holds()
    # A wallet's statement of the month: from its rollups, and (in another timezone than
    # its own) from its journal.
    month = clock.now.strftime("%Y-%m")
    f.make_statement(ledger.db, month, "UTC", "acme")
    f.make_statement(ledger.db, month, "Asia/Tokyo", "acme")
    # The API keys: made, checked, listed, revoked.
    keys = Keys(ledger.db, clock=clock)
    made = keys.create("customer", account_id="acme", name="dashboard")
    assert keys.authenticate(made.key) is not None
    first = keys.page(limit=1)
    keys.page(limit=1, cursor=first.next_cursor)
    keys.page(account_id="acme", active=True)
    keys.revoke(made.id)
    # Into the next month: its allocations, and last month's statements as report jobs
    # (every wallet's, a batch at a time, and one wallet's).
    clock.advance(days=12)
    ledger.roll_allocations()
    ledger.expire_grants()
    reports = Reports(ledger.db, clock=clock)
    reports.request(month, "csv")
    reports.request(month, "json", account_id="acme", timezone="Asia/Tokyo")
    assert reports.run_pending() == 2
    ledger.usage("acme")
    ledger.account_changes("beta")


@contextmanager
def _sqlite_statements(db: Database) -> Iterator[dict[str, Any]]:
    """The statements SQLite ran meanwhile, on every connection, each with the values it
    was given. Those SQLAlchemy sent keep their parameters apart, as SQLite planned them
    (a value written in is planned otherwise than a parameter: given a page's cursor, an
    instant twice, SQLite finds the range in its literals that it cannot in parameters);
    the write path's own statements (``ledger.store``) come with their values written in."""
    ran: dict[str, Any] = {}
    sending = threading.local()
    recording = True

    def note(statement: str) -> None:
        # The trace of a statement SQLAlchemy sends is left to ``sent``; the connections
        # stay traced after, back in their pools.
        if recording and not getattr(sending, "now", False):
            ran.setdefault(statement, ())

    def trace(dbapi: Any, _record: Any) -> None:
        dbapi.set_trace_callback(note)

    def sent(*args: Any) -> None:
        statement, parameters, many = args[2], args[3], args[5]
        sending.now = True
        if recording:
            ran.setdefault(statement, parameters[0] if many else parameters)

    def done(*_args: Any) -> None:
        sending.now = False

    engines = {db.engine, db._write_engine}
    events = (("connect", trace), ("before_cursor_execute", sent))
    ends = (("after_cursor_execute", done), ("handle_error", done))
    for engine in engines:
        for name, listener in (*events, *ends):
            sa.event.listen(engine, name, listener)
        engine.dispose()  # none connected before the trace
    try:
        yield ran
    finally:
        recording = False
        for engine in engines:
            for name, listener in (*events, *ends):
                sa.event.remove(engine, name, listener)


def _sqlite_reads_whole(path: str, statements: dict[str, Any]) -> dict[str, str]:
    """The statements whose plan reads a table (or an index) whole, or all of one
    wallet's rows of a table that grows with its requests: their plans."""
    found = {}
    with closing(sqlite3.connect(path)) as conn:
        # Each index's table: a plan names a table by its alias in the statement, if any.
        tables = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"))
        for text, parameters in statements.items():
            if not re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", text, re.IGNORECASE):
                continue  # BEGIN, PRAGMA, a trigger's marker
            plan = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + text, parameters)]
            # The rows of a subquery or a WITH, made by the statement: not a table.
            derived = {
                m[1] for p in plan if (m := re.match(r"(?:CO-ROUTINE|MATERIALIZE) (\w+)", p))
            }
            if any(_reads_whole(step, derived) for step in plan) or _reads_a_history(
                text, plan, tables
            ):
                found[text] = " | ".join(plan)
    return found


def _reads_whole(step: str, derived: set[str]) -> bool:
    """Whether a step of a SQLite plan reads a table whole (not the rows of a subquery,
    nor an index of a few rows whatever the traffic)."""
    if "AUTOMATIC" in step:  # an index built for the statement, from the whole table
        return True
    scan = re.match(r"(?:SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?|SEARCH (\w+)$)", step)
    if scan is None or re.match(r"SCAN (\d+ )?CONSTANT ROW", step):  # VALUES
        return False
    name = scan[1] or scan[3]  # a SEARCH without an index reads all of it, each time
    return name not in SMALL | derived and scan[2] not in FEW


def _reads_a_history(text: str, plan: list[str], tables: dict[str, str]) -> bool:
    """Whether a plan reads all of one wallet's rows of a table that grows with its
    requests: by the wallet alone, other than the first page of them in the index's
    order."""
    by_wallet = [
        step
        for step in plan
        if (found := re.match(r"SEARCH \w+ (?:AS \w+ )?USING (?:COVERING )?INDEX (\w+) ", step))
        and tables.get(found[1]) in PER_REQUEST
        and found[1] not in FEW
        and step.endswith("(account_id=?)")
    ]
    # In the index's order: sorted only among rows of one instant ("RIGHT PART"), if at all.
    a_page = re.search(r"\bLIMIT\b", text) and "USE TEMP B-TREE FOR ORDER BY" not in plan
    # A page after a cursor (its instant and id) that the index finds by the wallet alone
    # walks from the newest row past those of every page before it.
    resumed = re.search(r"(\w+\.\w+) [<>] \? OR \1 = \? AND", text)
    return bool(by_wallet) and not (a_page and not resumed)


def _postgresql_reads_whole(url: str, catalogs: CatalogSet) -> dict[str, str]:
    """The plans (as the server logged them) of the statements it ran on a sequential
    scan, sequential scans priced out: where no index serves them."""
    plans: list[str] = []
    db = Database.from_url(f"{url}?options={quote(EXPLAINED)}")

    def notices(dbapi: Any, _record: Any) -> None:
        dbapi.add_notice_handler(lambda diagnostic: plans.append(diagnostic.message_primary))

    sa.event.listen(db.engine, "connect", notices)
    try:
        _day(Ledger(db, catalogs, clock=(clock := Clock())), clock)
    finally:
        db.dispose()
    plain = Database.from_url(url)  # not explained: it reads every table whole, to check it
    try:
        assert verify(plain) == []
    finally:
        plain.dispose()
    assert any("Index Scan" in plan for plan in plans), plans[:3]  # the plans came
    return {
        plan: plan
        for plan in plans
        if any(table not in SMALL for table in re.findall(r"Seq Scan on (\w+)", plan))
    }


def test_no_statement_of_the_use_cases_reads_a_table_whole(
    database_url: str, catalogs: CatalogSet
) -> None:
    if database_url.startswith("sqlite"):
        db = Database.from_url(database_url)
        try:
            with _sqlite_statements(db) as ran:
                _day(Ledger(db, catalogs, clock=(clock := Clock())), clock)
            assert verify(db) == []  # not traced: it reads every table whole, to check it
        finally:
            db.dispose()
        assert len(ran) > 100
        whole = _sqlite_reads_whole(sa.make_url(database_url).database or "", ran)
    else:
        whole = _postgresql_reads_whole(database_url, catalogs)
    unexpected = {
        text: plan
        for text, plan in whole.items()
        if not any(marker in " ".join(text.split()) for marker in WHOLE_BY_DESIGN)
    }
    assert unexpected == {}
