"""The test harness's ``creditledger serve`` (``tests.e2e.served``) under parallel workers."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e import served as served_module
from tests.e2e.served import Served


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(
    tmp_path: Path,
    serve: Callable[[dict[str, str]], Served],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parallel workers pick free ports independently: another process may bind the
    port picked for a server before it starts. The server then starts on a new port, and
    the admin key its first, failed start generated and printed is not lost."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports: Iterator[int] = iter([busy, served_module.free_port()])
        monkeypatch.setattr(served_module, "free_port", lambda: next(ports))
        server = serve({"CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"})
        server.start()
        assert server.starts == 2
        assert not server.url.endswith(f":{busy}")
        assert server.admin is not None
        auth = {"Authorization": f"Bearer {server.admin}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/v1/keys").status_code == 200
