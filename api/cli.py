"""The ``creditledger`` command line.

Exit codes (stable, for scripts):

* 0 -- success;
* 2 -- the input is invalid (malformed JSON, unknown catalog/operation/model, a parameter
  out of range, a ``CREDITLEDGER_*`` setting out of range); the error is printed as JSON
  on stderr;
* 3 -- the catalogs failed to load (a broken file under ``CREDITLEDGER_CATALOG_DIR``):
  the file, key and reason are printed; or a catalog version in force was changed in
  place since the ledger kept it (``catalog_changed``);
* 4 -- the request is valid but its operation has no configured price;
* 5 -- ``verify`` found broken ledger invariants (each is printed);
* 6 -- the database cannot be used (unreachable, or not migrated: run ``migrate``);
* 7 -- not found (no such account, key...);
* 8 -- a conflict (the account exists, the idempotency key was used for another request);
* 9 -- a report failed (for example its statement did not reconcile: the accounts are named).
"""

from __future__ import annotations

import getpass
import inspect
import json
import logging
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from api import jsonin
from api.batch import BATCH_ID, Problem, default_batch_id, read_rows, read_usage
from api.entry import EXIT_INTERRUPTED
from api.schemas import DAY
from api.status import status_of
from ledger import kernel
from ledger.backup import backup
from ledger.db import (
    Database,
    DowngradeNotConfirmed,
    LedgerInUse,
    Refused,
    is_lock_timeout,
    known_revisions,
    revision_titles,
)
from ledger.errors import BackupFailed, IdempotencyConflict
from ledger.keys import KeyPage, Keys
from ledger.results import (
    AccountChangePage,
    AccountPage,
    AccountView,
    AdjustmentResult,
    BalanceView,
    EntryPage,
    GrantView,
    HoldPage,
    HoldView,
    Result,
    ReversalResult,
    UsageLine,
    UsageRecordPage,
)
from ledger.services import (
    UNSET,
    Affordability,
    Ledger,
    Unset,
    changed_text,
    ledger_from_settings,
)
from ledger.settings import Settings, get_settings
from ledger.verify import verify
from pricing import CatalogSet, estimate, load_catalogs
from pricing.catalog import describe
from pricing.errors import CatalogError, DomainError, NotBillable, PricingError
from pricing.money import major_text
from reports.jobs import JobView, Reports

EXIT_INVALID = 2
EXIT_CATALOG = 3
EXIT_NOT_BILLABLE = 4
EXIT_VIOLATIONS = 5
EXIT_DATABASE = 6
EXIT_NOT_FOUND = 7
EXIT_CONFLICT = 8
EXIT_REPORT_FAILED = 9
EXIT_NOT_SERVING = 10

