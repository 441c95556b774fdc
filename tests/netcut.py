"""A TCP proxy in front of a PostgreSQL server that can cut a connection at a chosen
moment of the wire protocol: after the server committed, before the client hears it.

Nothing is faked: the client is the real driver, the server a real PostgreSQL, and the
cut is a closed socket, as a network failure or a crash of a middlebox leaves it. Only
the server's messages are read (each a type byte and a 32-bit length, the frontend/
backend protocol v3); the client must not ask for TLS (``sslmode=disable``), whose
one-byte answer comes before the first message.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy.engine import make_url

#: A statement's completion (CommandComplete) and the tag of a transaction committed.
_COMPLETE = b"C"
_COMMITTED = b"COMMIT\x00"


class CuttingProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``. ``arm()`` makes the next
    connection on which the server reports a COMMIT done end there: the report is not
    passed on, both sockets are closed (``cuts`` counts them)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed = 0
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` (the server's) through this proxy, without TLS."""
        proxied = make_url(url).set(host="127.0.0.1", port=self.port)
        return proxied.update_query_dict({"sslmode": "disable"}).render_as_string(
            hide_password=False
        )

    def arm(self, times: int = 1) -> None:
        """Cut the next ``times`` COMMITs the server reports, one connection each."""
        with self._lock:
            self._armed += times

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                if self._closed:
                    _close(client)
                    _close(server)
                    return
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """The client's bytes to the server, as they come."""
        with _ending(source, sink):
            while data := source.recv(65536):
                sink.sendall(data)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """The server's messages to the client, one by one, until a cut."""
        with _ending(server, client):
            while True:
                head = _exactly(server, 5)
                if head is None:
                    return
                kind, length = head[:1], struct.unpack("!I", head[1:])[0]
                body = _exactly(server, length - 4)
                if body is None:
                    return
                if kind == _COMPLETE and body == _COMMITTED and self._take():
                    return  # the commit is done on the server; the client never hears
                client.sendall(head + body)

    def _take(self) -> bool:
        with self._lock:
            if self._armed == 0:
                return False
            self._armed -= 1
            self.cuts += 1
            return True


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextmanager
def _ending(*sockets: socket.socket) -> Iterator[None]:
    """Either direction ending (or failing) ends the connection both ways."""
    try:
        yield
    except OSError:
        pass
    finally:
        for sock in sockets:
            _close(sock)
