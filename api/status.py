"""The status code of each domain error: the table the HTTP API answers by, and the CLI
its exit codes (kept apart from ``api.errors`` so that the CLI starts without FastAPI).
"""

from __future__ import annotations

from ledger.errors import (
    AccountBlocked,
    AccountExists,
    AlreadyReversed,
    BackupExists,
    CatalogChanged,
    GrantNotOpen,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    NotReversible,
)
from pricing.errors import AmountOverflow, DomainError, InvalidRequest, NotBillable
from reports.errors import ReportNotReady

#: Domain errors by status code (the first class that matches, in this order, wins).
STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (InsufficientCredits, 402),
    (AccountBlocked, 403),
    (NotFound, 404),
    (AccountExists, 409),
    (HoldNotPending, 409),
    (AlreadyReversed, 409),
    (GrantNotOpen, 409),
    (NotReversible, 409),
    (IdempotencyConflict, 409),
    (ReportNotReady, 409),
    (BackupExists, 409),
    (InvalidInput, 422),
    (InvalidRequest, 422),
    (NotBillable, 422),
    (AmountOverflow, 422),
    (CatalogChanged, 503),
)


def status_of(exc: DomainError) -> int:
    """The status of a domain error (500: none is mapped, a bug)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500
