"""Batch files of the CLI: top-ups from a CSV file (a promotion, a grant to many wallets
at once) and usage reported after the fact from a JSON Lines file (a gateway's log).

The whole file is read and checked before anything is written, so a file with one bad
row changes nothing. Then each row is one ledger call with its own idempotency key, made
of the batch's id and the row's line: a run cut short (a crash, a busy database, a row
the ledger refused when it ran) is finished by running the same file again, and the rows
already done are replayed, never done twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from api import jsonin

#: The columns a batch file may have; the first two are required.
COLUMNS = ("account_id", "amount", "kind", "expires_at", "priority", "reference")
REQUIRED = ("account_id", "amount")
_WHOLE = re.compile(r"-?[0-9]+")
#: The digits past which a cell's number is read as this far from zero rather than exactly:
#: far past 64 bits, where every whole-number column ends (the ledger refuses it by name,
#: as it does a 20-digit one), and far short of what ``int`` reads (4,300 digits; more
#: raises, and takes time quadratic in the digits).
_MOST_DIGITS = 40
_FAR: int = 10**_MOST_DIGITS
#: What a batch id may be: it goes into every row's idempotency key.
BATCH_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


@dataclass(frozen=True)
class Row:
    """One top-up of the file, at ``line`` (1 is the header)."""

    line: int
    account_id: str
    amount: int
    kind: str
    expires_at: datetime | None
    priority: int
    reference: str | None

    def key(self, batch_id: str) -> str:
        return f"batch:{batch_id}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """Why one row (or the file, ``line`` None) cannot be done."""

    line: int | None
    field: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


def default_batch_id(text: str) -> str:
    """The file's own id: the start of its SHA-256 (the same file, the same keys)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_rows(text: str) -> tuple[list[Row], list[Problem]]:
    """The rows of a batch file, and every problem found in it (none: all rows are
    well formed; whether the ledger takes them is checked against it)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return [], [Problem(1, "file", f"not CSV: {exc}")]
    if header is None:
        return [], [Problem(None, "file", "the file is empty: it needs a header line")]
    names = [name.strip() for name in header]
    problems = [
        Problem(1, name, f"unknown column {name!r}; columns: {', '.join(COLUMNS)}")
        for name in names
        if name not in COLUMNS
    ]
    problems += [
        Problem(1, name, f"the header has no {name!r} column")
        for name in REQUIRED
        if name not in names
    ]
    if len(set(names)) != len(names):
        problems.append(Problem(1, "file", "a column is named twice in the header"))
    if problems:
        return [], problems
    rows: list[Row] = []
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue  # a blank line
            if len(values) != len(names):
                given = f"{len(values)} value" + ("" if len(values) == 1 else "s")
                problems.append(
                    Problem(line, "file", f"the row has {given}; the header has {len(names)}")
                )
                continue
            row, found = _row(line, dict(zip(names, values, strict=True)))
            problems += found
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        problems.append(Problem(reader.line_num, "file", f"not CSV: {exc}"))
    if not rows and not problems:
        problems.append(Problem(None, "file", "the file has no rows"))
    return rows, problems


def _row(line: int, cells: dict[str, str]) -> tuple[Row | None, list[Problem]]:
    problems: list[Problem] = []

    def whole(name: str, default: int | None) -> int | None:
        text = cells.get(name, "").strip()
        if not text and default is not None:
            return default
        if not _WHOLE.fullmatch(text):
            problems.append(Problem(line, name, f"{name} must be a whole number, not {text!r}"))
            return None
        if len(text.lstrip("-").lstrip("0")) > _MOST_DIGITS:
            return -_FAR if text.startswith("-") else _FAR
        return int(text)

    account_id = cells["account_id"].strip()
    if not account_id:
        problems.append(Problem(line, "account_id", "account_id is empty"))
    amount = whole("amount", None)
    priority = whole("priority", 0)
    kind = cells.get("kind", "").strip() or "pack"
    expires_at = _instant(line, "expires_at", cells.get("expires_at", "").strip(), problems)
    reference = cells.get("reference", "").strip() or None
    if problems or amount is None or priority is None:
        return None, problems
    return Row(line, account_id, amount, kind, expires_at, priority, reference), []


#: The fields of a usage line: the body of ``POST /v1/usage-records``.
USAGE_FIELDS = (
    "account_id",
    "catalog",
    "operation",
    "params",
    "status",
    "usage",
    "request_id",
    "occurred_at",
)
USAGE_REQUIRED = ("account_id", "catalog", "operation", "status")


@dataclass(frozen=True)
class UsageRow:
    """One request's usage, reported after it ran, at ``line`` of the file (from 1)."""

    line: int
    account_id: str
    #: The envelope the gateway priced: ``{catalog, operation, params}``.
    request: dict[str, Any]
    status: str
    usage: dict[str, Any] | None
    request_id: str | None
    occurred_at: datetime | None

    def key(self, batch_id: str) -> str:
        """Its idempotency key: the request's own id when the line gives one (the same
        request in another file, or in a log that grew since, is charged once), else the
        batch's id and the line."""
        if self.request_id is not None:
            return f"usage:request:{self.request_id}"
        return f"usage:{batch_id}:{self.line}"


