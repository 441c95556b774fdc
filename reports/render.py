"""A statement as a file: CSV, JSON, Parquet, or HTML with a chart of daily usage by model.

CSV and Parquet hold one tidy table of statement lines (a ``section`` and an ``item`` per
row) that finance can pivot; JSON nests the same facts per account; HTML is for people.
Amounts are integers of minor units everywhere except where HTML shows them in major units.
"""

from __future__ import annotations

import html
import io
import json
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ledger import kernel
from pricing.money import major_text
from reports.queries import QUANTITIES, Period, records
from reports.statement import CREDIT_COLUMNS, DEBIT_COLUMNS, Statement

if TYPE_CHECKING:
    from matplotlib.ticker import Formatter

T = TypeVar("T")

FORMATS = ("csv", "json", "parquet", "html")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
    "html": "text/html; charset=utf-8",
}
LINE_COLUMNS = [
    "account_id",
    "unit",
    "scale",
    "section",
    "item",
    "day",
    "catalog",
    "operation",
    "model",
    *QUANTITIES,
    "video_seconds",
    "amount",
]
#: Models drawn separately in the chart; the rest are stacked as "other".
CHART_MODELS = 8


#: The longest file name a report keeps (``report_outputs.filename``).
FILENAME_MAX = 200


def filename(month: str, fmt: str, account_id: str | None = None) -> str:
    """``statement-2026-10.csv``, or ``statement-2026-10-<account>.csv`` for one wallet,
    the account cut to fit the name in :data:`FILENAME_MAX` (an id may be 200 long)."""
    # ASCII only: the name goes into a Content-Disposition header.
    safe = "".join(
        c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in account_id or ""
    )
    stem, suffix = f"statement-{month}", f".{fmt}"
    room = FILENAME_MAX - len(stem) - len(suffix) - 1
    return f"{stem}{'-' + safe[:room] if safe else ''}{suffix}"


#: The formats whose batches are cut in code-point order of wallet ids (the order of
#: their lines, :func:`lines`, and of HTML's tables); JSON follows the database's order.
BY_CODE_POINT = ("csv", "parquet", "html")
#: The usage sections of the lines (CSV, Parquet), after the statement lines of every
#: wallet.
USAGE_SECTIONS = ("usage", "usage_daily")
#: How many parts :func:`batch_parts` gives in each format. A file is made of the parts
#: of each batch of wallets (:func:`assemble`): a statement of every wallet then takes a
#: batch's memory.
PARTS = {"json": 1, "csv": 3, "parquet": 3, "html": 3}

#: The Parquet file's columns, the same every month whatever its values: video seconds
#: are exact decimals with six places and up to 19 digits (whole microseconds in 64 bits;
#: inferred from the values, their precision would change from month to month, and a
#: month without video would make the column of type null, which a warehouse table
#: loaded month after month refuses).
_LINE_TYPES = {
    "scale": pa.int64(),
    **dict.fromkeys(QUANTITIES, pa.int64()),
    "video_seconds": pa.decimal128(19, 6),
    "amount": pa.int64(),
}
LINE_SCHEMA = pa.schema(
    [(column, _LINE_TYPES.get(column, pa.large_string())) for column in LINE_COLUMNS]
)
#: Rows per Parquet row group (about 50 MB of lines in memory as Arrow; pyarrow's own
#: default, a million rows, would be four times that). Row groups are cut by this count
#: alone, so the file's bytes depend on its rows, not on the batches of wallets it was
#: made in.
ROW_GROUP = 1 << 18


def render(statement: Statement, fmt: str) -> bytes:
    """The statement in ``fmt`` (one of :data:`FORMATS`)."""
    # The whole statement as one batch: a file made in batches is the same file.
    parts = [[data] for data in batch_parts(statement, fmt)]
    totals = statement.totals()
    pieces = assemble(
        fmt, statement.period, statement.account_id, statement.generated_at, totals, parts
    )
    return b"".join(pieces)


#: How a spreadsheet (Excel, LibreOffice, Google Sheets) tells a formula from text when it
#: opens a CSV file: by the cell's first character. Tab and carriage return lead into one.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: The CSV's text columns. Wallet ids are the operator's (an e-mail, a phone number, a
#: slug their users may pick); the others come from the catalogs, and are guarded alike.
TEXT_COLUMNS = ("account_id", "unit", "section", "item", "day", "catalog", "operation", "model")


