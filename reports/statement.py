"""The monthly statement: per wallet, where its credits came from and where they went.

opening + credits - debits = closing, and closing must equal the ledger's own balance at
the month's end; the usage debited in the journal must equal the usage metered. A wallet
that breaks either is named in a :class:`ReconciliationError`, and no statement is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from reports.errors import Mismatch, ReconciliationError, ReportOverflow
from reports.queries import QUANTITIES, Frames, Period, records

#: Where each flow's credits and debits show on the statement. A refund (the reversal of
#: a capture or charge) gives usage back; any other reversal that credits the wallet undid
#: a debit (an adjustment, an expiry) and shows as a reversal.
CREDIT_ITEMS = {
    "pack": "pack",
    "promo": "promo",
    "allocation": "allocation",
    "adjustment": "adjustment",
    "refund": "refund",
    "reversal": "reversal",
}
DEBIT_ITEMS = {
    "capture": "usage",
    "charge": "usage",
    "expiry": "expired",
    "adjustment": "adjustment",
    "reversal": "reversal",
}
CREDIT_COLUMNS = [f"credit_{i}" for i in dict.fromkeys(CREDIT_ITEMS.values())]
DEBIT_COLUMNS = [f"debit_{i}" for i in dict.fromkeys(DEBIT_ITEMS.values())]
ACCOUNT_COLUMNS = [
    "account_id",
    "unit",
    "scale",
    "timezone",
    "source",
    "opening",
    *CREDIT_COLUMNS,
    "credits",
    *DEBIT_COLUMNS,
    "debits",
    "closing",
    "ledger_closing",
    "requests",
    "usage_amount",
    "open_holds",
    "open_holds_amount",
]
USAGE_KEYS = ["account_id", "unit", "scale", "catalog", "operation", "model"]
METRICS = [*QUANTITIES, "seconds_us", "amount"]


@dataclass(frozen=True)
class Statement:
    """A reconciled month. Amounts are int64 minor units of each row's ``unit``.

    ``accounts``: one row per wallet (:data:`ACCOUNT_COLUMNS`).
    ``usage``: per wallet, catalog, operation and model, the month's quantities and amount.
    ``daily``: the same per day of the report's timezone.
    """

    period: Period
    account_id: str | None
    generated_at: datetime
    accounts: pd.DataFrame
    usage: pd.DataFrame
    daily: pd.DataFrame

    def totals(self) -> list[dict[str, Any]]:
        """Per unit: the wallets' opening, credits, debits, closing and usage."""
        out = []
        for unit, rows in self.accounts.groupby("unit", sort=True):
            out.append(
                {
                    "unit": str(unit),
                    "scale": int(rows["scale"].iloc[0]),
                    "accounts": len(rows),
                    # Summed as Python integers: over many wallets, a total may pass
                    # 64 bits, where numpy's sum would wrap without a word.
                    **{
                        column: sum(int(value) for value in rows[column])
                        for column in (
                            "opening",
                            "credits",
                            "debits",
                            "closing",
                            "requests",
                            "usage_amount",
                            "open_holds_amount",
                        )
                    },
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        """What a finished job records: the period, the wallets, the totals."""
        return summary(self.period, len(self.accounts), self.totals())


def summary(period: Period, accounts: int, totals: list[dict[str, Any]]) -> dict[str, Any]:
    """What a finished job records of a statement of ``accounts`` wallets."""
    return {
        "month": period.month,
        "timezone": period.timezone,
        "start": period.start.isoformat(),
        "end": period.end.isoformat(),
        "accounts": accounts,
        "reconciled": True,
        "totals": totals,
    }


def merge_totals(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The totals (:meth:`Statement.totals`) of a statement made in parts, one batch of
    wallets after another: the same per unit as the whole statement's."""
    merged: dict[str, dict[str, Any]] = {}
    for totals in parts:
        for line in totals:
            into = merged.get(line["unit"])
            if into is None:
                merged[line["unit"]] = dict(line)
                continue
            for key, value in line.items():
                if key not in ("unit", "scale"):
                    into[key] += value
    return [merged[unit] for unit in sorted(merged)]


#: Below this, any sum of a wallet's amounts (in magnitude) is exact in int64: 2**63
#: less a margin far wider than float64's rounding over a month's rows.
EXACT = 2**63 - 2**44


def _refuse_inexact(frames: Frames) -> None:
    """:class:`ReportOverflow` for wallets whose month could not be summed exactly.

    A statement sums a wallet's opening balance, its month's flows and its usage in
    int64, which wraps silently past 64 bits. What each wallet adds up is bounded here by
    the sum of the magnitudes (in float64): below :data:`EXACT`, no sum of those amounts
    can leave 64 bits.
    """
    size = frames.wallets.set_index("account")["opening"].abs().astype("float64")
    if not frames.flows.empty:
        moved = frames.flows["credits"].abs().astype("float64") + frames.flows["debits"].abs()
        size = size.add(moved.groupby(frames.flows["account"]).sum(), fill_value=0)
    if not frames.usage.empty:
        metered = frames.usage[[*METRICS, "requests"]].abs().astype("float64")
        size = size.add(metered.groupby(frames.usage["account"]).sum().max(axis=1), fill_value=0)
    beyond = size[size >= EXACT].index
    if len(beyond):
        names = frames.wallets.set_index("account")["account_id"]
        raise ReportOverflow(sorted(str(names[a]) for a in beyond))


def build(frames: Frames, *, account_id: str | None, generated_at: datetime) -> Statement:
    """The statement of ``frames``, reconciled; :class:`ReconciliationError` otherwise."""
    _refuse_inexact(frames)
    wallets = frames.wallets.set_index("account")
    ids = wallets.index

    flows = frames.flows
    stray: list[Mismatch] = []
    external = {int(str(k)): str(v) for k, v in wallets["account_id"].items()}
    credits = _items(flows, "credits", CREDIT_ITEMS, "credit_", CREDIT_COLUMNS, external, stray)
    debits = _items(flows, "debits", DEBIT_ITEMS, "debit_", DEBIT_COLUMNS, external, stray)
    usage = frames.usage
    by_wallet = (
        usage.groupby("account")[["requests", "amount"]].sum().reindex(ids, fill_value=0)
        if not usage.empty
        else pd.DataFrame({"requests": 0, "amount": 0}, index=ids)
    )

    table = wallets.join(credits).join(debits)
    table["credits"] = credits.sum(axis=1)
    table["debits"] = debits.sum(axis=1)
    table["closing"] = table["opening"] + table["credits"] - table["debits"]
    table["requests"] = by_wallet["requests"].astype("int64")
    table["usage_amount"] = by_wallet["amount"].astype("int64")
    _reconcile(table, stray)

    names = wallets[["account_id", "unit", "scale"]]
    daily = _named(usage, names, ["day", "catalog", "operation", "model"])
    monthly = _named(daily, names=None, keys=["catalog", "operation", "model"])
    return Statement(
        period=frames.period,
        account_id=account_id,
        generated_at=generated_at,
        accounts=table.reset_index(drop=True).loc[:, ACCOUNT_COLUMNS],
        usage=monthly,
        daily=daily,
    )


def _items(
    flows: pd.DataFrame,
    side: str,
    items: dict[str, str],
    prefix: str,
    columns: list[str],
    external: dict[int, str],
    stray: list[Mismatch],
) -> pd.DataFrame:
    """Per wallet, one column per statement item of ``side`` (credits or debits).

    Credits or debits of a flow that cannot have them (a capture that credits) have no
    line on the statement: each is reported in ``stray``, never dropped silently.
    """
    ids = pd.Index(list(external), name="account")
    if flows.empty:
        return pd.DataFrame(0, index=ids, columns=columns, dtype="int64")
    frame = flows.assign(item=prefix + flows["flow"].map(items).fillna(flows["flow"]))
    table = frame.pivot_table(
        index="account", columns="item", values=side, aggfunc="sum", fill_value=0
    )
    for column in (c for c in table.columns if c not in columns):
        for account, amount in table[column].items():
            if amount:
                stray.append(
                    Mismatch(
                        account_id=external.get(int(str(account)), str(account)),
                        check="flow",
                        detail=f"{amount} {side} in {column.removeprefix(prefix)} entries, "
                        "which cannot have them",
                    )
                )
    return table.reindex(index=ids, columns=columns, fill_value=0).fillna(0).astype("int64")


def _reconcile(table: pd.DataFrame, stray: list[Mismatch]) -> None:
    found: list[Mismatch] = list(stray)
    for r in records(table):
        if r["closing"] != r["ledger_closing"]:
            found.append(
                Mismatch(
                    account_id=str(r["account_id"]),
                    check="closing_balance",
                    detail=f"opening {r['opening']} + credits {r['credits']} - debits "
                    f"{r['debits']} = {r['closing']}, the ledger's balance at the month's end "
                    f"is {r['ledger_closing']}",
                )
            )
        if r["debit_usage"] != r["usage_amount"]:
            found.append(
                Mismatch(
                    account_id=str(r["account_id"]),
                    check="usage",
                    detail=f"usage debited {r['debit_usage']}, usage metered {r['usage_amount']}",
                )
            )
    if found:
        raise ReconciliationError(found)


def _named(usage: pd.DataFrame, names: pd.DataFrame | None, keys: list[str]) -> pd.DataFrame:
    """``usage`` summed by ``keys``, with the wallet's external id, unit and scale."""
    if names is not None:
        usage = usage.merge(names, left_on="account", right_index=True).drop(columns=["account"])
    group = [*USAGE_KEYS[:3], *keys]
    if usage.empty:
        return pd.DataFrame(columns=[*group, *METRICS])
    summed = usage.groupby(group, as_index=False, sort=True)[METRICS].sum()
    summed = summed.astype(dict.fromkeys(METRICS, "int64"))
    return summed.loc[:, [*group, *METRICS]]
