"""The ``creditledger`` console script.

What is about the process itself runs the installed script as a user runs it (``run``, a
real subprocess): its entry point, a Ctrl-C, serving on a port, what it imports to start,
and that the forked runner answers exactly as it does. The other commands run through
``tests.e2e.forked`` (a fresh process each, as the script's, without paying its second of
imports every time)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.db import known_revisions
from tests import factories as f
from tests.e2e import forked

EXE_NAME = "creditledger"
EXE = shutil.which("creditledger", path=str(Path(sys.executable).parent)) or "creditledger"


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=forked.environment(env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_estimate_from_stdin_prints_the_quote() -> None:
    result = run("estimate", "--json", stdin=json.dumps(f.veo3_video(video_model="veo3_fast")))
    assert result.returncode == 0, result.stderr
    quote = json.loads(result.stdout)
    assert (quote["cost"], quote["max_cost"], quote["unit"], quote["model"]) == (
        240,
        240,
        "credit",
        "veo3_fast",
    )
    assert quote["catalog_version"] == "seed-003"


def test_estimate_prints_a_table_by_default() -> None:
    """For people: the lines, then what they come to; a unit with decimals shows its
    major amount beside the minor units, so 40000 is not read as $40,000."""
    veo = forked.run("estimate", stdin=json.dumps(f.veo3_video()), env={"COLUMNS": ""})
    assert veo.returncode == 0, veo.stderr
    assert "veo3 video, veo3_fast (catalog version seed-003; amounts in credit)" in veo.stdout
    assert _cells(veo.stdout, "video, veo3_fast (standard quality)") == ["1", "240", "240"]
    assert _cells(veo.stdout, "cost") == ["240 credit"]
    assert _cells(veo.stdout, "max cost") == ["240 credit: what an authorization holds"]
    assert _cells(veo.stdout, "defaults applied") == [
        'video_model="veo3_fast", aspect_ratio="16:9"'
    ]
    assert _cells(veo.stdout, "estimated usage") == ["videos=1"]
    pixazo = forked.run(
        "estimate",
        stdin=json.dumps(f.pixazo_image(num_images=2, enable_prompt_expansion=True)),
        env={"COLUMNS": ""},
    )
    assert pixazo.returncode == 0, pixazo.stderr
    assert "amounts in usd minor units" in pixazo.stdout
    assert _cells(pixazo.stdout, "cost") == ["100000 (0.100000 usd)"]
    assert _cells(pixazo.stdout, "prompt expansion (per request)") == ["1", "20000", "20000"]
    assert "enable_safety_checker=true" in _cells(pixazo.stdout, "defaults applied")[0]


def _rows(table: str) -> list[list[str]]:
    """The cells of each row of a rich table, stripped."""
    rows = ([cell.strip() for cell in line.split("\u2502")[1:-1]] for line in table.splitlines())
    return [cells for cells in rows if cells]


def _cells(table: str, first: str) -> list[str]:
    """The other cells of the table row whose first cell is ``first``."""
    for cells in _rows(table):
        if cells[0] == first:
            return cells[1:]
    raise AssertionError(f"no row {first!r} in:\n{table}")


def test_estimate_from_a_file_with_at(tmp_path: Path) -> None:
    path = tmp_path / "req.json"
    path.write_text(json.dumps(f.cosmic_image()), encoding="utf-8")
    result = forked.run("estimate", str(path), "--at", "2025-06-01T00:00:00Z", "--json")
    assert result.returncode == 0, result.stderr
    quote = json.loads(result.stdout)
    assert (quote["catalog_version"], quote["model"], quote["cost"]) == (
        "2024-03-14",
        "dall-e-3",
        4800,
    )


def test_decimal_parameters_are_read_as_decimals() -> None:
    result = forked.run(
        "estimate", "--json", stdin=json.dumps(f.pixazo_image(guidance_scale=4.5, num_images=2))
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cost"] == 80_000


@pytest.mark.parametrize(
    ("stdin", "error", "field"),
    [
        ("{not json", "invalid_json", None),
        (
            '{"catalog": "cosmic", "operation": "video", '
            '"params": {"prompt": "x", "duration": NaN}}',
            "invalid_json",
            None,
        ),
        (json.dumps(f.cosmic_video(duration=5)), "invalid_parameter", "params.duration"),
        (
            '{"catalog": "veo3", "operation": "video", "catalog": "cosmic", '
            '"params": {"prompt": "x"}}',
            "invalid_request",
            "catalog",
        ),
        (
            '{"catalog": "veo3", "operation": "video", '
            '"params": {"prompt": "x", "video_model": "veo3", "video_model": "veo3_fast"}}',
            "invalid_request",
            "params.video_model",
        ),
        ("[" * 100_000 + "]" * 100_000, "invalid_json", None),  # a traceback once
        (json.dumps(f.request("nope", "x", prompt="y")), "unknown_catalog", "catalog"),
        (json.dumps(f.pixazo_image(num_images=10**30)), "invalid_parameter", "params.num_images"),
    ],
)
def test_bad_input_prints_the_error_and_exits_2(stdin: str, error: str, field: str | None) -> None:
    result = forked.run("estimate", stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    body: dict[str, Any] = json.loads(result.stderr)
    assert body["error"] == error
    assert body.get("field") == field


def test_naive_at_is_rejected() -> None:
    result = forked.run("estimate", "--at", "2026-01-01T00:00:00", stdin=json.dumps(f.veo3_video()))
    assert result.returncode == 2
    assert json.loads(result.stderr)["field"] == "at"


def test_unpriced_operation_exits_4_until_an_operator_prices_it(tmp_path: Path) -> None:
    req = json.dumps(f.fal_video())
    result = forked.run("estimate", stdin=req)
    assert result.returncode == 4
    assert "no price is configured for fal image_to_video" in json.loads(result.stderr)["message"]

    f.write_catalog(
        tmp_path, "fal.toml", f.FAL_PRICES.format(effective_from="2026-01-01T00:00:00Z")
    )
    result = forked.run(
        "estimate", "--json", stdin=req, env={"CREDITLEDGER_CATALOG_DIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cost"] == 157_500


def test_broken_operator_catalog_exits_3_naming_file_and_key(tmp_path: Path) -> None:
    path = f.write_catalog(
        tmp_path,
        "fal.toml",
        'name = "fal"\nunit = { code = "usd", scale = 6 }\n'
        '[[versions]]\nid = "x"\neffective_from = 2026-01-01T00:00:00Z\n'
        'source = "s"\nbased_on = "seed-004"\n'
        '[versions.operations.image_to_video.pricing]\nprices = { "1080p" = 1 }\n',
    )
    env = {
        "CREDITLEDGER_CATALOG_DIR": str(tmp_path),
        "CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
    }
    # The server and the admin commands price with the same catalogs: they too stop at
    # the broken file, and name it alike.
    for args in (("catalogs",), ("estimate",), ("account", "show", "a"), ("serve", "--port", "0")):
        result = forked.run(*args, stdin="{}", env=env)
        assert result.returncode == 3, (args, result.stderr)
        body = json.loads(result.stderr)
        assert body["file"] == str(path)
        assert body["key"] == "versions[0].operations.image_to_video.pricing.prices.1080p"
        assert "unknown tier" in body["reason"]


def test_serve_on_a_port_another_process_listens_on_exits_10_not_3(tmp_path: Path) -> None:
    """The server cannot listen: exit 10 with what happened, after uvicorn's own line
    saying why. Uvicorn's exit code, 3, is this CLI's broken catalog."""
    import socket

    env = {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), env=env)
    assert result.returncode == 10, result.stderr
    assert "Traceback" not in result.stderr
    assert "address already in use" in result.stderr  # uvicorn's line: why
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert error["error"] == "not_serving"
    assert f"did not start listening on 127.0.0.1:{port}" in error["message"]


# ``creditledger serve`` with a Ctrl-C (a real SIGINT) at the one moment uvicorn has not
# taken the signal over yet: its event loop runs, its handlers are not installed. SIGINT
# is taken as a terminal's process takes it, whatever this test run inherited (a run
# started in the background, as ``nohup ... &``, ignores it, and so would the child).
_CTRL_C_AS_THE_LOOP_STARTS = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import uvicorn
from api import cli

serve = uvicorn.Server.serve

async def interrupted(self, sockets=None):
    signal.raise_signal(signal.SIGINT)
    await serve(self, sockets)

uvicorn.Server.serve = interrupted
sys.argv = ["creditledger", "serve", "--port", "0"]
cli.main()
"""


