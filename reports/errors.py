"""Errors of the read side, carrying the facts (only ``api/errors.py`` maps statuses)."""

from __future__ import annotations

from dataclasses import dataclass

from pricing.errors import DomainError


class ReportError(DomainError):
    """Base of every report error."""

    code = "report_error"


@dataclass(frozen=True)
class Mismatch:
    """One way a wallet's statement disagrees with the ledger."""

    account_id: str
    check: str
    detail: str


class ReconciliationError(ReportError):
    """The statement does not add up to the ledger: the report fails, naming the wallets."""

    code = "reconciliation_failed"

    def __init__(self, mismatches: list[Mismatch]) -> None:
        names = sorted({m.account_id for m in mismatches})
        lines = "; ".join(f"{m.account_id} ({m.check}): {m.detail}" for m in mismatches[:20])
        more = f"; and {len(mismatches) - 20} more" if len(mismatches) > 20 else ""
        super().__init__(
            f"the statement does not reconcile for {len(names)} account(s) "
            f"[{', '.join(names[:50])}]: {lines}{more}"
        )
        self.mismatches = mismatches
        self.accounts = names


class ReportOverflow(ReportError):
    """A wallet's month adds up beyond the 64-bit integers a statement sums in: its sums
    would not be exact, so no statement is made."""

    code = "report_overflow"

    def __init__(self, accounts: list[str]) -> None:
        super().__init__(
            f"the month's amounts of {len(accounts)} account(s) [{', '.join(accounts[:50])}] "
            "add up beyond 64 bits: their statement cannot be exact"
        )
        self.accounts = accounts


class ReportNotReady(ReportError):
    """The report's file was asked for before the job succeeded."""

    code = "report_not_ready"

    def __init__(self, job_id: str, status: str, error: str | None = None) -> None:
        detail = f": {error}" if error else ""
        super().__init__(f"report {job_id} is {status}{detail}", field="id")
        self.status = status
