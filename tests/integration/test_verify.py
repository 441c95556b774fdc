"""verify() finds each invariant broken behind the ledger's back, and names what broke.

The ledger itself never writes such books (the other tests check that ``verify`` finds
nothing after every operation). Here a sound set of books is changed directly in the
database, past the triggers and foreign keys that guard it, as a bug in a migration or a
hand at the SQL prompt could. Each case breaks one thing and expects exactly the checks
that thing breaks: a check that found nothing, or found it under another name, fails.
"""

from __future__ import annotations

import inspect
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ledger.verify as verify_module
from ledger.db import Database
from ledger.models import accounts, postings
from ledger.services import Ledger
from ledger.verify import verify
from tests import factories as f
from tests.conftest import seeded
from tests.factories import Clock, key

VEO_FAST = f.veo3_video(video_model="veo3_fast")


@dataclass(frozen=True)
class Books:
    """The ids of a small, sound set of books: two credit wallets and a USD one; alice
    with two grants, a captured hold, a voided one, an expired one, a pending one, and a
    refunded charge;
    dave, whose promotion expired unspent and was then taken back;
    erin, whose pack paid for a charge and was then taken back, and the charge refunded
    (into a grant of its own)."""

    alice: int
    bob: int
    revenue: int
    funding: int
    pack: str
    promo: str
    captured: str
    voided: str
    lapsed_hold: str
    pending: str
    bob_topup: str
    refund: str
    dave: int
    expired: int
    takeback: str
    erin_pack: str
    erin_refund: str
    erin_refund_grant: str


def tamper(db: Database, *statements: str) -> None:
    """Run ``statements`` in one transaction with the ledger's guards off: on SQLite, its
    own connection (foreign keys are off unless asked for) with the journal's triggers
    dropped and made again; on PostgreSQL, as a replica applies changes (no trigger, no
    foreign key fires)."""
    if db.is_sqlite:
        path = db.engine.url.database
        assert path is not None
        with closing(sqlite3.connect(path)) as raw, raw:
            guards = raw.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                "AND tbl_name IN ('entries', 'postings')"
            ).fetchall()
            assert guards  # the tampering below is past them, not beside them
            for name, _sql in guards:
                raw.execute(f"DROP TRIGGER {name}")
            for statement in statements:
                raw.execute(statement)
            for _name, sql in guards:
                raw.execute(sql)
    else:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            for statement in statements:
                conn.exec_driver_sql(statement)


