"""Pricing: versioned price catalogs and the pure cost engine.

Imports nothing from the rest of the project: no database, no web framework.
"""

from pricing.catalog import Catalog, CatalogSet, load_catalogs
from pricing.engine import STATUSES, Charge, Quote, default_catalogs, estimate, price_usage

__all__ = [
    "STATUSES",
    "Catalog",
    "CatalogSet",
    "Charge",
    "Quote",
    "default_catalogs",
    "estimate",
    "load_catalogs",
    "price_usage",
]
