"""``creditledger backup``: an online copy of the SQLite ledger, taken by the real CLI
process while another process keeps writing, proven whole and consistent, and usable as
the database it copies."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx2 as httpx
import pytest

from ledger import backup as backup_module
from ledger.db import Database
from ledger.errors import BackupExists, BackupFailed
from ledger.services import Ledger
from ledger.verify import verify
from pricing import default_catalogs
from tests.e2e.forked import run
from tests.e2e.served import Served

TOPUP = 7


def _url(path: Path) -> dict[str, str]:
    return {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{path}"}


ADMIN = "clk_" + "ab" * 8 + "_backup-tests-admin-key"


def _serve(serve: Callable[[dict[str, str]], Served], ledger_file: Path) -> Served:
    """``creditledger serve`` on ``ledger_file``, started, with the admin key ``ADMIN``."""
    return serve({**_url(ledger_file), "CREDITLEDGER_ADMIN_KEY": ADMIN}).start()


def _admin(served: Served) -> httpx.Client:
    """A client of ``served`` with the admin key."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.Client(base_url=served.url, headers=auth, timeout=30)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated ledger file with the wallet ``acme`` and 300 top-ups of 7 credits, made
    once (300 durable commits take seconds) for each test to copy."""
    path = tmp_path_factory.mktemp("seeded") / "ledger.db"
    db = Database.from_url(f"sqlite:///{path}")
    db.migrate()
    ledger = Ledger(db, default_catalogs())
    ledger.open_account("acme", "credit", idempotency_key="open")
    for n in range(300):
        ledger.top_up("acme", TOPUP, idempotency_key=f"seed-{n}")
    db.dispose()
    # Closed: SQLite checkpointed the WAL into the file and removed it.
    assert not path.with_name(f"{path.name}-wal").exists()
    return path


@pytest.fixture
def ledger_file(seeded: Path, tmp_path: Path) -> Path:
    """A copy of ``seeded`` of the test's own."""
    path = tmp_path / "live" / "ledger.db"
    path.parent.mkdir()
    shutil.copyfile(seeded, path)
    return path


def test_a_backup_taken_while_another_process_writes_is_one_consistent_state(
    ledger_file: Path, tmp_path: Path
) -> None:
    db = Database.from_url(f"sqlite:///{ledger_file}")
    ledger = Ledger(db, default_catalogs())
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:  # the server's traffic, meanwhile
        n = 0
        while not stop.is_set() or n < 20:
            ledger.top_up("acme", TOPUP, idempotency_key=f"live-{n}")
            n += 1
        written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        copy = tmp_path / "backups" / "ledger-copy.db"
        copy.parent.mkdir()
        made = run("backup", str(copy), "--json", env=_url(ledger_file))
    finally:
        stop.set()
        writer.join()
    final = ledger.account("acme").balance
    db.dispose()
    assert made.returncode == 0, made.stderr
    view = json.loads(made.stdout)
    assert (view["integrity"], view["violations"]) == ("ok", [])
    assert view["path"] == str(copy)
    assert view["bytes"] == copy.stat().st_size
    assert view["revision"]
    # One self-contained file: no WAL beside it, no partial file left, and the file says
    # so itself (its header's read and write versions: 1, a rollback journal; 2 is WAL).
    assert sorted(p.name for p in copy.parent.iterdir()) == ["ledger-copy.db"]
    assert copy.read_bytes()[18:20] == b"\x01\x01"

    restored = Database.from_url(f"sqlite:///{copy}")
    try:
        assert verify(restored) == []
        balance = Ledger(restored, default_catalogs()).account("acme").balance
        with restored.transaction(write=False) as conn:
            topups = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM entries WHERE kind = 'topup'"
            ).scalar_one()
    finally:
        restored.dispose()
    # A state that existed: every top-up up to some instant, and its balance.
    assert balance == topups * TOPUP
    assert 300 * TOPUP <= balance <= final == (300 + written[0]) * TOPUP

    # Restored in the database's place, the ledger runs on it.
    place = tmp_path / "restored" / "ledger.db"
    place.parent.mkdir()
    shutil.copyfile(copy, place)
    assert run("verify", env=_url(place)).returncode == 0
    shown = run("account", "show", "acme", "--json", env=_url(place))
    assert json.loads(shown.stdout)["balance"] == balance