def _books(ledger: Ledger, clock: Clock) -> Books:
    db = ledger.db
    for name, unit in (("alice", "credit"), ("bob", "credit"), ("carol", "usd")):
        ledger.open_account(name, unit, idempotency_key=key())
    ledger.open_account("dave", "credit", idempotency_key=key())
    hour = clock.now + timedelta(hours=1)
    lapsed = ledger.top_up("dave", 100, kind="promo", expires_at=hour, idempotency_key=key())
    clock.advance(hours=2)
    assert ledger.expire_grants() == 1
    takeback = ledger.reverse(lapsed.entry.id, reason="void", idempotency_key=key()).entry
    pack = ledger.top_up("alice", 1_000, idempotency_key=key()).grant
    promo = ledger.top_up("alice", 50, kind="promo", idempotency_key=key()).grant
    bob_topup = ledger.top_up("bob", 300, idempotency_key=key()).entry
    captured = ledger.authorize("alice", VEO_FAST, idempotency_key=key()).id
    ledger.capture(captured, status="COMPLETED", usage={"videos": 1}, idempotency_key=key())
    voided = ledger.authorize("alice", VEO_FAST, idempotency_key=key()).id
    ledger.void(voided, idempotency_key=key())
    lapsed_hold = ledger.authorize(
        "alice", VEO_FAST, idempotency_key=key(), ttl=timedelta(seconds=1)
    ).id
    clock.advance(seconds=2)
    assert ledger.expire_holds() == 1
    pending = ledger.authorize("alice", VEO_FAST, idempotency_key=key()).id
    charge = ledger.charge("alice", VEO_FAST, idempotency_key=key())
    assert charge.entry_id is not None
    assert pack is not None
    assert promo is not None
    refund = ledger.reverse(charge.entry_id, reason="refund", idempotency_key=key()).entry
    ledger.open_account("erin", "credit", idempotency_key=key())
    erin_pack = ledger.top_up("erin", 300, idempotency_key=key())
    erin_charge = ledger.charge("erin", VEO_FAST, idempotency_key=key()).entry_id
    assert erin_charge is not None
    ledger.reverse(erin_pack.entry.id, reason="chargeback", idempotency_key=key())
    ledger.top_up("erin", 500, idempotency_key=key())
    erin_refund = ledger.reverse(erin_charge, reason="refund", idempotency_key=key()).entry
    (erin_refund_grant,) = [
        g.id for g in ledger.grants_of("erin") if g.reference == f"reversal of {erin_charge}"
    ]
    assert erin_pack.grant is not None
    assert verify(db) == []  # sound before any case breaks it
    with db.transaction(write=False) as conn:
        ids = dict(conn.execute(sa.select(accounts.c.external_id, accounts.c.id)).all())
        system = dict(
            conn.execute(
                sa.select(accounts.c.kind, accounts.c.id).where(
                    accounts.c.unit == "credit",
                    accounts.c.kind.in_(["revenue", "funding", "expired"]),
                )
            ).all()
        )
    return Books(
        alice=ids["alice"],
        bob=ids["bob"],
        revenue=system["revenue"],
        funding=system["funding"],
        pack=pack.id,
        promo=promo.id,
        captured=captured,
        voided=voided,
        lapsed_hold=lapsed_hold,
        pending=pending,
        bob_topup=bob_topup.id,
        refund=refund.id,
        dave=ids["dave"],
        expired=system["expired"],
        takeback=takeback.id,
        erin_pack=erin_pack.grant.id,
        erin_refund=erin_refund.id,
        erin_refund_grant=erin_refund_grant,
    )


#: The books (made once per test process and database, then copied for each test).
books = seeded("books", _books)


def _entry_copy(b: Books) -> str:
    columns = "kind, account_id, posted_at, memo, actor"
    return (
        f"INSERT INTO entries (id, {columns}) "
        f"SELECT 'bare', {columns} FROM entries WHERE id = '{b.bob_topup}'"
    )


def _ghost_postings(b: Books) -> list[str]:
    return [
        "INSERT INTO postings (entry_id, account_id, unit, amount, posted_at) "
        f"SELECT 'ghost', {b.funding}, 'credit', {amount}, posted_at "
        f"FROM entries WHERE id = '{b.bob_topup}'"
        for amount in (5, -5)
    ]


