"""The throwaway PostgreSQL clusters the tests and benchmarks start (``tests.pg``)."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.conftest import postgres_or_skip
from tests.pg import TempPostgres, find_bin


def test_a_cluster_whose_port_was_taken_meanwhile_starts_on_another(
    request: pytest.FixtureRequest,
) -> None:
    """Parallel workers pick free ports independently: one may bind the port another
    picked before that one's server starts. The later server moves to a new port."""
    postgres_or_skip(request)
    bindir = find_bin()
    assert bindir is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = TempPostgres(bindir)
        server.port = taken.getsockname()[1]
        server.start()
        try:
            assert server.port != taken.getsockname()[1]
            dsn = server.url().replace("postgresql+psycopg", "postgresql")
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.stop()
