"""Errors of the ledger domain, carrying the facts (only ``api/errors.py`` maps statuses)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pricing.errors import DomainError


class LedgerError(DomainError):
    """Base of every ledger error."""

    code = "ledger_error"


class InvalidInput(LedgerError):
    """A request to the ledger is malformed (amount out of range, unknown unit...)."""

    code = "invalid_input"


class BalanceOverflow(InvalidInput):
    """The operation would take a balance or a running total beyond the signed 64-bit
    minor units every amount is kept in; nothing was changed."""

    code = "amount_overflow"


class NotFound(LedgerError):
    code = "not_found"


class AccountExists(LedgerError):
    code = "account_exists"


class InsufficientCredits(LedgerError):
    """Available credits are short: ``needed`` and ``available`` in minor units."""

    code = "insufficient_credits"

    def __init__(self, needed: int, available: int, unit: str, scale: int) -> None:
        super().__init__(f"Insufficient credits. Need {needed}, have {available}")
        self.needed = needed
        self.available = available
        self.unit = unit
        self.scale = scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.code,
            "message": self.message,
            "credits_needed": self.needed,
            "credits_balance": self.available,
            "unit": self.unit,
            "scale": self.scale,
        }


class SpendLimitReached(InsufficientCredits):
    """The wallet's monthly spend limit would be passed: of ``limit``, ``remaining`` is
    left until ``resets_at`` (the next period's start), and ``needed`` is more. A 402
    like insufficient credits, told apart by its code."""

    code = "spend_limit_reached"

    def __init__(
        self,
        needed: int,
        available: int,
        unit: str,
        scale: int,
        *,
        limit: int,
        remaining: int,
        resets_at: datetime,
    ) -> None:
        super().__init__(needed, available, unit, scale)
        self.message = (
            f"Monthly spend limit reached. Need {needed}, {remaining} of {limit} left "
            f"until {resets_at.isoformat().replace('+00:00', 'Z')}"
        )
        self.args = (self.message,)
        self.limit = limit
        self.remaining = remaining
        self.resets_at = resets_at

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "spend_limit": self.limit,
            "spend_remaining": self.remaining,
            "resets_at": self.resets_at.isoformat().replace("+00:00", "Z"),
        }


class AccountBlocked(LedgerError):
    """The wallet is blocked: no new authorization or charge until it is unblocked."""

    code = "account_blocked"


class HoldNotPending(LedgerError):
    """The hold was already captured, voided or expired: it resolves once."""

    code = "hold_not_pending"


class CatalogChanged(LedgerError):
    """A pending hold can no longer be priced: the catalog version it was quoted with
    (its catalog, version, operation or the request's model or parameters under it) is not
    in this server's catalogs any more. The server's configuration, not the caller's
    request: nothing was changed, and the capture can be retried once the version is back."""

    code = "catalog_changed"

    def __init__(self, message: str, *, catalog: str, catalog_version: str) -> None:
        super().__init__(message)
        self.catalog = catalog
        self.catalog_version = catalog_version

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "catalog": self.catalog,
            "catalog_version": self.catalog_version,
        }


class GrantNotOpen(LedgerError):
    """The grant has nothing left to revoke: spent, expired or revoked already."""

    code = "grant_not_open"


class AlreadyReversed(LedgerError):
    code = "already_reversed"


class NotReversible(LedgerError):
    code = "not_reversible"


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before with a different request."""

    code = "idempotency_conflict"


class UnbalancedEntry(LedgerError):
    """A journal entry whose postings do not sum to zero per unit: a bug, never input."""

    code = "unbalanced_entry"


class BackupExists(LedgerError):
    """The backup's destination exists; nothing was written (choose another, or replace)."""

    code = "backup_exists"


class BackupFailed(LedgerError):
    """The copy did not pass SQLite's integrity check and was deleted."""

    code = "backup_failed"
