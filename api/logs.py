"""The server's log: one line per event on stderr, each with its UTC time, level and
logger, as text (for a terminal, ``journalctl``) or as JSON objects (for a log pipeline).

``configure`` sets up Python's logging for ``creditledger serve``: the ledger's own
loggers (``creditledger.*``), uvicorn's and the libraries' go through one handler and one
format. ``AccessLog`` is the request log (``serve --access-log``, or
``CREDITLEDGER_ACCESS_LOG``): a line per request once it is answered, naming its request
id (``api.requestids``), method, path and query, status, duration, the key that made it
and the client, so that a request a gateway reports by its id is found with its outcome.
As JSON these are fields of the line (``request_id``, ``method``, ``path``, ``query``,
``status``, ``replayed``, ``duration_ms``, ``actor``, ``client``), as the first four are
on the error lines of ``api.errors`` about a request.
"""

from __future__ import annotations

import logging
import logging.config
import queue
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Scope

from api.deps import CALLER, REPLAYED_HEADER, actor_of
from api.requestids import Observed, log_fields
from ledger.settings import LogFormat, LogLevel

_REPLAYED = REPLAYED_HEADER.lower().encode("latin-1")

#: The request log's logger.
ACCESS = "creditledger.access"
#: The start-up notices of ``serve`` (the admin key it made, holds it cannot price): shown
#: at every level, since the key is shown this once.
NOTICES = "creditledger.serve"

#: What could break a line or rewrite a terminal's: C0 and C1 controls, DEL, and Unicode's
#: line and paragraph separators (which ``str.splitlines`` and some viewers break at).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def utc_time(record: logging.LogRecord) -> str:
    """The record's instant as ISO 8601 in UTC, to the millisecond: ``...T12:00:00.123Z``."""
    instant = datetime.fromtimestamp(record.created, UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x0a``): a path's decoded
    ``%0A`` cannot start a forged line of a text log."""
    return _CONTROL.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    """``2026-12-07T12:00:00.123Z WARNING creditledger.api: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_time(record)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        # One event, one line: a message's own line breaks are escaped (a traceback,
        # which the formatter adds after it, keeps its lines).
        return printable(super().formatMessage(record))