def test_serve_stopped_by_ctrl_c_before_it_listens_exits_130_not_10(tmp_path: Path) -> None:
    """Stopped by its operator, it exits as an interrupted command does (130), without
    the error of exit 10, whose "the port in use" would send them looking for a process.
    (Uvicorn still logs its startup's cancellation, as it does whenever that is cut.)"""
    env = {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    result = subprocess.run(
        [sys.executable, "-c", _CTRL_C_AS_THE_LOOP_STARTS],
        capture_output=True,
        text=True,
        env=forked.environment(env),
        timeout=60,
        check=False,
    )
    assert result.returncode == 130, result.stderr
    assert "not_serving" not in result.stderr
    assert "did not start listening" not in result.stderr


# A Ctrl-C (a real SIGINT, to a process that takes it as a terminal's would) while the
# console script is still loading the CLI: as its first heavy import begins.
_CTRL_C_WHILE_LOADING = """
import importlib.abc, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "sqlalchemy":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.meta_path.insert(0, CtrlC())
sys.argv = ["creditledger", "verify"]
from api.entry import main
main()
"""


def test_a_ctrl_c_while_the_cli_loads_exits_130_without_a_traceback() -> None:
    """The script a user types loads the CLI (a second of imports) behind a guard: a
    Ctrl-C then ends it as one while a command runs does, quietly, with 130."""
    (script,) = (
        e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == EXE_NAME
    )
    assert script.value == "api.entry:main"
    result = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_LOADING],
        capture_output=True,
        text=True,
        env=forked.environment({}),
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")


