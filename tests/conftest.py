"""Shared test configuration: hypothesis profiles and the catalog fixtures."""

from __future__ import annotations

import copy
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from sqlalchemy.pool import NullPool

from ledger.db import Database
from ledger.services import Ledger
from ledger.verify import verify
from pricing import CatalogSet, default_catalogs
from tests.factories import Clock, month_of_traffic
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``long`` first, in their order, then the others in theirs: the
    workers (``pytest -n``, ``--dist worksteal``) share out the short ones as they free
    up, instead of one of them starting a minute-long test as the others run out."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


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
    database. It is empty, unless the test takes a seeded fixture (:func:`seeded`, as
    ``traffic``): then it holds that fixture's data already (a copy of its template)."""
    seed = _seed_of(request)
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        source = (
            Path(_seeded_template(request, seed, "sqlite").source)
            if seed
            else request.getfixturevalue("sqlite_template")
        )
        shutil.copyfile(source, path)
        yield f"sqlite:///{path}"
        return
    server = postgres_or_skip(request)
    template = _seeded_template(request, seed, "postgresql").source if seed else _TEMPLATE
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


# ------------------------------------------------------- seeded databases, each made once

T = TypeVar("T")

#: What each seeded fixture's data is made by, by the fixture's name (see ``seeded``).
_SEEDS: dict[str, Callable[[Ledger, Clock], Any]] = {}


@dataclass(frozen=True)
class SeededTemplate:
    """A ledger database holding a seeded fixture's data, for tests to start from a copy
    of: a SQLite file's path, or a PostgreSQL template database's name."""

    source: str
    value: Any  # what the seed's maker returned
    now: datetime  # where the maker left its clock


@pytest.fixture(scope="session")
def seeded_templates() -> dict[tuple[str, str], SeededTemplate]:
    """The template of each seed and database this test process made so far (made when a
    test first needs one, then copied: a copy takes a few ms on SQLite and about 0.1 s
    on PostgreSQL, where making the data over and over took up to seconds a test)."""
    return {}


def seeded(name: str, make: Callable[[Ledger, Clock], T]) -> Any:
    """A fixture ``name`` whose test's ledger database (``database_url``) already holds
    what ``make(ledger, clock)`` writes, with what it returned as its value (a copy) and
    the test's ``clock`` where ``make`` left it. ``make`` runs once per test process and
    database, on a template every such test copies: it must write only through the ledger
    it is given (or an app over that ledger's database) and leave no connection open."""
    if name in _SEEDS:
        raise ValueError(f"a seeded fixture named {name!r} exists already")
    _SEEDS[name] = make

    @pytest.fixture(name=name)
    def fixture(database_url: str, clock: Clock, request: pytest.FixtureRequest) -> T:
        """What the seed's maker returned; the test's database holds what it wrote."""
        backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
        template = _seeded_template(request, name, backend)
        clock.now = template.now
        made: T = copy.deepcopy(template.value)
        return made

    return fixture


def _seed_of(request: pytest.FixtureRequest) -> str | None:
    """The seeded fixture the test takes, if any (one at most: each fills the database)."""
    seeds = [name for name in request.fixturenames if name in _SEEDS]
    assert len(seeds) <= 1, f"a test takes one seeded fixture at most, not {seeds}"
    return seeds[0] if seeds else None


def _seeded_template(request: pytest.FixtureRequest, seed: str, backend: str) -> SeededTemplate:
    made: dict[tuple[str, str], SeededTemplate] = request.getfixturevalue("seeded_templates")
    if (seed, backend) in made:
        return made[seed, backend]
    if backend == "sqlite":
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        path = factory.mktemp(f"seed-{seed}") / "ledger.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        source, url = str(path), f"sqlite:///{path}"
    else:
        server = postgres_or_skip(request)
        source = f"creditledger_seed_{seed}"
        admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {source} TEMPLATE {_TEMPLATE}")
        admin.dispose()
        url = server.url(source)
    db = Database.from_url(url)
    try:
        clock = Clock()
        catalogs: CatalogSet = request.getfixturevalue("catalogs")
        value = _SEEDS[seed](Ledger(db, catalogs, clock=clock), clock)
        assert verify(db) == []
    finally:
        # No connection left open: PostgreSQL copies a template no one is connected to,
        # and SQLite checkpoints its WAL into the file as the last one closes.
        db.dispose()
    if backend == "sqlite":
        assert not Path(f"{source}-wal").exists()
    made[seed, backend] = SeededTemplate(source, value, clock.now)
    return made[seed, backend]


#: October 2026 of a small gateway (:func:`tests.factories.month_of_traffic`), which the
#: test's ledger database already holds; ``clock`` stands where the month's making left it.
traffic = seeded("traffic", month_of_traffic)


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
