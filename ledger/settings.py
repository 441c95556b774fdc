"""Settings: one object, read once from the environment (prefix ``CREDITLEDGER_``)."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ledger.db import (
    POSTGRESQL_SCHEMES,
    PREPARE_THRESHOLD,
    THREADS,
    Timeouts,
    prepare_threshold,
)

#: The fewest characters ``CREDITLEDGER_ADMIN_KEY`` may have: the key the server makes has
#: 64 (its secret 256 random bits), and this many random ones are past guessing.
ADMIN_KEY_MIN_LENGTH = 32
#: What an HTTP header's token may hold: printable ASCII, no space.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")

#: How ``creditledger serve`` writes its log (``api/logs.py``): text lines or JSON objects.
LogFormat = Literal["text", "json"]
#: The least severe log lines ``creditledger serve`` writes.
LogLevel = Literal["debug", "info", "warning", "error"]

#: The database URLs the ledger takes, for the message refusing another.
_DATABASES = (
    "sqlite:///path/to/creditledger.db (a file) or "
    "postgresql+psycopg://user:password@host:5432/database"
)


class Settings(BaseSettings):
    """Everything the operator configures. Each field is ``CREDITLEDGER_<NAME>``."""

    # A refused value is never repeated in the error: a database URL may hold a password.
    model_config = SettingsConfigDict(
        env_prefix="CREDITLEDGER_", extra="ignore", hide_input_in_errors=True
    )

    #: The system of record. SQLite (a file, WAL) by default; ``postgresql+psycopg://...``
    #: for production.
    database_url: str = "sqlite:///./creditledger.db"

    @field_validator("database_url")
    @classmethod
    def _a_ledger_database(cls, url: str) -> str:
        """A URL of the two databases the ledger runs on: a SQLite file, or PostgreSQL
        through psycopg 3. Said before anything connects, without the URL itself (it may
        hold a password)."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(f"not a database URL: {_DATABASES}") from None
        except ValueError:
            # A port that is no number, as where a password holds an unencoded "@": the
            # parser's own message would quote the text after it, a piece of the password.
            raise ValueError(
                "not a database URL: its port is no whole number (in a password, write "
                f"@ as %40 and : as %3A): {_DATABASES}"
            ) from None
        backend, _, driver = parsed.drivername.partition("+")
        if backend == "sqlite" and driver in ("", "pysqlite"):
            name = parsed.database or ""
            if name in ("", ":memory:") or parsed.query.get("mode") == "memory":
                # Each connection would have a database of its own, and every credit
                # would be gone when the process ends.
                raise ValueError(
                    "an in-memory SQLite database cannot hold a ledger: name a file "
                    "(sqlite:///path/to/creditledger.db)"
                )
        elif backend not in POSTGRESQL_SCHEMES or driver not in ("", "psycopg"):
            raise ValueError(f"{parsed.drivername} is not a database of the ledger: {_DATABASES}")
        else:
            threshold = parsed.query.get(PREPARE_THRESHOLD)
            if threshold is not None:
                prepare_threshold(threshold)  # ValueError: what it may be
        return url

    #: A directory of operator catalogs (``*.toml``): new catalogs, or new versions of the
    #: shipped ones (for example prices for an operation the seeds publish none for).
    catalog_dir: Path | None = None

    #: How long an authorization holds credits before the sweeper releases it.
    hold_ttl_seconds: int = Field(default=900, gt=0, le=7 * 24 * 3600)

    #: How long an idempotency key and the response it replays are kept, in hours (30
    #: days by default): the sweeper deletes older ones. A request retried with a key
    #: older than this is a new request. 0: keep every key for ever.
    idempotency_retention_hours: float = Field(default=30 * 24, ge=0, le=10 * 365 * 24)

    @field_validator("idempotency_retention_hours")
    @classmethod
    def _an_hour_or_more(cls, hours: float) -> float:
        if 0 < hours < 1:
            raise ValueError("keep idempotency keys at least 1 hour (or 0: for ever)")
        return hours

    #: The admin API key. Unset: the server's first start creates one and prints it once.
    admin_key: SecretStr | None = None

    @field_validator("admin_key")
    @classmethod
    def _a_key_no_one_guesses(cls, key: SecretStr | None) -> SecretStr | None:
        """Whoever sends it may do anything (mint credits, make keys), so a short one is
        refused, as one no HTTP header can carry. Empty is unset, as it always was."""
        if key is None or not key.get_secret_value():
            return None
        text = key.get_secret_value()
        if not _HEADER_TOKEN.fullmatch(text):
            raise ValueError(
                "use printable ASCII without spaces: the key is sent in the Authorization header"
            )
        if len(text) < ADMIN_KEY_MIN_LENGTH:
            raise ValueError(
                f"an admin key needs at least {ADMIN_KEY_MIN_LENGTH} characters (this one has "
                f"{len(text)}): make one with python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))', or leave it unset to have the server make "
                "one at its first start"
            )
        return key

    #: Seconds between two runs of the sweepers in ``creditledger serve`` (hold expiry,
    #: grant expiry, monthly allocations).
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=3600)

    #: The largest request body the HTTP API reads, in bytes (larger: 413).
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)

    #: Seconds between two polls of the report worker in ``creditledger serve``.
    report_poll_seconds: float = Field(default=2.0, gt=0, le=3600)

    #: A running report job whose worker has not reported progress for this long is taken
    #: to be interrupted (a crash) and is run again.
    report_lease_seconds: float = Field(default=120.0, ge=1, le=24 * 3600)

    #: A month's statement is made from this long after the month's end, not at once: a
    #: write stamped with the month's last instants may still be committing (waiting for
    #: a lock, on a server whose clock is a little behind), and a statement made before it
    #: commits would not count it, nor reconcile with the next month's opening.
    report_close_delay_seconds: float = Field(default=300.0, ge=0, le=24 * 3600)

    #: ``creditledger serve``: net allocations between two young-generation passes of
    #: Python's garbage collector (Python's default is 700; 0 keeps it). The start-up heap
    #: is frozen either way. See ``api/runtime.py``.
    gc_threshold: int = Field(default=50_000, ge=0, le=10_000_000)

    #: The longest a transaction waits for a lock another holds (PostgreSQL: a row lock,
    #: such as a wallet's; SQLite: the database's write lock). Then the request fails
    #: with 503 ``database_busy`` and changes nothing; it can be retried as it was.
    lock_timeout_seconds: float = Field(default=Timeouts.lock, gt=0, le=3600)

    #: PostgreSQL: the longest making a connection may take (at least 2 s, libpq's rule).
    connect_timeout_seconds: int = Field(default=Timeouts.connect, ge=1, le=3600)

    #: ``creditledger serve`` and ``migrate``: how long to wait at the start for a
    #: PostgreSQL server that does not take connections yet (starting up, recovering, or
    #: not up yet beside a container started at the same time), trying again every few
    #: seconds. 0: fail at once. (A SQLite file is opened at once.)
    startup_wait_seconds: float = Field(default=60.0, ge=0, le=24 * 3600)

    #: PostgreSQL: the server ends a session that stays idle inside a transaction this
    #: long (a client that died or hung mid-transaction), releasing its locks. 0: never.
    idle_in_transaction_timeout_seconds: float = Field(
        default=Timeouts.idle_in_transaction, ge=0, le=24 * 3600
    )

    #: ``creditledger serve``: how long an idle keep-alive connection stays open. Longer
    #: than the idle expiry of clients' connection pools (httpx's is 5 s, a load
    #: balancer's often 60 s): a server that closes first races the client's next
    #: request on that connection, which then fails unanswered.
    keep_alive_seconds: int = Field(default=75, ge=1, le=3600)

    #: ``creditledger serve``: how long a key found valid is remembered, so that the
    #: requests made with it meanwhile do not read the database to authenticate. A key
    #: revoked through this server is refused at once; one revoked by another process (the
    #: CLI, another replica) within this long. 0: every request reads its key.
    key_cache_seconds: float = Field(default=1.0, ge=0, le=3600)

    #: ``creditledger serve``: the threads that run the ledger work of the HTTP API's
    #: gateway calls and reads. On PostgreSQL, the most transactions the server runs at
    #: once; more help where the database is far (each waits longer on the network), few
    #: spare the hand-offs of Python's interpreter lock. On SQLite, the read threads (its
    #: writes have one thread of their own).
    database_threads: int = Field(default=THREADS, ge=1, le=256)

    #: ``creditledger serve``: its log on stderr, one line per event with its UTC time,
    #: level and logger: ``text``, or ``json`` (an object per line, for a log pipeline).
    log_format: LogFormat = "text"

    #: ``creditledger serve``: the least severe lines it logs. Its start-up notices (the
    #: admin key it made) are shown at every level.
    log_level: LogLevel = "info"

    #: ``creditledger serve``: a line per request once it is answered (its request id,
    #: method, target, status, duration, key and client); ``serve --access-log`` too.
    access_log: bool = False

    def timeouts(self) -> Timeouts:
        """The database's waits, as configured."""
        return Timeouts(
            lock=self.lock_timeout_seconds,
            connect=self.connect_timeout_seconds,
            idle_in_transaction=self.idle_in_transaction_timeout_seconds,
        )

    def idempotency_retention(self) -> timedelta | None:
        """How long idempotency keys are kept (None: for ever)."""
        hours = self.idempotency_retention_hours
        return timedelta(hours=hours) if hours else None

    def catalog_dirs(self) -> list[Path]:
        """The operator catalog directories to load after the shipped catalogs."""
        return [self.catalog_dir] if self.catalog_dir is not None else []


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