#: (the case, its statements, the checks it breaks, what one of their details names)
CASES: list[tuple[str, Callable[[Books], list[str]], set[str], Callable[[Books], str]]] = [
    (
        "an entry that does not sum to zero",
        lambda b: [
            f"UPDATE postings SET amount = amount - 1 WHERE entry_id = '{b.bob_topup}' "
            f"AND account_id = {b.funding}",
            f"UPDATE accounts SET balance = balance - 1 WHERE id = {b.funding}",
        ],
        {"entry_balanced"},
        lambda b: b.bob_topup,
    ),
    ("an entry without postings", lambda b: [_entry_copy(b)], {"entry_postings"}, lambda b: "bare"),
    (
        "an entry with one posting",
        lambda b: [
            f"DELETE FROM postings WHERE entry_id = '{b.bob_topup}' AND account_id = {b.funding}",
            f"UPDATE accounts SET balance = balance + 300 WHERE id = {b.funding}",
        ],
        {"entry_postings", "entry_balanced"},
        lambda b: b.bob_topup,
    ),
    ("postings of no entry", _ghost_postings, {"posting_entry"}, lambda b: "posting"),
    (
        "postings in another unit than their accounts'",
        lambda b: [f"UPDATE postings SET unit = 'usd' WHERE entry_id = '{b.bob_topup}'"],
        {"posting_unit"},
        lambda b: "is in usd, its account in credit",
    ),
    (
        "a balance that is not its postings",
        lambda b: [f"UPDATE accounts SET balance = balance + 1 WHERE id = {b.revenue}"],
        {"account_balance"},
        lambda b: "postings sum to",
    ),
    (
        "pending that is not the open holds",
        lambda b: [f"UPDATE accounts SET pending = pending + 1 WHERE id = {b.alice}"],
        {"account_pending"},
        lambda b: "alice: pending 241, open holds sum to 240",
    ),
    (
        "pending on a wallet without an open hold",
        lambda b: [f"UPDATE accounts SET pending = 7 WHERE id = {b.bob}"],
        {"account_pending"},
        lambda b: "bob: pending 7, open holds sum to 0",
    ),
    (
        "a balance and an overdraft limit that together pass 64 bits",
        lambda b: [f"UPDATE accounts SET overdraft_limit = {2**63 - 1} WHERE id = {b.alice}"],
        {"account_room"},
        lambda b: f"alice: balance 810 plus overdraft limit {2**63 - 1} passes",
    ),
    (
        "a grant whose remaining is not its movements",
        lambda b: [
            f"UPDATE grants SET remaining = remaining + 1 WHERE id = '{b.pack}'",
            f"UPDATE grants SET remaining = remaining - 1 WHERE id = '{b.promo}'",
        ],
        {"grant_movements"},
        lambda b: b.promo,
    ),
    (
        "grants that do not hold the wallet's balance",
        lambda b: [
            f"UPDATE grants SET remaining = remaining - 1 WHERE id = '{b.pack}'",
            "INSERT INTO grant_movements (entry_id, grant_id, amount) "
            f"VALUES ('{b.bob_topup}', '{b.pack}', -1)",
        ],
        {"wallet_grants"},
        lambda b: "alice: grants hold",
    ),
    (
        "a pending hold that was resolved",
        lambda b: [
            f"UPDATE holds SET resolved_at = created_at WHERE id = '{b.pending}'",
        ],
        {"hold_state"},
        lambda b: b.pending,
    ),
    (
        "a voided hold never resolved",
        lambda b: [f"UPDATE holds SET resolved_at = NULL WHERE id = '{b.voided}'"],
        {"hold_state"},
        lambda b: b.voided,
    ),
    (
        "a voided hold that captured",
        lambda b: [f"UPDATE holds SET captured = 5 WHERE id = '{b.voided}'"],
        {"hold_state"},
        lambda b: b.voided,
    ),
    (
        "a captured hold without its amount",
        lambda b: [f"UPDATE holds SET captured = NULL WHERE id = '{b.captured}'"],
        {"hold_state", "hold_capture", "metering_charged"},
        lambda b: b.captured,
    ),
    (
        "a capture its entry did not move",
        lambda b: [f"UPDATE holds SET captured = captured - 1 WHERE id = '{b.captured}'"],
        {"hold_capture", "metering_charged"},
        lambda b: "captured 239",
    ),
    (
        "a pending hold metered as done",
        lambda b: [
            "UPDATE metering_records SET status = 'expired' WHERE id = "
            f"(SELECT metering_id FROM holds WHERE id = '{b.pending}')"
        ],
        {"metering_status"},
        lambda b: f"hold {b.pending} is pending, its metering record expired",
    ),
    (
        "an expired hold metered as voided",
        lambda b: [
            "UPDATE metering_records SET status = 'voided' WHERE id = "
            f"(SELECT metering_id FROM holds WHERE id = '{b.lapsed_hold}')"
        ],
        {"metering_status"},
        lambda b: f"hold {b.lapsed_hold} is expired, its metering record voided",
    ),
    (
        "a capture metered at another amount",
        lambda b: [
            "UPDATE metering_records SET charged = charged + 1 WHERE id = "
            f"(SELECT metering_id FROM holds WHERE id = '{b.captured}')"
        ],
        {"metering_charged", "daily_rollup"},
        lambda b: "captured 240, metered 241",
    ),
    (
        "a day's requests the metering does not have",
        lambda b: [f"UPDATE daily_usage SET requests = requests + 1 WHERE account_id = {b.alice}"],
        {"daily_rollup"},
        lambda b: "rollup",
    ),
    (
        "a wallet's usage metered but missing from the rollup",
        lambda b: [f"DELETE FROM daily_usage WHERE account_id = {b.alice}"],
        {"daily_rollup"},
        lambda b: "rollup None",
    ),
    (
        "a rollup of a model the metering never saw",
        lambda b: [
            f"UPDATE daily_usage SET model = 'ghost-model' WHERE account_id = {b.alice}",
        ],
        {"daily_rollup"},
        lambda b: "'ghost-model'): metering None",
    ),
    (
        "a day's videos the metering does not have",
        lambda b: [f"UPDATE daily_usage SET videos = videos + 1 WHERE account_id = {b.alice}"],
        {"daily_rollup"},
        lambda b: "rollup",
    ),
    (
        "a day's video seconds, a microsecond the metering does not have",
        lambda b: [
            f"UPDATE daily_usage SET seconds = seconds + 0.000001 WHERE account_id = {b.alice}"
        ],
        {"daily_rollup"},
        lambda b: "rollup",
    ),
    (
        "a capture's usage metered as more than its rollup counts",
        lambda b: [
            "UPDATE metering_records SET videos = videos + 1 WHERE id = "
            f"(SELECT metering_id FROM holds WHERE id = '{b.captured}')"
        ],
        {"daily_rollup"},
        lambda b: "metering",
    ),
    (
        "a day's amount the metering does not have",
        lambda b: [f"UPDATE daily_usage SET amount = amount + 1 WHERE account_id = {b.alice}"],
        {"daily_rollup"},
        lambda b: "rollup",
    ),
    (
        "a day's credits the journal does not have",
        lambda b: [f"UPDATE daily_flows SET credits = credits + 1 WHERE account_id = {b.bob}"],
        {"daily_flows"},
        lambda b: "journal (300, 0), rollup (301, 0)",
    ),
    (
        "a wallet's flows in the journal but missing from the rollup",
        lambda b: [f"DELETE FROM daily_flows WHERE account_id = {b.bob}"],
        {"daily_flows"},
        lambda b: "journal (300, 0), rollup None",
    ),
    (
        "a day's debits the journal does not have",
        lambda b: [
            f"UPDATE daily_flows SET debits = debits + 1 WHERE account_id = {b.alice} "
            "AND debits > 0"
        ],
        {"daily_flows"},
        lambda b: "journal",
    ),
    (
        # As the ledger reversed before: the expired credits taken from the wallet again.
        "a reversal that takes expired credits from the wallet a second time",
        lambda b: [
            f"UPDATE postings SET account_id = {b.dave} WHERE entry_id = '{b.takeback}' "
            f"AND account_id = {b.expired}",
            f"UPDATE accounts SET balance = balance - 100 WHERE id = {b.dave}",
            f"UPDATE accounts SET balance = balance + 100 WHERE id = {b.expired}",
            "INSERT INTO daily_flows (account_id, day, flow, credits, debits, entries) "
            f"SELECT account_id, day, 'reversal', 0, 100, 1 FROM daily_flows "
            f"WHERE account_id = {b.dave} AND flow = 'expiry'",
        ],
        {"reversal_takeback"},
        lambda b: f"reversal {b.takeback} moved -100 on the wallet",
    ),
    (
        # As the ledger refunded before: into the grant of a pack taken back since.
        "a refund's credits in a grant whose top-up was reversed",
        lambda b: [
            f"UPDATE grant_movements SET grant_id = '{b.erin_pack}' "
            f"WHERE entry_id = '{b.erin_refund}' AND grant_id = '{b.erin_refund_grant}'",
            f"UPDATE grants SET remaining = 240 WHERE id = '{b.erin_pack}'",
            f"UPDATE grants SET remaining = 0 WHERE id = '{b.erin_refund_grant}'",
        ],
        {"reversed_grant"},
        lambda b: f"grant {b.erin_pack} holds 240",
    ),
    (
        "a reversal on another wallet",
        lambda b: [f"UPDATE entries SET account_id = {b.bob} WHERE id = '{b.refund}'"],
        {"reversal_account"},
        lambda b: b.refund,
    ),
]


