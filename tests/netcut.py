"""A TCP proxy in front of a PostgreSQL server that can cut a connection at the moment
no client can see through: the COMMIT. Either after the server committed, before the
client hears it; or as the client sends it, before the server gets it.

Nothing is faked: the client is the real driver, the server a real PostgreSQL, and the
cut is a closed socket, as a network failure or a crash of a middlebox leaves it. The
messages are read as the frontend/backend protocol v3 frames them (a type byte and a
32-bit length; the client's first, the startup message, has no type byte). The client
must not ask for TLS or GSS encryption (``sslmode=disable``, ``gssencmode=disable``),
whose one-byte answers come before the first message.
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
#: A statement sent as a simple query, or parsed (extended protocol, as in a pipeline).
_QUERY = b"Q"
_PARSE = b"P"


class CuttingProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``. ``arm()`` makes the next
    connection on which the server reports a COMMIT done end there: the report is not
    passed on, both sockets are closed (``cuts`` counts them). ``arm(before=True)`` ends
    the next connection on which the client sends a COMMIT instead, before the server
    gets it: the server rolls the transaction back."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed = {True: 0, False: 0}  # by ``before``
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` (the server's) through this proxy, without TLS."""
        proxied = make_url(url).set(host="127.0.0.1", port=self.port)
        plain = {"sslmode": "disable", "gssencmode": "disable"}
        return proxied.update_query_dict(plain).render_as_string(hide_password=False)

    def arm(self, times: int = 1, *, before: bool = False) -> None:
        """Cut the next ``times`` COMMITs, one connection each: after the server reports
        them done, or ``before`` it gets them."""
        with self._lock:
            self._armed[before] += times

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
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                _close(client)  # the server is down: so is the connection through here
                continue
            for sock in (client, server):
                # Each message is sent on its own: without this, Nagle's algorithm holds
                # a message back until the last is acknowledged, which the other side
                # delays (40 ms a round trip, a second or more a test).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    _close(client)
                    _close(server)
                    return
                self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """The client's messages to the server, one by one, until a cut."""
        with _ending(client, server):
            head = _exactly(client, 4)  # the startup message: its length, no type
            body = None if head is None else _exactly(client, _length(head) - 4)
            if head is None or body is None:
                return
            server.sendall(head + body)
            while True:
                head = _exactly(client, 5)
                body = None if head is None else _exactly(client, _length(head[1:]) - 4)
                if head is None or body is None:
                    return
                if _commits(head[:1], body) and self._take(before=True):
                    return  # the server never gets the COMMIT
                server.sendall(head + body)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """The server's messages to the client, one by one, until a cut."""
        with _ending(server, client):
            while True:
                head = _exactly(server, 5)
                if head is None:
                    return
                body = _exactly(server, _length(head[1:]) - 4)
                if body is None:
                    return
                if head[:1] == _COMPLETE and body == _COMMITTED and self._take(before=False):
                    return  # the commit is done on the server; the client never hears
                client.sendall(head + body)

    def _take(self, *, before: bool) -> bool:
        with self._lock:
            if self._armed[before] == 0:
                return False
            self._armed[before] -= 1
            self.cuts += 1
            return True


def _length(field: bytes) -> int:
    length: int = struct.unpack("!I", field)[0]
    return length


def _commits(kind: bytes, body: bytes) -> bool:
    """Whether a client's message sends COMMIT: as a simple query, or parsed (a Parse
    message: the statement's name, then its text)."""
    if kind == _QUERY:
        text = body
    elif kind == _PARSE:
        text = body.split(b"\x00", 2)[1]
    else:
        return False
    return text.rstrip(b"\x00; \n").strip().upper() == b"COMMIT"


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
