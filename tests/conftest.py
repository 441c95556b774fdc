"""Shared test configuration: hypothesis profiles and the catalog fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from pricing import CatalogSet, default_catalogs

# CI runs more examples, derandomized so a red run is reproducible from its log.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def catalogs() -> CatalogSet:
    """The shipped catalogs."""
    return default_catalogs()