class JsonLines(JsonFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the
    record's fields (``extra``) and a traceback as ``exc_info``."""

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn's records carry their message again with terminal colours.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            # ASCII: U+2028 and its like, valid in a JSON string, break lines for some
            # readers of a log; escaped, no line is ever split.
            json_ensure_ascii=True,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_time(record)


#: The lines held for stderr while it does not keep up (some 1-4 MB): past them, new
#: lines are dropped, and counted, rather than a request waiting for a log reader.
HELD_LINES = 10_000
#: How long exiting waits for the held lines to be written.
DRAIN_SECONDS = 5.0


class Stderr(logging.Handler):
    """Lines to stderr, written by a thread of their own.

    A request formats its line and hands it over; it never waits on the write. Where
    stderr is a pipe its reader stopped reading (a log shipper that stalled, the disk
    behind it full), a write blocks once the pipe is full: written on the event loop's
    thread, that stopped every request with it. Up to ``capacity`` lines wait here, in
    order; past that, new lines are dropped, and where they were a WARNING line says how
    many (``creditledger.log``). At exit (``logging.shutdown``) the lines waiting are
    written, for up to ``DRAIN_SECONDS``."""

    def __init__(self, capacity: int = HELD_LINES, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = sys.stderr if stream is None else stream
        # A line, with the count of the lines dropped just before it; or None: stop.
        self._lines: queue.Queue[tuple[int, str] | None] = queue.Queue(capacity)
        self._dropped = 0  # since the last count handed over; emit() holds self.lock
        self._writer = threading.Thread(
            target=self._write_lines, name="creditledger-log", daemon=True
        )
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._lines.put_nowait((self._dropped, line))
        except queue.Full:
            self._dropped += 1
        else:
            self._dropped = 0

    def _write_lines(self) -> None:
        while True:
            item = self._lines.get()
            taken = 1
            try:
                if item is None:
                    return
                self._write(item)
                # What else waits, then one flush for them all.
                while True:
                    try:
                        item = self._lines.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    if item is None:
                        self.stream.flush()
                        return
                    self._write(item)
                self.stream.flush()
            except Exception:  # a closed stderr: nowhere left to say so
                pass
            finally:
                for _ in range(taken):
                    self._lines.task_done()

    def _write(self, item: tuple[int, str]) -> None:
        dropped, line = item
        if dropped:
            notice = logging.makeLogRecord(
                {
                    "name": "creditledger.log",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": "%d log line(s) dropped here: stderr did not keep up",
                    "args": (dropped,),
                    "lines_dropped": dropped,
                }
            )
            self.stream.write(self.format(notice) + "\n")
        self.stream.write(line + "\n")

    def flush(self) -> None:
        """Wait, up to ``DRAIN_SECONDS``, until the lines handed over are written."""
        self._drained(DRAIN_SECONDS)

    def _drained(self, timeout: float) -> bool:
        """Whether the lines handed over were written within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lines.all_tasks_done:
            while self._lines.unfinished_tasks and self._writer.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lines.all_tasks_done.wait(left)
        return True

    def close(self) -> None:
        """Write what waits (for up to ``DRAIN_SECONDS``), then stop the writer; where
        stderr does not take it, the writer (a daemon thread) ends with the process."""
        if self._writer.is_alive() and self._drained(DRAIN_SECONDS):
            self._lines.put(None)  # drained: there is room
            self._writer.join(DRAIN_SECONDS)
        super().close()


def flush() -> None:
    """Write the log's waiting lines before something else writes to stderr directly
    (a command's error), so that they come out in the order they happened."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def config(log_format: LogFormat, level: LogLevel) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a serving process."""
    formatter = TextFormatter if log_format == "text" else JsonLines
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": formatter}},
        "handlers": {"stderr": {"()": Stderr, "formatter": "line"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own lines (started, stopped, a protocol error) go through the
            # root's handler; its access log is replaced by ACCESS.
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            # Alembic's notes on each start (its plugins, its dialect), as before: unlogged.
            "alembic": {"level": "WARNING"},
            NOTICES: {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            ACCESS: {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }


def configure(log_format: LogFormat, level: LogLevel) -> None:
    """Send this process's log to stderr in ``log_format`` from ``level`` up."""
    logging.config.dictConfig(config(log_format, level))


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


class AccessLog(Observed):
    """A line per HTTP request on ``ACCESS`` once it is answered (or failed): ``request
    <id>: POST /v1/authorizations -> 402 in 3.1 ms (key:<id>, client 127.0.0.1:40458)``.
    Inside ``RequestIds``, so the id is the one the answer carries."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.log = logging.getLogger(ACCESS)

    def answered(self, scope: Scope, answer: Message | None, seconds: float) -> None:
        caller = scope.get(CALLER)
        actor = actor_of(caller) if caller is not None else None
        status = None if answer is None else answer["status"]
        # An answer given back for an Idempotency-Key already answered: nothing was done.
        replayed = answer is not None and (_REPLAYED, b"true") in answer.get("headers", ())
        fields = {
            **log_fields(scope),
            "status": status,
            "replayed": replayed,
            "duration_ms": round(seconds * 1000, 1),
            "actor": actor,
            "client": _client(scope),
        }
        query = fields["query"]
        self.log.info(
            "request %s: %s %s%s -> %s%s in %.1f ms (%s, client %s)",
            fields["request_id"],
            fields["method"],
            fields["path"],
            f"?{query}" if query else "",
            "no answer" if status is None else status,
            " replayed" if replayed else "",
            fields["duration_ms"],
            actor or "anonymous",
            fields["client"] or "unknown",
            extra=fields,
        )
