"""The server's log formats and its request log (``api/logs.py``)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from starlette.types import Message, Receive, Scope, Send

from api import logwriter
from api.deps import CALLER
from api.logs import ACCESS, NOTICES, AccessLog, JsonLines, TextFormatter, config
from api.logwriter import Stderr
from api.metrics import Metrics
from api.requestids import SCOPE_KEY
from ledger.keys import Principal
from pricing.catalog import CatalogSet, load_catalogs
from tests import factories as f

AT = datetime(2026, 12, 7, 12, 0, 0, 123_456, tzinfo=UTC).timestamp()


def _record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    record = logging.getLogger("creditledger.api").makeRecord(
        "creditledger.api", logging.WARNING, __file__, 1, message, args, None, extra=extra
    )
    record.created = AT
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            record.exc_info = sys.exc_info()
    return record


def test_a_text_line_has_the_utc_time_to_the_millisecond_the_level_and_the_logger() -> None:
    line = TextFormatter().format(_record("database unavailable (%s)", "request r1"))
    assert line == (
        "2026-12-07T12:00:00.123Z WARNING creditledger.api: database unavailable (request r1)"
    )


def test_the_millisecond_is_the_instants_own_from_the_first_to_the_last() -> None:
    for micro, said in ((0, ".000Z"), (500_000, ".500Z"), (999_999, ".999Z")):
        record = _record("x")
        record.created = datetime(2026, 12, 7, 12, 0, 0, micro, tzinfo=UTC).timestamp()
        assert TextFormatter().format(record).startswith(f"2026-12-07T12:00:00{said} "), micro


def test_a_text_line_escapes_the_messages_line_breaks_but_keeps_a_tracebacks() -> None:
    """One event, one line: a message cannot forge a second one (a path's decoded %0A)."""
    line = TextFormatter().format(_record("bad path %s", "/a\nb\r\x1b[31m\x85\u2028é"))
    assert line.endswith("bad path /a\\x0ab\\x0d\\x1b[31m\\x85\\u2028é")
    assert "\n" not in line
    lines = TextFormatter().format(_record("failed\nhere", exc=True)).splitlines()
    assert lines[0].endswith("creditledger.api: failed\\x0ahere")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


def test_a_json_line_is_one_object_with_the_records_fields() -> None:
    text = JsonLines().format(
        _record(
            "request %s: done\u2028",
            "r1",
            exc=True,
            request_id="r1",
            status=402,
            color_message="\x1b[1mdone\x1b[0m",  # uvicorn's, with terminal colours
        )
    )
    assert text.isascii()
    assert len(text.splitlines()) == 1
    line = json.loads(text)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["time"] == "2026-12-07T12:00:00.123Z"
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "creditledger.api",
        "request r1: done\u2028",
    )
    assert (line["request_id"], line["status"]) == ("r1", 402)
    assert "color_message" not in line
    assert line["exc_info"].splitlines()[-1] == "RuntimeError: boom"


def test_the_config_logs_from_the_level_but_the_notices_and_requests_always() -> None:
    made = config("json", "error")
    assert made["formatters"]["line"]["()"] is JsonLines
    assert made["root"]["level"] == "ERROR"
    assert made["loggers"]["uvicorn.error"]["level"] == "ERROR"
    assert made["loggers"][NOTICES]["level"] == "INFO"
    assert made["loggers"][ACCESS]["level"] == "INFO"
    # uvicorn's own access log is replaced by ACCESS.
    assert made["loggers"]["uvicorn.access"] == {"handlers": [], "propagate": False}
    assert config("text", "info")["formatters"]["line"]["()"] is TextFormatter


def _scope(path: bytes, query: bytes = b"") -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": unquote(path.decode()),  # as the server decodes it
        "raw_path": path,
        "query_string": query,
        "headers": [],
        "client": ("10.0.0.7", 5123),
        SCOPE_KEY: "r-42",
    }


def _through(app: Any, scope: Scope) -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    asyncio.run(AccessLog(app)(scope, receive, send))