app = typer.Typer(
    name="creditledger",
    help="Metering and billing ledger for AI-generation APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: The width of standard output when it is no terminal and ``COLUMNS`` gives none: wider
#: than any row, so a table is as wide as its widest row.
UNFOLDED = 100_000


def _console(*, width: int | None = None, stderr: bool = False) -> Console:
    """A console that prints text as it is: a wallet id, a key's name or a reason is the
    operator's text, and rich would read ``[bold]`` in it as markup (or fail on ``[/]``)
    and ``:rocket:`` as an emoji, showing an id that is not the wallet's.

    Standard output piped to a file, ``grep`` or ``less`` has no terminal to fit: rich
    would take 80 columns and fold each id over several lines, which no ``grep`` for the
    id then finds. There a table keeps each row on one line, unless ``COLUMNS`` sets a
    width (as a terminal's, or a script's own choice)."""
    console = Console(width=width, stderr=stderr, markup=False, emoji=False)
    if not (stderr or console.is_terminal or os.environ.get("COLUMNS")):
        console.width = UNFOLDED
    return console


def _fail(body: dict[str, Any], code: int) -> NoReturn:
    from api.logwriter import flush

    flush()  # serve's log lines before it, in their order
    typer.echo(json.dumps(body, ensure_ascii=False), err=True)
    raise typer.Exit(code)


def _database_failed(exc: sa.exc.SQLAlchemyError, hint: str | None = None) -> NoReturn:
    """Exit 6 with the driver's first line (and what to try, unless it says)."""
    body = {"error": "database_error", "message": str(exc).splitlines()[0]}
    if isinstance(getattr(exc, "orig", None), Refused):
        hint = None
    _fail({**body, "hint": hint} if hint else body, EXIT_DATABASE)


def _settings(**options: Any) -> Settings:
    """The environment's settings, or exit 2 naming the variable at fault; ``options``
    (settings given as command-line options, not None) override the environment's, and
    a bad one is named as its option is."""
    given = {name: value for name, value in options.items() if value is not None}
    try:
        return Settings(**given) if given else get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "_".join(str(part) for part in first["loc"])
        if field in given:
            name = "--" + field.replace("_", "-")
        else:
            name = "CREDITLEDGER_" + field.upper()
        _fail(
            {
                "error": "invalid_configuration",
                "message": f"{name}: {first['msg']}",
                "field": name,
            },
            EXIT_INVALID,
        )


def _catalogs() -> CatalogSet:
    """The shipped catalogs plus the operator's, or exit 3 naming the broken file."""
    try:
        return load_catalogs(_settings().catalog_dirs())
    except CatalogError as exc:
        _catalog_failed(exc)


def _catalog_failed(exc: CatalogError) -> NoReturn:
    """Exit 3 naming the broken catalog file, the key and the reason."""
    _fail(
        {
            "error": exc.code,
            "message": exc.message,
            "file": exc.file,
            "key": exc.key,
            "reason": exc.reason,
        },
        EXIT_CATALOG,
    )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _parse_json(text: str, source: str) -> Any:
    try:
        # Decimals, never floats; NaN and Infinity are not numbers.
        return jsonin.loads(text, constant=_reject_constant)
    except jsonin.RepeatedKey as exc:
        _fail(
            {"error": "invalid_request", "message": f"{source}: {exc}", "field": exc.field},
            EXIT_INVALID,
        )
    except (json.JSONDecodeError, ValueError) as exc:
        _fail({"error": "invalid_json", "message": f"{source}: {exc}"}, EXIT_INVALID)


def _parse_at(at: str | None) -> datetime | None:
    return _parse_instant(at, "at")


def _parse_instant(at: str | None, option: str) -> datetime | None:
    if at is None:
        return None
    try:
        parsed = datetime.fromisoformat(at)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        _fail(
            {
                "error": "invalid_request",
                "field": option,
                "message": f"--{option} {at!r}: give an ISO 8601 instant with a timezone, "
                "e.g. 2026-01-01T00:00:00Z",
            },
            EXIT_INVALID,
        )
    return parsed


AtOption = Annotated[
    str | None,
    typer.Option("--at", help="Price with the catalog versions in force at this ISO 8601 instant."),
]


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


@app.command("estimate")
def estimate_command(
    file: Annotated[
        str,
        typer.Argument(help="A JSON file with {catalog, operation, params}; '-' reads stdin."),
    ] = "-",
    at: AtOption = None,
    account: Annotated[
        str | None,
        typer.Option(
            "--account",
            help="Also say whether this wallet can pay the most the request can cost, now "
            "(as POST /v1/estimates with account_id).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Quote one request: its cost, the most it can cost, and how."""
    if at is not None and account is not None:
        _fail(
            {
                "error": "invalid_request",
                "field": "at",
                "message": "--at prices a request as it was then; --account asks whether it "
                "is affordable now: give one of them",
            },
            EXIT_INVALID,
        )
    if file == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = Path(file).read_text(encoding="utf-8"), file
        except (OSError, UnicodeDecodeError) as exc:
            _fail({"error": "invalid_request", "message": f"{file}: {exc}"}, EXIT_INVALID)
    request = _parse_json(text, source)
    when = _parse_at(at)
    try:
        quote = estimate(request, when, catalogs=_catalogs())
    except NotBillable as exc:
        _fail(exc.to_dict(), EXIT_NOT_BILLABLE)
    except PricingError as exc:
        _fail(exc.to_dict(), EXIT_INVALID)
    wallet: Affordability | None = None
    if account is not None:
        with _open_ledger() as ledger:
            wallet = ledger.affordability(account, quote)
    body = quote.to_dict()
    if wallet is not None:
        # The fields and names of POST /v1/estimates with account_id.
        body |= {
            "affordable": wallet.affordable,
            "credits_balance": wallet.available,
            "blocked": wallet.blocked,
            "spend_remaining": wallet.spend_remaining,
        }
    if as_json:
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    _print_quote(body, account)


def _print_quote(body: dict[str, Any], account: str | None) -> None:
    """A quote for people: its lines, then what it comes to (and, for a wallet, whether
    the wallet can pay it)."""
    unit, scale = body["unit"], body["scale"]

    def amount(value: int) -> str:
        # Minor units, as every amount of this CLI; a unit with decimals shows its major
        # amount too, so 40000 usd minor units is not read as $40,000.
        return f"{value} ({major_text(value, scale)} {unit})" if scale else f"{value} {unit}"

    console = _console()
    lines = Table(
        title=f"{body['catalog']} {body['operation']}, {body['model']} "
        f"(catalog version {body['catalog_version']}; "
        f"amounts in {unit}{' minor units' if scale else ''})"
    )
    for column in ("line", "quantity", "unit price", "amount"):
        lines.add_column(column, overflow="fold", justify="left" if column == "line" else "right")
    for line in body["lines"]:
        lines.add_row(
            line["description"], str(line["quantity"]), line["unit_price"], line["amount"]
        )
    console.print(lines)

    def literal(value: Any) -> str:
        # As the request's JSON writes it: true, "square_hd", "" (a number as it is).
        if isinstance(value, bool | str) or value is None:
            return json.dumps(value, ensure_ascii=False)
        return str(value)

    def listed(values: dict[str, Any]) -> str:
        return ", ".join(f"{name}={literal(value)}" for name, value in values.items()) or "none"

    rows: list[tuple[str, str]] = [
        ("cost", amount(body["cost"])),
        ("max cost", f"{amount(body['max_cost'])}: what an authorization holds"),
        ("estimated usage", listed(body["estimated_usage"])),
        ("defaults applied", listed(body["defaults_applied"])),
    ]
    if account is not None:
        room = body["spend_remaining"]
        if body["affordable"]:
            verdict = "yes"
        elif body["blocked"]:
            verdict = "no: the wallet is blocked"
        elif body["credits_balance"] < body["max_cost"]:
            verdict = "no: it has less available than the max cost"
        elif room is not None and room < body["max_cost"]:
            verdict = "no: its monthly spend limit leaves less than the max cost"
        else:
            verdict = "no: it owes a debt; a top-up pays it first"
        rows += [
            (f"{account} can pay", verdict),
            ("available", amount(body["credits_balance"])),
        ]
        if room is not None:
            rows.append(("spend remaining", amount(room)))
    summary = Table(show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)


@app.command("catalogs")
def catalogs_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    at: AtOption = None,
) -> None:
    """List catalogs, versions, operations, models and prices."""
    when = _parse_at(at)
    listing = describe(_catalogs(), when)
    if as_json:
        typer.echo(json.dumps({"catalogs": listing}, indent=2, ensure_ascii=False))
        return
    table = Table(title="creditledger price catalogs", show_lines=False)
    columns = (
        "catalog",
        "version",
        "effective from",
        "in force",
        "operation",
        "model",
        "variant",
        "price",
        "per",
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("model", "variant", "effective from"))
    for catalog in listing:
        unit = catalog["unit"]
        for version in catalog["versions"]:
            in_force = "yes" if version["in_force"] else ""
            start = (
                datetime.fromisoformat(version["effective_from"])
                .astimezone(UTC)
                .strftime("%Y-%m-%d %H:%MZ")
            )
            for op in version["operations"]:
                for row in op["prices"]:
                    price = "not billable" if row["price"] is None else f"{row['price']} {unit}"
                    table.add_row(
                        catalog["name"],
                        version["id"],
                        start,
                        in_force,
                        op["name"],
                        row["model"],
                        row["variant"] or "",
                        price,
                        row["per"],
                    )
    _console(width=max(200, Console().width)).print(table)


def _database() -> Database:
    return Database.from_settings(_settings())


@app.command("migrate")
def migrate_command(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="REVISION",
            help="The schema revision to take the database to (default: head, the newest). "
            "Below the one it is at, the revisions after REVISION are undone, with what they "
            "keep: a rollback to the creditledger whose newest revision that is.",
        ),
    ] = "head",
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Go down when --to is below the database's revision."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Create or upgrade the database schema (CREDITLEDGER_DATABASE_URL), or take it back
    to an older revision (--to, --yes)."""
    known = known_revisions()
    if to != "head" and to not in known:
        _fail(
            {
                "error": "invalid_request",
                "field": "to",
                "message": f"--to {to!r}: give one of this version's schema revisions "
                f"({known[0]} to {known[-1]}) or head",
                "allowed": [*known, "head"],
            },
            EXIT_INVALID,
        )
    settings = _settings()
    db = Database.from_settings(settings)
    try:
        db.reach(settings.startup_wait_seconds)
        done = db.migrate_to(to, down=yes, alone=True)
    except DowngradeNotConfirmed as exc:
        titles = revision_titles()
        _fail(
            {
                "error": "confirmation_required",
                "field": "yes",
                "message": f"{exc}. Undoing a revision drops what it keeps (see 'undo'): "
                "back the ledger up first (creditledger backup, or pg_dump), stop every "
                "server on it (see 'in_use'), then run this again with --yes. Nothing was "
                "changed",
                "revision": exc.current,
                "target": exc.target,
                "undo": [_undone(r, titles, exc.losses) for r in exc.undone],
                "in_use": list(exc.in_use),
            },
            EXIT_INVALID,
        )
    except LedgerInUse as exc:
        _fail(
            {
                "error": "ledger_in_use",
                "message": str(exc),
                "target": exc.target,
                "in_use": list(exc.in_use),
                **({"hint": exc.hint} if exc.hint else {}),
            },
            EXIT_DATABASE,
        )
    except sa.exc.SQLAlchemyError as exc:
        _database_failed(exc)
    finally:
        db.dispose()
    url = db.engine.url.render_as_string(hide_password=True)
    titles = revision_titles() if done.applied or done.undone else {}
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "database": url,
                    "revision": done.after,
                    "latest": done.after == known[-1],
                    "before": done.before,
                    "applied": [{"revision": r, "title": titles[r]} for r in done.applied],
                    "undone": [_undone(r, titles, done.losses) for r in done.undone],
                },
                indent=2,
            )
        )
        return
    where = (
        f"the latest schema (revision {done.after})"
        if done.after == known[-1]
        else f"schema revision {done.after} (this version's latest is {known[-1]})"
    )
    typer.echo(f"database at {where}: {url}")
    for revision in done.applied:
        typer.echo(f"  applied {revision}  {titles[revision]}")
    for revision in done.undone:
        typer.echo(f"  undid   {revision}  {titles[revision]}")
        if revision in done.losses:
            typer.echo(f"          {done.losses[revision]}")


def _undone(revision: str, titles: dict[str, str], losses: dict[str, str]) -> dict[str, Any]:
    """A revision undone, or to undo, and what that takes from this database (None:
    nothing only it keeps)."""
    return {"revision": revision, "title": titles[revision], "loses": losses.get(revision)}


@app.command("verify")
def verify_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Check every ledger invariant over the whole database; exit 5 if any is broken."""
    db = _database()
    try:
        db.refuse_newer_schema()
        violations = verify(db)
    except sa.exc.SQLAlchemyError as exc:
        _database_failed(exc, "run `creditledger migrate` first")
    finally:
        db.dispose()
    if as_json:
        typer.echo(
            json.dumps(
                {"ok": not violations, "violations": [v.model_dump() for v in violations]}, indent=2
            )
        )
    elif violations:
        table = Table(title=f"{len(violations)} ledger invariant(s) broken")
        table.add_column("check")
        table.add_column("detail")
        for v in violations:
            table.add_row(v.check, v.detail)
        _console(width=max(120, Console().width)).print(table)
    else:
        typer.echo("ok: every ledger invariant holds")
    if violations:
        raise typer.Exit(EXIT_VIOLATIONS)


# ------------------------------------------------------------------ the admin commands

_EXIT_BY_STATUS = {404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT, 503: EXIT_CATALOG}


@contextmanager
def _domain_errors() -> Iterator[None]:
    """Domain errors become their JSON on stderr and a meaningful exit code."""
    try:
        yield
    except CatalogError as exc:
        _catalog_failed(exc)
    except DomainError as exc:
        _fail(exc.to_dict(), _EXIT_BY_STATUS.get(status_of(exc), EXIT_INVALID))
    except sa.exc.SQLAlchemyError as exc:
        if is_lock_timeout(exc):
            _fail(
                {
                    "error": "database_busy",
                    "message": "another transaction held a lock this one needs for longer "
                    "than CREDITLEDGER_LOCK_TIMEOUT_SECONDS; nothing was changed",
                    "hint": "retry",
                },
                EXIT_DATABASE,
            )
        _database_failed(exc, "is the database reachable and migrated (`creditledger migrate`)?")


@contextmanager
def _open_ledger() -> Iterator[Ledger]:
    with _domain_errors():
        ledger = ledger_from_settings(_settings())
    try:
        with _domain_errors():
            ledger.db.refuse_newer_schema()
            yield ledger
    finally:
        ledger.db.dispose()


@contextmanager
def _open_keys() -> Iterator[Keys]:
    keys = Keys(Database.from_settings(_settings()))
    try:
        with _domain_errors():
            keys.db.refuse_newer_schema()
            yield keys
    finally:
        keys.db.dispose()


def _emit(model: BaseModel, as_json: bool, title: str, rows: list[tuple[str, Any]]) -> None:
    if isinstance(model, Result) and model.replayed:
        # On stderr: the answer itself (and --json's document) is the one first given.
        typer.echo(
            "already done: this is the answer the same --idempotency-key was given before; "
            "nothing was done again",
            err=True,
        )
    if as_json:
        typer.echo(model.model_dump_json(indent=2))
        return
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, "" if value is None else str(value))
    _console().print(table)


def _grants_table(grants: list[GrantView]) -> Table:
    table = Table(title="grants")
    for column in ("id", "kind", "amount", "remaining", "priority", "expires at"):
        table.add_column(column, overflow="fold")  # ids and amounts whole, never cut short
    for g in grants:
        table.add_row(
            g.id,
            g.kind,
            str(g.amount),
            str(g.remaining),
            str(g.priority),
            g.expires_at.isoformat() if g.expires_at else "never",
        )
    return table


def _money_rows(view: BalanceView) -> list[tuple[str, Any]]:
    return [
        ("unit", f"{view.unit} (scale {view.scale})"),
        ("balance", view.balance),
        ("pending", view.pending),
        ("available", view.available),
        ("overdraft limit", view.overdraft_limit),
        ("debt", view.debt),
    ]


def _show_account(view: AccountView, as_json: bool, title: str) -> None:
    _emit(
        view,
        as_json,
        title,
        [
            ("id", view.account_id),
            *_money_rows(view),
            ("monthly allocation", view.monthly_allocation),
            ("monthly spend limit", view.monthly_spend_limit),
            ("spent this month", view.spent_this_month),
            ("spend remaining", view.spend_remaining),
            ("timezone", view.timezone),
            ("blocked", "yes: no new authorizations or charges" if view.blocked else "no"),
        ],
    )
    if not as_json and view.grants:
        _console().print(_grants_table(view.grants))


def _print_page(
    page: AccountPage | AccountChangePage | EntryPage | HoldPage | KeyPage | UsageRecordPage,
    as_json: bool,
    title: str,
    columns: tuple[str, ...],
    rows: Iterable[tuple[object, ...]],
) -> None:
    """One page of a listing (JSON, or a table and how to read the next page)."""
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    table = Table(title=title)
    for column in columns:
        # Folded, never cut short with an ellipsis: every digit of an amount shows.
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    console = _console()
    console.print(table)
    if page.next_cursor:
        # One line however narrow the terminal: the cursor is copied whole.
        console.print(f"more: --cursor {page.next_cursor}", soft_wrap=True)


KeyOption = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="Retry-safe key: running the command again with it has no second effect.",
    ),
]


