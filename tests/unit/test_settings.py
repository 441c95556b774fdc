"""The settings' own rules, each at its edges: the value at a bound is taken, one step
past it refused naming the setting; what the settings hand on is what was configured.
(The CLI's and the server's refusal of a bad setting, by its variable's name, is tested
through them: ``tests/e2e/test_cli.py``.)"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ledger.db import Timeouts
from ledger.services import HOLD_LIFETIME, ledger_from_settings
from ledger.settings import Settings

WEEK = int(HOLD_LIFETIME.total_seconds())


@pytest.fixture(autouse=True)
def _no_configured_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults are the settings' own, not what this shell configured."""
    for name in list(os.environ):
        if name.startswith("CREDITLEDGER_"):
            monkeypatch.delenv(name)


def _refused(**values: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    return info.value


@pytest.mark.parametrize(
    ("name", "taken", "refused"),
    [
        # A hold lives a week at most (the ledger's HOLD_LIFETIME).
        ("hold_ttl_seconds", [1, WEEK], [0, WEEK + 1]),
        ("idempotency_retention_hours", [0, 1, 10 * 365 * 24], [0.5, -1, 10 * 365 * 24 + 1]),
        ("sweep_interval_seconds", [0.001, 3600], [0, 3601]),
        ("max_body_bytes", [1024, 64 << 20], [1023, (64 << 20) + 1]),
        ("report_poll_seconds", [0.001, 3600], [0, 3601]),
        ("report_lease_seconds", [1, 24 * 3600], [0.5, 24 * 3600 + 1]),
        ("report_close_delay_seconds", [0, 24 * 3600], [-1, 24 * 3600 + 1]),
        ("gc_threshold", [0, 10_000_000], [-1, 10_000_001]),
        ("lock_timeout_seconds", [0.001, 3600], [0, 3601]),
        ("connect_timeout_seconds", [1, 3600], [0, 3601]),
        ("startup_wait_seconds", [0, 24 * 3600], [-1, 24 * 3600 + 1]),
        ("idle_in_transaction_timeout_seconds", [0, 24 * 3600], [-1, 24 * 3600 + 1]),
        ("keep_alive_seconds", [1, 3600], [0, 3601]),
        ("database_threads", [1, 256], [0, 257]),
        ("key_cache_seconds", [0, 0.5, 3600], [-0.001, 3601]),
    ],
)
def test_each_bound_takes_its_edge_and_refuses_one_step_past_it(
    name: str, taken: list[Any], refused: list[Any]
) -> None:
    for value in taken:
        settings = Settings(**{name: value})
        assert getattr(settings, name) == value
        # What the settings take, the database takes too (a wait of 1 s to connect, ...).
        settings.timeouts()
    for value in refused:
        errors = _refused(**{name: value}).errors()
        assert [e["loc"] for e in errors] == [(name,)], value


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///ledger.db",
        "sqlite+pysqlite:////var/lib/creditledger/ledger.db",
        "postgresql://ledger@db/ledger",
        "postgres://ledger:s3cret@db:5432/ledger",  # as libpq and many hosts write it
        "postgres+psycopg://ledger@db/ledger",
        "postgresql+psycopg://ledger:s3cret@db:5432/ledger",
        # Behind a pooler that shares server sessions: no prepared statement.
        "postgresql+psycopg://ledger@pgbouncer:6432/ledger?prepare_threshold=none",
        "postgresql+psycopg://ledger@db/ledger?prepare_threshold=NONE",
        "postgresql+psycopg://ledger@db/ledger?prepare_threshold=0",
        "postgresql+psycopg://ledger@db/ledger?prepare_threshold=999999999",
    ],
)
def test_a_url_of_the_ledgers_databases_is_taken(url: str) -> None:
    assert Settings(database_url=url).database_url == url


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ledger.db", "not a database URL"),
        ("ledger:s3cret@db/ledger", "not a database URL"),
        # An unencoded "@" in the password: the rest of it is read as the port.
        ("postgresql+psycopg://ledger:s3cret@db:s3cret@db/ledger", "port is no whole number"),
        ("postgresql://ledger:pw@db:s3cret/ledger", "write @ as %40"),
        ("sqlite+aiosqlite:///ledger.db", "sqlite+aiosqlite is not a database of the ledger"),
        ("postgresql+asyncpg://ledger:s3cret@db/ledger", "postgresql+asyncpg is not"),
        ("postgres+psycopg2://ledger:s3cret@db/ledger", "postgres+psycopg2 is not"),
        ("mysql://ledger:s3cret@db/ledger", "mysql is not"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///file:ledger?mode=memory&uri=true", "in-memory"),
        ("postgresql://ledger:s3cret@db/ledger?prepare_threshold=-1", "prepare_threshold must"),
        ("postgresql://ledger:s3cret@db/ledger?prepare_threshold=off", "or none"),
        ("postgresql://ledger:s3cret@db/ledger?prepare_threshold=1e3", "whole number"),
        ("postgresql://ledger:s3cret@db/ledger?prepare_threshold=\uff15", "whole number"),
        ("postgresql://ledger:s3cret@db/ledger?prepare_threshold=1000000000", "0 to 999999999"),
        (
            "postgresql://ledger:s3cret@db/ledger?prepare_threshold=none&prepare_threshold=5",
            "prepare_threshold is given more than once",
        ),
    ],
)
def test_another_database_or_driver_or_sqlite_in_memory_is_refused_unsaid(
    url: str, said: str
) -> None:
    """Refused before anything connects, and the error as written never holds the URL
    (nor its password)."""
    error = _refused(database_url=url)
    assert said in str(error)
    assert "s3cret" not in str(error)
    assert "input_value" not in str(error)  # pydantic's echo of what was given


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("s3cret", "at least 32 characters (this one has 6)"),
        ("s3cret" + "x" * 25, "at least 32 characters (this one has 31)"),
        ("s3cret with a space " + "x" * 20, "printable ASCII without spaces"),
        ("s3cret\u00e9" + "x" * 40, "printable ASCII without spaces"),
    ],
)
def test_an_admin_key_someone_could_guess_or_no_header_carries_is_refused_unsaid(
    key: str, said: str
) -> None:
    """The admin key may do anything: a short one is refused, naming the length it needs
    and how to make one, and the error never holds the key."""
    error = _refused(admin_key=key)
    assert said in str(error)
    assert "s3cret" not in str(error)
    assert "input_value" not in str(error)


