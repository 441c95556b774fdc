"""A throwaway PostgreSQL server for the tests and benchmarks, from the installed binaries.

Started with initdb/pg_ctl into a temporary directory, listening on 127.0.0.1 only, with
trust authentication. As root (CI), the server runs as the ``postgres`` user, since
PostgreSQL refuses to run as root. Its default time zone is Asia/Kolkata, not UTC, as a
server set up in its local time would have.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url


def find_bin() -> Path | None:
    """The directory of pg_ctl and initdb, newest version first, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(found)
    for path in candidates:
        folder = Path(path).parent
        if (folder / "initdb").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """A PostgreSQL cluster in a temporary directory; ``url(db)`` gives a psycopg URL."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="creditledger-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pwd.getpwnam(self.user)  # KeyError: no such user
            shutil.chown(self.root, self.user)

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> TempPostgres:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        # The port was free when picked, but another process (a parallel test worker
        # starting its own cluster, say) may bind it first: then pick another and retry.
        for attempt in range(3):
            try:
                self._start_server()
                return self
            except subprocess.CalledProcessError:
                if attempt == 2 or not self._port_was_taken():
                    raise
                self.port = _free_port()
        raise AssertionError("unreachable")

    def _port_was_taken(self) -> bool:
        log = self.root / "log"
        return log.exists() and "already in use" in log.read_text(errors="replace")

    def _start_server(self) -> None:
        # A fresh log per attempt: what it says is about this attempt only.
        (self.root / "log").unlink(missing_ok=True)
        options = [
            f"-p {self.port}",
            f"-k {self.root}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
            # Not UTC, and not a whole hour from it: the ledger's sessions must set their
            # own time zone (``ledger.db.SESSION_TIMEZONE``), as on a server whose
            # default is the local time of where it runs.
            "-c timezone=Asia/Kolkata",
        ]
        if not self.durable:
            # Test data is thrown away: skip the fsyncs that make commits durable.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
            "start",
        )

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl`` mode ``smart``, ``fast`` or ``immediate``: the last
        is a crash, recovered from the WAL at the start) and start it again, on the same
        port and data."""
        self.halt(mode)
        self.resume()

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (``resume`` starts it again)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def resume(self) -> None:
        """Start the halted server again, on the same port and data."""
        self._start_server()

    def pid(self) -> int:
        """The server's main process (the postmaster; each connection's backend and the
        background writers are its children)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def find_pgbouncer() -> Path | None:
    """The PgBouncer binary (Debian's ``pgbouncer`` package), or None."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return Path(found) if Path(found).exists() else None


class TempPgBouncer:
    """PgBouncer in transaction pooling mode in front of one database of a TempPostgres,
    sharing ``pool_size`` server sessions between its clients' transactions. Like a
    pooler deployed with its defaults, it drops the startup ``options`` the ledger sends
    (``ignore_startup_parameters``), time zone and all; ``url()`` gives a psycopg URL."""

    def __init__(self, binary: Path, server: TempPostgres, database: str, *, pool_size: int = 1):
        self.binary = binary
        self.server = server
        self.database = database
        self.root = Path(tempfile.mkdtemp(prefix="creditledger-pgbouncer-"))
        self.port = _free_port()
        self.user = server.user
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self.pool_size = pool_size
        (self.root / "users.txt").write_text('"postgres" ""\n')

    def _configure(self) -> None:
        database, server = self.database, self.server
        (self.root / "pgbouncer.ini").write_text(
            f"[databases]\n{database} = host=127.0.0.1 port={server.port} dbname={database}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = options\n"
            f"logfile = {self.root / 'log'}\npidfile = {self.root / 'pid'}\n"
        )

    def start(self) -> TempPgBouncer:
        # The port was free when picked, but another process (a parallel test worker's
        # server) may bind it first: then PgBouncer exits, and starts again on another.
        for attempt in range(3):
            self._configure()
            (self.root / "log").unlink(missing_ok=True)
            command = [str(self.binary), "-d", str(self.root / "pgbouncer.ini")]
            if self.user is not None:  # PgBouncer, like PostgreSQL, refuses to run as root
                command = ["runuser", "-u", self.user, "--", *command]
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
            # Daemonized: taking connections once its pid file is written.
            deadline = time.monotonic() + 30
            while not (self.root / "pid").exists():
                log = self.root / "log"
                said = log.read_text(errors="replace") if log.exists() else ""
                if "nowhere to listen" in said and attempt < 2:
                    break
                assert time.monotonic() < deadline, said
                time.sleep(0.05)
            else:
                return self
            self.port = _free_port()
        raise AssertionError("unreachable")

    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        try:
            pid = int((self.root / "pid").read_text().strip())
            os.kill(pid, signal.SIGINT)  # PgBouncer's immediate shutdown
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass  # never started, or gone already
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def end_sessions(url: str) -> int:
    """End every other client session on the database of ``url`` (as a restart, a
    failover or an operator's ``pg_terminate_backend`` does), waiting up to 5 s for each
    to be gone; how many were ended."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchone()
    assert ended is not None
    return int(ended[0])


def end_session_at(url: str, port: int) -> int:
    """End the session on the server of ``url`` whose client connected from local
    ``port`` (``pg_terminate_backend``), once its transaction is over (a COMMIT sent
    before has run: up to 5 s); how many were told to end (0 or 1). Their end is not
    waited for: the session's client may be done with it, and the test over, before the
    server's wait for its end is."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE client_port = %s AND xact_start IS NOT NULL",
                [port],
            ).fetchone()
            if busy is None or busy[0] == 0:
                break
            time.sleep(0.01)
        ended = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
            "FROM pg_stat_activity WHERE client_port = %s AND pid <> pg_backend_pid()",
            [port],
        ).fetchone()
    assert ended is not None
    return int(ended[0])