def test_a_request_line_names_its_id_outcome_key_and_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[CALLER] = Principal("k1", "service")  # as api.deps.admit keeps it
        await asyncio.sleep(0.02)  # the request takes 20 ms at least
        await send({"type": "http.response.start", "status": 402, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with caplog.at_level(logging.INFO, logger=ACCESS):
        began = time.perf_counter()
        _through(app, _scope(b"/v1/accounts/a%2Fb", b"limit=5"))
        took_ms = (time.perf_counter() - began) * 1000
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("request r-42: GET /v1/accounts/a%2Fb?limit=5 -> 402 in ")
    assert message.endswith(" ms (key:k1, client 10.0.0.7:5123)")
    fields = {k: getattr(record, k) for k in ("request_id", "path", "query", "status", "actor")}
    assert fields == {
        "request_id": "r-42",
        "path": "/v1/accounts/a%2Fb",
        "query": "limit=5",
        "status": 402,
        "actor": "key:k1",
    }
    assert 19 <= getattr(record, "duration_ms", -1) <= round(took_ms, 1)
    assert getattr(record, "replayed", None) is False


def test_a_replayed_answer_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """An answer given back for an idempotency key already answered (nothing was done
    again): its line says ``replayed``, so a gateway's retries are told from new requests."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    with caplog.at_level(logging.INFO, logger=ACCESS):
        _through(app, _scope(b"/v1/authorizations"))
    [record] = caplog.records
    assert "/v1/authorizations -> 201 replayed in " in record.getMessage()
    assert getattr(record, "replayed", None) is True


def test_a_request_that_failed_unanswered_is_logged_and_the_error_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("dropped")

    with caplog.at_level(logging.INFO, logger=ACCESS), pytest.raises(RuntimeError):
        _through(app, _scope(b"/healthz"))
    [record] = caplog.records
    assert getattr(record, "status", "absent") is None
    assert getattr(record, "actor", "absent") is None
    assert "/healthz -> no answer in " in record.getMessage()
    assert "(anonymous, client 10.0.0.7:5123)" in record.getMessage()


def _start_line(
    caplog: pytest.LogCaptureFixture, url: str, now: datetime, catalogs: CatalogSet
) -> str:
    """The line ``serve`` logs as it starts, for a ledger at ``url`` whose clock reads
    ``now`` (only what the line reads of a ledger is there)."""
    from types import SimpleNamespace

    from api.cli import _log_start

    parsed = sa.make_url(url)
    ledger: Any = SimpleNamespace(
        db=SimpleNamespace(engine=SimpleNamespace(url=parsed), is_sqlite=url.startswith("sqlite")),
        clock=lambda: now,
        catalogs=catalogs,
    )
    with caplog.at_level(logging.INFO, logger="creditledger.server"):
        _log_start(ledger)
    [line] = caplog.records
    return line.getMessage()


def test_the_start_line_names_a_postgresql_ledger_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "postgresql+psycopg://ledger:s3cr%40t@db.internal:5432/billing"
    message = _start_line(caplog, url, datetime(2026, 12, 7, tzinfo=UTC), load_catalogs())
    assert message.startswith(
        "serving the ledger in PostgreSQL postgresql+psycopg://ledger:***@db.internal:5432/billing;"
    )
    assert "s3cr" not in message
    assert message.endswith("veo3 seed-003")


@pytest.mark.parametrize(
    ("now", "named"),
    [
        (
            datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            "acme (none yet: the first from 2026-01-01T00:00:00Z)",
        ),
        (datetime(2026, 1, 1, tzinfo=UTC), "acme v1"),  # in force from its very instant
    ],
)
def test_the_start_line_says_when_a_catalog_has_no_version_in_force_yet(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, now: datetime, named: str
) -> None:
    """An operator's catalog whose first version starts later is named with that start,
    not a version; from that instant on, by its version."""
    f.write_catalog(tmp_path, "acme.toml", f.MINIMAL_CATALOG.format(limits="", price=5))
    message = _start_line(caplog, f"sqlite:///{tmp_path}/l.db", now, load_catalogs([tmp_path]))
    listed = message.split("catalog versions in force: ")[1].split(", ")
    assert named in listed
    assert "veo3 seed-003" in listed  # the seeds' catalogs are in force either way


class _Gate(io.StringIO):
    """A stderr whose writes wait until it is opened: a pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()

    def write(self, text: str) -> int:
        assert self.opened.wait(30), "never opened"
        return super().write(text)


def _gated(capacity: int) -> tuple[logging.Logger, Stderr, _Gate]:
    gate = _Gate()
    handler = Stderr(capacity, stream=gate)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    log = logging.Logger("gw")
    log.addHandler(handler)
    return log, handler, gate


def _taken(handler: Stderr) -> None:
    """Until the writer took every line handed over (and waits on the stream)."""
    deadline = time.monotonic() + 10
    while handler._lines.qsize():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_lines_wait_for_a_stalled_stderr_in_order_and_past_the_held_ones_are_counted() -> None:
    log, handler, gate = _gated(3)
    log.warning("first")  # the writer takes it and waits on the stream
    _taken(handler)
    for n in range(10):  # none of these waits: three are held, seven dropped
        log.warning("line %d", n)
    gate.opened.set()
    handler.flush()
    log.warning("after")  # the count goes where the lines were lost
    handler.close()
    assert gate.getvalue().splitlines() == [
        "gw WARNING first",
        "gw WARNING line 0",
        "gw WARNING line 1",
        "gw WARNING line 2",
        "creditledger.log WARNING 7 log line(s) dropped here: stderr did not keep up",
        "gw WARNING after",
    ]
    assert not handler._writer.is_alive()


def test_a_json_log_counts_its_dropped_lines_as_a_field() -> None:
    log, handler, gate = _gated(1)
    handler.setFormatter(JsonLines())
    log.warning("first")
    _taken(handler)
    for _ in range(3):
        log.warning("more")  # one held, two dropped
    gate.opened.set()
    handler.flush()
    log.warning("last")
    handler.close()
    lines = [json.loads(line) for line in gate.getvalue().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("gw", "first"),
        ("gw", "more"),
        ("creditledger.log", "2 log line(s) dropped here: stderr did not keep up"),
        ("gw", "last"),
    ]
    assert (lines[2]["level"], lines[2]["lines_dropped"]) == ("WARNING", 2)


def test_exiting_writes_what_waits_but_does_not_wait_for_ever_on_a_stalled_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log, handler, gate = _gated(5)
    for n in range(3):
        log.warning("line %d", n)
    threading.Timer(0.2, gate.opened.set).start()
    handler.close()  # waits for the stream to take them: all three are written
    assert gate.getvalue().splitlines() == [
        "gw WARNING line 0",
        "gw WARNING line 1",
        "gw WARNING line 2",
    ]

    monkeypatch.setattr(logwriter, "DRAIN_SECONDS", 0.2)
    log, handler, gate = _gated(5)
    log.warning("stuck")
    started = time.monotonic()
    handler.close()  # the stream never takes it: exit goes on after DRAIN_SECONDS
    assert time.monotonic() - started < 10
    gate.opened.set()


def test_exiting_does_not_wait_for_ever_on_lines_logged_while_it_drained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread's lines fill the queue between the drain and the stop: the stop
    finds no room, and exit goes on rather than waiting for room that never comes."""
    monkeypatch.setattr(logwriter, "DRAIN_SECONDS", 0.2)
    log, handler, gate = _gated(2)
    log.warning("first")
    _taken(handler)  # the writer waits on the stream

    def drained_then_filled(_timeout: float) -> bool:
        log.warning("late 1")
        log.warning("late 2")
        return True

    monkeypatch.setattr(handler, "_drained", drained_then_filled)
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 10
    gate.opened.set()


def test_the_metrics_count_the_lines_waiting_and_dropped() -> None:
    """Where the log's reader stalled the log cannot say so in time: ``/metrics`` does."""
    log, handler, gate = _gated(2)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        log.warning("first")
        _taken(handler)
        for _ in range(5):
            log.warning("more")  # two wait, three are dropped
        scraped = generate_latest(Metrics().registry).decode()
        assert "\ncreditledger_log_lines_waiting 3.0\n" in scraped, scraped  # and "first"
        assert "\ncreditledger_log_lines_dropped_total 3.0\n" in scraped, scraped
    finally:
        root.removeHandler(handler)
        gate.opened.set()
        handler.close()
    scraped = generate_latest(Metrics().registry).decode()
    assert "\ncreditledger_log_lines_waiting 0.0\n" in scraped, scraped  # no such handler
