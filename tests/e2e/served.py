"""``creditledger serve`` as a real process: start, wait until it serves, stop or kill it.

Each start gets a free port and its own log file (stderr), so a busy server never blocks
on a full pipe and a crashed start can be read afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.e2e.test_cli import EXE

_KEY = re.compile(r"(clk_[0-9a-f]{16}_[A-Za-z0-9_-]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: ledger\r\n\r\n"


def exchange(conn: socket.socket, request: bytes = HEALTHZ) -> bytes:
    """One keep-alive HTTP/1.1 request on ``conn``: the whole response (read to its
    Content-Length, so nothing of it is left for the next), or ``b""`` when the server
    had closed the connection."""
    try:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
            data += chunk
        return data
    except ConnectionError:
        return b""


class Served:
    """One ``creditledger serve`` at a time over the same database and folder."""

    def __init__(self, env: dict[str, str], folder: Path, args: Sequence[str] = ()) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITLEDGER_")}
        self.env.update(env)
        self.folder = folder
        #: Options of ``serve`` besides its port.
        self.args = tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        #: The admin key the server printed at its first start (None when it came from the
        #: environment).
        self.admin: str | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> Served:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        # The port was free when picked, but another process (a parallel test worker's
        # server, say) may bind it first: then the server exits, and starts again on
        # another port.
        for attempt in range(3):
            if self._start(free_port(), timeout):
                return self
            if attempt == 2 or "address already in use" not in self._logged().lower():
                raise AssertionError(f"serve did not start:\n{self._logged()}")
        raise AssertionError("unreachable")

    def _logged(self) -> str:
        """The log of the latest start so far; the admin key, if it shows one, noted."""
        text = self.log.read_text(errors="replace")
        if self.admin is None and (found := _KEY.search(text)):
            self.admin = found.group(1)
        return text

    def _start(self, port: int, timeout: float) -> bool:
        """Start on ``port``: True once it serves, False when it exited first."""
        self.starts += 1
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.folder / f"serve-{self.starts}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [EXE, "serve", "--port", str(port), *self.args],
                env=self.env,
                cwd=self.folder,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            # Read after the exit check: an exited server's log is complete.
            text = self._logged()
            # Not "Application startup complete": uvicorn prints that before it binds
            # the port, and a client connecting in between is refused.
            if "Uvicorn running on" in text:
                return True
            if exited:
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{text}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


class Threads:
    """Client threads whose failures fail the test: ``join`` re-raises the first error
    (an assertion in a thread would otherwise only be printed)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target: Callable[..., object], *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=guarded, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        if self.errors:
            raise self.errors[0]
