"""The ``creditledger`` CLI in a process of its own, without paying its imports each time.

A user's ``creditledger`` process spends about a second importing the CLI (SQLAlchemy,
the models, the catalogs) before it does anything; the admin and report tests run it
hundreds of times. So each test worker starts one *zygote*: a single-threaded Python
process that imports ``api.cli``, and what its commands import only as they run
(``LAZY_IMPORTS``), and then waits. ``run`` asks it to fork a child per
command; the child takes the command's arguments, environment, working directory and
standard streams (files, as pipes to a real subprocess would be), runs the console
script's entry point, and exits with its exit code. Every command thus runs in a fresh
process of its own, as the user's does: its settings read from its own environment, its
own database connections, its exit status the one the shell would see. Only the import is
shared, and the CLI reads nothing from the environment at import (settings are read on
first use); a test in ``tests/e2e/test_cli.py`` checks that commands run this way answer
exactly as the installed script does. Commands of one test process run one at a time: a
test that races CLI processes against each other starts the script itself.

``tests/e2e/test_cli.py`` runs the installed console script itself (``EXE``) where the
process is what is under test (its entry point, signals, serving, its imports), so the
entry point a user types stays under test as it is.

The zygote (``zygote()``) reads one JSON request per line on stdin, answers ``{"pid":
...}`` once the child is forked and ``{"returncode": ...}`` when it has exited (negative:
killed by that signal, as ``subprocess`` says).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: What the child's ``sys.argv[0]`` is: the console script a user runs.
PROGRAM = str(Path(sys.executable).parent / "creditledger")


# ---------------------------------------------------------------- the zygote's side


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the command's process and run it; its exit code."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    streams = [("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY), ("stderr", os.O_WRONLY)]
    for fd, (name, mode) in enumerate(streams):
        path = request[name]
        opened = os.open(path, mode)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [PROGRAM, *request["args"]]
    from api.cli import main

    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    # What the interpreter does with ``sys.exit(code)`` at the top level.
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return int(code) & 0xFF


def _returncode(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _write(obj: dict[str, Any]) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


#: What a command imports only when it runs (the CLI's import leaves them out, so that a
#: command pays only for what it uses): typer's rich output (help, usage errors), the
#: migrations, the PostgreSQL driver, and the reports (FastAPI's app, pandas, pyarrow,
#: matplotlib). Imported in the zygote, every child shares them as it shares the CLI.
#: Some read the environment as they are imported (typer's rich output ``TERMINAL_WIDTH``
#: and ``FORCE_COLOR``, matplotlib its ``MPL*`` settings): the zygote's, which is the test
#: process's, as a command's is but for what the test gives it, and ``run`` refuses to
#: give those (``READ_AS_COMMANDS_RUN``).
LAZY_IMPORTS = (
    "typer.rich_utils",
    "rich.progress",
    "alembic.command",
    "alembic.config",
    "alembic.script",
    "sqlalchemy.dialects.postgresql.psycopg",
    "api.main",
    "reports.queries",
    "reports.render",
    "reports.statement",
    "matplotlib.figure",
    "matplotlib.ticker",
)
#: The zygote's own environment on top of the tests': the native libraries it imports
#: start no threads of their own (OpenBLAS's pool, jemalloc's background thread in
#: pyarrow), so that it forks with one thread. A child's environment is the command's.
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}


def _threads() -> list[str]:
    """The names of the process's threads, native ones included (Linux), else Python's."""
    try:
        tasks = os.listdir("/proc/self/task")
        return [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in tasks]
    except OSError:
        return [thread.name for thread in threading.enumerate()]


def zygote() -> None:
    """Import the CLI once, then fork one child per request read on stdin."""
    import importlib

    import api.cli  # noqa: F401  (the import every child shares)

    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    # Forking copies only the calling thread: with another one running, a child could
    # inherit a lock it holds, held forever. The imports start none; keep it so.
    threads = _threads()
    if len(threads) != 1:
        raise RuntimeError(f"the CLI's imports started threads: {threads}")
    # What the children share is never collected: a collection in a child would write to
    # every object it scans, copying the pages fork shared (about 0.1 s a command).
    gc.collect()
    gc.freeze()

    pending = b""
    while True:
        while b"\n" not in pending:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _write({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _write({"returncode": _returncode(status)})


# ---------------------------------------------------------------- the tests' side


class _Zygote:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                # ``-c``, not ``-m``: the program name click shows is then the console
                # script's (it reads ``-m`` runs from ``__main__.__spec__``).
                [sys.executable, "-c", "from tests.e2e.forked import zygote; zygote()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
                env={**os.environ, **SINGLE_THREADED},
            )
            self.buffer = b""
            atexit.register(self._stop, self.proc)
        return self.proc

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _read(self, proc: subprocess.Popen[bytes], timeout: float | None) -> dict[str, Any]:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the CLI zygote died")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, request: dict[str, Any], timeout: float) -> int:
        with self.lock:
            proc = self._start()
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            pid = self._read(proc, 60)["pid"]
            try:
                return int(self._read(proc, timeout)["returncode"])
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._read(proc, 60)
                raise


_ZYGOTE = _Zygote()


#: What a test may give a forked command's environment: variables read only as a command
#: runs, never at import. Anything else (``TERMINAL_WIDTH``, ``FORCE_COLOR``, ``MPL*``,
#: ``TZ``, which the zygote read once for every child) is refused, naming it: run the
#: installed script (``tests.e2e.test_cli.run``) instead, or add the variable here once it
#: is known to be read only at run time. ``HOME`` is read at both: by ``~`` in a command's
#: paths as it runs, and by matplotlib's import for its configuration folder, whose
#: ``matplotlibrc`` (none in the tests' homes) would then be the test process's.
READ_AS_COMMANDS_RUN = ("COLUMNS", "LINES", "NO_COLOR", "PGPASSFILE", "PGPASSWORD", "HOME")
READ_AS_COMMANDS_RUN_PREFIXES = ("CREDITLEDGER_",)


def _check_run_time_only(env: dict[str, str]) -> None:
    read_at_import = sorted(
        name
        for name in env
        if name not in READ_AS_COMMANDS_RUN and not name.startswith(READ_AS_COMMANDS_RUN_PREFIXES)
    )
    if read_at_import:
        raise ValueError(
            f"forked.run cannot give a command {read_at_import}: the zygote's imports may "
            "have read them already (see READ_AS_COMMANDS_RUN)"
        )


def environment(env: dict[str, str] | None) -> dict[str, str]:
    """A command's environment: the test's without its ``CREDITLEDGER_*`` variables (the
    command gets only the settings the test gives it), plus ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CREDITLEDGER_")}
    full.update(env or {})
    return full


def run(
    *args: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``creditledger *args`` in a process of its own, as ``tests.e2e.test_cli.run``
    runs the installed script, in the environment ``environment(env)``."""
    _check_run_time_only(env or {})
    with tempfile.TemporaryDirectory(prefix="creditledger-cli-") as tmp:
        streams = {name: Path(tmp) / name for name in ("stdin", "stdout", "stderr")}
        streams["stdin"].write_text(stdin)
        streams["stdout"].touch()
        streams["stderr"].touch()
        request = {
            "args": list(args),
            "env": environment(env),
            "cwd": str(cwd if cwd is not None else Path.cwd()),
            **{name: str(path) for name, path in streams.items()},
        }
        command = [PROGRAM, *args]
        try:
            returncode = _ZYGOTE.run(request, timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(command, timeout) from None
        # Read back as ``subprocess.run(..., text=True)`` decodes a pipe.
        out, err = (streams[name].read_text() for name in ("stdout", "stderr"))
    return subprocess.CompletedProcess(command, returncode, out, err)