def _instant(line: int, name: str, text: str, problems: list[Problem]) -> datetime | None:
    """The ISO 8601 instant with a timezone ``text`` (None when blank), or a problem."""
    if not text:
        return None
    try:
        found: datetime | None = datetime.fromisoformat(text)
    except ValueError:
        found = None
    if found is None or found.tzinfo is None:
        problems.append(
            Problem(
                line,
                name,
                f"{name} {text!r}: give an ISO 8601 instant with a timezone, "
                "such as 2027-01-01T00:00:00Z",
            )
        )
        return None
    return found


def _not_a_number(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def read_usage(text: str) -> tuple[list[UsageRow], list[Problem]]:
    """The rows of a JSON Lines usage file (one object per line, blank lines skipped),
    and every problem found in it (none: all rows are well formed; whether the ledger
    takes them is checked against it). Fractions are exact decimals, never floats."""
    rows: list[UsageRow] = []
    problems: list[Problem] = []
    lines_of: dict[str, int] = {}  # the line of each request_id
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = jsonin.loads(raw, constant=_not_a_number)
        except jsonin.RepeatedKey as exc:
            problems.append(Problem(line, exc.field, exc.reason))
            continue
        except jsonin.TooDeep as exc:
            problems.append(Problem(line, "line", exc.msg))
            continue
        except ValueError as exc:  # JSONDecodeError too
            problems.append(Problem(line, "line", f"not JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            problems.append(Problem(line, "line", "each line must be a JSON object"))
            continue
        row, found = _usage_row(line, value)
        problems += found
        if row is None:
            continue
        if row.request_id is not None:
            first = lines_of.setdefault(row.request_id, line)
            if first != line:
                problems.append(
                    Problem(
                        line,
                        "request_id",
                        f"request_id {row.request_id!r} is on line {first} too: a request "
                        "is reported once",
                    )
                )
                continue
        rows.append(row)
    if not rows and not problems:
        problems.append(Problem(None, "file", "the file has no rows"))
    return rows, problems


def _usage_row(line: int, value: dict[str, Any]) -> tuple[UsageRow | None, list[Problem]]:
    problems = [
        Problem(line, name, f"unknown field {name!r}; fields: {', '.join(USAGE_FIELDS)}")
        for name in value
        if name not in USAGE_FIELDS
    ]
    problems += [
        Problem(line, name, f"the line has no {name!r}")
        for name in USAGE_REQUIRED
        if name not in value
    ]
    if problems:
        return None, problems

    def typed(name: str, kind: type, what: str, *, optional: bool = False) -> Any:
        found = value.get(name)
        if found is None and optional:
            return None
        if not isinstance(found, kind) or (isinstance(found, str) and not found):
            problems.append(Problem(line, name, f"{name} must be {what}"))
        return found

    account_id = typed("account_id", str, "a wallet's id (text)")
    catalog = typed("catalog", str, "a catalog's name (text)")
    operation = typed("operation", str, "an operation's name (text)")
    params = typed("params", dict, "an object (the provider's request body)", optional=True)
    status = typed("status", str, "COMPLETED, FAILED or ERROR")
    usage = typed("usage", dict, "an object (the provider's usage)", optional=True)
    request_id = typed("request_id", str, "text (the gateway's id of the request)", optional=True)
    when = typed("occurred_at", str, "an ISO 8601 instant with a timezone", optional=True)
    occurred_at = _instant(line, "occurred_at", when, problems) if isinstance(when, str) else None
    if problems:
        return None, problems
    request = {"catalog": catalog, "operation": operation, "params": params or {}}
    return UsageRow(line, account_id, request, status, usage, request_id, occurred_at), []
