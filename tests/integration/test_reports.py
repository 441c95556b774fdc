"""Monthly statements over a generated month of traffic, on each database."""

from __future__ import annotations

import csv
import gzip
import hashlib
import html
import io
import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from pandas.testing import assert_frame_equal

from ledger.db import Database
from ledger.errors import InvalidInput, NotFound
from ledger.ids import new_id
from ledger.models import accounts, daily, flows, metering, report_jobs, report_outputs
from ledger.services import Ledger
from ledger.verify import verify
from pricing.catalog import CatalogSet
from reports import jobs, queries, render, statement
from reports.errors import ReportNotReady, ReportOverflow
from reports.jobs import Reports
from reports.queries import records
from tests.conftest import postgres_or_skip
from tests.factories import (
    Clock,
    Traffic,
    key,
    make_statement,
    month_of_traffic,
    pixazo_image,
    text,
    veo3_video,
)


@pytest.fixture
def reports(db: Database, clock: Clock) -> Reports:
    return Reports(db, clock=clock, lease=timedelta(seconds=60))


def make(
    db: Database, month: str, tz: str, account: str | None = None, *, from_journal: bool = False
) -> statement.Statement:
    return make_statement(db, month, tz, account, from_journal=from_journal)


def test_statement_reconciles_to_the_ledger(db: Database, ledger: Ledger, traffic: Traffic) -> None:
    made = make(db, traffic.month, "UTC")
    rows = {r["account_id"]: r for r in records(made.accounts)}
    assert sorted(rows) == sorted(traffic.wallets)
    end = queries.period(traffic.month, "UTC").end
    start = queries.period(traffic.month, "UTC").start
    for name in traffic.wallets:
        row = rows[name]
        at_end = ledger.balance(name, as_of=end - timedelta(microseconds=1))
        at_start = ledger.balance(name, as_of=start - timedelta(microseconds=1))
        assert row["closing"] == at_end.balance
        assert row["opening"] == at_start.balance
        assert row["opening"] + row["credits"] - row["debits"] == row["closing"]
        # Not today's balance: there was traffic after the month.
        assert row["closing"] != ledger.balance(name).balance
    assert rows["berlin"]["debit_expired"] > 0  # the mid-month promo expired
    assert rows["tokyo"]["credit_refund"] > 0  # the refunded charge
    assert rows["acme"]["credit_allocation"] == 50_000  # October's allocation
    assert rows["acme"]["credit_pack"] == 250_000
    assert rows["studio"]["debit_adjustment"] == 1_000
    # The veo3 hold authorized at 23:50 and captured after midnight was open at the end.
    assert rows["tokyo"]["open_holds"] == 1
    assert rows["tokyo"]["open_holds_amount"] == 500
    assert rows["acme"]["open_holds"] == 0
    # The totals per unit are the wallets' sums, the holds open at the end included.
    for line in made.totals():
        of_unit = [r for r in rows.values() if r["unit"] == line["unit"]]
        assert line["accounts"] == len(of_unit)
        for column in ("opening", "credits", "debits", "closing", "requests", "usage_amount"):
            assert line[column] == sum(r[column] for r in of_unit), column
        assert line["open_holds_amount"] == sum(r["open_holds_amount"] for r in of_unit)
    assert {line["unit"] for line in made.totals()} == {"token", "credit", "usd"}


@pytest.mark.parametrize("from_journal", [False, True])
def test_one_wallets_statement_reads_that_wallets_rows_alone(
    db: Database,
    ledger: Ledger,
    clock: Clock,
    traffic: Traffic,
    monkeypatch: pytest.MonkeyPatch,
    from_journal: bool,
) -> None:
    """A customer's statement of its own wallet reads its rows, not every wallet's with
    the others dropped afterwards: of a month long past, the holds open at its end would
    be every hold resolved since, whoever's."""
    owner = ledger.hold(traffic.open_at_end[0]).account_id
    # Two holds of another wallet open at the month's end: one resolved since, one open
    # still.
    asks = {"credit": veo3_video(video_model="veo3_fast"), "usd": pixazo_image()}
    other = next(w for w, unit in traffic.wallets.items() if w != owner and unit in asks)
    after = clock.now
    clock.now = queries.period(traffic.month, "UTC").end - timedelta(minutes=1)
    held = ledger.authorize(other, asks[traffic.wallets[other]], idempotency_key=key())
    ledger.authorize(other, asks[traffic.wallets[other]], idempotency_key=key())
    clock.now = after
    ledger.void(held.id, idempotency_key=key())
    with db.transaction(write=False) as conn:
        row_id = conn.execute(
            sa.select(accounts.c.id).where(accounts.c.external_id == owner)
        ).scalar_one()
    read: list[pd.DataFrame] = []
    run_query = queries._frame

    def recorded(conn: sa.Connection, stmt: sa.Select[tuple[object, ...]]) -> pd.DataFrame:
        frame = run_query(conn, stmt)
        read.append(frame)
        return frame

    monkeypatch.setattr(queries, "_frame", recorded)
    (row,) = records(make(db, traffic.month, "UTC", owner, from_journal=from_journal).accounts)
    assert row["open_holds"] >= 1
    wallets_read = {int(a) for frame in read if "account" in frame for a in frame["account"]}
    assert wallets_read == {row_id}
    assert sum(len(frame) for frame in read) >= 4  # wallet, flows, opening, open holds


