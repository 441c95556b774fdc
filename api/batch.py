"""Top-ups from a CSV file: a promotion or a grant to many wallets at once.

The whole file is read and checked before anything is written, so a file with one bad
row changes nothing. Then each row is one top-up with its own idempotency key, made of
the batch's id and the row's line: a run cut short (a crash, a busy database, a row the
ledger refused when it ran) is finished by running the same file again, and the rows
already done are replayed, never granted twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: The columns a batch file may have; the first two are required.
COLUMNS = ("account_id", "amount", "kind", "expires_at", "priority", "reference")
REQUIRED = ("account_id", "amount")
_WHOLE = re.compile(r"-?[0-9]+")
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
                problems.append(
                    Problem(line, "file", f"{len(values)} values for {len(names)} columns")
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
        return int(text)

    account_id = cells["account_id"].strip()
    if not account_id:
        problems.append(Problem(line, "account_id", "account_id is empty"))
    amount = whole("amount", None)
    priority = whole("priority", 0)
    kind = cells.get("kind", "").strip() or "pack"
    expires_at = None
    expiry = cells.get("expires_at", "").strip()
    if expiry:
        try:
            expires_at = datetime.fromisoformat(expiry)
        except ValueError:
            expires_at = None
        if expires_at is None or expires_at.tzinfo is None:
            problems.append(
                Problem(
                    line,
                    "expires_at",
                    f"expires_at {expiry!r}: give an ISO 8601 instant with a timezone, "
                    "such as 2027-01-01T00:00:00Z",
                )
            )
    reference = cells.get("reference", "").strip() or None
    if problems or amount is None or priority is None:
        return None, problems
    return Row(line, account_id, amount, kind, expires_at, priority, reference), []
