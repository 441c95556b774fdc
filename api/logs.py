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
import re
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Scope

from api.deps import CALLER, REPLAYED_HEADER, actor_of
from api.logwriter import Stderr
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