def _inert(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``,
    ``+1-555-0100``, ``@SUM(...)``) written with a leading apostrophe, which spreadsheets
    show as text (OWASP's guard against CSV injection). Numbers are left as they are:
    a negative amount is a number, not a formula."""
    guarded = table.copy()
    for column in TEXT_COLUMNS:
        cells = guarded[column]
        risky = cells.str.startswith(FORMULA_START, na=False)
        if risky.any():
            guarded[column] = cells.where(~risky, "'" + cells)
    return guarded


def _seconds(micros: Any) -> str:
    """Video seconds (whole microseconds) as exact decimal text: 12500000 -> "12.5"."""
    return str(kernel.exact_seconds(micros))


def lines(statement: Statement) -> pd.DataFrame:
    """One row per statement line: balances, credits, debits, open holds, usage."""
    accounts = statement.accounts
    base = accounts[["account_id", "unit", "scale"]]
    blocks: list[pd.DataFrame] = []

    def block(section: str, item: str, amount: str, requests: str | None = None) -> None:
        frame = base.assign(section=section, item=item, amount=accounts[amount])
        if requests is not None:
            frame["requests"] = accounts[requests]
        blocks.append(frame)

    block("balance", "opening", "opening")
    for column in CREDIT_COLUMNS:
        block("credit", column.removeprefix("credit_"), column)
    for column in DEBIT_COLUMNS:
        block("debit", column.removeprefix("debit_"), column)
    block("balance", "closing", "closing")
    block("open_holds", "pending", "open_holds_amount", requests="open_holds")
    # Each account's statement lines together, in the order above.
    summary = pd.concat(blocks, ignore_index=True).sort_values("account_id", kind="stable")
    summary["video_seconds"] = None
    usage = []
    for section, frame in (("usage", statement.usage), ("usage_daily", statement.daily)):
        if frame.empty:
            continue
        usage.append(
            frame.drop(columns=["seconds_us"]).assign(
                section=section,
                item="model",
                # Exact decimals with six places: Parquet stores them as decimal(p, 6).
                video_seconds=pd.Series(
                    [Decimal(int(v)).scaleb(-6) for v in frame["seconds_us"]],
                    index=frame.index,
                    dtype=object,
                ),
            )
        )
    return _typed(pd.concat([summary, *usage], ignore_index=True).reindex(columns=LINE_COLUMNS))


def to_json(statement: Statement, *, usage: bool = True) -> dict[str, Any]:
    """The statement as nested JSON: per account its lines, usage and daily usage
    (``usage=False``: without the usage arrays)."""
    return _document(
        statement.period,
        statement.account_id,
        statement.generated_at,
        statement.totals(),
        _account_documents(statement, usage=usage),
    )


def _document(
    period: Period,
    account_id: str | None,
    generated_at: datetime,
    totals: list[dict[str, Any]],
    accounts: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "report": "monthly_statement",
        "month": period.month,
        "timezone": period.timezone,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "account_id": account_id,
        "generated_at": generated_at.isoformat(),
        "reconciled": True,
        "totals": totals,
        "accounts": accounts,
    }


def _account_documents(statement: Statement, *, usage: bool) -> list[dict[str, Any]]:
    by_model = _records_by_account(statement.usage) if usage else {}
    daily = _records_by_account(statement.daily) if usage else {}
    accounts = []
    for a in records(statement.accounts):
        accounts.append(
            {
                "account_id": a["account_id"],
                "unit": a["unit"],
                "scale": int(a["scale"]),
                "timezone": a["timezone"],
                "source": a["source"],
                "opening_balance": int(a["opening"]),
                "credits": {
                    **{c.removeprefix("credit_"): int(a[c]) for c in CREDIT_COLUMNS},
                    "total": int(a["credits"]),
                },
                "debits": {
                    **{c.removeprefix("debit_"): int(a[c]) for c in DEBIT_COLUMNS},
                    "total": int(a["debits"]),
                },
                "closing_balance": int(a["closing"]),
                "ledger_balance_at_end": int(a["ledger_closing"]),
                "reconciled": a["closing"] == a["ledger_closing"],
                "requests": int(a["requests"]),
                "open_holds": {
                    "count": int(a["open_holds"]),
                    "amount": int(a["open_holds_amount"]),
                },
                "usage": by_model.get(a["account_id"], []),
                "usage_by_day": daily.get(a["account_id"], []),
            }
        )
    return accounts


def json_frame(
    period: Period, account_id: str | None, generated_at: datetime, totals: list[dict[str, Any]]
) -> tuple[str, str]:
    """The JSON statement's text before its accounts and after them: what goes around
    :func:`json_accounts` of the statement (or of its batches, joined by ``", "``)."""
    text = json.dumps(_document(period, account_id, generated_at, totals, []), ensure_ascii=False)
    assert text.endswith("[]}"), "the accounts are the document's last member"
    return text[: -len("[]}")] + "[", "]}"


def batch_parts(statement: Statement, fmt: str) -> list[bytes]:
    """What the statement of a batch of wallets adds to each part of the file in ``fmt``
    (one of :data:`FORMATS`), ``b""`` for nothing: in JSON, its accounts
    (:func:`json_accounts`); in CSV and Parquet, its lines of each section in turn: the
    statement lines, the usage, the daily usage (Parquet's as an Arrow IPC stream); in
    HTML, its chart amounts and its rows of each table (:func:`html_parts`)."""
    if fmt == "json":
        return [json_accounts(statement).encode()]
    if fmt == "html":
        return html_parts(statement)
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown format {fmt!r}")
    table = lines(statement)
    if fmt == "csv":
        table = _inert(table)
    kept = [~table["section"].isin(USAGE_SECTIONS)]
    kept += [table["section"] == section for section in USAGE_SECTIONS]
    if fmt == "csv":
        return [str(table[rows].to_csv(index=False, header=False)).encode() for rows in kept]
    return [_arrow_stream(table[rows]) for rows in kept]


def assemble(
    fmt: str,
    period: Period,
    account_id: str | None,
    generated_at: datetime,
    totals: list[dict[str, Any]],
    parts: Sequence[Iterable[bytes]],
) -> Iterator[bytes]:
    """The file in ``fmt`` as pieces: each part of :func:`batch_parts`, batch after batch
    (the batches in the statement's order of wallets), in what goes around them.
    ``totals``: of every batch (``statement.merge_totals``)."""
    if fmt == "json":
        head, tail = json_frame(period, account_id, generated_at, totals)
        yield head.encode()
        first = True
        for data in parts[0]:
            if data:
                if not first:
                    yield b", "
                yield data
                first = False
        yield tail.encode()
        return
    if fmt == "csv":
        yield str(pd.DataFrame(columns=LINE_COLUMNS).to_csv(index=False)).encode()
        for section in parts:
            yield from section
        return
    if fmt == "parquet":
        yield _parquet(data for section in parts for data in section if data)
        return
    if fmt == "html":
        yield from _html(period, account_id, generated_at, totals, parts)
        return
    raise ValueError(f"unknown format {fmt!r}")


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """The lines with each column of its type in :func:`lines` (which an empty table, or
    one of no usage, would not infer)."""
    return table.astype(
        {
            "account_id": "str",
            "unit": "str",
            "scale": "int64",
            "amount": "int64",
            **dict.fromkeys(QUANTITIES, "Int64"),
            **dict.fromkeys(("section", "item", "day", "catalog", "operation", "model"), "string"),
        }
    )


def _arrow(table: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(table, schema=LINE_SCHEMA, preserve_index=False)


def _arrow_stream(table: pd.DataFrame) -> bytes:
    """Lines as an Arrow IPC stream of :data:`LINE_SCHEMA` (``b""`` for none)."""
    if table.empty:
        return b""
    sink = pa.BufferOutputStream()
    arrow = _arrow(table)
    with pa.ipc.new_stream(sink, arrow.schema) as stream:
        stream.write_table(arrow)
    return bytes(sink.getvalue())


def _parquet(streams: Iterable[bytes]) -> bytes:
    """The Parquet file of the lines of ``streams`` (of :func:`_arrow_stream`), in order,
    cut into row groups of :data:`ROW_GROUP` rows (the last fewer) whatever the streams'
    lengths. Its schema carries the pandas metadata of :func:`lines`' types, so
    ``pandas.read_parquet`` gives back the same frame."""
    typed = _typed(pd.DataFrame(columns=LINE_COLUMNS))
    schema = _arrow(typed).schema
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema) as writer:
        waiting: list[pa.Table] = []
        rows = 0
        for data in streams:
            table = pa.ipc.open_stream(data).read_all()
            waiting.append(table)
            rows += table.num_rows
            while rows >= ROW_GROUP:
                joined = pa.concat_tables(waiting)
                # One contiguous chunk per column: the pages are cut alike however the
                # rows came.
                writer.write_table(joined.slice(0, ROW_GROUP).combine_chunks(), ROW_GROUP)
                waiting = [joined.slice(ROW_GROUP)]
                rows -= ROW_GROUP
        if rows:
            writer.write_table(pa.concat_tables(waiting).combine_chunks(), ROW_GROUP)
    return bytes(sink.getvalue())


def json_accounts(statement: Statement) -> str:
    """The items of the JSON statement's ``accounts`` array, as text ("" for none):
    written fast, the (large) usage arrays by pandas.

    The accounts are dumped with a unique placeholder for each one's arrays, which are
    then spliced in as written by ``DataFrame.to_json`` (C code, same JSON values), once
    for all of a frame's rows: a call per account would cost about a millisecond each.
    """
    kinds = {"usage": statement.usage, "usage_by_day": statement.daily}
    arrays: dict[tuple[str, str], str] = {}
    for kind, frame in kinds.items():
        if frame.empty:
            continue
        owners, rows = _usage_rows(frame)
        # One record a line; a newline inside a value is written escaped, as "\n".
        written = str(rows.to_json(orient="records", lines=True, force_ascii=False))
        records = written.split("\n")[: len(rows)]
        for account, items in _by_account(owners, records).items():
            arrays[kind, account] = f"[{','.join(items)}]"
    accounts = _account_documents(statement, usage=False)
    # A placeholder names the account by its place, not its id: an id is the operator's
    # text, which JSON may escape (a quote, a backslash).
    nonce = secrets.token_hex(8)
    owner = [str(a["account_id"]) for a in accounts]
    for place, a in enumerate(accounts):
        for kind in kinds:
            a[kind] = f"@@{nonce}:{kind}:{place}@@"
    text = json.dumps(accounts, ensure_ascii=False)[1:-1]
    pattern = re.compile(f'"@@{nonce}:([a-z_]+):([0-9]+)@@"')
    return pattern.sub(lambda m: arrays.get((m.group(1), owner[int(m.group(2))]), "[]"), text)


def _usage_rows(frame: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The account of each usage row, and the rows as the JSON shows them: video seconds
    as exact decimal text, without the account, unit and scale (its account's)."""
    rows = frame.drop(columns=["account_id", "unit", "scale", "seconds_us"]).assign(
        video_seconds=[_seconds(v) for v in frame["seconds_us"]]
    )
    return [str(a) for a in frame["account_id"]], rows


def _by_account(owners: list[str], items: list[T]) -> dict[str, list[T]]:
    """``items`` (one per row) gathered by the account of their row, in row order."""
    out: dict[str, list[T]] = {}
    for account, item in zip(owners, items, strict=True):
        out.setdefault(account, []).append(item)
    return out


def _records_by_account(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Usage rows per account, as JSON-ready dicts (pandas gives Python ints)."""
    if frame.empty:
        return {}
    owners, rows = _usage_rows(frame)
    return _by_account(owners, rows.to_dict("records"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- HTML


#: A chart's amounts: per unit, (model, day) -> the wallets' usage amount that day.
ChartAmounts = dict[str, dict[tuple[str, str], int]]


def chart_amounts(statement: Statement) -> ChartAmounts:
    """What the charts draw of ``statement``: its daily usage per unit, model and day,
    summed exactly (Python integers: across wallets, 64 bits could overflow), so that the
    sums of batches of wallets add up to the whole statement's."""
    out: ChartAmounts = {}
    daily = statement.daily
    if not daily.empty:
        # Summed as Python integers (an object column), grouped by pandas.
        exact = daily.assign(amount=daily["amount"].astype(object))
        summed = exact.groupby(["unit", "model", "day"], sort=False)["amount"].sum()
        for key, amount in summed.items():
            unit, model, day = cast(tuple[str, str, str], key)
            _add(out, str(unit), str(model), str(day), int(amount))
    return out


def _add(amounts: ChartAmounts, unit: str, model: str, day: str, amount: int) -> None:
    by_unit = amounts.setdefault(unit, {})
    by_unit[model, day] = by_unit.get((model, day), 0) + amount


def chart_series(period: Period, amounts: dict[tuple[str, str], int]) -> dict[str, list[int]]:
    """The bars of the chart of ``amounts`` ((model, day) -> amount): per label, in the
    legend's order, its exact amount on each day of ``period``. The models used most (then
    by name) are drawn apart; past :data:`CHART_MODELS` models, the rest are stacked
    together as "other models". Every amount is drawn once."""
    days = [d.isoformat() for d in period.days]
    totals: dict[str, int] = {}
    for (model, _day), amount in amounts.items():
        totals[model] = totals.get(model, 0) + amount
    ranked = sorted(totals, key=lambda model: (-totals[model], model))
    groups = {model: [model] for model in ranked}
    if len(ranked) > CHART_MODELS:
        groups = {model: [model] for model in ranked[: CHART_MODELS - 1]}
        groups["other models"] = ranked[CHART_MODELS - 1 :]
    return {
        label: [sum(amounts.get((m, day), 0) for m in models) for day in days]
        for label, models in groups.items()
    }


def tick_decimals(ticks: Sequence[float]) -> int:
    """The fewest decimals (at most 12) that write every one of ``ticks`` (amounts in
    major units, as the axis's locator placed them: 0.30000000000000004 is 0.3)."""
    ordered = sorted(set(ticks))
    # A float's error (0.30000000000000004) is tiny next to the ticks' spacing.
    spacing = min(
        (b - a for a, b in zip(ordered, ordered[1:], strict=False)),
        default=max((abs(t) for t in ordered), default=0.0),
    )
    tolerance = (spacing or 1.0) * 1e-6
    for decimals in range(13):
        if all(abs(round(t, decimals) - t) <= tolerance for t in ordered):
            return decimals
    return 12


def tick_text(value: float, decimals: int) -> str:
    """An amount along the axis: thousands apart as in the tables, never "-0"."""
    return f"{round(value, decimals) + 0.0:,.{decimals}f}"


def _axis_amounts(scale: int) -> Formatter:
    """A matplotlib formatter of a y axis drawn in minor units of ``scale``: each tick in
    major units, as :func:`tick_text` writes it, with the decimals all of the axis's
    ticks need (the locator's spacing is known only as the chart is drawn)."""
    from matplotlib.ticker import Formatter

    unit = 10**scale

    class AxisAmounts(Formatter):
        decimals = 0

        def set_locs(self, locs: list[float]) -> None:
            super().set_locs(locs)
            self.decimals = tick_decimals([loc / unit for loc in locs])

        def __call__(self, x: float, pos: int | None = None) -> str:
            return tick_text(x / unit, self.decimals)

    return AxisAmounts()


def chart_svg(period: Period, unit: str, scale: int, amounts: dict[tuple[str, str], int]) -> str:
    """A stacked bar chart (SVG) of daily usage by model in ``unit``, every day of
    ``period`` shown; ``amounts``: (model, day) -> amount (:func:`chart_amounts`), drawn
    as :func:`chart_series` stacks them."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    days = [d.isoformat() for d in period.days]
    series = chart_series(period, amounts)

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    bottom = [0.0] * len(days)
    positions = list(range(len(days)))
    for label, exact in series.items():
        # In minor units, as floats only to draw: the tables beside the chart carry the
        # exact amounts.
        heights = [float(v) for v in exact]
        ax.bar(positions, heights, bottom=bottom, label=label, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if not any(bottom):
        # Nothing to draw: an axis of one major unit, not of a millionth of one.
        ax.set_ylim(0, 10**scale)
    ax.set_xticks(positions, [d[8:] for d in days], fontsize=8)
    ax.set_xlabel(f"day of {period.month} ({period.timezone})")
    ax.set_ylabel(f"usage ({unit})")
    ax.set_title(f"Daily usage by model, {unit}")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    # Ticks only at whole minor units (no axis of tokens marked 0.2 token), placed as
    # matplotlib's default locator places them otherwise.
    ax.yaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
    # Amounts in major units as they are (1,200,000), as the tables write them: never
    # scaled by a multiplier beside the axis ("1e6").
    ax.yaxis.set_major_formatter(_axis_amounts(scale))
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no usage this month", transform=ax.transAxes, ha="center")
    buffer = io.StringIO()
    # Text stays text, so the chart is searchable and small.
    # No date in its metadata: the page says when it was made, and the same amounts
    # give the same chart, byte for byte.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "creditledger"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _head(headers: list[str]) -> str:
    """A table's start, to its body's first row."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>"


_TABLE_END = "</tbody></table>"


def _rows(rows: Iterable[list[str]], numeric_from: int = 1) -> str:
    return "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{html.escape(str(c))}</td>'
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )


CREDIT_ITEMS = [c.removeprefix("credit_") for c in CREDIT_COLUMNS]
DEBIT_ITEMS = [c.removeprefix("debit_") for c in DEBIT_COLUMNS]
ACCOUNT_HEADERS = [
    "account",
    "unit",
    "opening",
    *(f"+ {i}" for i in CREDIT_ITEMS),
    *(f"- {i}" for i in DEBIT_ITEMS),
    "closing",
    "open holds",
]
USAGE_HEADERS = ["account", "catalog", "operation", "model", *QUANTITIES, "video seconds", "amount"]


def html_parts(statement: Statement) -> list[bytes]:
    """What the statement of a batch of wallets adds to each part of the HTML page: its
    chart amounts (JSON), its rows of the accounts' table and of the usage table. Both
    tables list wallets by id in code points (the usage in the order of its lines)."""
    amounts = chart_amounts(statement)
    chart = [
        [unit, model, day, amount]
        for unit, a in amounts.items()
        for (model, day), amount in a.items()
    ]
    ordered = sorted(records(statement.accounts), key=lambda a: str(a["account_id"]))
    accounts = _rows(
        (
            [
                a["account_id"],
                a["unit"],
                major_text(a["opening"], a["scale"]),
                *(major_text(a[c], a["scale"]) for c in CREDIT_COLUMNS),
                *(major_text(a[c], a["scale"]) for c in DEBIT_COLUMNS),
                major_text(a["closing"], a["scale"]),
                f"{a['open_holds']} ({major_text(a['open_holds_amount'], a['scale'])})",
            ]
            for a in ordered
        ),
        numeric_from=2,
    )
    usage = _rows(
        (
            [
                u["account_id"],
                u["catalog"],
                u["operation"],
                u["model"],
                *(f"{int(u[q]):,}" for q in QUANTITIES),
                _seconds(u["seconds_us"]),
                f"{major_text(u['amount'], u['scale'])} {u['unit']}",
            ]
            for u in records(statement.usage)
        ),
        numeric_from=4,
    )
    return [json.dumps(chart).encode() if chart else b"", accounts.encode(), usage.encode()]


def _html(
    period: Period,
    account_id: str | None,
    generated_at: datetime,
    totals: list[dict[str, Any]],
    parts: Sequence[Iterable[bytes]],
) -> Iterator[bytes]:
    """The HTML page of :func:`html_parts` of each batch: totals and a chart per unit,
    the accounts' table, the usage table."""
    amounts: ChartAmounts = {}
    for data in parts[0]:
        for unit, model, day, amount in json.loads(data) if data else []:
            _add(amounts, unit, model, day, amount)
    p = period
    title = f"Statement {p.month} ({p.timezone})" + (f" for {account_id}" if account_id else "")
    head = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(p.start.isoformat())} to {html.escape(p.end.isoformat())}, "
        f"generated {html.escape(generated_at.isoformat())}. "
        "Every account reconciles: opening + credits - debits = closing = the ledger's "
        "balance at the month's end.</p>",
    ]
    for t in totals:
        unit, scale = t["unit"], t["scale"]
        head.append(f"<h2>{html.escape(unit)}</h2>")
        chart = chart_svg(period, unit, scale, amounts.get(unit, {}))
        head.append(f'<figure class="chart">{chart}</figure>')
        head.append(
            _head(["accounts", "opening", "credits", "debits", "closing", "requests", "usage"])
            + _rows(
                [
                    [
                        str(t["accounts"]),
                        major_text(t["opening"], scale),
                        major_text(t["credits"], scale),
                        major_text(t["debits"], scale),
                        major_text(t["closing"], scale),
                        f"{t['requests']:,}",
                        major_text(t["usage_amount"], scale),
                    ]
                ],
                numeric_from=0,
            )
            + _TABLE_END
        )
    if not totals:
        head.append("<p>No accounts existed in this month.</p>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
        "th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "figure.chart{margin:1rem 0;max-width:100%}figure.chart svg{max-width:100%;height:auto}"
    )
    yield (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>" + "".join(head)
    ).encode()
    for heading, headers, rows in (
        ("Accounts", ACCOUNT_HEADERS, parts[1]),
        ("Usage by model", USAGE_HEADERS, parts[2]),
    ):
        yield f"<h2>{heading}</h2>{_head(headers)}".encode()
        yield from rows
        yield _TABLE_END.encode()
    yield b"</body></html>"
