"""The ``creditledger`` command line.

Exit codes (stable, for scripts):

* 0 -- success;
* 2 -- the input is invalid (malformed JSON, unknown catalog/operation/model, a parameter
  out of range); the error is printed as JSON on stderr;
* 3 -- the catalogs failed to load (a broken file under ``CREDITLEDGER_CATALOG_DIR``):
  the file, key and reason are printed;
* 4 -- the request is valid but its operation has no configured price;
* 5 -- ``verify`` found broken ledger invariants (each is printed);
* 6 -- the database cannot be used (unreachable, or not migrated: run ``migrate``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from ledger.db import Database
from ledger.settings import get_settings
from ledger.verify import verify
from pricing import CatalogSet, estimate, load_catalogs
from pricing.catalog import describe
from pricing.errors import CatalogError, NotBillable, PricingError

EXIT_INVALID = 2
EXIT_CATALOG = 3
EXIT_NOT_BILLABLE = 4
EXIT_VIOLATIONS = 5
EXIT_DATABASE = 6

app = typer.Typer(
    name="creditledger",
    help="Metering and billing ledger for AI-generation APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(body: dict[str, Any], code: int) -> NoReturn:
    typer.echo(json.dumps(body, ensure_ascii=False), err=True)
    raise typer.Exit(code)


def _catalogs() -> CatalogSet:
    """The shipped catalogs plus the operator's, or exit 3 naming the broken file."""
    try:
        return load_catalogs(get_settings().catalog_dirs())
    except CatalogError as exc:
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
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        _fail({"error": "invalid_json", "message": f"{source}: {exc}"}, EXIT_INVALID)


def _parse_at(at: str | None) -> datetime | None:
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
                "field": "at",
                "message": f"--at {at!r}: give an ISO 8601 instant with a timezone, "
                "e.g. 2026-01-01T00:00:00Z",
            },
            EXIT_INVALID,
        )
    return parsed


AtOption = Annotated[
    str | None,
    typer.Option("--at", help="Price with the catalog versions in force at this ISO 8601 instant."),
]


@app.command("estimate")
def estimate_command(
    file: Annotated[
        str,
        typer.Argument(help="A JSON file with {catalog, operation, params}; '-' reads stdin."),
    ] = "-",
    at: AtOption = None,
) -> None:
    """Quote one request: its cost, the most it can cost, and how."""
    if file == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = Path(file).read_text(encoding="utf-8"), file
        except (OSError, UnicodeDecodeError) as exc:
            _fail({"error": "invalid_request", "message": f"{file}: {exc}"}, EXIT_INVALID)
    request = _parse_json(text, source)
    when = _parse_at(at)
    catalogs = _catalogs()
    try:
        quote = estimate(request, when, catalogs=catalogs)
    except NotBillable as exc:
        _fail(exc.to_dict(), EXIT_NOT_BILLABLE)
    except PricingError as exc:
        _fail(exc.to_dict(), EXIT_INVALID)
    typer.echo(json.dumps(quote.to_dict(), indent=2, ensure_ascii=False))


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
    Console(width=max(200, Console().width)).print(table)


def _database() -> Database:
    return Database.from_url(get_settings().database_url)


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema (CREDITLEDGER_DATABASE_URL)."""
    db = _database()
    try:
        db.migrate()
    except sa.exc.SQLAlchemyError as exc:
        _fail({"error": "database_error", "message": str(exc).splitlines()[0]}, EXIT_DATABASE)
    finally:
        db.dispose()
    typer.echo(
        f"database at the latest schema: {db.engine.url.render_as_string(hide_password=True)}"
    )


@app.command("verify")
def verify_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Check every ledger invariant over the whole database; exit 5 if any is broken."""
    db = _database()
    try:
        violations = verify(db)
    except sa.exc.SQLAlchemyError as exc:
        _fail(
            {
                "error": "database_error",
                "message": str(exc).splitlines()[0],
                "hint": "run `creditledger migrate` first",
            },
            EXIT_DATABASE,
        )
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
        Console(width=max(120, Console().width)).print(table)
    else:
        typer.echo("ok: every ledger invariant holds")
    if violations:
        raise typer.Exit(EXIT_VIOLATIONS)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