def test_an_admin_key_of_32_printable_characters_is_taken_and_an_empty_one_is_unset() -> None:
    key = "!" + "k" * 30 + "~"
    configured = Settings(admin_key=key).admin_key
    assert configured is not None
    assert configured.get_secret_value() == key
    assert Settings(admin_key="").admin_key is None  # as before: the server makes one


def test_what_the_settings_hand_on_is_what_was_configured() -> None:
    configured = Settings(
        lock_timeout_seconds=2.5,
        connect_timeout_seconds=7,
        idle_in_transaction_timeout_seconds=30,
        idempotency_retention_hours=48,
    )
    assert configured.timeouts() == Timeouts(lock=2.5, connect=7, idle_in_transaction=30)
    assert configured.idempotency_retention() == timedelta(hours=48)
    assert Settings(idempotency_retention_hours=0).idempotency_retention() is None
    defaults = Settings()
    assert defaults.timeouts() == Timeouts()
    assert defaults.idempotency_retention() == timedelta(days=30)
    assert defaults.hold_ttl_seconds == 900


def test_the_report_jobs_take_the_configured_lease_and_close_delay(tmp_path: Path) -> None:
    """CREDITLEDGER_REPORT_LEASE_SECONDS and CREDITLEDGER_REPORT_CLOSE_DELAY_SECONDS reach
    the report jobs of the server and CLI."""
    from api.main import reports_from_settings

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        report_lease_seconds=300,
        report_close_delay_seconds=90,
    )
    ledger = ledger_from_settings(settings)
    try:
        assert reports_from_settings(ledger, settings).lease == timedelta(seconds=300)
        assert reports_from_settings(ledger, settings).close_delay == timedelta(seconds=90)
        assert reports_from_settings(ledger, Settings()).lease == timedelta(seconds=120)
        assert reports_from_settings(ledger, Settings()).close_delay == timedelta(minutes=5)
    finally:
        ledger.db.dispose()
