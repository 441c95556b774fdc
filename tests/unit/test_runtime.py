"""The serving process's garbage-collector tuning (``api/runtime.py``) and its use by
``creditledger serve``; what the process imports before it serves."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.runtime import tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tuning_freezes_the_heap_and_spaces_out_young_collections(restored_gc: None) -> None:
    _, middle, old = gc.get_threshold()
    tune_gc(50_000)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (50_000, middle, old)
    assert gc.isenabled()


def test_threshold_zero_keeps_pythons_own(restored_gc: None) -> None:
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0


def test_cyclic_garbage_made_after_tuning_is_still_collected(restored_gc: None) -> None:
    tune_gc(50_000)

    class Node:
        other: Any = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_serve_tunes_the_collector_with_the_configured_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_gc: None
) -> None:
    import uvicorn

    from api import cli
    from api import logs as api_logs
    from ledger.settings import get_settings

    monkeypatch.setenv("CREDITLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    monkeypatch.setenv("CREDITLEDGER_ADMIN_KEY", "unit-test-admin-key-0123456789abcdef")
    monkeypatch.setenv("CREDITLEDGER_GC_THRESHOLD", "12345")
    seen: dict[str, Any] = {}

    def started(server: uvicorn.Server, sockets: Any = None) -> None:
        # The moment the server would start serving: the collector is tuned by then.
        seen.update(
            threshold=gc.get_threshold()[0], frozen=gc.get_freeze_count(), port=server.config.port
        )
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", started)
    # Not this test process's logging (tests/e2e/test_logs.py runs the real one).
    logs: list[tuple[str, str]] = []
    monkeypatch.setattr(api_logs, "configure", lambda *how: logs.append(how))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli.app, ["serve", "--port", "8123"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert seen["threshold"] == 12345
    assert seen["frozen"] > 0
    assert seen["port"] == 8123
    assert logs == [("text", "info")]


def test_an_app_that_runs_the_background_jobs_has_imported_the_report_workers_modules(
    tmp_path: Path,
) -> None:
    """Built as ``serve`` builds it, before it serves: the modules of the report worker's
    rounds (pandas among them) are loaded, not imported by its first round while requests
    are served. An app without the background jobs does not load them."""
    code = f"""
import json, sys
from api.main import app_from_settings
from ledger.settings import Settings
from reports.jobs import WORKER_MODULES
loaded = lambda: [m for m in (*WORKER_MODULES, "pandas") if m in sys.modules]
settings = Settings(database_url="sqlite:///{tmp_path / "app.db"}")
app_from_settings(settings, sweep=False)
without = loaded()
app_from_settings(settings, sweep=True)
print(json.dumps([without, loaded()]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITLEDGER_")}
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    without, with_jobs = json.loads(ran.stdout.strip().splitlines()[-1])
    assert without == []
    assert with_jobs == ["reports.queries", "reports.render", "reports.statement", "pandas"]