def _key(idempotency_key: str | None) -> str:
    """The command's idempotency key: the one given, or a fresh one (no retry intended)."""
    return idempotency_key or f"cli:{uuid.uuid4().hex}"


def _actor() -> str:
    """What the ledger records as having made a change from the CLI: ``cli:<user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no entry in the password database
        return "cli"
    return f"cli:{user}"[:80]


LimitOption = Annotated[int, typer.Option(help="Rows per page (1 to 500).")]
EntryKindOption = Annotated[
    str | None,
    typer.Option(help="Only topup, adjustment, capture, charge, expiry, reversal or allocation."),
]
SinceOption = Annotated[
    str | None, typer.Option(help="Only from this ISO 8601 instant on (included).")
]
UntilOption = Annotated[str | None, typer.Option(help="Only before this ISO 8601 instant.")]
ActorOption = Annotated[
    str | None,
    typer.Option(help="Only what this actor made: key:<id>, cli:<user> or system."),
]
ReferenceOption = Annotated[
    str | None,
    typer.Option(
        help="Only one payment's: the top-ups given this reference, the reversals that "
        "took them back, and the expiries and revocations that took back what was left "
        "of them."
    ),
]
CursorOption = Annotated[
    str | None, typer.Option(help="Where the previous page ended (its 'more: --cursor').")
]

account_app = typer.Typer(help="Open and inspect wallets.", no_args_is_help=True)
app.add_typer(account_app, name="account")


@account_app.command("create")
def account_create(
    account_id: Annotated[str, typer.Argument(help="The operator's id for the wallet.")],
    unit: Annotated[str, typer.Option(help="token, credit or usd.")],
    overdraft_limit: Annotated[int, typer.Option(help="Minor units below zero allowed.")] = 0,
    monthly_allocation: Annotated[
        int | None, typer.Option(help="Minor units granted each month.")
    ] = None,
    timezone: Annotated[str, typer.Option(help="IANA zone of the account's months.")] = "UTC",
    monthly_spend_limit: Annotated[
        int | None,
        typer.Option(help="Minor units it may spend per month (charged and held)."),
    ] = None,
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Open a wallet."""
    with _open_ledger() as ledger:
        view = ledger.open_account(
            account_id,
            unit,
            idempotency_key=_key(idempotency_key),
            overdraft_limit=overdraft_limit,
            monthly_allocation=monthly_allocation,
            timezone=timezone,
            monthly_spend_limit=monthly_spend_limit,
        )
    _show_account(view, as_json, f"account {view.account_id} opened")


@account_app.command("show")
def account_show(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    as_json: JsonOption = False,
) -> None:
    """Balances and grants of a wallet."""
    with _open_ledger() as ledger:
        view = ledger.account(account_id)
    _show_account(view, as_json, f"account {view.account_id}")


