"""Errors of the pricing domain.

Each error carries the facts a caller needs to fix the request (the field, the allowed
values); only ``api/errors.py`` turns them into status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DomainError(Exception):
    """Base of every error of the project's domain (pricing and ledger alike).

    ``code`` is a stable machine-readable name; ``field`` and ``allowed`` say what to fix.
    Only ``api/errors.py`` maps these to status codes.
    """

    code = "domain_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        allowed: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        # A list of allowed values, or a mapping such as {"min": 1, "max": 4}.
        self.allowed = allowed

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready mapping: ``error``, ``message``, ``field``, ``allowed``."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.allowed is not None:
            body["allowed"] = self.allowed
        return body


class PricingError(DomainError):
    """Base of every pricing error."""

    code = "pricing_error"


class CatalogError(PricingError):
    """A catalog file is broken. Raised at load (start-up), never at request time."""

    code = "catalog_error"

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key or '<file>'}: {reason}", field=key or None)
        self.file = file
        self.key = key
        self.reason = reason


class InvalidRequest(PricingError):
    """The request envelope (``catalog``, ``operation``, ``params``) or usage is malformed."""

    code = "invalid_request"


class UnknownCatalog(InvalidRequest):
    code = "unknown_catalog"


class UnknownOperation(InvalidRequest):
    code = "unknown_operation"


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class InvalidParameter(InvalidRequest):
    """One or more request parameters are out of range; ``errors`` lists each of them."""

    code = "invalid_parameter"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        allowed: Any = None,
        errors: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, field=field, allowed=allowed)
        self.errors = list(errors) if errors else []

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if len(self.errors) > 1:
            body["errors"] = self.errors
        return body


class InvalidUsage(InvalidRequest):
    """Reported usage is malformed or impossible for the request it belongs to."""

    code = "invalid_usage"


class NoVersionInForce(InvalidRequest):
    """The requested time is before every version of the catalog took effect."""

    code = "no_version_in_force"


class NotBillable(PricingError):
    """The operation (or model) is listed but has no price: an operator must supply one."""

    code = "not_billable"


class AmountOverflow(PricingError):
    """A computed amount does not fit the ledger's signed 64-bit minor units."""

    code = "amount_overflow"