def test_a_backup_moved_into_place_under_a_running_server_is_refused_until_a_restart(
    ledger_file: Path, tmp_path: Path, serve: Callable[[dict[str, str]], Served]
) -> None:
    """The restore done wrong: a backup moved over the file of a server still running.
    The server's connections keep the file they opened, now gone from its path: a top-up
    written there would be answered 201 and be lost at the restart. The server refuses
    every request instead (503, healthz too), until it is restarted; then it serves the
    backup, with nothing of the refused requests in it."""
    copy = tmp_path / "backup.db"
    assert run("backup", str(copy), env=_url(ledger_file)).returncode == 0
    served = _serve(serve, ledger_file)
    with _admin(served) as http:
        before = http.get("/v1/accounts/acme").json()["balance"]
        made = http.post("/v1/accounts/acme/topups", json={"amount": TOPUP})
        assert made.status_code == 201, made.text
        os.replace(copy, ledger_file)
        refused = http.post(
            "/v1/accounts/acme/topups", json={"amount": TOPUP}, headers={"Idempotency-Key": "k"}
        )
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["error"] == "database_unavailable"
        assert "restarted" in body["message"]
        for path in ("/healthz", "/v1/accounts/acme"):
            assert http.get(path).status_code == 503
    logged = served.log.read_text()
    assert "was deleted, moved or replaced" in logged
    # What the server had, saved beside the path (here the file the backup replaced).
    (saved,) = ledger_file.parent.glob("ledger.db.gone-*")
    assert f"everything committed to it is saved in {saved}" in logged
    served.stop()
    # The WAL beside the path, the old file's, was moved into that file: none of its
    # pages is read as the backup's after the restart.
    wal = ledger_file.with_name("ledger.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    served.start()
    with _admin(served) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/v1/accounts/acme").json()["balance"] == before
        again = http.post(
            "/v1/accounts/acme/topups", json={"amount": TOPUP}, headers={"Idempotency-Key": "k"}
        )
        assert again.status_code == 201, again.text
        assert http.get("/v1/accounts/acme").json()["balance"] == before + TOPUP
    assert run("verify", env=_url(ledger_file)).returncode == 0
    shown = run("account", "show", "acme", "--json", env=_url(saved))
    assert json.loads(shown.stdout)["balance"] == before + TOPUP


def test_a_ledger_deleted_under_a_running_server_is_not_made_anew_at_the_restart(
    ledger_file: Path, serve: Callable[[dict[str, str]], Served]
) -> None:
    """``rm ledger.db*`` under a running server: the server refuses (503) and saves the
    file it had beside the path; SQLite makes an empty file at the path. Restarted, the
    server would migrate that file into a new, empty ledger and serve it, every wallet
    missing: it refuses to start instead, naming the saved copy, and starts once the copy
    is put back, the ledger as it was."""
    served = _serve(serve, ledger_file)
    with _admin(served) as http:
        made = http.post("/v1/accounts/acme/topups", json={"amount": TOPUP})
        assert made.status_code == 201, made.text
        before = http.get("/v1/accounts/acme").json()["balance"]
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            ledger_file.with_name(name).unlink(missing_ok=True)
        assert http.get("/v1/accounts/acme").status_code == 503
    served.stop()
    (saved,) = ledger_file.parent.glob("ledger.db.gone-*")
    told = (
        "holds no ledger, and a copy of the ledger once at that path lies beside it: "
        f"put it back (mv {saved} {ledger_file})"
    )
    with pytest.raises(AssertionError, match="serve did not start") as refused:
        served.start(timeout=30)
    assert told in str(refused.value), refused.value
    # The message says what to do: not the generic hint of a database error, which
    # 'serve' gives ("is the database reachable and migrated?").
    assert '"hint"' not in str(refused.value), refused.value
    migrated = run("migrate", env=_url(ledger_file))
    assert (migrated.returncode, told in migrated.stderr) == (6, True), migrated.stderr
    assert "hint" not in json.loads(migrated.stderr)
    with closing(sqlite3.connect(ledger_file)) as empty:  # nothing was created
        assert empty.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    os.replace(saved, ledger_file)
    served.start()
    with _admin(served) as http:
        assert http.get("/v1/accounts/acme").json()["balance"] == before
    served.stop()
    assert run("verify", env=_url(ledger_file)).returncode == 0


def test_a_stopped_server_leaves_one_self_contained_file(
    ledger_file: Path, tmp_path: Path, serve: Callable[[dict[str, str]], Served]
) -> None:
    """Stopped, the server closes its database: SQLite moves the WAL into the file and
    deletes it, so the file alone (copied, say) holds everything the server committed."""
    served = _serve(serve, ledger_file)
    with _admin(served) as http:
        made = http.post("/v1/accounts/acme/topups", json={"amount": TOPUP})
        assert made.status_code == 201, made.text
        balance = made.json()["balance"]["balance"]
    served.stop()
    assert sorted(p.name for p in ledger_file.parent.iterdir()) == ["ledger.db"]
    alone = tmp_path / "alone" / "ledger.db"
    alone.parent.mkdir()
    shutil.copyfile(ledger_file, alone)
    shown = run("account", "show", "acme", "--json", env=_url(alone))
    assert json.loads(shown.stdout)["balance"] == balance


def test_a_backup_never_overwrites_by_accident(ledger_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    assert run("backup", str(copy), env=_url(ledger_file)).returncode == 0
    first = copy.read_bytes()
    again = run("backup", str(copy), env=_url(ledger_file))
    assert again.returncode == 8
    assert json.loads(again.stderr)["error"] == "backup_exists"
    assert copy.read_bytes() == first
    replaced = run("backup", str(copy), "--replace", env=_url(ledger_file))
    assert replaced.returncode == 0, replaced.stderr
    assert "integrity ok" in replaced.stdout
    # A destination that a process has open as a database (its WAL would be replayed).
    copy.with_name("copy.db-wal").write_bytes(b"")
    busy = run("backup", str(copy), "--replace", env=_url(ledger_file))
    assert (busy.returncode, json.loads(busy.stderr)["field"]) == (2, "destination")
    # A -wal left where the copy would go, with no file of that name (yet).
    copy.unlink()
    stale = run("backup", str(copy), env=_url(ledger_file))
    assert (stale.returncode, json.loads(stale.stderr)["field"]) == (2, "destination")
    assert not copy.exists()


@pytest.mark.parametrize(
    ("url", "destination", "field", "said"),
    [
        (
            "postgresql+psycopg://ledger@localhost/ledger",
            "copy.db",
            "CREDITLEDGER_DATABASE_URL",
            "pg_dump",
        ),
        ("sqlite:///{tmp}/none.db", "copy.db", "CREDITLEDGER_DATABASE_URL", "no database file"),
        # A folder where the file should be.
        ("sqlite:///{tmp}/live", "copy.db", "CREDITLEDGER_DATABASE_URL", "no database file"),
        (None, "missing-folder/copy.db", "destination", "no directory"),
        (None, ".", "destination", "is a directory"),
        (None, "live/ledger.db", "destination", "the database itself"),
        (
            "sqlite:///file:{tmp}/live/ledger.db?mode=ro&uri=true",
            "copy.db",
            "CREDITLEDGER_DATABASE_URL",
            "as a file path",
        ),
    ],
)
def test_a_backup_that_cannot_be_taken_is_refused_with_the_field(
    ledger_file: Path, tmp_path: Path, url: str | None, destination: str, field: str, said: str
) -> None:
    env = {"CREDITLEDGER_DATABASE_URL": url.format(tmp=tmp_path)} if url else _url(ledger_file)
    before = ledger_file.read_bytes()
    r = run("backup", str(tmp_path / destination), env=env)
    assert r.returncode == 2, r.stderr
    refused = json.loads(r.stderr)
    assert refused["field"] == field
    assert said in refused["message"]
    assert ledger_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]  # nothing made


@pytest.mark.parametrize("name", ["live/../live/ledger.db", "alias.db"])
def test_the_database_itself_is_never_the_destination_even_replacing(
    ledger_file: Path, tmp_path: Path, name: str
) -> None:
    """Named another way (a path through ``..``, a symbolic link to it), the database is
    still itself: ``--replace`` would put a copy over the live file, losing what is
    written after the copy. Refused, and the file is left as it was."""
    (tmp_path / "alias.db").symlink_to(ledger_file)
    before = ledger_file.read_bytes()
    r = run("backup", str(tmp_path / name), "--replace", env=_url(ledger_file))
    assert r.returncode == 2, r.stderr
    refused = json.loads(r.stderr)
    assert refused["field"] == "destination"
    assert "the database itself" in refused["message"]
    assert ledger_file.read_bytes() == before
    assert (tmp_path / "alias.db").is_symlink()


def test_a_destination_under_home_is_the_home_directorys(ledger_file: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    r = run("backup", "~/copy.db", env={**_url(ledger_file), "HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in home.iterdir()) == ["copy.db"]


@pytest.mark.parametrize("sidecar", ["-wal", "-shm", "-journal"])
def test_a_destination_with_a_sidecar_file_is_refused(
    ledger_file: Path, tmp_path: Path, sidecar: str
) -> None:
    """SQLite would replay a -wal, or roll back a -journal, onto the new copy."""
    left = tmp_path / f"copy.db{sidecar}"
    left.write_bytes(b"")
    r = run("backup", str(tmp_path / "copy.db"), env=_url(ledger_file))
    assert (r.returncode, json.loads(r.stderr)["field"]) == (2, "destination"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["live", left.name])


def _backup_refused(
    ledger_file: Path, destination: Path, error: type[Exception], match: str | None = None
) -> None:
    """``backup`` of ``ledger_file`` to ``destination``, in this process, raises ``error``."""
    db = Database.from_url(f"sqlite:///{ledger_file}")
    try:
        with pytest.raises(error, match=match):
            backup_module.backup(db, destination)
    finally:
        db.dispose()


def test_a_taken_destination_is_refused_before_anything_is_copied(
    ledger_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after a whole copy of the live database (its pages read for nothing)."""

    def never(source: Path, target: Path, *, timeout: float) -> None:
        raise AssertionError("copied")

    monkeypatch.setattr(backup_module, "_copy", never)
    copy = tmp_path / "copy.db"
    copy.write_bytes(b"an earlier backup")
    _backup_refused(ledger_file, copy, BackupExists)
    assert copy.read_bytes() == b"an earlier backup"


def test_a_file_that_appears_at_the_destination_meanwhile_is_not_replaced(
    ledger_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination was free when the backup began; another process wrote a file
    there while the copy was taken. Without ``replace``, that file is kept and the backup
    refused, its partial copy removed."""
    copy_pages = backup_module._copy
    copy = tmp_path / "copy.db"

    def raced(source: Path, target: Path, *, timeout: float) -> None:
        copy_pages(source, target, timeout=timeout)
        copy.write_bytes(b"someone else's file")

    monkeypatch.setattr(backup_module, "_copy", raced)
    _backup_refused(ledger_file, copy, BackupExists)
    assert copy.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "live"]


def test_on_a_file_system_without_hard_links_the_backup_still_keeps_a_file_that_appeared(
    ledger_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a hard link cannot be made (FAT, some network and FUSE file systems), the
    copy is renamed into place: a file that appeared at the destination meanwhile is still
    kept and the backup refused; with the name free, the backup is taken."""

    def no_links(_source: object, _target: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    copy_pages = backup_module._copy
    copy = tmp_path / "copy.db"

    def raced(source: Path, target: Path, *, timeout: float) -> None:
        copy_pages(source, target, timeout=timeout)
        copy.write_bytes(b"someone else's file")

    with monkeypatch.context() as racing:
        racing.setattr(backup_module, "_copy", raced)
        _backup_refused(ledger_file, copy, BackupExists)
    assert copy.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "live"]
    copy.unlink()
    db = Database.from_url(f"sqlite:///{ledger_file}")
    try:
        taken = backup_module.backup(db, copy)
    finally:
        db.dispose()
    assert (taken.integrity, taken.violations) == ("ok", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "live"]


def test_a_backup_of_a_ledger_that_breaks_an_invariant_is_kept_and_says_so(
    ledger_file: Path, tmp_path: Path
) -> None:
    conn = sqlite3.connect(ledger_file)
    with conn:  # a balance edited behind the ledger's back
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE external_id = 'acme'")
    conn.close()
    copy = tmp_path / "copy.db"
    r = run("backup", str(copy), "--json", env=_url(ledger_file))
    assert r.returncode == 5, r.stderr
    checks = {v["check"] for v in json.loads(r.stdout)["violations"]}
    assert checks == {"account_balance", "wallet_grants"}
    assert copy.exists()


def _fails_after_spoiling_the_copy(
    ledger_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spoil: Callable[[Path], None],
    match: str,
) -> None:
    """The backup, with ``spoil`` done to its copy once the pages are copied, fails with
    ``match`` and leaves nothing behind."""
    copy_pages = backup_module._copy

    def spoiled(source: Path, target: Path, *, timeout: float) -> None:
        copy_pages(source, target, timeout=timeout)
        spoil(target)

    monkeypatch.setattr(backup_module, "_copy", spoiled)
    _backup_refused(ledger_file, tmp_path / "copy.db", BackupFailed, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]


def test_a_copy_that_fails_the_integrity_check_is_deleted(
    ledger_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fails_after_spoiling_the_copy(
        ledger_file, tmp_path, monkeypatch, _zero_an_index_root, "integrity"
    )


def test_a_copy_whose_index_disagrees_with_its_table_is_deleted(
    ledger_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page reads, but SQLite's integrity check lists rows an index lacks: that too
    fails the backup, with what the check found."""

    def skew(target: Path) -> None:
        conn = sqlite3.connect(target)
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = replace(sql, 'posted_at', 'memo') "
            "WHERE name = 'ix_entries_account_posted'"
        )
        conn.commit()
        conn.close()

    # Every finding, not only the first.
    _fails_after_spoiling_the_copy(
        ledger_file,
        tmp_path,
        monkeypatch,
        skew,
        "row 1 missing from index ix_entries_account_posted; row 2 missing from index",
    )


def test_a_torn_ledger_fails_its_backup_with_exit_6_and_leaves_no_copy(
    ledger_file: Path, tmp_path: Path
) -> None:
    """A page of the live file itself is torn: the copy carries it, fails SQLite's
    integrity check and is deleted. The command says so and exits 6 (the database), not 2
    (bad input): no other destination would do better."""
    _zero_an_index_root(ledger_file)
    before = ledger_file.read_bytes()
    r = run("backup", str(tmp_path / "copy.db"), env=_url(ledger_file))
    assert r.returncode == 6, r.stderr
    failed = json.loads(r.stderr)
    assert (failed["error"], failed["field"]) == ("backup_failed", "destination")
    assert "integrity check" in failed["message"]
    assert r.stdout == ""
    assert ledger_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]


def test_a_file_that_is_no_database_fails_its_backup_with_exit_6(tmp_path: Path) -> None:
    """SQLite cannot read the source at all: its own error, as a database error."""
    (tmp_path / "live").mkdir()
    garbage = tmp_path / "live" / "ledger.db"
    garbage.write_bytes(b"not a ledger " * 700)
    r = run("backup", str(tmp_path / "copy.db"), env=_url(garbage))
    assert r.returncode == 6, r.stderr
    assert json.loads(r.stderr) == {
        "error": "database_error",
        "message": "file is not a database",
    }
    assert garbage.read_bytes() == b"not a ledger " * 700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]
    assert sorted(p.name for p in garbage.parent.iterdir()) == ["ledger.db"]


def _zero_an_index_root(path: Path) -> None:
    """Zero the root page of one of the journal's indexes, as a torn write would."""
    conn = sqlite3.connect(path)
    root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries'"
    ).fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with path.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\x00" * page_size)