@account_app.command("update")
def account_update(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    overdraft_limit: Annotated[
        int | None, typer.Option(help="The new overdraft limit (minor units); at once.")
    ] = None,
    monthly_allocation: Annotated[
        int | None,
        typer.Option(
            help="The new monthly allocation; from the next period (at once in a period "
            "that had none)."
        ),
    ] = None,
    no_monthly_allocation: Annotated[
        bool, typer.Option("--no-monthly-allocation", help="Stop the monthly allocation.")
    ] = False,
    monthly_spend_limit: Annotated[
        int | None, typer.Option(help="The new monthly spend limit; at once.")
    ] = None,
    no_monthly_spend_limit: Annotated[
        bool, typer.Option("--no-monthly-spend-limit", help="Remove the monthly spend limit.")
    ] = False,
    block: Annotated[
        bool | None,
        typer.Option(
            "--block/--unblock",
            help="Refuse new authorizations and charges (pending holds still resolve), "
            "or allow them again; at once.",
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why, kept with the change.")] = None,
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a wallet's limits and allocation, or block it (each change is kept).

    Its overdraft limit, monthly allocation or monthly spend limit; or block or unblock
    it."""
    allocation = _either(monthly_allocation, no_monthly_allocation, "monthly-allocation")
    spend_limit = _either(monthly_spend_limit, no_monthly_spend_limit, "monthly-spend-limit")
    with _open_ledger() as ledger:
        view = ledger.update_account(
            account_id,
            idempotency_key=_key(idempotency_key),
            actor=_actor(),
            overdraft_limit=UNSET if overdraft_limit is None else overdraft_limit,
            monthly_allocation=allocation,
            monthly_spend_limit=spend_limit,
            blocked=UNSET if block is None else block,
            reason=reason,
        )
    _show_account(view, as_json, f"account {view.account_id} updated")


@account_app.command("changes")
def account_changes(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """The changes of a wallet's settings, newest first."""
    with _open_ledger() as ledger:
        page = ledger.account_changes(account_id, cursor=cursor, limit=limit)
    _print_page(
        page,
        as_json,
        f"changes of {account_id}",
        ("changed", "setting", "from", "to", "reason"),
        (
            (
                c.changed_at.isoformat(timespec="seconds"),
                c.setting,
                _setting_text(c.old_value),
                _setting_text(c.new_value),
                c.reason,
            )
            for c in page.items
        ),
    )


def _either(value: int | None, remove: bool, option: str) -> int | None | Unset:
    """A setting from ``--option N`` or ``--no-option`` (None: remove it), or UNSET."""
    if remove and value is not None:
        _fail(
            {
                "error": "invalid_request",
                "field": option,
                "message": f"give --{option} or --no-{option}, not both",
            },
            EXIT_INVALID,
        )
    return value if remove or value is not None else UNSET


def _setting_text(value: bool | int | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@account_app.command("balance")
def account_balance(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    as_of: Annotated[
        str | None,
        typer.Option(help="An ISO 8601 instant with its timezone (default: now)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A wallet's balances now, or at a past instant: what was posted and held then."""
    instant = _parse_instant(as_of, "as-of")
    with _open_ledger() as ledger:
        view = ledger.balance(account_id, as_of=instant)
    _emit(
        view,
        as_json,
        f"account {view.account_id}",
        [("as of", view.as_of.isoformat() if view.as_of else "now"), *_money_rows(view)],
    )


_USAGE_QUANTITIES = ("input_tokens", "output_tokens", "images", "videos", "candidates", "seconds")


@account_app.command("usage")
def account_usage(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    from_day: Annotated[
        str | None,
        typer.Option("--from", help="First day, YYYY-MM-DD (default: the month's first)."),
    ] = None,
    to_day: Annotated[
        str | None, typer.Option("--to", help="Last day, included (default: today).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What a wallet used per day and model, and what it was charged (days in its zone)."""
    first, last = _parse_day(from_day, "from"), _parse_day(to_day, "to")
    with _open_ledger() as ledger:
        view = ledger.usage(account_id, from_day=first, to_day=last)
    if as_json:
        typer.echo(view.model_dump_json(indent=2))
        return
    # Only the quantities this wallet used, so that the table fits a terminal.
    used = [name for name in _USAGE_QUANTITIES if getattr(view.totals, name)]
    table = Table(
        title=f"usage of {view.account_id}, {view.first_day} to {view.last_day} "
        f"({view.timezone}; amounts in {view.unit}, scale {view.scale})"
    )
    for column in ("day", "catalog", "operation", "model", "requests", *used, "amount"):
        table.add_column(column.replace("_", " "), overflow="fold")
    for line in [*view.items, view.totals]:
        head = (
            (str(line.day), line.catalog, line.operation, line.model)
            if isinstance(line, UsageLine)
            else ("total", "", "", "")
        )
        counts = [line.requests, *(getattr(line, name) for name in used), line.amount]
        table.add_row(*head, *map(str, counts))
    _console().print(table)


def _parse_day(day: str | None, option: str) -> date | None:
    if day is None:
        return None
    try:
        # Only YYYY-MM-DD: fromisoformat also reads 20261101 and 2026-W47-1 (a Monday).
        if DAY.fullmatch(day):
            return date.fromisoformat(day)
    except ValueError:
        pass
    _fail(
        {
            "error": "invalid_request",
            "field": option,
            "message": f"--{option} {day!r}: give a day as YYYY-MM-DD, e.g. 2026-11-01",
        },
        EXIT_INVALID,
    )


@account_app.command("list")
def account_list(
    unit: Annotated[str | None, typer.Option(help="Only wallets of this unit.")] = None,
    blocked: Annotated[
        bool | None,
        typer.Option("--blocked/--unblocked", help="Only the blocked, or the unblocked, ones."),
    ] = None,
    available_below: Annotated[
        int | None,
        typer.Option(
            help="Only wallets with less available than this, in minor units of --unit "
            "(which it needs): those that could not pay a request of that price."
        ),
    ] = None,
    in_debt: Annotated[
        bool | None,
        typer.Option("--in-debt/--not-in-debt", help="Only wallets in debt, or only those not."),
    ] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Wallets in the order they were opened, with their balances, a page at a time (with
    --cursor, give the same filters)."""
    with _open_ledger() as ledger:
        page = ledger.accounts(
            cursor=cursor,
            limit=limit,
            unit=unit,
            blocked=blocked,
            available_below=available_below,
            in_debt=in_debt,
        )
    _print_page(
        page,
        as_json,
        "accounts",
        ("id", "unit", "balance", "pending", "available", "debt", "timezone", "blocked"),
        (
            (
                a.account_id,
                a.unit,
                a.balance,
                a.pending,
                a.available,
                a.debt,
                a.timezone,
                "yes" if a.blocked else "",
            )
            for a in page.items
        ),
    )


@account_app.command("holds")
def account_holds(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    status: Annotated[
        str | None, typer.Option(help="Only pending, captured, voided or expired ones.")
    ] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """A wallet's authorizations (holds), newest first."""
    with _open_ledger() as ledger:
        page = ledger.holds_of(account_id, status=status, cursor=cursor, limit=limit)
    _print_page(
        page,
        as_json,
        f"authorizations of {account_id}",
        ("id", "status", "held", "captured", "model", "created", "expires"),
        (
            (
                h.id,
                h.status,
                h.held,
                h.captured,
                h.model,
                h.created_at.isoformat(timespec="seconds"),
                h.expires_at.isoformat(timespec="seconds"),
            )
            for h in page.items
        ),
    )


def _show_hold(hold: HoldView, as_json: bool, title: str) -> None:
    _emit(
        hold,
        as_json,
        title,
        [
            ("account", hold.account_id),
            ("status", hold.status),
            ("held", hold.held),
            ("captured", hold.captured),
            ("request", f"{hold.catalog} {hold.operation} {hold.model}"),
            ("created", hold.created_at.isoformat(timespec="seconds")),
            ("expires", hold.expires_at.isoformat(timespec="seconds")),
            ("resolved", hold.resolved_at and hold.resolved_at.isoformat(timespec="seconds")),
            ("entry", hold.entry_id),
            ("available", hold.credits_remaining),
        ],
    )


@account_app.command("hold")
def account_hold(
    hold_id: Annotated[str, typer.Argument(help="The authorization's id.")],
    as_json: JsonOption = False,
) -> None:
    """One authorization (hold): what it holds, for what request, until when."""
    with _open_ledger() as ledger:
        hold = ledger.hold(hold_id)
    _show_hold(hold, as_json, f"authorization {hold_id}")


@account_app.command("void-hold")
def account_void_hold(
    hold_id: Annotated[str, typer.Argument(help="The authorization's id ('account holds').")],
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release a pending hold entirely, charging nothing: one its gateway will never
    capture or void (it crashed, or lost the id), rather than wait for its expiry."""
    with _open_ledger() as ledger:
        hold = ledger.void(hold_id, idempotency_key=_key(idempotency_key))
    _show_hold(hold, as_json, f"authorization {hold_id} voided")


@account_app.command("entries")
def account_entries(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    kind: EntryKindOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    actor: ActorOption = None,
    reference: ReferenceOption = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """A wallet's journal entries, newest first: what moved its balance, why, and who."""
    first, last = _parse_instant(since, "since"), _parse_instant(until, "until")
    with _open_ledger() as ledger:
        page = ledger.entries(
            account_id,
            cursor=cursor,
            limit=limit,
            kind=kind,
            since=first,
            until=last,
            actor=actor,
            reference=reference,
        )
    _print_entries(page, as_json, f"entries of {account_id}")


@app.command("journal")
def journal_command(
    kind: EntryKindOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    actor: ActorOption = None,
    reference: ReferenceOption = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every wallet's journal entries, newest first, across the whole journal.

    What one key or user did (--actor, such as after a key leaked), what one payment
    credited and took back (--reference), or what was posted in a window."""
    first, last = _parse_instant(since, "since"), _parse_instant(until, "until")
    with _open_ledger() as ledger:
        page = ledger.journal(
            cursor=cursor,
            limit=limit,
            kind=kind,
            since=first,
            until=last,
            actor=actor,
            reference=reference,
        )
    _print_entries(page, as_json, "journal")


def _print_entries(page: EntryPage, as_json: bool, title: str) -> None:
    _print_page(
        page,
        as_json,
        title,
        ("posted", "kind", "wallet", "amount", "memo", "actor", "id"),
        (
            (
                e.posted_at.isoformat(timespec="seconds"),
                e.kind,
                e.account_id,
                sum(p.amount for p in e.postings if p.account_id == e.account_id),
                e.memo,
                e.actor,
                e.id,
            )
            for e in page.items
        ),
    )


@account_app.command("usage-records")
def account_usage_records(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    status: Annotated[
        str | None,
        typer.Option(
            help="Only pending, COMPLETED, FAILED, ERROR, CHARGED, voided or expired ones."
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="Only authorizations, charges or usage reported: authorization, charge or usage."
        ),
    ] = None,
    catalog: Annotated[str | None, typer.Option(help="Only this catalog's.")] = None,
    operation: Annotated[str | None, typer.Option(help="Only this operation's.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's.")] = None,
    request_id: Annotated[
        str | None, typer.Option(help="Only the request the gateway gave this id.")
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """A wallet's requests as metered, newest first, with their refunds.

    One per authorization, charge or usage report: what each held, used and was charged,
    and its refund if one was made."""
    first, last = _parse_instant(since, "since"), _parse_instant(until, "until")
    with _open_ledger() as ledger:
        page = ledger.usage_records(
            account_id,
            status=status,
            kind=kind,
            catalog=catalog,
            operation=operation,
            model=model,
            request_id=request_id,
            since=first,
            until=last,
            cursor=cursor,
            limit=limit,
        )
    _print_page(
        page,
        as_json,
        f"usage records of {account_id}",
        ("created", "kind", "status", "model", "held", "charged", "refunded by", "request", "id"),
        (
            (
                r.created_at.isoformat(timespec="seconds"),
                r.kind,
                r.status,
                r.model,
                r.held,
                r.charged,
                r.reversed_by,
                r.request_id,
                r.id,
            )
            for r in page.items
        ),
    )


@app.command("backup")
def backup_command(
    destination: Annotated[Path, typer.Argument(help="The file to write the copy to.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the destination if it exists.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Copy the SQLite ledger, while the server runs, to one consistent, checked file.

    Exit 0: the copy is in place, whole (SQLite's integrity check) and every ledger
    invariant holds in it. Exit 5: it is in place, but it (so the database) breaks an
    invariant. Exit 6: the copy failed its integrity check and was deleted. To restore,
    stop the server and put the copy in the database's place (with no -wal or -shm file
    of the old database beside it).
    """
    db = _database()
    try:
        with _domain_errors():
            try:
                view = backup(db, destination, replace=replace)
            except BackupFailed as exc:
                _fail(exc.to_dict(), EXIT_DATABASE)
            except sqlite3.Error as exc:
                _fail({"error": "database_error", "message": str(exc)}, EXIT_DATABASE)
    finally:
        db.dispose()
    if as_json:
        typer.echo(view.model_dump_json(indent=2))
    else:
        typer.echo(
            f"backed up to {view.path}: {view.bytes} bytes, schema {view.revision}, "
            f"integrity {view.integrity}, in {view.seconds} s"
        )
        for v in view.violations:
            typer.echo(f"violation: {v.check}: {v.detail}", err=True)
    if view.violations:
        raise typer.Exit(EXIT_VIOLATIONS)


@app.command("topup")
def topup_command(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    amount: Annotated[int, typer.Argument(help="Minor units of the wallet's unit.")],
    kind: Annotated[str, typer.Option(help="pack, allocation or promo.")] = "pack",
    expires_at: Annotated[
        str | None, typer.Option(help="ISO 8601 instant the credits expire.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Lower burns first.")] = 0,
    reference: Annotated[str | None, typer.Option(help="Your reference (an order id).")] = None,
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add credits to a wallet."""
    expiry = _parse_instant(expires_at, "expires-at")
    with _open_ledger() as ledger:
        result = ledger.top_up(
            account_id,
            amount,
            idempotency_key=_key(idempotency_key),
            actor=_actor(),
            kind=kind,
            expires_at=expiry,
            priority=priority,
            reference=reference,
        )
    b = result.balance
    _emit(
        result,
        as_json,
        f"topped up {account_id}",
        [
            ("entry", result.entry.id),
            ("grant", result.grant.id if result.grant else None),
            ("amount", amount),
            ("balance", b.balance),
            ("available", b.available),
        ],
    )


BatchIdOption = Annotated[
    str | None,
    typer.Option(
        help="Names the batch in every row's idempotency key (default: the file's "
        "SHA-256). Give one to correct a row the ledger refused and run the file again."
    ),
]
CheckOption = Annotated[
    bool, typer.Option("--check", help="Check the file against the ledger; write nothing.")
]


def _batch_text(file: Path, batch_id: str | None) -> str:
    """The text of a batch file (a byte order mark, as spreadsheets save, is dropped),
    after checking ``--batch-id``; exit 2 for an unreadable file or a bad id."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        _fail({"error": "invalid_request", "field": "file", "message": str(exc)}, EXIT_INVALID)
    if batch_id is not None and not BATCH_ID.fullmatch(batch_id):
        _fail(
            {
                "error": "invalid_request",
                "field": "batch-id",
                "message": "--batch-id: 1 to 100 letters, digits or . _ : -",
            },
            EXIT_INVALID,
        )
    return text


def _refuse_problems(problems: list[Problem], file: Path) -> None:
    """Exit 2 listing every problem of a batch file by line, if it has any."""
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        _fail(
            {
                "error": "invalid_batch",
                "message": f"{len(problems)} problem(s) in {file}; nothing was written",
                "problems": [p.to_dict() for p in problems],
            },
            EXIT_INVALID,
        )


def _row_refused(
    exc: DomainError, line: int, done: int, batch: str, hint: str | None = None
) -> NoReturn:
    """A batch row the ledger refused when it ran: its error, where the run stopped and
    how to finish it (the rows done are replayed, not done again)."""
    _fail(
        {
            **exc.to_dict(),
            "line": line,
            "done": done,
            "hint": hint
            or f"the rows before line {line} are done; correct this "
            f"one and run the file again with --batch-id {batch}",
        },
        _EXIT_BY_STATUS.get(status_of(exc), EXIT_INVALID),
    )


@app.command("topup-batch")
def topup_batch_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with a header: account_id, amount, and optionally kind, expires_at, "
            "priority, reference."
        ),
    ],
    batch_id: BatchIdOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Top up many wallets from a CSV file (a promotion, a grant to every customer).

    The whole file is checked first (each row's values, its wallet, its expiry): one bad
    row and nothing is written (exit 2, every problem listed with its line). Then each row
    is one top-up whose idempotency key is the batch id and the row's line, so a run cut
    short is finished by running the same file again: the rows done are not done twice.
    """
    text = _batch_text(file, batch_id)
    rows, problems = read_rows(text)
    with _open_ledger() as ledger:
        scales = dict(ledger.units)
        units: dict[int, str] = {}
        for row in rows:
            try:
                units[row.line] = ledger.check_top_up(
                    row.account_id,
                    row.amount,
                    kind=row.kind,
                    expires_at=row.expires_at,
                    priority=row.priority,
                    reference=row.reference,
                )
            except DomainError as exc:
                problems.append(Problem(row.line, exc.field or "row", exc.message))
        _refuse_problems(problems, file)
        batch = batch_id or default_batch_id(text)
        done: list[dict[str, Any]] = []
        for row in [] if check else rows:
            try:
                result = ledger.top_up(
                    row.account_id,
                    row.amount,
                    idempotency_key=row.key(batch),
                    actor=_actor(),
                    kind=row.kind,
                    expires_at=row.expires_at,
                    priority=row.priority,
                    reference=row.reference,
                )
            except DomainError as exc:
                _row_refused(exc, row.line, len(done), batch)
            done.append(
                {
                    "line": row.line,
                    "account_id": row.account_id,
                    "amount": row.amount,
                    "unit": units[row.line],
                    "kind": row.kind,
                    "entry_id": result.entry.id,
                    "balance": result.balance.balance,
                    # Done by an earlier run of this batch (its answer, given again).
                    "already_done": result.replayed,
                }
            )
    totals: dict[str, int] = {}
    for row in rows:
        totals[units[row.line]] = totals.get(units[row.line], 0) + row.amount
    summary = {"batch_id": batch, "checked": check, "rows": len(rows), "totals": totals}
    if as_json:
        typer.echo(json.dumps({**summary, "done": done}, indent=2))
        return
    if done:
        table = Table(title=f"batch {batch} (amounts in minor units)")
        for column in ("line", "account", "amount", "kind", "entry", "balance"):
            table.add_column(column, overflow="fold")
        fields = ("line", "account_id", "amount", "kind", "entry_id", "balance")
        for d in done:
            table.add_row(*(str(d[name]) for name in fields))
        _console().print(table)
    verb = "would top up" if check else "topped up"
    amounts = _totals_text(totals, scales)
    typer.echo(f"{verb} {len(rows)} row(s): {amounts}{_already_done(done)}")


def _totals_text(totals: dict[str, int], scales: dict[str, int]) -> str:
    """A batch's totals for people. The files and the tables give minor units; a unit with
    decimals also shows its major amount, so 157500 at scale 6 is not read as $157,500:
    "500 credit, 157500 usd minor units (0.157500 usd)"."""
    parts = []
    for unit, amount in sorted(totals.items()):
        scale = scales.get(unit, 0)
        parts.append(
            f"{amount} {unit} minor units ({major_text(amount, scale)} {unit})"
            if scale
            else f"{amount} {unit}"
        )
    return ", ".join(parts)


def _already_done(done: list[dict[str, Any]]) -> str:
    """The summary's note of the rows an earlier run of the batch had done."""
    again = sum(1 for d in done if d["already_done"])
    return f" ({again} of them done by an earlier run, not again)" if again else ""


def _warn_unkeyed(lines: list[int]) -> None:
    """Warn (on stderr) of usage lines without a request_id: their idempotency key is the
    batch's (by default the file's hash), so the same usage in a grown log or another
    file would be charged again."""
    if not lines:
        return
    shown = ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")
    typer.echo(
        f"warning: {len(lines)} line(s) without a request_id (line {shown}) are recognised "
        "only as lines of this file: the same usage imported again from a log that grew or "
        "another file would be charged again. Give every line a request_id.",
        err=True,
    )


@app.command("usage-import")
def usage_import_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines: one object per line, as POST /v1/usage-records takes it "
            "(account_id, catalog, operation, params, status, usage, request_id, occurred_at)."
        ),
    ],
    batch_id: BatchIdOption = None,
    check: CheckOption = False,
    as_json: JsonOption = False,
) -> None:
    """Charge usage reported after it ran, from a file (a gateway's log, a backfill).

    Each line is priced like a capture (ERROR is never charged) and charged to its wallet
    whatever it holds: a shortfall is recorded as debt. The whole file is checked first
    (each line's fields, its price, its wallet and unit): one bad line and nothing is
    written (exit 2, every problem listed with its line). Then each line is charged with
    its request_id as idempotency key (without one: the batch id and its line), so a run
    cut short is finished by running the same file again, and a log that grew since is
    imported again charging only its new lines: no line is charged twice. A line without
    a request_id is recognised only in the same file (a warning names such lines): give
    every line one.
    """
    text = _batch_text(file, batch_id)
    rows, problems = read_usage(text)
    with _open_ledger() as ledger:
        scales = dict(ledger.units)
        units: dict[int, tuple[str, int]] = {}
        for row in rows:
            try:
                charge = ledger.check_usage_report(
                    row.account_id,
                    row.request,
                    status=row.status,
                    usage=row.usage,
                    request_id=row.request_id,
                    occurred_at=row.occurred_at,
                )
            except DomainError as exc:
                problems.append(Problem(row.line, exc.field or "line", exc.message))
                continue
            units[row.line] = (charge.unit, charge.amount)
        _refuse_problems(problems, file)
        batch = batch_id or default_batch_id(text)
        _warn_unkeyed([row.line for row in rows if row.request_id is None])
        done: list[dict[str, Any]] = []
        for row in [] if check else rows:
            try:
                result = ledger.report_usage(
                    row.account_id,
                    row.request,
                    status=row.status,
                    usage=row.usage,
                    idempotency_key=row.key(batch),
                    actor=_actor(),
                    request_id=row.request_id,
                    occurred_at=row.occurred_at,
                )
            except DomainError as exc:
                _row_refused(
                    exc,
                    row.line,
                    len(done),
                    batch,
                    f"request_id {row.request_id!r} was reported before with another body and "
                    "charged once: to correct it, refund that charge's entry (its entry_id: "
                    f"creditledger account usage-records {row.account_id} --request-id "
                    f"{row.request_id} --json), with creditledger reverse ENTRY_ID --reason TEXT"
                    if isinstance(exc, IdempotencyConflict) and row.request_id is not None
                    else None,
                )
            done.append(
                {
                    "line": row.line,
                    **result.model_dump(mode="json", exclude={"charge"}),
                    "already_done": result.replayed,
                }
            )
    # Checked: what the lines would cost now; run: what was charged (replays included).
    amounts = units.values() if check else [(d["unit"], d["charged"]) for d in done]
    totals: dict[str, int] = {}
    for unit, amount in amounts:
        totals[unit] = totals.get(unit, 0) + amount
    summary = {"batch_id": batch, "checked": check, "rows": len(rows), "totals": totals}
    if as_json:
        typer.echo(json.dumps({**summary, "done": done}, indent=2))
        return
    if done:
        table = Table(title=f"batch {batch} (amounts in minor units)")
        fields = ("line", "account_id", "status", "model", "charged", "debt", "id")
        for column in ("line", "account", "status", "model", "charged", "debt", "usage record"):
            table.add_column(column, overflow="fold")
        for d in done:
            table.add_row(*(str(d[name]) for name in fields))
        _console().print(table)
    verb = "would charge" if check else "charged"
    total = _totals_text(totals, scales) or "nothing"
    typer.echo(f"{verb} {len(rows)} line(s): {total}{_already_done(done)}")


@account_app.command("revoke-grant")
def account_revoke_grant(
    grant_id: Annotated[str, typer.Argument(help="The grant's id (see 'account show').")],
    reason: Annotated[str, typer.Option(help="Why, kept in the entry's memo.")],
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take back what is left of a grant: it expires now (what was spent stays spent)."""
    with _open_ledger() as ledger:
        result = ledger.revoke_grant(
            grant_id, reason=reason, idempotency_key=_key(idempotency_key), actor=_actor()
        )
    b = result.balance
    _emit(
        result,
        as_json,
        f"grant {grant_id} revoked",
        [
            ("account", b.account_id),
            ("entry", result.entry.id),
            (
                "taken back",
                -sum(p.amount for p in result.entry.postings if p.account_id == b.account_id),
            ),
            ("balance", b.balance),
            ("available", b.available),
        ],
    )


def _show_correction(result: AdjustmentResult | ReversalResult, as_json: bool, title: str) -> None:
    """An entry that corrected a wallet (an adjustment, a reversal) and its money after."""
    entry, account_id = result.entry, result.balance.account_id
    _emit(
        result,
        as_json,
        title,
        [
            ("account", account_id),
            ("entry", entry.id),
            ("kind", entry.kind),
            ("reverses", entry.reverses_id),
            ("amount", sum(p.amount for p in entry.postings if p.account_id == account_id)),
            ("memo", entry.memo),
            *_money_rows(result.balance),
        ],
    )


# A negative amount ("-500") is the amount, not an unknown option.
@account_app.command("adjust", context_settings={"ignore_unknown_options": True})
def account_adjust(
    account_id: Annotated[str, typer.Argument(help="The wallet's id.")],
    amount: Annotated[
        int,
        typer.Argument(help="Signed minor units: positive credits the wallet, negative debits it."),
    ],
    reason: Annotated[str, typer.Option(help="Why, kept as the entry's memo.")],
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Correct a wallet by a signed amount against the funding account.

    A credit becomes an adjustment grant; a debit burns grants in order."""
    with _open_ledger() as ledger:
        result = ledger.adjust(
            account_id,
            amount,
            reason=reason,
            idempotency_key=_key(idempotency_key),
            actor=_actor(),
        )
    _show_correction(result, as_json, f"adjusted {account_id}")


@app.command("reverse")
def reverse_command(
    entry_id: Annotated[
        str,
        typer.Argument(help="The entry's id ('account entries', or a usage record's entry_id)."),
    ],
    reason: Annotated[str, typer.Option(help="Why, kept as the reversal's memo.")],
    idempotency_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reverse an entry, at most once: a refund, or a top-up taken back.

    Refund a capture or charge (what it burned goes back to the grants it came from,
    unless they expired since), or take back a top-up or an adjustment."""
    with _open_ledger() as ledger:
        result = ledger.reverse(
            entry_id, reason=reason, idempotency_key=_key(idempotency_key), actor=_actor()
        )
    _show_correction(result, as_json, f"reversed {entry_id}")


keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="admin, service or customer.")],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    account: Annotated[str | None, typer.Option(help="The one wallet of a customer key.")] = None,
    expires_at: Annotated[
        str | None,
        typer.Option(help="From this ISO 8601 instant the key is refused (default: never)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key. Its secret is printed this once: store it now."""
    expiry = _parse_instant(expires_at, "expires-at")
    with _open_keys() as keys:
        created = keys.create(
            role, name=name, account_id=account, expires_at=expiry, actor=_actor()
        )
    _emit(
        created,
        as_json,
        "API key created (the key is shown this once)",
        [
            ("id", created.id),
            ("role", created.role),
            ("account", created.account_id),
            ("expires", created.expires_at.isoformat() if created.expires_at else "never"),
            ("key", created.key),
        ],
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (not its secret).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: every later request with it gets 401."""
    with _open_keys() as keys:
        view = keys.revoke(key_id, actor=_actor())
    _emit(
        view,
        as_json,
        "API key revoked",
        [("id", view.id), ("revoked at", view.revoked_at), ("revoked by", view.revoked_by)],
    )


@keys_app.command("list")
def keys_list(
    role: Annotated[str | None, typer.Option(help="Only admin, service or customer keys.")] = None,
    account: Annotated[
        str | None, typer.Option("--account", help="Only this wallet's customer keys.")
    ] = None,
    active: Annotated[
        bool | None,
        typer.Option(
            "--active/--inactive", help="Only keys accepted now, or only revoked or expired ones."
        ),
    ] = None,
    created_by: Annotated[
        str | None,
        typer.Option(
            help="Only the keys this actor made (key:<id>, cli:<user> or system): those a "
            "leaked key made, to revoke them too."
        ),
    ] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """The keys (never a secret), in the order they were made, with who made and who
    revoked each, a page at a time (with --cursor, give the same filters)."""
    with _open_keys() as keys:
        page = keys.page(
            cursor=cursor,
            limit=limit,
            role=role,
            account_id=account,
            active=active,
            created_by=created_by,
        )
    # Who revoked each is in --json (and `keys revoke`'s answer): a ninth column would fold
    # the instants of an 80-column terminal.
    _print_page(
        page,
        as_json,
        "API keys",
        ("id", "name", "role", "account", "created", "created by", "revoked", "expires"),
        (
            (
                v.id,
                v.name,
                v.role,
                v.account_id,
                v.created_at.isoformat(timespec="seconds"),
                v.created_by,
                v.revoked_at.isoformat(timespec="seconds") if v.revoked_at else None,
                v.expires_at.isoformat(timespec="seconds") if v.expires_at else None,
            )
            for v in page.items
        ),
    )


report_app = typer.Typer(
    help="Monthly statements: monthly (make one now), run (the queued jobs), show (a job).",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")


@contextmanager
def _open_reports() -> Iterator[Reports]:
    from api.main import reports_from_settings

    # A failed job's error is printed as JSON (exit 9); no traceback on stderr.
    logging.getLogger("creditledger.reports").addHandler(logging.NullHandler())
    logging.getLogger("creditledger.reports").propagate = False
    with _open_ledger() as ledger:
        yield reports_from_settings(ledger, _settings())


def _job_rows(job: JobView) -> list[tuple[str, Any]]:
    return [
        ("id", job.id),
        ("status", job.status),
        ("month", f"{job.month} ({job.timezone})"),
        ("account", job.account_id or "all"),
        ("format", job.format),
        ("progress", f"{job.progress}% {job.stage}"),
        ("attempts", job.attempts),
        ("error", job.error or ""),
    ]


@report_app.command("monthly")
def report_monthly(
    month: Annotated[str, typer.Argument(help="The closed month, YYYY-MM.")],
    account: Annotated[
        str | None, typer.Option("--account", help="One wallet (default: all).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, json, parquet or html.")] = "csv",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the file ('-' for stdout).", allow_dash=True),
    ] = None,
    tz: Annotated[str, typer.Option("--tz", help="IANA timezone of the month.")] = "UTC",
    as_json: JsonOption = False,
) -> None:
    """Make a monthly statement now, with a progress bar, and write its file.

    The report is a durable job like those of the API: an identical one already running
    elsewhere is waited for instead of made twice.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    with _open_reports() as reports:
        job, _created = reports.request(
            month, fmt, account_id=account, timezone=tz, requested_by="cli"
        )
        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
        with Progress(*columns, console=_console(stderr=True), transient=True) as bar:
            task = bar.add_task(f"statement {job.month}", total=100)

            def show(percent: int, stage: str) -> None:
                bar.update(task, completed=percent, description=f"statement {job.month}: {stage}")

            claimed = reports.claim(job.id)
            if claimed is not None:
                job = reports.run(claimed, show)
            while job.status in ("queued", "running"):
                # Another worker has it: follow its progress.
                show(job.progress, job.stage)
                time.sleep(0.5)
                job = reports.get(job.id)
        if job.status != "succeeded":
            _fail(
                {"error": "report_failed", "id": job.id, "message": job.error or job.status},
                EXIT_REPORT_FAILED,
            )
        output = reports.output(job.id)
    target = out or Path(output.filename)
    if str(target) == "-":
        for chunk in output.chunks():
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    with target.open("wb") as file:
        for chunk in output.chunks():
            file.write(chunk)
    if as_json:
        typer.echo(json.dumps({**job.model_dump(mode="json"), "path": str(target)}, indent=2))
        return
    # Amounts in major units, as the statement's files and pages give them: 20.000000 usd,
    # not 20,000,000 (micro-dollars) under "usd".
    table = Table(title=f"statement {job.month} ({job.timezone}) -> {target}")
    for column in ("unit", "accounts", "opening", "credits", "debits", "closing", "usage"):
        table.add_column(column, justify="left" if column == "unit" else "right", overflow="fold")
    for t in (job.summary or {}).get("totals", []):
        amounts = ("opening", "credits", "debits", "closing", "usage_amount")
        table.add_row(
            t["unit"], str(t["accounts"]), *(major_text(t[k], t["scale"]) for k in amounts)
        )
    _console().print(table)
    typer.echo("reconciled: opening + credits - debits = closing = the ledger, for every account")


@report_app.command("run")
def report_run(as_json: JsonOption = False) -> None:
    """Run the queued report jobs (and interrupted ones past their lease), then exit.

    Each job run is listed with how it ended; exit 9 when one of them failed, naming it.
    """
    with _open_reports() as reports:
        reports.schedule_month_end()
        ran = reports.run_each()
    if as_json:
        typer.echo(json.dumps({"jobs": [job.model_dump(mode="json") for job in ran]}, indent=2))
    else:
        if ran:
            table = Table(title="report jobs run")
            columns = ("id", "status", "month", "account", "format", "attempts", "error")
            for column in columns:
                table.add_column(column, overflow="fold")
            for job in ran:
                cells = dict(_job_rows(job))
                table.add_row(*(str(cells[column]) for column in columns))
            _console().print(table)
        typer.echo(f"{len(ran)} report job(s) run")
    failed = [job for job in ran if job.status == "failed"]
    if failed:
        _fail(
            {
                "error": "report_failed",
                "ids": [job.id for job in failed],
                "message": "; ".join(f"{job.id}: {job.error or job.status}" for job in failed),
            },
            EXIT_REPORT_FAILED,
        )


@report_app.command("show")
def report_show(
    job_id: Annotated[str, typer.Argument(help="The report job's id.")],
    as_json: JsonOption = False,
) -> None:
    """A report job's status, progress and error."""
    with _open_reports() as reports:
        job = reports.get(job_id)
    _emit(job, as_json, f"report {job.id}", _job_rows(job))


def _log_start(ledger: Ledger) -> None:
    """The server's line at its start: which ledger it serves (a SQLite file by its whole path:
    the default is relative to where it was started) and the catalog versions in force."""
    url = ledger.db.engine.url
    if ledger.db.is_sqlite:
        where = f"SQLite file {Path(url.database or '').resolve()}"
    else:
        where = f"PostgreSQL {url.render_as_string(hide_password=True)}"
    now = ledger.clock()
    catalogs = ", ".join(
        f"{c.name} {c.version_at(now).id}"
        if c.versions[0].effective_from <= now
        else f"{c.name} (none yet: the first from {kernel.utc_text(c.versions[0].effective_from)})"
        for c in ledger.catalogs
    )
    logging.getLogger("creditledger.server").info(
        "serving the ledger in %s; catalog versions in force: %s", where, catalogs
    )


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    access_log: Annotated[
        bool,
        typer.Option(
            help="Log every request once answered: its request id, status, duration, key "
            "and client (CREDITLEDGER_ACCESS_LOG)."
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="The log's lines: text or json (default: CREDITLEDGER_LOG_FORMAT, or text)."
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="The least severe lines logged: debug, info, warning or error (default: "
            "CREDITLEDGER_LOG_LEVEL, or info)."
        ),
    ] = None,
) -> None:
    """Migrate the database, then serve the HTTP API and run the sweepers."""
    import uvicorn

    from api.logs import NOTICES, configure
    from api.main import app_from_settings
    from api.runtime import tune_gc

    settings = _settings(
        access_log=True if access_log else None, log_format=log_format, log_level=log_level
    )
    configure(settings.log_format, settings.log_level)
    notices = logging.getLogger(NOTICES)
    with _domain_errors():
        db = Database.from_settings(settings)
        try:
            db.reach(settings.startup_wait_seconds)
            db.migrate()
        finally:
            db.dispose()
        web = app_from_settings(settings)
        changed = web.state.services.ledger.pin_catalogs()
        if changed:
            web.state.services.ledger.db.dispose()
            _fail(
                {
                    "error": "catalog_changed",
                    "message": f"{changed_text(changed)}. A version in force is history: "
                    "quotes, holds and statements name it. Restore it as it was, and put "
                    "new prices in a new version with a later effective_from",
                    "versions": [
                        {"catalog": c.catalog, "version": c.version, "file": c.file}
                        for c in changed
                    ],
                },
                EXIT_CATALOG,
            )
        created = web.state.services.keys.bootstrap_admin()
        unpriceable = web.state.services.ledger.unpriceable_holds()
    for group in unpriceable:
        # Not a refusal to start: every other request is served; these holds release as
        # they expire. But their captures are refused until the version is back.
        notices.warning(
            "%s pending hold(s) of %s %s were quoted with catalog version '%s', which the "
            "catalogs no longer price (%s): their captures are refused (503 catalog_changed) "
            "until that version is restored under CREDITLEDGER_CATALOG_DIR; the last of "
            "them expires at %s",
            group.holds,
            group.catalog,
            group.operation,
            group.catalog_version,
            group.reason,
            kernel.utc_text(group.until),
        )
    if created is not None:
        notices.warning(
            "No admin key was configured (CREDITLEDGER_ADMIN_KEY), so one was created. "
            "Admin key (shown this once, store it now): %s",
            created.key,
            extra={"admin_key": created.key},
        )
    _log_start(web.state.services.ledger)
    tune_gc(settings.gc_threshold)  # after the app is built: its heap is what is frozen
    server = uvicorn.Server(
        uvicorn.Config(
            web,
            host=host,
            port=port,
            # Logging is configured above (api.logs); uvicorn's access log is replaced by
            # the API's own (api.logs.AccessLog), which names the request id and the key.
            log_config=None,
            access_log=False,
            log_level=settings.log_level,
            timeout_keep_alive=settings.keep_alive_seconds,
        )
    )
    # uvicorn takes SIGTERM over while it serves, then restores this handler and raises
    # the signal again on its way out: the process ends by it, and so skips the exit's
    # writing of the log lines waiting (its last ones, "Finished server process").
    signal.signal(signal.SIGTERM, _write_log_then_end)
    interrupted = False
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
    except KeyboardInterrupt:
        # Ctrl-C: once serving, uvicorn stops gracefully and raises the SIGINT again on
        # its way out (exit 0, as ever); before it took the signal over, here.
        interrupted = True
    if not server.started:
        if interrupted:
            # The operator stopped it: not "could not listen", which would send them
            # looking for another process on the port.
            raise typer.Exit(EXIT_INTERRUPTED)
        # Uvicorn's own exit code (3) is this CLI's "broken catalog": a script reading it
        # would look for the fault in the wrong place.
        _fail(
            {
                "error": "not_serving",
                "message": f"the server did not start listening on {host}:{port}; the "
                "error above says why (the port in use by another process, or an address "
                "this machine does not have)",
            },
            EXIT_NOT_SERVING,
        )


def _write_log_then_end(signum: int, _frame: object) -> None:
    """End the process by ``signum``, as its default does, once the log's waiting lines
    are written."""
    from api.logwriter import flush

    flush()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _flowing_help(*apps: typer.Typer) -> None:
    """Give each command its docstring as flowing paragraphs. Rich help keeps a
    docstring's line breaks, which the source wraps at its own width, so a help page read
    ragged; joined, the terminal wraps them."""
    for group in apps:
        for command in group.registered_commands:
            if command.help is None and command.callback is not None:
                doc = inspect.cleandoc(command.callback.__doc__ or "")
                command.help = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))


_flowing_help(app, account_app, keys_app, report_app)


def main() -> None:
    """Console-script entry point."""
    _refuse_undecodable(sys.argv[1:])
    app()


def _refuse_undecodable(args: list[str]) -> None:
    """Exit 2 for an argument that is not UTF-8 text: Python reads its bytes as lone
    surrogates, which no database can store or compare (a traceback, before)."""
    for place, arg in enumerate(args, start=1):
        if kernel.text_problem(arg) is not None:  # no NUL: an argument cannot hold one
            try:  # the bytes given (Python keeps each as a surrogate), as \xe9
                given = arg.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                given = arg.encode("utf-8", "backslashreplace")
            shown = given.decode("utf-8", "backslashreplace")
            message = f"argument {place} ('{shown}') is not UTF-8 text: give it in UTF-8"
            typer.echo(json.dumps({"error": "invalid_request", "message": message}), err=True)
            sys.exit(EXIT_INVALID)


if __name__ == "__main__":
    main()