@pytest.mark.parametrize(
    ("statements", "broken", "named"),
    [pytest.param(s, c, n, id=case) for case, s, c, n in CASES],
)
def test_verify_names_each_broken_invariant(
    db: Database,
    books: Books,
    statements: Callable[[Books], list[str]],
    broken: set[str],
    named: Callable[[Books], str],
) -> None:
    tamper(db, *statements(books))
    found = verify(db)
    assert {v.check for v in found} == broken, found
    assert any(named(books) in v.detail for v in found), found


def test_verify_reports_every_violation_not_the_first(db: Database, books: Books) -> None:
    """Four things broken at once: four violations, each with its own detail, two of
    them of the one check (two holds)."""
    tamper(
        db,
        f"UPDATE accounts SET pending = pending + 1 WHERE id = {books.alice}",
        f"UPDATE holds SET captured = 5 WHERE id = '{books.voided}'",
        f"UPDATE holds SET resolved_at = created_at WHERE id = '{books.pending}'",
        f"UPDATE daily_flows SET credits = credits + 1 WHERE account_id = {books.bob}",
    )
    found = verify(db)
    assert sorted(v.check for v in found) == [
        "account_pending",
        "daily_flows",
        "hold_state",
        "hold_state",
    ], found
    held = [v.detail for v in found if v.check == "hold_state"]
    assert any(books.voided in d for d in held), held
    assert any(books.pending in d for d in held), held