def test_a_refund_and_the_reversal_of_a_clawback_are_told_apart(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """Both credit the wallet by a reversal; only the first gave back usage (a refund),
    the second undid a debit adjustment. Taking back a top-up is a debit."""
    ledger.open_account("w", "credit", idempotency_key=key())
    ledger.top_up("w", 2_000, idempotency_key=key())
    extra = ledger.top_up("w", 300, idempotency_key=key())
    charged = ledger.charge("w", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clawed = ledger.adjust("w", -100, reason="clawback", idempotency_key=key())
    ledger.adjust("w", 50, reason="goodwill", idempotency_key=key())
    clock.advance(hours=1)
    assert charged.entry_id is not None
    ledger.reverse(charged.entry_id, reason="blank video", idempotency_key=key())
    ledger.reverse(clawed.entry.id, reason="clawback in error", idempotency_key=key())
    ledger.reverse(extra.entry.id, reason="paid by mistake", idempotency_key=key())
    for from_journal in (False, True):
        (row,) = records(make(db, "2026-11", "UTC", "w", from_journal=from_journal).accounts)
        assert (
            row["credit_pack"],
            row["credit_adjustment"],
            row["credit_refund"],
            row["credit_reversal"],
        ) == (2_300, 50, 240, 100)
        assert (row["debit_usage"], row["debit_adjustment"], row["debit_reversal"]) == (
            240,
            100,
            300,
        )
        assert row["closing"] == ledger.balance("w").balance == 2_050


def test_usage_totals_equal_the_metering_records(
    db: Database, ledger: Ledger, traffic: Traffic
) -> None:
    made = make(db, traffic.month, "UTC")
    period = queries.period(traffic.month, "UTC")
    with db.transaction(write=False) as conn:
        metered = conn.execute(
            sa.select(
                metering.c.catalog,
                metering.c.model,
                sa.func.count().label("requests"),
                sa.func.sum(metering.c.charged).label("amount"),
                sa.func.sum(metering.c.input_tokens).label("input_tokens"),
            )
            .where(
                metering.c.completed_at >= period.start,
                metering.c.completed_at < period.end,
                metering.c.status.not_in(["voided", "expired"]),
            )
            .group_by(metering.c.catalog, metering.c.model)
        ).all()
    usage = made.usage.groupby(["catalog", "model"])[["requests", "amount", "input_tokens"]].sum()
    assert len(usage) == len(metered) > 3
    for r in metered:
        got = usage.loc[(r.catalog, r.model)]
        assert (got["requests"], got["amount"], got["input_tokens"]) == (
            r.requests,
            r.amount,
            r.input_tokens,
        )
    # The days add up to the month.
    by_day = made.daily.groupby(["account_id", "model"])["amount"].sum()
    by_month = made.usage.set_index(["account_id", "model"])["amount"]
    assert by_day.sort_index().tolist() == by_month.groupby(level=[0, 1]).sum().tolist()


def test_rollups_and_journal_give_the_same_statement(
    db: Database, ledger: Ledger, traffic: Traffic
) -> None:
    # Europe/Berlin: the berlin wallet reads its rollups, the others their journal.
    for tz in ("UTC", "Europe/Berlin", "Asia/Tokyo"):
        fast = make(db, traffic.month, tz)
        exact = make(db, traffic.month, tz, from_journal=True)
        assert set(exact.accounts["source"]) == {"journal"}
        columns = [c for c in statement.ACCOUNT_COLUMNS if c != "source"]
        pd.testing.assert_frame_equal(fast.accounts[columns], exact.accounts[columns])
        pd.testing.assert_frame_equal(fast.usage, exact.usage)
        pd.testing.assert_frame_equal(fast.daily, exact.daily)
        # The raw material too: each wallet's flows by the report's days.
        report = queries.period(traffic.month, tz)
        with db.transaction(write=False) as conn:
            rolled, journal = (
                queries.load(conn, report, from_journal=read).flows for read in (False, True)
            )
        order = ["account", "day", "flow"]
        pd.testing.assert_frame_equal(
            rolled.sort_values(order, ignore_index=True),
            journal.sort_values(order, ignore_index=True),
        )
    sources = make(db, traffic.month, "Europe/Berlin").accounts.set_index("account_id")["source"]
    assert sources.to_dict() == {
        "acme": "journal",
        "berlin": "rollup",
        "studio": "journal",
        "tokyo": "journal",
    }


def test_timezone_boundaries(db: Database, ledger: Ledger, traffic: Traffic) -> None:
    """23:30 UTC on October 31 is November 1 in Berlin (UTC+1 after the DST change)."""
    with db.transaction(write=False) as conn:
        late = conn.execute(
            sa.select(metering.c.charged, metering.c.completed_at).where(
                metering.c.hold_id == traffic.last_day_2330
            )
        ).one()
    assert late.completed_at == datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    utc = make(db, "2026-10", "UTC", "acme")
    berlin = make(db, "2026-10", "Europe/Berlin", "acme")
    utc_day = utc.daily.set_index("day")["amount"].groupby(level=0).sum()
    assert utc_day.loc["2026-10-31"] >= late.charged > 0
    assert "2026-11-01" not in utc_day.index
    berlin_days = berlin.daily["day"].unique().tolist()
    assert "2026-11-01" not in berlin_days
    assert "2026-10-31" in berlin_days
    # October in Berlin: 22:00 UTC on Sep 30 to 23:00 UTC on Oct 31; the 23:30 capture
    # is left out, the requests of Oct 31 23:00-24:00 UTC with it.
    assert berlin.period.end == datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    utc_requests = int(utc.accounts["requests"].iloc[0])
    berlin_requests = int(berlin.accounts["requests"].iloc[0])
    assert berlin_requests == utc_requests - 1
    # The Berlin wallet, read from its rollups in a Berlin report, ends the same way.
    own = make(db, "2026-10", "Europe/Berlin", "berlin")
    assert own.accounts["source"].tolist() == ["rollup"]
    assert own.daily["day"].max() == "2026-10-31"


def _made_in_batches(
    db: Database,
    reports: Reports,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    month: str,
    fmt: str,
    batch: int,
) -> tuple[list[int], list[tuple[int, str]]]:
    """Run the statement of every wallet in ``fmt`` made ``batch`` wallets at a time, and
    check its file and summary against the statement made whole; the number of wallets
    each read took, and the progress reported."""
    monkeypatch.setattr(jobs, "BATCH", batch)
    # Parquet row groups of a few rows: groups then span batches and sections, and must
    # be cut the same as in the whole statement's file.
    monkeypatch.setattr(render, "ROW_GROUP", 7)
    read: list[int] = []
    load = queries.load

    def counted(*args: Any, **kwargs: Any) -> queries.Frames:
        frames = load(*args, **kwargs)
        read.append(len(frames.wallets))
        return frames

    monkeypatch.setattr(queries, "load", counted)
    job, _ = reports.request(month, fmt)
    seen: list[tuple[int, str]] = []
    claimed = reports.claim(job.id)
    assert claimed is not None
    done = reports.run(claimed, progress=lambda percent, stage: seen.append((percent, stage)))
    assert done.status == "succeeded", done.error
    monkeypatch.setattr(queries, "load", load)
    whole = make_statement(db, month, "UTC", generated_at=clock())
    rendered = render.render(whole, fmt)
    output = reports.output(job.id)
    assert output.content == rendered
    assert output.sha256 == hashlib.sha256(rendered).hexdigest()
    assert output.encoding == ("gzip" if fmt in jobs.GZIPPED else None)
    if fmt == "parquet":
        assert pq.ParquetFile(io.BytesIO(rendered)).metadata.num_row_groups > 1
        assert_frame_equal(pd.read_parquet(io.BytesIO(rendered)), render.lines(whole))
    assert done.summary == json.loads(json.dumps(whole.summary()))
    return read, seen


@pytest.mark.parametrize("fmt", render.FORMATS)
@pytest.mark.parametrize("batch", [1, 3])
def test_a_statement_made_in_batches_of_wallets_is_the_whole_statements_file(
    db: Database,
    traffic: Traffic,
    clock: Clock,
    reports: Reports,
    fmt: str,
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The statement of every wallet in each format (the month-end report, finance's
    CSV) is read, reconciled and rendered a batch of wallets at a time, so that
    its memory is a batch's: the file and the summary are byte for byte those of the
    statement made whole."""
    read, seen = _made_in_batches(db, reports, clock, monkeypatch, traffic.month, fmt, batch)
    # Read a batch at a time; progress per batch, rising.
    batches = -(-len(traffic.wallets) // batch)
    assert sum(read) == len(traffic.wallets) == 4
    assert len(read) == batches
    assert max(read) <= batch
    rendered_stages = [p for p, stage in seen if stage.startswith("read and rendered")]
    assert len(rendered_stages) == (batches if batches > 1 else 0)
    assert rendered_stages == sorted(rendered_stages)


@pytest.mark.parametrize("fmt", render.FORMATS)
def test_batches_follow_the_order_of_wallet_ids_each_format_keeps(
    db: Database,
    ledger: Ledger,
    clock: Clock,
    reports: Reports,
    fmt: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CSV and Parquet sort their lines by wallet id in code points, as HTML its tables;
    the JSON keeps the database's order of ids: in batches of two, each is the whole
    statement's file."""
    _odd_ids(ledger, clock)
    read, _ = _made_in_batches(db, reports, clock, monkeypatch, "2026-10", fmt, 2)
    assert read == [2, 2, 2, 2, 1]


def _odd_ids(ledger: Ledger, clock: Clock) -> list[str]:
    """Wallets with a charge in October 2026 whose ids a collation and code points order
    differently, in credits and in USD (a unit of another scale, in more than one batch:
    its totals add up their amounts, not their scales); the clock then in November."""
    names = ["Zed", "alpha", "émile", "_x", "Alpha", "beta", "10", "9", "zz"]
    clock.now = datetime(2026, 10, 5, tzinfo=UTC)
    for n, name in enumerate(names):
        if n % 2:
            ledger.open_account(name, "usd", idempotency_key=key())
            ledger.top_up(name, 1_000_000, idempotency_key=key())
            ledger.charge(name, pixazo_image(), idempotency_key=key())
        else:
            ledger.open_account(name, "credit", idempotency_key=key())
            ledger.top_up(name, 1_000, idempotency_key=key())
            ledger.charge(name, veo3_video(video_model="veo3_fast"), idempotency_key=key())
        clock.advance(hours=1)
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    return names


def test_batches_follow_each_formats_order_under_a_collation_other_than_code_points(
    request: pytest.FixtureRequest,
    catalogs: CatalogSet,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a PostgreSQL database whose collation is not code points (ICU English: "_x",
    "10", "9", "alpha", "Alpha", "émile", "Zed"), the JSON lists wallets in that order and
    CSV, Parquet and HTML in code points, made whole or in batches alike."""
    server = postgres_or_skip(request)
    name = f"icu_{os.getpid()}"
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
            "ICU_LOCALE 'en' LOCALE 'C.UTF-8'"
        )
    db = Database.from_url(server.url(name))
    try:
        db.migrate()
        names = _odd_ids(Ledger(db, catalogs, clock=clock), clock)
        reports = Reports(db, clock=clock, lease=timedelta(seconds=60))
        for fmt in render.FORMATS:
            _made_in_batches(db, reports, clock, monkeypatch, "2026-10", fmt, 2)
        whole = make_statement(db, "2026-10", "UTC", generated_at=clock())
        listed = [a["account_id"] for a in json.loads(render.render(whole, "json"))["accounts"]]
        assert listed == ["_x", "10", "9", "alpha", "Alpha", "beta", "émile", "Zed", "zz"]
        lines = pd.read_csv(io.BytesIO(render.render(whole, "csv")), dtype={"account_id": str})
        assert list(dict.fromkeys(lines["account_id"])) == sorted(names)
        table = pd.read_parquet(io.BytesIO(render.render(whole, "parquet")))
        assert list(dict.fromkeys(table["account_id"])) == sorted(names)
        page = render.render(whole, "html").decode()
        for heading in ("Accounts", "Usage by model"):
            rows = page.split(f"<h2>{heading}</h2>")[1].split("</table>")[0]
            first_cells = re.findall(r'<tr><td class="">(.*?)</td>', rows)
            assert [html.unescape(c) for c in first_cells] == sorted(names)
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}")
        admin.dispose()


@pytest.mark.parametrize("fmt", render.FORMATS)
def test_a_statement_of_no_wallet_is_the_whole_statements_file(
    db: Database, clock: Clock, reports: Reports, fmt: str
) -> None:
    job, _ = reports.request("2026-10", fmt)
    claimed = reports.claim(job.id)
    assert claimed is not None
    done = reports.run(claimed)
    assert done.status == "succeeded", done.error
    whole = make_statement(db, "2026-10", "UTC", generated_at=clock())
    assert reports.output(job.id).content == render.render(whole, fmt)
    assert done.summary is not None
    # Nothing to reconcile is reconciled: no wallet, and no amount, left out.
    assert (done.summary["accounts"], done.summary["reconciled"]) == (0, True)
    assert done.summary["totals"] == []


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_written_as_text(
    db: Database, ledger: Ledger
) -> None:
    """Wallet ids are the operator's, and may be picked by their users: an id that a
    spreadsheet would read as a formula (CSV injection) is written with a leading
    apostrophe. Amounts stay numbers, and JSON and Parquet keep every id as it is."""
    hostile = ['=HYPERLINK("evil.example","refund")', "+1-555-0100", "@SUM(1+1)", "-2+3"]
    for name in [*hostile, "acme"]:
        ledger.open_account(name, "credit", idempotency_key=key())
        ledger.top_up(name, 1_000, idempotency_key=key())
        ledger.charge(name, veo3_video(video_model="veo3_fast"), idempotency_key=key())
        ledger.adjust(name, -7, reason="clawback", idempotency_key=key())
    made = make(db, "2026-11", "UTC")
    text = render.render(made, "csv").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    text_columns = ["account_id", "unit", "section", "item", "day", "catalog", "operation", "model"]
    for row in rows:
        for column in text_columns:
            assert not row[column].startswith(("=", "+", "-", "@")), (column, row[column])
    assert {r["account_id"] for r in rows} == {*("'" + h for h in hostile), "acme"}
    closing = {
        r["account_id"]: int(r["amount"])
        for r in rows
        if (r["section"], r["item"]) == ("balance", "closing")
    }
    assert closing == {"'" + h: 1_000 - 240 - 7 for h in hostile} | {"acme": 753}
    # The same statement in the other formats: ids as they are.
    parquet = pd.read_parquet(io.BytesIO(render.render(made, "parquet")))
    assert set(parquet["account_id"]) == {*hostile, "acme"}
    body = json.loads(render.render(made, "json"))
    assert {a["account_id"] for a in body["accounts"]} == {*hostile, "acme"}


def test_renders_every_format(db: Database, ledger: Ledger, traffic: Traffic) -> None:
    made = make(db, traffic.month, "UTC")
    from_csv = pd.read_csv(io.BytesIO(render.render(made, "csv")))
    assert set(from_csv["section"]) == {
        "balance",
        "credit",
        "debit",
        "open_holds",
        "usage",
        "usage_daily",
    }
    closing = from_csv[(from_csv["section"] == "balance") & (from_csv["item"] == "closing")]
    assert dict(zip(closing["account_id"], closing["amount"], strict=True)) == dict(
        zip(made.accounts["account_id"], made.accounts["closing"], strict=True)
    )
    # The open holds' line: how many (requests) and how much.
    holds = from_csv[from_csv["section"] == "open_holds"].set_index("account_id")
    assert (holds.loc["tokyo", "requests"], holds.loc["tokyo", "amount"]) == (1, 500)
    assert (holds.loc["acme", "requests"], holds.loc["acme", "amount"]) == (0, 0)
    # Each wallet's statement lines are together, in the statement's order.
    order = [
        ("balance", "opening"),
        *(("credit", c.removeprefix("credit_")) for c in statement.CREDIT_COLUMNS),
        *(("debit", c.removeprefix("debit_")) for c in statement.DEBIT_COLUMNS),
        ("balance", "closing"),
        ("open_holds", "pending"),
    ]
    lines = from_csv[~from_csv["section"].isin(render.USAGE_SECTIONS)]
    assert list(lines["account_id"]) == [a for a in sorted(traffic.wallets) for _ in order]
    assert list(zip(lines["section"], lines["item"], strict=True)) == order * len(traffic.wallets)

    table = render.lines(made)
    back = pd.read_parquet(io.BytesIO(render.render(made, "parquet")))
    pd.testing.assert_frame_equal(back, table)
    assert isinstance(back["video_seconds"].dropna().iloc[0], Decimal)

    body = json.loads(render.render(made, "json"))
    # The fast writer gives the same document as the plain one.
    assert body == json.loads(json.dumps(render.to_json(made)))
    assert body["month"] == "2026-10"
    assert body["reconciled"] is True
    # Each account reconciles and says so: its closing balance is the ledger's.
    closings = dict(zip(made.accounts["account_id"], made.accounts["closing"], strict=True))
    for account in body["accounts"]:
        assert account["reconciled"] is True, account["account_id"]
        assert (
            account["closing_balance"]
            == account["ledger_balance_at_end"]
            == closings[account["account_id"]]
        )
    tokyo = next(a for a in body["accounts"] if a["account_id"] == "tokyo")
    assert tokyo["open_holds"] == {"count": 1, "amount": 500}
    assert {u["model"] for u in tokyo["usage"]} == {"veo3_fast", "veo3"}
    assert len(tokyo["usage_by_day"]) >= 31
    # Day by day, each day's models in order.
    days = [(u["day"], u["catalog"], u["operation"], u["model"]) for u in tokyo["usage_by_day"]]
    assert days == sorted(days)

    page = render.render(made, "html").decode()
    assert page.startswith("<!DOCTYPE html>")
    chart = page[page.index("<svg") : page.index("</svg>")]
    assert "Daily usage by model" in chart
    assert "veo3_fast" in chart
    assert "<path" in chart
    assert page.count("<svg") == 3  # one chart per unit: credit, token, usd
    # The charts draw the daily usage, summed exactly per unit, model and day.
    expected: dict[str, dict[tuple[str, str], int]] = {}
    for row in records(made.daily):
        into = expected.setdefault(row["unit"], {})
        into[row["model"], row["day"]] = into.get((row["model"], row["day"]), 0) + row["amount"]
    assert render.chart_amounts(made) == expected
    assert sum(expected["credit"].values()) == sum(
        t["usage_amount"] for t in made.totals() if t["unit"] == "credit"
    )


def test_html_shows_amounts_in_major_units_of_each_scale_and_ids_as_text(
    db: Database, ledger: Ledger
) -> None:
    """People read the HTML page: amounts in major units with the unit's own places
    (credits whole, dollars to the micro-dollar), and a wallet id (the operator's text)
    as text, never as markup."""
    hostile = '<img src=x onerror="alert(1)">&amp;'
    ledger.open_account(hostile, "usd", idempotency_key=key())
    ledger.top_up(hostile, 1_500_000, idempotency_key=key())
    ledger.charge(hostile, pixazo_image(), idempotency_key=key())
    ledger.open_account("acme", "credit", idempotency_key=key())
    ledger.top_up("acme", 12_345, idempotency_key=key())
    ledger.authorize("acme", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    ledger.open_account("bucket", "token", idempotency_key=key())
    ledger.top_up("bucket", 10_000_000, idempotency_key=key())
    hold = ledger.authorize("bucket", text(max_tokens=60_000), idempotency_key=key())
    usage = {"input_tokens": 1_234, "output_tokens": 56_789}
    ledger.capture(hold.id, status="COMPLETED", usage=usage, idempotency_key=key())
    made = make(db, "2026-11", "UTC")
    page = render.render(made, "html").decode()
    # The totals of each unit: accounts, opening, credits, debits, closing, requests,
    # usage; and the open holds of the accounts' table: how many (how much).
    usd = ["1", "0.000000", "1.500000", "0.040000", "1.460000", "1", "0.040000"]
    assert "".join(f'<td class="num">{c}</td>' for c in usd) in page
    assert '<td class="num">1 (240)</td>' in page
    # The accounts' table: the id and the unit are text, the amounts from there on numbers.
    assert '<td class="">credit</td><td class="num">0</td>' in page
    assert "<img" not in page
    escaped = html.escape(hostile)
    assert f"<td>{escaped}</td>" in page.replace('<td class="">', "<td>")
    cells = re.findall(r'<td class="num">([^<]*)</td>', page)
    assert {"1.500000", "0.040000", "1.460000", "12,345"} <= set(cells)
    assert "0.040000 usd" in page  # the usage table
    assert "12,345.00" not in page
    # Its usage table: the quantities of a request, thousands apart like the amounts.
    text_row = page[page.index('<td class="">bucket</td><td class="">cosmic</td>') :]
    text_row = text_row.split("</tr>")[0]
    assert "".join(f'<td class="num">{q}</td>' for q in ("1", "1,234", "56,789")) in text_row
    assert "1.50" not in cells
    # The page of the one wallet names it in its title and heading, as text.
    own = render.render(make(db, "2026-11", "UTC", hostile), "html").decode()
    assert "<img" not in own
    assert f"<title>Statement 2026-11 (UTC) for {escaped}</title>" in own
    assert f"<h1>Statement 2026-11 (UTC) for {escaped}</h1>" in own
    # The same wallets in JSON: each side's total is the sum of its items.
    body = json.loads(render.render(made, "json"))
    for a in body["accounts"]:
        for side in ("credits", "debits"):
            items = {k: v for k, v in a[side].items() if k != "total"}
            assert a[side]["total"] == sum(items.values()), (a["account_id"], side)
    totals = {
        a["account_id"]: (a["credits"]["total"], a["debits"]["total"]) for a in body["accounts"]
    }
    assert totals == {
        hostile: (1_500_000, 40_000),
        "acme": (12_345, 0),
        "bucket": (10_000_000, (1_234 + 56_789) * 2),  # a standard model: tokens x 2
    }


@pytest.mark.parametrize("batch", [500, 1])
def test_reconciliation_failure_names_the_accounts(
    db: Database, catalogs: CatalogSet, clock: Clock, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every wallet that does not reconcile is named, whichever batch of the JSON
    statement it fell in."""
    monkeypatch.setattr(jobs, "BATCH", batch)
    ledger = Ledger(db, catalogs, clock=clock)
    month_of_traffic(ledger, clock)
    reports = Reports(db, clock=clock)
    with db.transaction() as conn:
        conn.execute(
            daily.update()
            .where(daily.c.account_id == ledger_account(db, "acme"), daily.c.day == "2026-10-05")
            .values(amount=daily.c.amount + 7)
        )
        conn.execute(
            flows.update()
            .where(flows.c.account_id == ledger_account(db, "studio"), flows.c.day == "2026-10-09")
            .values(debits=flows.c.debits + 1)
        )
        conn.execute(
            flows.update()
            .where(flows.c.account_id == ledger_account(db, "acme"), flows.c.flow == "capture")
            .values(credits=3)
        )
    job, _ = reports.request("2026-10", "json")
    claimed = reports.claim()
    assert claimed is not None
    done = reports.run(claimed)
    assert done.status == "failed"
    assert done.error is not None
    assert "acme (usage)" in done.error
    assert "studio (closing_balance)" in done.error
    assert "acme (flow): 93 credits in capture entries" in done.error
    assert "[acme, studio]" in done.error
    assert "berlin" not in done.error
    with pytest.raises(ReportNotReady):
        reports.output(job.id)


def test_credits_in_entries_that_cannot_have_them_fail_the_report_alone(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    """A rollup of capture entries that credits a wallet has no line on the statement:
    the report fails and says so, even when every balance and the usage reconcile
    (here the rollup was edited, not the journal the balances come from)."""
    with db.transaction() as conn:
        conn.execute(
            flows.update()
            .where(flows.c.account_id == ledger_account(db, "acme"), flows.c.flow == "capture")
            .values(credits=3)
        )
    job, _ = reports.request("2026-10", "json")
    assert reports.run_pending() == 1
    done = reports.get(job.id)
    assert done.status == "failed"
    assert done.error is not None
    assert "acme (flow): 93 credits in capture entries" in done.error
    assert "closing_balance" not in done.error
    assert "(usage)" not in done.error
    with db.transaction() as conn:  # as it was, for the check of the books after the test
        conn.execute(
            flows.update()
            .where(flows.c.account_id == ledger_account(db, "acme"), flows.c.flow == "capture")
            .values(credits=0)
        )


def ledger_account(db: Database, external_id: str) -> int:
    from ledger.models import accounts

    with db.transaction(write=False) as conn:
        return int(
            conn.execute(
                sa.select(accounts.c.id).where(accounts.c.external_id == external_id)
            ).scalar_one()
        )


def test_jobs_dedupe_run_and_download(
    db: Database,
    ledger: Ledger,
    traffic: Traffic,
    reports: Reports,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, created = reports.request("2026-10", "csv", account_id="acme")
    again, created_again = reports.request("2026-10", "csv", account_id="acme")
    assert created
    assert not created_again
    assert again.id == first.id
    other, created_other = reports.request("2026-10", "html", account_id="acme")
    assert created_other
    assert other.id != first.id
    with pytest.raises(ReportNotReady):
        reports.output(first.id)

    assert reports.claim("0" * 32) is None  # no such job: none other is taken instead
    seen: list[tuple[int, str]] = []
    claimed = reports.claim(first.id)
    assert claimed is not None
    assert claimed.attempts == 1
    with caplog.at_level(logging.INFO, logger="creditledger.reports"):
        done = reports.run(claimed, lambda pct, stage: seen.append((pct, stage)))
    assert done.status == "succeeded"
    assert done.progress == 100
    # The server's log says it was made (the report worker's work is seen there too).
    [made] = caplog.records
    assert made.getMessage() == f"report {first.id} made: 2026-10, UTC, acme, csv"
    assert getattr(made, "report_id", None) == first.id
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    assert seen[-1][0] == 100
    assert done.summary is not None
    assert done.summary["reconciled"] is True
    out = reports.output(first.id)
    assert out.filename == "statement-2026-10-acme.csv"
    assert out.content_type.startswith("text/csv")
    assert b"closing" in out.content
    # A finished report does not block a new one of the same kind.
    _, created_after = reports.request("2026-10", "csv", account_id="acme")
    assert created_after
    assert reports.run_pending() == 2
    # A customer asking for another wallet's job sees nothing.
    with pytest.raises(NotFound):
        reports.get(first.id, owner="berlin")
    assert reports.get(first.id, owner="acme").id == first.id


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_a_wallet_of_the_longest_id_gets_its_statement(
    ledger: Ledger, reports: Reports, clock: Clock, fmt: str
) -> None:
    """An account id may be 200 characters: its statement's file is named after it, cut
    so that the name fits where it is stored (PostgreSQL refuses a longer one)."""
    longest = "w" * 199 + "é"
    clock.now = datetime(2026, 10, 10, tzinfo=UTC)
    ledger.open_account(longest, "credit", idempotency_key=key())
    ledger.top_up(longest, 100, idempotency_key=key())
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    job, _ = reports.request("2026-10", fmt, account_id=longest)
    assert reports.run_pending() == 1
    assert reports.get(job.id).status == "succeeded", reports.get(job.id).error
    name = reports.output(job.id).filename
    assert len(name) == 200
    assert name == f"statement-2026-10-{'w' * (200 - 19 - len(fmt))}.{fmt}"


def test_an_interrupted_job_resumes(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports, clock: Clock
) -> None:
    job, _ = reports.request("2026-10", "parquet")
    crashed = reports.claim()
    assert crashed is not None
    assert crashed.status == "running"
    # The worker dies here. Within the lease nobody takes the job (to its last instant)...
    clock.advance(seconds=30)
    assert reports.claim() is None
    assert reports.request("2026-10", "parquet")[0].id == job.id
    clock.advance(seconds=30)
    assert reports.claim() is None
    # ...after it, another worker does, and finishes it.
    clock.advance(microseconds=1)
    resumed = reports.claim()
    assert resumed is not None
    assert resumed.id == job.id
    assert resumed.attempts == 2
    assert resumed.started_at == clock.now
    assert reports.run(resumed).status == "succeeded"
    # The first worker's late writes are refused: the job is no longer its.
    reports.run(crashed)
    final = reports.get(job.id)
    assert final.status == "succeeded"
    assert final.attempts == 2
    assert len(pd.read_parquet(io.BytesIO(reports.output(job.id).content))) > 100


def test_jobs_are_claimed_in_the_order_they_were_asked_for(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports, clock: Clock
) -> None:
    """The oldest runnable job first, a job whose worker died among them by when it was
    asked for: a report asked for early is not left waiting behind later ones."""
    asked = []
    for fmt in ("html", "csv", "json"):
        asked.append(reports.request("2026-10", fmt)[0].id)
        clock.advance(seconds=1)
    first = reports.claim()
    assert first is not None
    assert first.id == asked[0]
    # Its worker dies; past the lease it is again the first to be claimed.
    clock.advance(seconds=61)
    claimed = [reports.claim() for _ in asked]
    assert [job.id for job in claimed if job is not None] == asked
    assert [job.attempts for job in claimed if job is not None] == [2, 1, 1]
    assert reports.claim() is None


def _steal(reports: Reports, clock: Clock) -> jobs.JobView:
    """Another worker claims the running job, its worker's lease having run out."""
    clock.advance(seconds=61)
    stolen = reports.claim()
    assert stolen is not None
    return stolen


@pytest.mark.parametrize("at", [5, 95])
def test_a_worker_whose_job_was_claimed_again_stops_and_writes_nothing(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports, clock: Clock, at: int
) -> None:
    """A worker that outlived its lease, while another runs the job under the next
    attempt: its next write (a heartbeat, or the file itself) finds the job no longer its
    own; it stops there, and neither its progress nor its file is kept."""
    job, _ = reports.request("2026-10", "json")
    slow = reports.claim()
    assert slow is not None
    seen: list[int] = []
    taken: list[jobs.JobView] = []

    def progress(percent: int, _stage: str) -> None:
        seen.append(percent)
        if percent == at:
            taken.append(_steal(reports, clock))

    reports.run(slow, progress)
    # It stopped at its first write after the theft: the file is written last.
    assert seen == [*(p for p in (5, 95) if p <= at), 100]
    (stolen,) = taken
    # The other worker's claim started the job afresh; the slow worker left nothing.
    assert (stolen.attempts, stolen.progress, stolen.stage) == (2, 0, "claimed")
    now = reports.get(job.id)
    assert (now.status, now.attempts, now.progress) == ("running", 2, 0)
    with pytest.raises(ReportNotReady):
        reports.output(job.id)
    assert reports.run(stolen).status == "succeeded"
    assert json.loads(reports.output(job.id).content)["reconciled"] is True


def test_a_worker_that_fails_after_its_job_was_claimed_again_leaves_it_be(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports, clock: Clock
) -> None:
    """A worker's failure is the job's only while the job is its own: one that failed
    after another worker claimed the job again, and finished it, changes nothing."""
    job, _ = reports.request("2026-10", "json")
    slow = reports.claim()
    assert slow is not None

    def progress(percent: int, _stage: str) -> None:
        if percent == 5:
            assert reports.run(_steal(reports, clock)).status == "succeeded"
            raise RuntimeError("the slow worker's own failure")

    reports.run(slow, progress)
    done = reports.get(job.id)
    assert (done.status, done.attempts, done.error) == ("succeeded", 2, None)


def test_a_failure_is_recorded_with_its_reason_cut_to_4000_characters(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    job, _ = reports.request("2026-10", "csv")
    claimed = reports.claim()
    assert claimed is not None

    def progress(percent: int, _stage: str) -> None:
        if percent == 5:
            raise RuntimeError("x" * 5000)

    failed = reports.run(claimed, progress)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.startswith("RuntimeError: xxx")
    assert len(failed.error) == 4000


def test_a_job_interrupted_too_often_fails(
    db: Database, ledger: Ledger, traffic: Traffic, clock: Clock
) -> None:
    reports = Reports(db, clock=clock, lease=timedelta(seconds=10), max_attempts=2)
    job, _ = reports.request("2026-10", "json")
    claimed = []
    for _ in range(2):
        last = reports.claim()
        assert last is not None
        claimed.append(last)
        clock.advance(seconds=11)
    assert reports.claim() is None
    failed = reports.get(job.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert "interrupted 2 times" in failed.error
    # The last worker, alive after all, finds the job failed: it stays failed.
    assert reports.run(claimed[-1]).status == "failed"
    with pytest.raises(ReportNotReady):
        reports.output(job.id)


def test_month_end_report_is_created_once(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    job = reports.schedule_month_end()
    assert job is not None
    assert job.month == "2026-10"
    assert job.origin == "month_end"
    assert job.account_id is None
    assert job.timezone == "UTC"
    assert reports.schedule_month_end() is None
    assert reports.run_pending() == 1
    assert reports.schedule_month_end() is None
    with db.transaction(write=False) as conn:
        count = conn.execute(
            sa.select(sa.func.count()).where(report_jobs.c.origin == "month_end")
        ).scalar_one()
    assert count == 1


def test_nothing_to_schedule_before_any_wallet(db: Database, reports: Reports) -> None:
    db.migrate()
    assert reports.schedule_month_end() is None


def test_a_wallet_opened_as_the_month_ends_is_the_next_months(
    ledger: Ledger, reports: Reports, clock: Clock
) -> None:
    clock.now = datetime(2026, 11, 1, tzinfo=UTC)  # October's end, in UTC
    ledger.open_account("w", "credit", idempotency_key=key())
    clock.advance(days=1)
    assert reports.schedule_month_end() is None  # October had no wallet
    with pytest.raises(NotFound) as refused:  # nor a statement of it, asked for by name
        reports.request("2026-10", "json", account_id="w")
    assert refused.value.field == "account_id"
    assert reports.request("2026-10", "json", account_id=None)[1]  # the month itself may be
    clock.now = datetime(2026, 12, 1, tzinfo=UTC) + reports.close_delay
    job = reports.schedule_month_end()
    assert job is not None
    assert job.month == "2026-11"


def test_a_wallet_opened_as_the_month_ends_is_refused_beside_one_opened_in_it(
    ledger: Ledger, reports: Reports, clock: Clock
) -> None:
    clock.now = datetime(2026, 10, 20, tzinfo=UTC)
    ledger.open_account("early", "credit", idempotency_key=key())
    clock.now = datetime(2026, 11, 1, tzinfo=UTC)
    ledger.open_account("w", "credit", idempotency_key=key())
    clock.advance(days=1)
    with pytest.raises(NotFound) as refused:
        reports.request("2026-10", "json", account_id="w")
    assert refused.value.field == "account_id"
    job, created = reports.request("2026-10", "json", account_id="early")
    assert (created, job.account_id) == (True, "early")


def test_a_month_of_the_ledgers_own_accounts_alone_has_no_month_end_report(
    ledger: Ledger, reports: Reports, clock: Clock
) -> None:
    """The server ran in October (a sweeper's round made the ledger's own accounts), but
    its first wallet was opened as October ended: October has nothing to report."""
    clock.now = datetime(2026, 10, 20, tzinfo=UTC)
    ledger.expire_grants()
    clock.now = datetime(2026, 11, 1, tzinfo=UTC)
    ledger.open_account("w", "credit", idempotency_key=key())
    clock.advance(days=1)
    assert reports.schedule_month_end() is None


def test_a_months_statement_is_made_once_the_writes_stamped_with_its_last_instants_commit(
    db: Database, ledger: Ledger, reports: Reports, clock: Clock
) -> None:
    """A write stamped 23:59:59.9 may commit a few seconds into the next month (it waited
    for a wallet's lock; its server's clock is a little behind). A statement made before
    it commits would leave it out, and its closing would not be the next month's opening:
    for the close delay after the month's end, none is made, on request or at month end."""
    clock.now = datetime(2026, 10, 20, tzinfo=UTC)
    ledger.open_account("w", "credit", idempotency_key=key())
    ledger.top_up("w", 1_000, idempotency_key=key())
    end = queries.period("2026-10", "UTC").end
    assert reports.close_delay == timedelta(minutes=5)
    for clock.now in (end, end + timedelta(minutes=5) - timedelta(microseconds=1)):
        assert reports.schedule_month_end() is None
        with pytest.raises(InvalidInput) as early:
            reports.request("2026-10", "csv", account_id="w")
        assert early.value.field == "month"
        assert early.value.message == (
            "2026-10 ended in UTC at 2026-11-01T00:00:00+00:00; its statement can be made "
            "from 2026-11-01T00:05:00+00:00, once the writes stamped with its last instants "
            "have committed (CREDITLEDGER_REPORT_CLOSE_DELAY_SECONDS)"
        )
    # A charge stamped 100 ms before the end is the month's.
    clock.now = end - timedelta(milliseconds=100)
    ledger.charge("w", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.now = end + timedelta(minutes=5)
    job = reports.schedule_month_end()
    assert job is not None
    assert job.month == "2026-10"
    assert reports.request("2026-10", "csv", account_id="w")[1]
    assert reports.run_pending() == 2
    summary = reports.get(job.id).summary
    assert summary is not None
    (line,) = summary["totals"]
    assert (line["debits"], line["closing"]) == (240, 760)
    # A delay of none: made as the month ends, as the operator chose.
    at_once = Reports(db, clock=clock, close_delay=timedelta(0))
    clock.now = datetime(2026, 12, 1, tzinfo=UTC)
    job = at_once.schedule_month_end()
    assert job is not None
    assert job.month == "2026-11"


def test_december_counts_the_years_last_day_and_january_opens_with_its_closing(
    db: Database, ledger: Ledger, reports: Reports, clock: Clock
) -> None:
    clock.now = datetime(2026, 12, 31, 12, tzinfo=UTC)
    ledger.open_account("w", "credit", idempotency_key=key())
    ledger.top_up("w", 2_000, idempotency_key=key())
    clock.now = datetime(2027, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
    ledger.charge("w", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.now = datetime(2027, 1, 1, tzinfo=UTC)
    ledger.charge("w", veo3_video(video_model="veo3"), idempotency_key=key())
    for from_journal in (False, True):
        december = make(db, "2026-12", "UTC", "w", from_journal=from_journal)
        (row,) = records(december.accounts)
        assert (row["opening"], row["credit_pack"], row["debit_usage"], row["closing"]) == (
            0,
            2_000,
            240,
            1_760,
        )
        assert row["requests"] == 1
        assert december.daily["day"].tolist() == ["2026-12-31"]
        (row,) = records(make(db, "2027-01", "UTC", "w", from_journal=from_journal).accounts)
        assert (row["opening"], row["debit_usage"], row["closing"]) == (1_760, 500, 1_260)
    # On New Year's Day, once December has closed, the month-end job reports it.
    clock.advance(minutes=5)
    job = reports.schedule_month_end()
    assert job is not None
    assert job.month == "2026-12"
    assert reports.run_pending() == 1
    summary = reports.get(job.id).summary
    assert summary is not None
    assert (summary["start"], summary["end"]) == (
        "2026-12-01T00:00:00+00:00",
        "2027-01-01T00:00:00+00:00",
    )
    assert summary["totals"][0]["debits"] == 240


def test_a_wallet_whose_next_month_begins_at_another_instant_is_read_from_its_journal(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """Every London day of March 2024 began at a UTC midnight (summer time began on its
    last day, at 01:00 UTC), but London's April began at 23:00 UTC on March 31: its
    rollup's last day of March ends an hour before the UTC month does. Read from its
    journal, a charge in that hour is the UTC report's March."""
    clock.now = datetime(2024, 3, 15, tzinfo=UTC)
    ledger.open_account("w", "credit", timezone="Europe/London", idempotency_key=key())
    ledger.top_up("w", 2_000, idempotency_key=key())
    clock.now = datetime(2024, 3, 31, 23, 30, tzinfo=UTC)
    ledger.charge("w", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    march = make(db, "2024-03", "UTC", "w")
    (row,) = records(march.accounts)
    assert row["source"] == "journal"
    assert (row["debit_usage"], row["requests"], row["closing"]) == (240, 1, 1_760)
    assert march.daily["day"].tolist() == ["2024-03-31"]


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
def test_a_wallet_opened_and_a_top_up_posted_as_the_month_ends_are_the_next_months(
    db: Database, ledger: Ledger, clock: Clock, tz: str
) -> None:
    october = queries.period("2026-10", tz)
    clock.now = datetime(2026, 10, 15, tzinfo=UTC)
    ledger.open_account("old", "credit", idempotency_key=key())
    ledger.top_up("old", 1_000, idempotency_key=key())
    clock.now = october.end - timedelta(minutes=5)
    held = ledger.authorize("old", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.now = october.end
    ledger.capture(held.id, status="COMPLETED", usage=None, idempotency_key=key())
    ledger.open_account("new", "credit", idempotency_key=key())
    ledger.top_up("new", 500, idempotency_key=key())
    ledger.top_up("old", 300, idempotency_key=key())
    # Holds made as the month ends are November's: one left pending, one voided later.
    ledger.authorize("old", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    later = ledger.authorize("old", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.advance(minutes=1)
    ledger.void(later.id, idempotency_key=key())
    with db.transaction(write=False) as conn:
        batches = list(queries.wallet_batches(conn, october, 10))
    assert batches == [[ledger_account(db, "old")]]
    for from_journal in (False, True):
        (row,) = records(make(db, "2026-10", tz, from_journal=from_journal).accounts)
        assert (row["account_id"], row["opening"], row["credits"], row["closing"]) == (
            "old",
            0,
            1_000,
            1_000,
        )
        # The hold captured as the month ended was still open at its end.
        assert (row["debits"], row["open_holds"], row["open_holds_amount"]) == (0, 1, 240)
        assert ledger.balance("old", as_of=october.end - timedelta(microseconds=1)).pending == 240
        with pytest.raises(NotFound):
            make(db, "2026-10", tz, "new", from_journal=from_journal)
        november = make(db, "2026-11", tz, from_journal=from_journal).accounts
        assert [
            (r["account_id"], r["opening"], r["credits"], r["debit_usage"], r["open_holds"])
            for r in records(november)
        ] == [("new", 0, 500, 0, 0), ("old", 1_000, 300, 240, 1)]


def test_holds_of_one_wallet_open_at_the_end_for_the_same_amount_each_count(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """Three holds of 240 open as October ends, on one wallet: one pending still, one
    captured and one voided in November. Alike in wallet and amount, each is a hold of
    its own: three, 720 in all (not one 240, as a set of (wallet, amount) would make)."""
    october = queries.period("2026-10", "UTC")
    clock.now = datetime(2026, 10, 15, tzinfo=UTC)
    ledger.open_account("w", "credit", idempotency_key=key())
    ledger.top_up("w", 1_000, idempotency_key=key())
    clock.now = october.end - timedelta(minutes=5)
    made = [
        ledger.authorize("w", veo3_video(video_model="veo3_fast"), idempotency_key=key())
        for _ in range(3)
    ]
    clock.now = october.end + timedelta(minutes=1)
    ledger.capture(made[1].id, status="COMPLETED", usage=None, idempotency_key=key())
    ledger.void(made[2].id, idempotency_key=key())
    assert ledger.balance("w", as_of=october.end - timedelta(microseconds=1)).pending == 720
    for from_journal in (False, True):
        (row,) = records(make(db, "2026-10", "UTC", from_journal=from_journal).accounts)
        assert (row["open_holds"], row["open_holds_amount"]) == (3, 720)
        (line,) = make(db, "2026-10", "UTC", from_journal=from_journal).totals()
        assert line["open_holds_amount"] == 720


def test_a_voided_or_expired_hold_is_no_request_of_the_statement_an_error_is(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    clock.now = datetime(2026, 10, 10, tzinfo=UTC)
    ledger.open_account("w", "credit", idempotency_key=key())
    ledger.top_up("w", 5_000, idempotency_key=key())
    done = ledger.authorize("w", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    ledger.capture(done.id, status="COMPLETED", usage=None, idempotency_key=key())
    failed = ledger.authorize("w", veo3_video(video_model="veo3"), idempotency_key=key())
    ledger.capture(failed.id, status="ERROR", usage=None, idempotency_key=key())
    voided = ledger.authorize("w", veo3_video(video_model="veo3"), idempotency_key=key())
    ledger.void(voided.id, idempotency_key=key())
    ledger.authorize("w", veo3_video(video_model="veo3"), idempotency_key=key())
    clock.advance(hours=1)
    assert ledger.expire_holds() == 1
    for tz in ("UTC", "Asia/Tokyo"):
        for from_journal in (False, True):
            made = make(db, "2026-10", tz, "w", from_journal=from_journal)
            (row,) = records(made.accounts)
            assert (row["requests"], row["usage_amount"], row["debit_usage"]) == (2, 240, 240)
            assert made.usage[["model", "requests", "amount"]].to_numpy().tolist() == [
                ["veo3", 1, 0],
                ["veo3_fast", 1, 240],
            ]


def test_the_month_end_report_is_made_beside_the_reports_asked_for_that_month(
    ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    asked, _ = reports.request("2026-10", "csv")  # all wallets, UTC, as the month-end one
    job = reports.schedule_month_end()
    assert job is not None
    assert (job.origin, job.format) == ("month_end", "json")
    assert job.id != asked.id


def test_a_job_that_reports_progress_is_not_claimed_again(
    ledger: Ledger, traffic: Traffic, reports: Reports, clock: Clock
) -> None:
    """Each step of a running job renews its lease: a job still at work longer than the
    lease, since it was claimed, is not taken by another worker while its last step is
    recent."""
    job, _ = reports.request(traffic.month, "csv")
    claimed = reports.claim(job.id)
    assert claimed is not None
    taken: list[object] = []

    def step(percent: int, stage: str) -> None:
        if percent in (5, 95):
            clock.advance(seconds=50)  # the lease is 60 s: 100 s since the claim at 95%
        if percent == 95:
            taken.append(reports.claim())

    done = reports.run(claimed, progress=step)
    assert taken == [None]
    assert (done.status, done.attempts) == ("succeeded", 1)


def test_the_month_end_report_waits_for_an_identical_one_asked_for_first(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    """Finance asked for the very report the month end makes (all wallets, UTC, JSON): while
    that one is queued, no month-end job is created (nothing is returned for one); once it
    has run, the month-end report is made, once."""
    asked, _ = reports.request(traffic.month, "json")
    assert reports.schedule_month_end() is None
    with db.transaction(write=False) as conn:
        origins = conn.execute(sa.select(report_jobs.c.origin)).scalars().all()
    assert origins == ["request"]
    assert reports.run_pending() == 1
    job = reports.schedule_month_end()
    assert job is not None
    assert (job.origin, job.format, job.status) == ("month_end", "json", "queued")
    assert job.id != asked.id
    assert reports.schedule_month_end() is None
    assert reports.run_pending() == 1


def test_a_month_is_reported_from_the_instant_it_closes_in_its_timezone_and_per_timezone(
    ledger: Ledger, reports: Reports, clock: Clock
) -> None:
    ledger.open_account("w", "credit", idempotency_key=key())
    tokyo_end = datetime(2026, 10, 31, 15, tzinfo=UTC)  # midnight in Asia/Tokyo
    for clock.now in (tokyo_end - timedelta(microseconds=1), tokyo_end):
        with pytest.raises(InvalidInput) as early:
            reports.request("2026-10", "json", timezone="Asia/Tokyo")
        assert early.value.field == "month"
    clock.now = tokyo_end + reports.close_delay
    tokyo, created = reports.request("2026-10", "json", timezone="Asia/Tokyo")
    assert created
    clock.now = datetime(2026, 11, 1, tzinfo=UTC) + reports.close_delay
    utc, created = reports.request("2026-10", "json")
    assert created  # the same month in another timezone is another statement
    assert utc.id != tokyo.id
    assert reports.request("2026-10", "json", timezone="Asia/Tokyo")[0].id == tokyo.id


@pytest.mark.parametrize(
    ("month", "fmt", "tz", "field"),
    [
        ("2026-13", "json", "UTC", "month"),
        ("10-2026", "json", "UTC", "month"),
        ("2026-11", "json", "UTC", "month"),  # not ended yet
        ("2027-01", "json", "UTC", "month"),
        ("2026-10", "xlsx", "UTC", "format"),
        ("2026-10", "json", "Mars/Olympus", "timezone"),
        ("2026-10", "json", "", "timezone"),
    ],
)
def test_bad_requests_name_the_field(
    db: Database, ledger: Ledger, reports: Reports, month: str, fmt: str, tz: str, field: str
) -> None:
    db.migrate()
    with pytest.raises(InvalidInput) as caught:
        reports.request(month, fmt, timezone=tz)
    assert caught.value.field == field
    with pytest.raises(NotFound):
        reports.request("2026-10", "json", account_id="nobody")
    with pytest.raises(InvalidInput) as empty:
        reports.request("2026-10", "json", account_id="")
    assert empty.value.field == "account_id"
    with db.transaction(write=False) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(report_jobs)).scalar_one() == 0


def test_migration_backfills_the_journal_rollup(
    db: Database, ledger: Ledger, traffic: Traffic
) -> None:
    """A database that had a journal before ``daily_flows`` existed reports the same."""
    before = make(db, traffic.month, "UTC")
    with db.transaction(write=False) as conn:
        rolled = conn.execute(sa.select(flows).order_by(*flows.primary_key.columns)).all()
    db.downgrade("0002")
    db.migrate()
    with db.transaction(write=False) as conn:
        assert conn.execute(sa.select(flows).order_by(*flows.primary_key.columns)).all() == rolled
    after = make(db, traffic.month, "UTC")
    pd.testing.assert_frame_equal(before.accounts, after.accounts)


def test_migration_0013_rolls_refunds_up_as_their_own_flow(
    db: Database, ledger: Ledger, traffic: Traffic
) -> None:
    """Refunds rolled up as reversals (before 0013) move to the flow ``refund`` on the
    day they were posted, and back on a downgrade."""

    def rollup() -> dict[tuple[int, str, str], tuple[int, int, int]]:
        with db.transaction(write=False) as conn:
            rows = conn.execute(sa.select(flows)).all()
        return {(r.account_id, r.day, r.flow): (r.credits, r.debits, r.entries) for r in rows}

    rolled = rollup()
    refunds = {(a, d): moved for (a, d, flow), moved in rolled.items() if flow == "refund"}
    assert refunds, "the month's traffic has a refund"
    db.downgrade("0012")
    older = rollup()
    assert not [key for key in older if key[2] == "refund"]
    for (account, day), moved in refunds.items():
        others = rolled.get((account, day, "reversal"), (0, 0, 0))
        merged = tuple(a + b for a, b in zip(moved, others, strict=True))
        assert older[(account, day, "reversal")] == merged
    db.migrate()
    assert rollup() == rolled
    assert verify(db) == []


def test_files_are_stored_compressed_and_read_back_as_rendered(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    """CSV, JSON and HTML are kept gzip-compressed (Parquet compresses its own); what
    ``output`` gives back is the file as rendered, whose SHA-256 the job keeps. A
    downgrade past 0015 stores them as rendered again, for the code before it."""
    formats = ("csv", "json", "html", "parquet")
    jobs = {fmt: reports.request(traffic.month, fmt)[0] for fmt in formats}
    assert reports.run_pending() == 4
    made = make(db, traffic.month, "UTC")

    def stored() -> dict[str, tuple[bytes, str | None]]:
        with db.transaction(write=False) as conn:
            rows = conn.execute(sa.select(report_outputs)).all()
        return {r.job_id: (bytes(r.content), r.content_encoding) for r in rows}

    rows = stored()
    files = {}
    for fmt, job in jobs.items():
        out = reports.output(job.id)
        files[fmt] = out.content
        assert out.sha256 == hashlib.sha256(out.content).hexdigest()
        data, encoding = rows[job.id]
        if fmt == "parquet":
            assert (encoding, data) == (None, out.content)
            continue
        assert encoding == "gzip"
        assert gzip.decompress(data) == out.content
        assert len(data) * 5 < len(out.content)
    stamped = json.loads(files["json"]), json.loads(render.render(made, "json"))
    for doc in stamped:
        doc.pop("generated_at")
    assert stamped[0] == stamped[1]
    assert files["csv"] == render.render(made, "csv")
    assert files["parquet"] == render.render(made, "parquet")
    db.downgrade("0014")
    with db.transaction(write=False) as conn:
        rendered = sa.select(report_outputs.c.job_id, report_outputs.c.content)
        plain = {r.job_id: bytes(r.content) for r in conn.execute(rendered)}
    assert plain == {job.id: files[fmt] for fmt, job in jobs.items()}
    db.migrate()
    assert {job.id: reports.output(job.id).content for job in jobs.values()} == plain


def test_identical_requests_racing_make_one_job(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: reports.request("2026-10", "csv"), range(16)))
    assert len({job.id for job, _ in made}) == 1
    assert sum(created for _, created in made) == 1
    # Two workers racing for the queue: the job runs once.
    with ThreadPoolExecutor(2) as pool:
        ran = list(pool.map(lambda _: reports.run_pending(), range(2)))
    assert sorted(ran) == [0, 1]


# SQLite runs one write transaction at a time: two requests there never interleave.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_report_another_process_queued_meanwhile_is_the_one_returned(
    database_url: str,
    db: Database,
    ledger: Ledger,
    traffic: Traffic,
    reports: Reports,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two processes ask for the same report at once on PostgreSQL: both find none queued,
    the other inserts its job first, and this one's insert meets the unique index. This
    one then answers with the other's job (not created now), not an error."""
    other_db = Database.from_url(database_url)
    other = Reports(other_db, clock=reports.clock)
    theirs: list[str] = []

    def meanwhile() -> str:
        # Between this request's look for an identical job and its insert.
        if not theirs:
            theirs.append("")  # so that the other's own call here takes a plain id
            theirs[0] = other.request(traffic.month, "csv")[0].id
        return new_id()

    monkeypatch.setattr("reports.jobs.new_id", meanwhile)
    try:
        job, created = reports.request(traffic.month, "csv")
    finally:
        other_db.dispose()
    assert (job.id, created) == (theirs[0], False)
    with db.transaction(write=False) as conn:
        assert conn.execute(sa.select(report_jobs.c.id)).scalars().all() == [job.id]


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "html"])
def test_quiet_and_empty_months_render(
    db: Database, ledger: Ledger, clock: Clock, reports: Reports, fmt: str
) -> None:
    """A wallet with no usage, a unit with no usage, a month before any wallet."""
    clock.now = datetime(2026, 10, 5, tzinfo=UTC)
    ledger.open_account("quiet", "credit", idempotency_key="q1")
    ledger.top_up("quiet", 100, idempotency_key="q2")
    ledger.open_account("idle", "token", idempotency_key="q3")
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    for month, wallets in (("2026-10", 2), ("2026-08", 0)):
        job, _ = reports.request(month, fmt)
        claimed = reports.claim(job.id)
        assert claimed is not None
        done = reports.run(claimed)
        assert done.status == "succeeded", done.error
        assert done.summary is not None
        assert done.summary["accounts"] == wallets
        assert reports.output(job.id).content


def test_the_parquet_files_columns_are_the_same_every_month(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """A warehouse loads the Parquet statement month after month into one table: its
    columns' types must not follow the month's values. Video seconds were inferred as
    decimal(p, 6) with p the largest value's digits, and as type null in a month with no
    usage: now decimal(19, 6) always, the exact seconds kept."""
    clock.now = datetime(2026, 9, 5, tzinfo=UTC)
    ledger.open_account("quiet", "credit", idempotency_key=key())
    ledger.top_up("quiet", 100, idempotency_key=key())
    clock.now = datetime(2026, 10, 5, tzinfo=UTC)
    ledger.open_account("busy", "credit", idempotency_key=key())
    ledger.top_up("busy", 100_000, idempotency_key=key())
    ledger.charge("busy", veo3_video(video_model="veo3_fast"), idempotency_key=key())
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    # Seconds of video as a rollup holds them (the shipped catalogs meter whole seconds).
    with db.transaction() as conn:
        busy = conn.execute(
            sa.select(accounts.c.id).where(accounts.c.external_id == "busy")
        ).scalar_one()
        row = {"account_id": busy, "unit": "credit", "catalog": "fal", "operation": "v"}
        conn.execute(
            daily.insert(),
            [
                {**row, "model": "a", "day": "2026-10-02", "seconds": Decimal("12.5")},
                {**row, "model": "a", "day": "2026-10-03", "seconds": Decimal("0.000001")},
            ],
        )
    made = {month: make(db, month, "UTC") for month in ("2026-08", "2026-09", "2026-10")}
    files = {month: render.render(m, "parquet") for month, m in made.items()}
    with db.transaction() as conn:  # verify() checks the rollup against the metering
        conn.execute(daily.delete().where(daily.c.catalog == "fal"))
    for data in files.values():
        schema = pq.read_schema(io.BytesIO(data))
        assert schema.equals(render.LINE_SCHEMA, check_metadata=False)
        assert schema.field("video_seconds").type == pa.decimal128(19, 6)
    assert pq.read_metadata(io.BytesIO(files["2026-08"])).num_rows == 0
    october = pd.read_parquet(io.BytesIO(files["2026-10"]))
    assert_frame_equal(october, render.lines(made["2026-10"]))
    usage = october[october["section"] == "usage"].set_index("model")["video_seconds"]
    assert usage.to_dict() == {"a": Decimal("12.500001"), "veo3_fast": Decimal(0)}
    assert pd.read_parquet(io.BytesIO(files["2026-09"]))["video_seconds"].isna().all()
    # The CSV writes the same decimals with their six places, never in exponent form.
    text = pd.read_csv(io.BytesIO(render.render(made["2026-10"], "csv")), dtype=str)
    cells = text[text["section"].isin(render.USAGE_SECTIONS)]
    rows = zip(cells["section"], cells["model"], cells["video_seconds"], strict=True)
    assert sorted(rows) == [
        ("usage", "a", "12.500001"),
        ("usage", "veo3_fast", "0.000000"),
        ("usage_daily", "a", "0.000001"),
        ("usage_daily", "a", "12.500000"),
        ("usage_daily", "veo3_fast", "0.000000"),
    ]


def test_the_json_statement_carries_the_usage_of_wallets_whose_ids_json_escapes(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """A wallet id is the operator's text: a quote or a backslash in it is escaped in
    JSON, and the wallet's usage arrays are still its own (they were left a placeholder
    string for an id with a quote). An id shaped like the placeholders the arrays are
    spliced in for stays an id: theirs carry a random nonce."""
    clock.now = datetime(2026, 10, 5, tzinfo=UTC)
    names = ['say "cheese"', "back\\slash", "ünïcødé 🎬", "plain", "@@0:usage:0@@"]
    for n, name in enumerate(names):
        ledger.open_account(name, "credit", idempotency_key=key())
        ledger.top_up(name, 10_000, idempotency_key=key())
        for _ in range(n + 1):
            ledger.charge(name, veo3_video(video_model="veo3_fast"), idempotency_key=key())
    ledger.open_account("idle", "credit", idempotency_key=key())  # no usage: empty arrays
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    made = make(db, "2026-10", "UTC")
    body = json.loads(render.render(made, "json"))
    assert body == json.loads(json.dumps(render.to_json(made)))
    usage = {a["account_id"]: a["usage"] for a in body["accounts"]}
    daily = {a["account_id"]: a["usage_by_day"] for a in body["accounts"]}
    assert (usage.pop("idle"), daily.pop("idle")) == ([], [])
    assert sorted(usage) == sorted(names)
    for n, name in enumerate(names):
        assert [(u["model"], u["requests"], u["amount"]) for u in usage[name]] == [
            ("veo3_fast", n + 1, 240 * (n + 1))
        ]
        assert [(d["day"], d["requests"]) for d in daily[name]] == [("2026-10-05", n + 1)]


def test_file_names_are_plain_ascii() -> None:
    assert render.filename("2026-10", "csv") == "statement-2026-10.csv"
    assert render.FILENAME_MAX == getattr(report_outputs.c.filename.type, "length", None)
    assert render.filename("2026-10", "html", "用户/../a b") == "statement-2026-10-___.._a_b.html"


def test_a_lost_database_leaves_the_job_to_be_retried(
    db: Database, ledger: Ledger, traffic: Traffic, reports: Reports, clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    job, _ = reports.request("2026-10", "json")
    claimed = reports.claim()
    assert claimed is not None

    def gone(*_args: object, **_kwargs: object) -> None:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection lost"))

    monkeypatch.setattr(queries, "load", gone)
    with pytest.raises(sa.exc.OperationalError):
        reports.run(claimed)
    assert reports.get(job.id).status == "running"
    monkeypatch.undo()
    clock.advance(seconds=61)
    again = reports.claim()
    assert again is not None
    assert again.attempts == 2
    assert reports.run(again).status == "succeeded"


def _funded(ledger: Ledger, clock: Clock, amounts: dict[str, tuple[int, str]]) -> None:
    """Wallets topped up in October 2026 (amount, kind each); the clock then in November."""
    clock.now = datetime(2026, 10, 5, tzinfo=UTC)
    for name, (amount, kind) in amounts.items():
        ledger.open_account(name, "credit", idempotency_key=f"open-{name}")
        ledger.top_up(name, amount, kind=kind, idempotency_key=f"top-{name}")
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)


def _failed(reports: Reports, month: str, fmt: str) -> str:
    """Why the report of ``month`` in ``fmt``, run to its end, failed (it must)."""
    job, _ = reports.request(month, fmt)
    claimed = reports.claim(job.id)
    assert claimed is not None
    done = reports.run(claimed)
    assert done.status == "failed"
    assert done.error is not None
    return done.error


@pytest.mark.parametrize("batch", [500, 1])
def test_totals_past_64_bits_are_exact(
    db: Database,
    ledger: Ledger,
    clock: Clock,
    reports: Reports,
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs, "BATCH", batch)
    # Each wallet fits 64 bits; what they hold together does not (int64 would wrap).
    each = 2**62
    _funded(ledger, clock, {"a": (each, "pack"), "b": (each, "pack"), "c": (each, "promo")})
    made = make(db, "2026-10", "UTC")
    (total,) = made.totals()
    assert (total["credits"], total["closing"], total["opening"]) == (3 * each, 3 * each, 0)
    for fmt in ("csv", "json", "parquet", "html"):
        assert render.render(made, fmt)
    job, _ = reports.request("2026-10", "json")
    claimed = reports.claim(job.id)
    assert claimed is not None
    done = reports.run(claimed)
    assert done.status == "succeeded", done.error
    assert done.summary is not None
    assert done.summary["totals"][0]["credits"] == 3 * each
    assert json.loads(reports.output(job.id).content)["totals"][0]["closing"] == 3 * each


def test_amounts_past_float_precision_stay_exact_beside_a_wallet_that_moved_nothing(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """A wallet with no credits or debits in the month has no row in the month's flows:
    filled in as missing values, it would make every amount of its column a float, and
    2**53 + 1 credits a float cannot hold."""
    odd = 2**53 + 1
    _funded(ledger, clock, {"big": (odd, "pack")})
    clock.now = datetime(2026, 10, 6, tzinfo=UTC)
    ledger.open_account("idle", "credit", idempotency_key=key())
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    made = make(db, "2026-10", "UTC")
    rows = {r["account_id"]: r for r in records(made.accounts)}
    assert (rows["big"]["credit_pack"], rows["big"]["closing"]) == (odd, odd)
    assert (rows["idle"]["credit_pack"], rows["idle"]["closing"]) == (0, 0)
    assert made.totals()[0]["credits"] == odd


def test_a_wallet_whose_month_of_debits_passes_64_bits_fails_the_report_by_name(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """Debits alone can pass 64 bits: a wallet taken deep into debt, given some back,
    and taken deeper again. Its credits and every balance fit; its debits (an int64 sum
    would wrap to a negative number, and still reconcile modulo 2**64) do not."""
    deep = 2**62 + 2**60
    clock.now = datetime(2026, 10, 5, tzinfo=UTC)
    ledger.open_account("debtor", "credit", idempotency_key=key())
    ledger.adjust("debtor", -deep, reason="usage billed elsewhere", idempotency_key=key())
    ledger.top_up("debtor", 2**62, idempotency_key=key())
    # The next day: each day's rollup of adjustments fits too.
    clock.now = datetime(2026, 10, 6, tzinfo=UTC)
    ledger.adjust("debtor", -deep, reason="usage billed elsewhere", idempotency_key=key())
    assert ledger.balance("debtor").balance == 2**62 - 2 * deep
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(ReportOverflow) as caught:
        make(db, "2026-10", "UTC")
    assert caught.value.accounts == ["debtor"]


@pytest.mark.parametrize("big", [2**62 + 1, 2**62 + 2**61], ids=["just-past", "far-past"])
def test_a_wallet_whose_month_passes_64_bits_fails_the_report_by_name(
    db: Database,
    ledger: Ledger,
    clock: Clock,
    reports: Reports,
    monkeypatch: pytest.MonkeyPatch,
    big: int,
) -> None:
    # Credits, as much taken back, and the same credits again the next day: every balance
    # and every day's rollup fits, but the month's pack credits (2 * big) would wrap, just
    # (int64 wraps them to a negative number, and the closing balance reconciles all the
    # same, modulo 2**64) or far past 64 bits.
    # (verify() after the test sums the same history exactly: see test_overflow.py.)
    _funded(ledger, clock, {"whale": (big, "pack"), "minnow": (10, "pack")})
    clock.now = datetime(2026, 10, 6, tzinfo=UTC)
    ledger.adjust("whale", -big, reason="clawback", idempotency_key="claw")
    ledger.top_up("whale", big, idempotency_key="again")
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(ReportOverflow) as caught:
        make(db, "2026-10", "UTC")
    assert caught.value.accounts == ["whale"]
    assert make(db, "2026-10", "UTC", "minnow").totals()[0]["credits"] == 10
    for fmt, batch in (("csv", jobs.BATCH), ("json", jobs.BATCH), ("json", 1)):
        monkeypatch.setattr(jobs, "BATCH", batch)
        error = _failed(reports, "2026-10", fmt)
        assert "ReportOverflow" in error
        assert "[whale]" in error


@pytest.mark.parametrize("batch", [500, 1])
def test_every_wallet_past_64_bits_is_named_whichever_batch_it_is_in(
    db: Database,
    ledger: Ledger,
    clock: Clock,
    reports: Reports,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """Two wallets whose months pass 64 bits, with a sound one between them: the failed
    report names both, in order, whether they are read together or in batches of one
    wallet each (the statement of all wallets is made a batch at a time)."""
    monkeypatch.setattr(jobs, "BATCH", batch)
    big, deep = 2**62 + 1, 2**62 + 2**60
    # The whale's pack credits pass 64 bits; the debtor's debits do. (The two together
    # keep the funding account within 64 bits: the whale's packs come from it, the
    # debtor's adjustments go to it.)
    _funded(ledger, clock, {"whale": (big, "pack"), "minnow": (10, "pack")})
    clock.now = datetime(2026, 10, 6, tzinfo=UTC)
    ledger.adjust("whale", -big, reason="clawback", idempotency_key="claw")
    ledger.top_up("whale", big, idempotency_key="again")
    ledger.open_account("debtor", "credit", idempotency_key=key())
    ledger.adjust("debtor", -deep, reason="usage billed elsewhere", idempotency_key=key())
    ledger.top_up("debtor", 2**62, idempotency_key=key())
    clock.now = datetime(2026, 10, 7, tzinfo=UTC)
    ledger.adjust("debtor", -deep, reason="usage billed elsewhere", idempotency_key=key())
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    for fmt in ("csv", "json"):
        error = _failed(reports, "2026-10", fmt)
        assert "2 account(s) [debtor, whale]" in error, error


def test_a_wallet_deep_in_debt_whose_month_of_credits_passes_64_bits_fails_by_name(
    db: Database, ledger: Ledger, clock: Clock
) -> None:
    """The month opens as deep in debt as 64 bits go, and its credits (two top-ups on two
    days, each day's rollup within 64 bits) add up to 2**63: as int64, they would wrap to
    the most negative number, and the closing balance would still reconcile, modulo
    2**64. The debt makes the wallet's sums no smaller: they are bounded by magnitude."""
    clock.now = datetime(2026, 9, 5, tzinfo=UTC)
    ledger.open_account("debtor", "credit", idempotency_key=key())
    ledger.adjust("debtor", -(2**63 - 1), reason="usage billed elsewhere", idempotency_key=key())
    for day in (5, 6):
        clock.now = datetime(2026, 10, day, tzinfo=UTC)
        ledger.top_up("debtor", 2**62, idempotency_key=key())
    assert ledger.balance("debtor").balance == 1
    clock.now = datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(ReportOverflow) as caught:
        make(db, "2026-10", "UTC")
    assert caught.value.accounts == ["debtor"]