def test_catalogs_table_and_json() -> None:
    table = forked.run("catalogs", env={"COLUMNS": ""})  # piped: each row on one line
    assert table.returncode == 0, table.stderr
    for text in (
        "cosmic",
        "veo-3.1-generate-preview",
        "768000 token",
        "0.04 usd",
        "240 credit",
        "not billable",
        "2025-12-20",
    ):
        assert text in table.stdout
    # A price by its variant: Gemini's 4K image (seed 000's media token costs).
    cosmic = [cells[4:] for cells in _rows(table.stdout) if cells[:2] == ["cosmic", "2025-12-20"]]
    image = ["image", "gemini-3-pro-image-preview", "size=4096x4096", "57600 token", "image"]
    assert image in cosmic
    listing = json.loads(forked.run("catalogs", "--json").stdout)["catalogs"]
    assert [c["name"] for c in listing] == ["cosmic", "fal", "pixazo", "veo3"]
    # The "in force" column: the newer Cosmic docs now; the older ones at an earlier --at.
    assert _in_force(table.stdout) == {"2024-03-14": {""}, "2025-12-20": {"yes"}}
    earlier = forked.run("catalogs", "--at", "2025-01-01T00:00:00Z", env={"COLUMNS": ""})
    assert _in_force(earlier.stdout) == {"2024-03-14": {"yes"}, "2025-12-20": {""}}


def _in_force(table: str) -> dict[str, set[str]]:
    """What the catalogs table's "in force" cells say for each Cosmic version."""
    seen: dict[str, set[str]] = {}
    for cells in _rows(table):
        if cells[0] == "cosmic":
            seen.setdefault(cells[1], set()).add(cells[3])
    return seen


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "estimate" in result.stdout
    assert "catalogs" in result.stdout