def test_tampering_is_past_the_guards_and_leaves_them(db: Database, books: Books) -> None:
    """The cases above change what the ledger's own guards refuse; after them the guards
    stand again: the journal still refuses an UPDATE of a posting."""
    tamper(db, f"UPDATE postings SET amount = amount WHERE entry_id = '{books.bob_topup}'")
    with pytest.raises(sa.exc.DBAPIError), db.transaction() as conn:
        conn.execute(
            postings.update().where(postings.c.entry_id == books.bob_topup).values(amount=1)
        )
    assert verify(db) == []


def test_the_cases_break_every_check_and_the_readme_names_each() -> None:
    """Every check verify() makes is broken by a case above, and the README's table of
    checks (what ``creditledger verify --json`` names) lists exactly those."""
    made = set(re.findall(r'_v\(\s*"(\w+)"', inspect.getsource(verify_module)))
    broken = set().union(*(checks for _case, _s, checks, _n in CASES))
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("names each violation by its check")[1].split("\n\n")[1]
    listed = {
        name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    assert made == broken == listed


# SQLite's read transaction is one snapshot already; PostgreSQL's READ COMMITTED would
# give each statement a snapshot of its own.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_charge_committed_while_verify_reads_is_seen_by_every_check_or_none(
    db: Database, ledger: Ledger
) -> None:
    """verify() reads the metering records, then the daily rollups: a charge committed
    between the two reads (the server runs while ``creditledger verify`` does) would be in
    the rollups and not in the records, a violation of sound books. It reads one
    snapshot."""
    ledger.open_account("w", "credit", idempotency_key=key())
    ledger.top_up("w", 1_000, idempotency_key=key())
    fired: list[bool] = []

    def between(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM daily_usage" in statement and not fired:
            fired.append(True)  # first: the charge's own statements come here too
            ledger.charge("w", VEO_FAST, idempotency_key=key())

    sa.event.listen(db.engine, "before_cursor_execute", between)
    try:
        assert verify(db) == []
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", between)
    assert fired
    assert ledger.balance("w").balance == 1_000 - 240
