"""The throwaway PostgreSQL clusters the tests and benchmarks start (``tests.pg``)."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.benchmarks.proc import parent, tree_cpu
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


def test_the_server_process_is_the_one_whose_tree_does_the_work(
    request: pytest.FixtureRequest,
) -> None:
    """``pid()`` names the postmaster: a connection's backend is below it, so the CPU a
    query burns shows in the tree's time (what the ledger benchmark reports)."""
    server = postgres_or_skip(request)  # the session's server
    pid = server.pid()
    dsn = server.url().replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        assert parent(backend[0]) == pid
        before = tree_cpu(pid)
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)").fetchone()
        assert tree_cpu(pid) - before >= 0.05
