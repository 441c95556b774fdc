"""What a monthly statement reads, as pandas frames, in one consistent snapshot.

A wallet whose days (in its own timezone) line up with the report's days is read from the
rollups: ``daily_flows`` for its journal and ``daily_usage`` for its usage, a few rows per
wallet and day whatever the traffic. A wallet in a timezone whose midnights differ from the
report's is read from the journal and the metering records of the month instead, so its
days and its month are cut exactly in the report's timezone (slower, and exact).

Either way the closing balance is checked against the ledger itself: the wallet's
materialized balance less what was posted since the month ended.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import kernel
from ledger.errors import InvalidInput, NotFound
from ledger.models import (
    PENDING_HOLD,
    WALLET,
    accounts,
    daily,
    entries,
    entry_flow,
    flows,
    holds,
    metering,
    postings,
    seconds_micros,
    unindexed,
    units,
)

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

#: Usage quantities of the rollup, in the order reports show them.
QUANTITIES = ("requests", "input_tokens", "output_tokens", "images", "videos", "candidates")
USAGE_KEYS = ("account", "day", "catalog", "operation", "model")
USAGE_COLUMNS = (*USAGE_KEYS, *QUANTITIES, "seconds_us", "amount")
FLOW_COLUMNS = ("account", "day", "flow", "credits", "debits", "entries")


@dataclass(frozen=True)
class Period:
    """A calendar month in a timezone, as the half-open UTC interval [start, end)."""

    month: str
    timezone: str
    first_day: date
    next_first_day: date

    @property
    def start(self) -> datetime:
        return local_midnight(self.first_day, self.timezone)

    @property
    def end(self) -> datetime:
        return local_midnight(self.next_first_day, self.timezone)

    @property
    def days(self) -> list[date]:
        n = (self.next_first_day - self.first_day).days
        return [self.first_day + timedelta(days=i) for i in range(n)]


def local_midnight(day: date, timezone: str) -> datetime:
    """The instant (UTC) a local date begins in ``timezone``."""
    return datetime.combine(day, time(), ZoneInfo(timezone)).astimezone(UTC)


def check_timezone(timezone: object, field: str = "timezone") -> str:
    """An IANA timezone name, or an error naming the field."""
    problem = kernel.timezone_problem(timezone)
    if problem is not None:
        raise InvalidInput(problem, field=field)
    assert isinstance(timezone, str)
    return timezone


def period(month: object, timezone: object = "UTC") -> Period:
    """The month ``"2026-10"`` in ``timezone``; an error naming the field otherwise."""
    found = MONTH.match(month) if isinstance(month, str) else None
    if found is None or not 1970 <= int(found.group(1)) <= 9998:
        raise InvalidInput(
            "month must be a calendar month written YYYY-MM, such as 2026-10",
            field="month",
            allowed="YYYY-MM",
        )
    tz = check_timezone(timezone)
    year, mon = int(found.group(1)), int(found.group(2))
    first = date(year, mon, 1)
    following = date(year + 1, 1, 1) if mon == 12 else date(year, mon + 1, 1)
    return Period(month=found.group(0), timezone=tz, first_day=first, next_first_day=following)


@cache
def aligned(timezone: str, report: Period) -> bool:
    """Whether every day of ``report`` begins at the same instant in ``timezone``."""
    if timezone == report.timezone:
        return True
    return all(
        local_midnight(day, timezone) == local_midnight(day, report.timezone)
        for day in [*report.days, report.next_first_day]
    )


@dataclass(frozen=True)
class Frames:
    """The month's raw material. Amounts are int64 minor units; video seconds are int64
    microseconds (``seconds_us``: the ledger keeps them to the microsecond), so every sum
    is an exact integer sum.

    ``wallets``: account (the wallet's row id), account_id, unit, scale, timezone, source
    ("rollup" or "journal"), opening, ledger_closing, open_holds, open_holds_amount.
    ``flows``: account, day, flow, credits, debits, entries.
    ``usage``: account, day, catalog, operation, model, quantities, seconds_us, amount.
    """

    period: Period
    wallets: pd.DataFrame
    flows: pd.DataFrame
    usage: pd.DataFrame


def wallet_batches(
    conn: Connection, report: Period, size: int, *, by_code_point: bool = False
) -> Iterator[list[int]]:
    """The row ids of the wallets that existed in ``report``, ``size`` at a time, in the
    statement's order: by external id as the database orders it (:func:`load`), or
    ``by_code_point`` as Python does (pandas, the CSV's lines). For a statement of every
    wallet made a batch after another (:func:`load` with ``among``)."""
    rows = list(
        conn.execute(
            sa.select(accounts.c.id, accounts.c.external_id)
            .where(accounts.c.kind == WALLET, accounts.c.created_at < report.end)
            .order_by(accounts.c.external_id)
        )
    )
    if by_code_point:
        rows.sort(key=lambda row: str(row.external_id))
    ids = [int(row.id) for row in rows]
    for at in range(0, len(ids), size):
        yield ids[at : at + size]


def load(
    conn: Connection,
    report: Period,
    account_id: str | None = None,
    *,
    from_journal: bool = False,
    among: list[int] | None = None,
    holds_open: pd.DataFrame | None = None,
) -> Frames:
    """Read everything the statement of ``report`` needs, for one wallet or all, or for
    the wallets ``among`` (row ids, from :func:`wallet_batches`).

    ``from_journal`` reads every wallet the exact way (journal and metering records), as a
    check of the rollups. ``holds_open``: :func:`open_holds` at the report's end, read
    once for all the batches of a statement.
    """
    start, end = report.start, report.end
    first, following = report.first_day.isoformat(), report.next_first_day.isoformat()
    moved_since = (
        sa.select(sa.func.coalesce(sa.func.sum(postings.c.amount), 0))
        .where(postings.c.account_id == accounts.c.id, postings.c.posted_at >= end)
        .scalar_subquery()
    )
    stmt = (
        sa.select(
            accounts.c.id.label("account"),
            accounts.c.external_id.label("account_id"),
            accounts.c.unit,
            units.c.scale,
            accounts.c.timezone,
            (accounts.c.balance - moved_since).label("ledger_closing"),
        )
        .join(units, units.c.code == accounts.c.unit)
        .where(accounts.c.kind == WALLET, accounts.c.created_at < end)
        .order_by(accounts.c.external_id)
    )
    if account_id is not None:
        stmt = stmt.where(accounts.c.external_id == account_id)
    if among is not None:
        stmt = stmt.where(accounts.c.id.in_(among))
    wallets = _frame(conn, stmt)
    if account_id is not None and wallets.empty:
        raise NotFound(f"no account '{account_id}' existed in {report.month}", field="account_id")
    wallets["source"] = [
        "rollup" if aligned(tz, report) and not from_journal else "journal"
        for tz in wallets["timezone"]
    ]
    rolled = wallets.loc[wallets["source"] == "rollup", "account"].tolist()
    exact = wallets.loc[wallets["source"] == "journal", "account"].tolist()
    # The wallets read: one, a batch, or (None) all.
    chosen = [int(wallets["account"].iloc[0])] if account_id is not None else among

    # From the rollups: the month's days, and every earlier day for the opening balance.
    flow_rows = sa.select(
        flows.c.account_id.label("account"),
        flows.c.day,
        flows.c.flow,
        flows.c.credits,
        flows.c.debits,
        flows.c.entries,
    ).where(flows.c.day >= first, flows.c.day < following)
    opening_rows = sa.select(
        flows.c.account_id.label("account"),
        sa.func.sum(flows.c.credits - flows.c.debits).label("opening"),
    ).where(flows.c.day < first)
    usage_rows = sa.select(
        daily.c.account_id.label("account"),
        daily.c.day,
        daily.c.catalog,
        daily.c.operation,
        daily.c.model,
        *(daily.c[q] for q in QUANTITIES),
        seconds_micros(daily.c.seconds),
        daily.c.amount,
    ).where(daily.c.day >= first, daily.c.day < following)
    if chosen is not None:
        flow_rows = flow_rows.where(flows.c.account_id.in_(chosen))
        opening_rows = opening_rows.where(flows.c.account_id.in_(chosen))
        usage_rows = usage_rows.where(daily.c.account_id.in_(chosen))
    month_flows = _only(_frame(conn, flow_rows), rolled)
    opening = _only(_frame(conn, opening_rows.group_by(flows.c.account_id)), rolled)
    usage = _only(_frame(conn, usage_rows), rolled)

    if exact:
        ids: sa.BindParameter[object] = sa.bindparam("ids", exact, expanding=True)
        month_flows = pd.concat([month_flows, _journal_flows(conn, report, ids)], ignore_index=True)
        usage = pd.concat([usage, _metered_usage(conn, report, ids)], ignore_index=True)
        opening = pd.concat(
            [
                opening,
                _frame(
                    conn,
                    sa.select(
                        postings.c.account_id.label("account"),
                        sa.func.sum(postings.c.amount).label("opening"),
                    )
                    .where(postings.c.account_id.in_(ids), postings.c.posted_at < start)
                    .group_by(postings.c.account_id),
                ),
            ],
            ignore_index=True,
        )

    wallets = wallets.merge(opening, on="account", how="left")
    held = open_holds(conn, end, chosen) if holds_open is None else holds_open
    wallets = wallets.merge(held, on="account", how="left")
    for column in ("opening", "open_holds", "open_holds_amount", "ledger_closing"):
        wallets[column] = wallets[column].fillna(0).astype("int64")
    return Frames(
        period=report,
        wallets=wallets,
        flows=month_flows.astype({"credits": "int64", "debits": "int64", "entries": "int64"}),
        usage=usage,
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as dicts keyed by column name."""
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _frame(conn: Connection, stmt: sa.Select[tuple[object, ...]]) -> pd.DataFrame:
    result = conn.execute(stmt)
    # Plain tuples: pandas probes each row's attributes, which a Row answers slowly.
    return pd.DataFrame([tuple(row) for row in result], columns=list(result.keys()))


def _only(frame: pd.DataFrame, accounts_: list[int]) -> pd.DataFrame:
    return frame[frame["account"].isin(accounts_)].reset_index(drop=True)


def _local_days(instants: pd.Series, timezone: str) -> pd.Series:
    """The local date (ISO text) of each UTC instant in ``timezone``."""
    stamps = pd.to_datetime(instants, utc=True)
    return stamps.dt.tz_convert(timezone).dt.strftime("%Y-%m-%d")


def _journal_flows(conn: Connection, report: Period, ids: sa.BindParameter[object]) -> pd.DataFrame:
    """The month's wallet postings of ``ids``, rolled up by the report's days."""
    rows = _frame(
        conn,
        sa.select(
            postings.c.account_id.label("account"),
            postings.c.posted_at,
            postings.c.amount,
            entry_flow().label("flow"),
        )
        .join(entries, entries.c.id == postings.c.entry_id)
        .where(
            postings.c.account_id.in_(ids),
            postings.c.posted_at >= report.start,
            postings.c.posted_at < report.end,
        ),
    )
    if rows.empty:
        return pd.DataFrame(columns=list(FLOW_COLUMNS))
    rows["day"] = _local_days(rows["posted_at"], report.timezone)
    rows["credits"] = rows["amount"].clip(lower=0)
    rows["debits"] = (-rows["amount"]).clip(lower=0)
    rows["entries"] = 1
    return (
        rows.groupby(["account", "day", "flow"], as_index=False)[["credits", "debits", "entries"]]
        .sum()
        .loc[:, list(FLOW_COLUMNS)]
    )


def _metered_usage(conn: Connection, report: Period, ids: sa.BindParameter[object]) -> pd.DataFrame:
    """The month's completed metering records of ``ids``, by the report's days."""
    quantities = [metering.c[q] for q in QUANTITIES if q != "requests"]
    rows = _frame(
        conn,
        sa.select(
            metering.c.account_id.label("account"),
            metering.c.completed_at,
            metering.c.catalog,
            metering.c.operation,
            metering.c.model,
            *quantities,
            seconds_micros(metering.c.seconds),
            metering.c.charged.label("amount"),
        ).where(
            metering.c.account_id.in_(ids),
            metering.c.completed_at >= report.start,
            metering.c.completed_at < report.end,
            # What the rollup counts: completed, not voided or expired.
            metering.c.status.not_in(["voided", "expired"]),
        ),
    )
    if rows.empty:
        return pd.DataFrame(columns=list(USAGE_COLUMNS))
    rows["day"] = _local_days(rows["completed_at"], report.timezone)
    rows["requests"] = 1
    keys = list(USAGE_KEYS)
    summed = rows.groupby(keys, as_index=False)[[*QUANTITIES, "seconds_us", "amount"]].sum()
    return summed.loc[:, list(USAGE_COLUMNS)]


def open_holds(conn: Connection, end: datetime, among: list[int] | None = None) -> pd.DataFrame:
    """Per wallet, the holds still pending at ``end``: created before, resolved after; of
    the wallets ``among`` (row ids), or of all.

    A hold not yet resolved is a pending one (``verify()`` checks it): the partial index
    ``ix_holds_account_pending`` holds those (the holds open now), and
    ``ix_holds_account_resolved`` the others, by wallet and resolution. The others are
    read wallet by wallet, each from ``end`` on: for a month long past, most of the
    wallet's holds.
    """
    # Pending holds by their own index, not by every hold of the wallet made before.
    unresolved = sa.select(holds.c.account_id, holds.c.amount).where(
        PENDING_HOLD, unindexed(holds.c.created_at) < end
    )
    wallets = sa.select(accounts.c.id).where(accounts.c.kind == WALLET)
    if among is not None:
        unresolved = unresolved.where(holds.c.account_id.in_(among))
        wallets = wallets.where(accounts.c.id.in_(among))
    # Each wallet's holds resolved since: the wallets first, each one's from its index.
    listed = wallets.cte("listed")
    resolved_later = (
        sa.select(holds.c.account_id, holds.c.amount)
        .select_from(listed)
        .join(holds, holds.c.account_id == listed.c.id)
        .where(holds.c.resolved_at >= end, unindexed(holds.c.created_at) < end)
    )
    both = sa.union_all(unresolved, resolved_later).subquery()
    frame = _frame(
        conn,
        sa.select(
            both.c.account_id.label("account"),
            sa.func.count().label("open_holds"),
            sa.func.sum(both.c.amount).label("open_holds_amount"),
        ).group_by(both.c.account_id),
    )
    return frame.astype({"open_holds": "int64", "open_holds_amount": "int64"})