def test_help_text_flows_as_the_terminal_wraps_it() -> None:
    """A docstring's line breaks (the source's width) are not the terminal's: a help
    page joins them, and a command list shows each summary as one paragraph."""
    wide = {"COLUMNS": "200"}
    page = forked.run("topup-batch", "--help", env=wide).stdout
    assert "its expiry): one bad row and nothing is written (exit 2, every problem" in page
    listing = forked.run("account", "--help", env=wide).stdout
    line = next(x for x in listing.splitlines() if "usage-records" in x)
    assert "A wallet's requests as metered, newest first, with their refunds." in line


def test_migrate_then_verify_and_a_broken_invariant_exits_5(tmp_path: Path) -> None:
    env = {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    unmigrated = forked.run("verify", env=env)
    assert unmigrated.returncode == 6
    said = json.loads(unmigrated.stderr)
    assert "migrate" in said["hint"]
    # The driver's own line, without the statement and the link SQLAlchemy adds below it.
    assert said["message"].startswith("(sqlite3.OperationalError) no such table: ")
    assert "\n" not in said["message"]
    assert forked.run("migrate", env=env).returncode == 0
    assert forked.run("migrate", env=env).returncode == 0  # idempotent
    ok = forked.run("verify", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "violations": []}

    import sqlite3

    from ledger.db import Database
    from ledger.services import Ledger
    from pricing import default_catalogs

    db = Database.from_url(env["CREDITLEDGER_DATABASE_URL"])
    ledger = Ledger(db, default_catalogs())
    ledger.open_account("a", "credit", idempotency_key="k1")
    ledger.top_up("a", 100, idempotency_key="k2")
    db.dispose()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:  # tamper behind the ledger's back
        conn.execute("UPDATE accounts SET balance = 1000 WHERE external_id = 'a'")
    broken = forked.run("verify", "--json", env=env)
    assert broken.returncode == 5
    found = json.loads(broken.stdout)
    assert found["ok"] is False
    assert {v["check"] for v in found["violations"]} == {"account_balance", "wallet_grants"}


def test_a_schema_a_newer_version_upgraded_is_refused_by_every_command_but_backup(
    tmp_path: Path,
) -> None:
    """A deployment rolled back after its newer creditledger migrated the ledger: neither
    ``migrate`` nor ``serve`` runs on it, nor any command that reads or writes the ledger
    (exit 6, the revision named and what to do, no traceback), and nothing is changed. A
    backup is still taken: it copies the file as it is."""
    import sqlite3
    from contextlib import closing

    path = tmp_path / "ledger.db"
    env = {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{path}"}
    assert forked.run("migrate", env=env).returncode == 0
    assert forked.run("account", "create", "acme", "--unit", "credit", env=env).returncode == 0
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '0042_later'")

    def state() -> list[Any]:
        with closing(sqlite3.connect(path)) as conn:
            return [
                conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("alembic_version", "accounts", "entries", "api_keys", "report_jobs")
            ]

    before = state()
    told = "the database's schema is at revision 0042_later, which this creditledger does not"
    # One command of each way the CLI opens the ledger: migrating, serving, the use cases
    # (a write and a read; the report commands open it the same way), the keys, verify.
    for command in (
        ("migrate",),
        ("serve", "--port", "0"),
        ("topup", "acme", "100"),
        ("account", "show", "acme"),
        ("keys", "create", "--role", "service"),
        ("verify",),
    ):
        result = forked.run(*command, env=env)
        assert result.returncode == 6, (command, result.stderr)
        assert "Traceback" not in result.stderr
        error = json.loads(result.stderr)
        assert error["error"] == "database_error"
        assert told in error["message"]
        assert "a newer creditledger upgraded it. Run that version" in error["message"]
        rollback = f"`creditledger migrate --to {known_revisions()[-1]} --yes`"
        assert rollback in error["message"]
        assert "hint" not in error  # the message says what to do
        assert result.stdout == ""
    assert state() == before
    backup = forked.run("backup", str(tmp_path / "copy.db"), env=env)
    assert backup.returncode == 0, backup.stderr
    assert "schema 0042_later" in backup.stdout


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("CREDITLEDGER_GC_THRESHOLD", "-1", ("serve", "--port", "0")),
        ("CREDITLEDGER_HOLD_TTL_SECONDS", "soon", ("account", "show", "acme")),
        ("CREDITLEDGER_ADMIN_KEY", "admin", ("serve", "--port", "0")),
    ],
)
def test_a_setting_out_of_range_exits_2_naming_the_variable(
    tmp_path: Path, variable: str, value: str, command: tuple[str, ...]
) -> None:
    db = tmp_path / "never.db"
    result = forked.run(
        *command, env={variable: value, "CREDITLEDGER_DATABASE_URL": f"sqlite:///{db}"}
    )
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stderr)
    assert error["error"] == "invalid_configuration"
    assert error["field"] == variable
    assert error["message"].startswith(f"{variable}: ")
    assert "Traceback" not in result.stderr
    assert not db.exists()  # nothing was started or migrated


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ledger.db", "not a database URL"),
        ("mysql://ledger:s3cret@db/ledger", "mysql is not a database of the ledger"),
        ("postgresql+psycopg2://ledger:s3cret@db/ledger", "postgresql+psycopg2 is not"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///file:ledger?mode=memory&uri=true", "in-memory"),
    ],
)
@pytest.mark.parametrize("command", [("migrate",), ("serve", "--port", "0"), ("backup", "x.db")])
def test_a_database_url_the_ledger_cannot_run_on_exits_2_naming_what_it_takes(
    tmp_path: Path, url: str, said: str, command: tuple[str, ...]
) -> None:
    """Not a URL, another database or driver, or a SQLite database in memory (each
    connection would have its own, and every credit would go with the process): refused
    before anything connects, naming the variable and the URLs it takes, never echoing
    the URL (it may hold a password)."""
    result = forked.run(*command, env={"CREDITLEDGER_DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = json.loads(result.stderr)
    assert (error["error"], error["field"]) == (
        "invalid_configuration",
        "CREDITLEDGER_DATABASE_URL",
    )
    assert said in error["message"]
    assert "sqlite:///path/to/creditledger.db" in error["message"]
    assert "s3cret" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # no file made, nothing migrated


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_a_postgresql_url_without_a_driver_runs_the_ledger_on_psycopg_3(
    database_url: str, scheme: str
) -> None:
    """``postgres://`` (as libpq takes it and many hosts hand it out) and ``postgresql://``
    name no driver: the ledger's, psycopg 3, whatever SQLAlchemy's own default."""
    url = f"{scheme}://{database_url.split('://', 1)[1]}"
    env = {"CREDITLEDGER_DATABASE_URL": url}
    migrated = forked.run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    made = forked.run("account", "create", "w", "--unit", "credit", "--json", env=env)
    assert made.returncode == 0, made.stderr
    topped = forked.run("topup", "w", "100", "--json", env=env)
    assert topped.returncode == 0, topped.stderr
    shown = forked.run("account", "show", "w", "--json", env=env)
    assert json.loads(shown.stdout)["balance"] == 100
    checked = forked.run("verify", env=env)
    assert checked.returncode == 0, checked.stderr


def test_a_refused_setting_is_not_repeated_in_its_error() -> None:
    """The text of a refused setting's error (as a log of the exception prints it) never
    holds the value: a database URL may hold a password."""
    from pydantic import ValidationError

    from ledger.settings import Settings

    for url in ("mysql://ledger:s3cret@db/ledger", "postgresql+psycopg2://ledger:s3cret@db/l"):
        with pytest.raises(ValidationError) as refused:
            Settings(database_url=url)
        assert "s3cret" not in str(refused.value), url


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    """Which of the heavy modules a fresh interpreter has loaded once it imported the CLI
    (``api.cli``), and once it imported the app's module too (``api.main``)."""
    heavy = ("pandas", "pyarrow", "numpy", "fastapi", "starlette", "uvicorn", "alembic")
    probe = (
        "import json, sys\n"
        "def seen(): return sorted(m for m in HEAVY if m in sys.modules)\n"
        "import api.cli\n"
        "cli = seen()\n"
        "import api.main\n"
        "print(json.dumps({'api.cli': cli, 'api.main': seen()}))\n"
    ).replace("HEAVY", repr(heavy))
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    answer: dict[str, list[str]] = json.loads(found.stdout)
    return answer


def test_the_cli_starts_without_the_report_stack(loaded: dict[str, list[str]]) -> None:
    """Every command imports the CLI module; only a report needs pandas and pyarrow (a
    third of the start-up of every other command). They load when a report is made."""
    assert not {"pandas", "pyarrow", "numpy"} & set(loaded["api.main"])


def test_the_cli_starts_without_the_web_framework(loaded: dict[str, list[str]]) -> None:
    """The CLI maps domain errors to exit codes by their HTTP status (``api.status``),
    not through the app's error handlers: FastAPI is a fifth of its start-up. ``serve``
    loads it when it starts the app."""
    assert not {"fastapi", "starlette", "uvicorn"} & set(loaded["api.cli"])


def test_the_cli_starts_without_the_migration_tool(loaded: dict[str, list[str]]) -> None:
    """Alembic is a seventh of the CLI's start-up and only ``migrate`` and ``serve`` (which
    migrates) use it: it loads when a database is migrated."""
    assert "alembic" not in loaded["api.main"]


@pytest.mark.long
def test_the_forked_runner_answers_as_the_console_script(tmp_path: Path) -> None:
    """The other CLI tests run commands forked from a process that has imported the CLI
    (``tests.e2e.forked``). Whatever a command prints and exits with must be what the
    installed script gives: help, an estimate read from stdin, database work in a
    working directory, and refusals on stderr with their exit codes."""
    quote = json.dumps(f.veo3_video(video_model="veo3"))
    commands: list[tuple[str, ...]] = [
        ("--help",),
        ("topup", "--help"),
        ("estimate",),
        ("migrate",),
        ("account", "create", "acme", "--unit", "credit", "--json"),
        ("topup", "acme", "250", "--idempotency-key", "t1", "--json"),
        ("topup", "acme", "250", "--idempotency-key", "t1"),
        ("account", "show", "nobody", "--json"),
        ("topup", "acme", "0"),
        ("verify",),
    ]
    answers: dict[str, list[tuple[int, str, str]]] = {}
    for name, runner in (("script", run), ("forked", forked.run)):
        home = tmp_path / name
        home.mkdir()
        env = {"CREDITLEDGER_DATABASE_URL": "sqlite:///ledger.db", "COLUMNS": "100"}
        answers[name] = []
        for command in commands:
            done = runner(*command, stdin=quote, env=env, cwd=home)
            answers[name].append(
                (done.returncode, _unstamped(done.stdout), _unstamped(done.stderr))
            )
    assert answers["forked"] == answers["script"]
    codes = [code for code, _, _ in answers["script"]]
    assert codes == [0, 0, 0, 0, 0, 0, 0, 7, 2, 0]


@pytest.mark.parametrize("name", ["TZ", "TERMINAL_WIDTH", "FORCE_COLOR", "MPLBACKEND"])
def test_the_forked_runner_refuses_a_variable_the_zygote_may_have_read_at_import(
    tmp_path: Path, name: str
) -> None:
    """A forked command shares the zygote's imports, and with them whatever they read from
    the environment as they ran (libc's time zone, typer's terminal width and colours,
    matplotlib's backend). So ``forked.run`` takes only variables read as a command runs,
    and refuses any other, naming it, before anything runs."""
    ledger = tmp_path / "ledger.db"
    env = {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{ledger}", "COLUMNS": "80", name: "1"}
    with pytest.raises(ValueError, match=rf"\['{name}'\]"):
        forked.run("migrate", env=env, cwd=tmp_path)
    assert not ledger.exists()
    del env[name]
    assert forked.run("migrate", env=env, cwd=tmp_path).returncode == 0
    assert ledger.exists()


def _unstamped(text: str) -> str:
    """``text`` without what differs between two runs: instants and generated ids."""
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(\+00:00|Z)?", "<instant>", text)
    return re.sub(r"\b[0-9a-f]{32}\b", "<id>", text)
