"""Shared test configuration: hypothesis profiles and the catalog fixtures."""

from __future__ import annotations

import copy
import itertools
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from sqlalchemy.pool import NullPool

from ledger.db import Database
from ledger.services import Ledger
from ledger.verify import verify
from pricing import CatalogSet, default_catalogs
from tests.factories import Clock, Traffic, month_of_traffic
from tests.netcut import CuttingProxy
from tests.pg import TempPostgres, end_session_at, find_bin


def _scale() -> int:
    """``CREDITLEDGER_TEST_SCALE``: how many times their usual number of examples the
    property and fuzz tests run (default 1). A soak runs them longer, outside CI so that
    each run draws new examples."""
    raw = os.environ.get("CREDITLEDGER_TEST_SCALE", "1")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 1000):
        raise ValueError(
            f"CREDITLEDGER_TEST_SCALE must be a whole number from 1 to 1000, not {raw!r}"
        )
    return int(raw)


SCALE = _scale()


def examples(n: int) -> int:
    """``n`` examples, times ``CREDITLEDGER_TEST_SCALE``."""
    return n * SCALE


# CI runs more examples, derandomized so a red run is reproducible from its log.
settings.register_profile("dev", max_examples=examples(100), deadline=None)
settings.register_profile(
    "ci",
    max_examples=examples(300),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A test's time limit (pytest-timeout; ``timeout`` in pyproject.toml) grows with
    ``CREDITLEDGER_TEST_SCALE``, as its examples do, unless given on the command line or
    in ``PYTEST_TIMEOUT``."""
    if SCALE > 1 and config.getvalue("timeout") is None and "PYTEST_TIMEOUT" not in os.environ:
        config.option.timeout = float(config.getini("timeout")) * SCALE


@pytest.fixture(scope="session")
def catalogs() -> CatalogSet:
    """The shipped catalogs."""
    return default_catalogs()


# ------------------------------------------------------------------ databases for the ledger

REQUIRE_POSTGRES = os.environ.get("CREDITLEDGER_REQUIRE_POSTGRES") == "1"
_TEMPLATE = "creditledger_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres | None]:
    """A PostgreSQL server for the session, with a migrated template database."""
    bindir = find_bin()
    if bindir is None:
        if REQUIRE_POSTGRES:
            pytest.fail(
                "CREDITLEDGER_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, "
                "pg_ctl) are installed: apt-get install postgresql"
            )
        yield None
        return
    server = TempPostgres(bindir).start()
    try:
        admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {_TEMPLATE}")
        admin.dispose()
        template = Database.from_url(server.url(_TEMPLATE))
        template.migrate()
        template.dispose()
        yield server
    finally:
        server.stop()


@contextmanager
def _postgres_database(server: TempPostgres, template: str = _TEMPLATE) -> Iterator[str]:
    """The URL of a new, migrated database on ``server`` (a copy of ``template``), dropped
    afterwards (the connections a test left open closed with it), so that the cluster
    stays small."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield server.url(name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite ledger file migrated once per test process, for each test to copy, as
    PostgreSQL's tests start from a template database (migrating a file costs about
    0.15 s, copying it a millisecond, and about 500 tests take one)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "ledger.db"
    db = Database.from_url(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    # Closed: SQLite checkpointed the WAL into the file and removed it.
    assert not path.with_name(f"{path.name}-wal").exists()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a migrated ledger database: a SQLite file, then a real PostgreSQL
    database. It is empty, unless the test takes the fixture ``traffic``: then it holds
    October 2026's traffic already (a copy of ``traffic_templates``)."""
    seeded = _TRAFFIC in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        source = (
            Path(_traffic_template(request, "sqlite").source)
            if seeded
            else request.getfixturevalue("sqlite_template")
        )
        shutil.copyfile(source, path)
        yield f"sqlite:///{path}"
        return
    server = postgres_or_skip(request)
    template = _traffic_template(request, "postgresql").source if seeded else _TEMPLATE
    with _postgres_database(server, template) as url:
        yield url


def postgres_or_skip(request: pytest.FixtureRequest) -> TempPostgres:
    """The session's PostgreSQL server, or skip the test where none is installed."""
    server: TempPostgres | None = request.getfixturevalue("postgres")
    if server is None:
        pytest.skip(
            "PostgreSQL binaries not installed (apt-get install postgresql); "
            "set CREDITLEDGER_REQUIRE_POSTGRES=1 to make this a failure"
        )
    return server


# ---------------------------------------------------------------- a month of traffic, made once

_TRAFFIC = "traffic"


@dataclass(frozen=True)
class TrafficTemplate:
    """A ledger database holding :func:`tests.factories.month_of_traffic`, for tests to
    start from a copy of: a SQLite file's path, or a PostgreSQL template database's name."""

    source: str
    traffic: Traffic
    now: datetime  # where month_of_traffic left its clock


@pytest.fixture(scope="session")
def traffic_templates() -> dict[str, TrafficTemplate]:
    """The traffic template of each database this test process made so far (made when a
    test first needs one: making the month takes 1 to 4 s, copying it a few ms)."""
    return {}


def _traffic_template(request: pytest.FixtureRequest, backend: str) -> TrafficTemplate:
    made: dict[str, TrafficTemplate] = request.getfixturevalue("traffic_templates")
    if backend in made:
        return made[backend]
    if backend == "sqlite":
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        path = factory.mktemp("traffic-template") / "ledger.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        source, url = str(path), f"sqlite:///{path}"
    else:
        server = postgres_or_skip(request)
        source = "creditledger_traffic_template"
        admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {source} TEMPLATE {_TEMPLATE}")
        admin.dispose()
        url = server.url(source)
    db = Database.from_url(url)
    try:
        clock = Clock()
        catalogs: CatalogSet = request.getfixturevalue("catalogs")
        traffic = month_of_traffic(Ledger(db, catalogs, clock=clock), clock)
        assert verify(db) == []
    finally:
        # No connection left open: PostgreSQL copies a template no one is connected to,
        # and SQLite checkpoints its WAL into the file as the last one closes.
        db.dispose()
    if backend == "sqlite":
        assert not Path(f"{source}-wal").exists()
    made[backend] = TrafficTemplate(source, traffic, clock.now)
    return made[backend]


@pytest.fixture
def traffic(database_url: str, clock: Clock, request: pytest.FixtureRequest) -> Traffic:
    """October 2026 of a small gateway (:func:`tests.factories.month_of_traffic`), which
    this test's ledger database already holds (``database_url`` copied it); ``clock``
    stands where the month's making left it."""
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    template = _traffic_template(request, backend)
    clock.now = template.now
    return copy.deepcopy(template.traffic)


@pytest.fixture
def proxy(database_url: str) -> Iterator[CuttingProxy]:
    """A proxy in front of the PostgreSQL server of ``database_url`` that cuts a
    connection when told (``tests/netcut.py``)."""
    port = sa.engine.make_url(database_url).port or 5432
    cutter = CuttingProxy(port, end_session=lambda at: end_session_at(database_url, at))
    try:
        yield cutter
    finally:
        cutter.close()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated, empty ledger database (each of ``database_url``)."""
    database = Database.from_url(database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(db: Database, catalogs: CatalogSet, clock: Clock) -> Iterator[Ledger]:
    """A ledger on each database; after the test, every invariant must still hold."""
    yield Ledger(db, catalogs, clock=clock)
    assert verify(db) == []
