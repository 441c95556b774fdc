"""A TCP proxy in front of a PostgreSQL server that can cut a connection at the moment
no client can see through: the COMMIT. Either after the server committed, before the
client hears it; or as the client sends it, before the server gets it; or, a COMMIT sent
in a pipeline done, the server ends the session (``pg_terminate_backend``) before the
pipeline's Sync and says so, while the end of the connection has yet to reach the client
(as on a loaded machine).

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from sqlalchemy.engine import make_url

#: How long the client's end of a session the server ended is left open at most.
HELD = 1.0
#: A statement's completion (CommandComplete) and the tag of a transaction committed.
_COMPLETE = b"C"
_COMMITTED = b"COMMIT\x00"
#: A statement sent as a simple query, or parsed (extended protocol, as in a pipeline).
_QUERY = b"Q"
_PARSE = b"P"
#: The end of a pipeline's (or any extended-protocol) messages: the server answers them.
_SYNC = b"S"


class CuttingProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``. ``arm()`` makes the next
    connection on which the server reports a COMMIT done end there: the report is not
    passed on, both sockets are closed (``cuts`` counts them). ``arm(before=True)`` ends
    the next connection on which the client sends a COMMIT instead, before the server
    gets it: the server rolls the transaction back. ``arm(ended=True)`` passes on the
    next COMMIT the client sends in a pipeline, holds back the Sync that follows it and
    has the server end the session instead (``end_session``, given the port the proxy
    connected to the server from): what the server says as it goes (the COMMIT done, and
    why the session ends) is passed on, and the client's socket is left open until the
    client closes it (``HELD`` seconds at most)."""

    def __init__(self, target: int, end_session: Callable[[int], object] | None = None) -> None:
        self.target = target
        self._end_session = end_session
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed = {"after": 0, "before": 0, "ended": 0}
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` (the server's) through this proxy, without TLS."""
        proxied = make_url(url).set(host="127.0.0.1", port=self.port)
        plain = {"sslmode": "disable", "gssencmode": "disable"}
        return proxied.update_query_dict(plain).render_as_string(hide_password=False)

    def arm(self, times: int = 1, *, before: bool = False, ended: bool = False) -> None:
        """Cut the next ``times`` COMMITs, one connection each: after the server reports
        them done, ``before`` it gets them, or with the session the server ``ended`` after
        a pipelined COMMIT."""
        assert not ended or self._end_session is not None, "no way to end a session"
        with self._lock:
            self._armed["ended" if ended else "before" if before else "after"] += times

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
            held = threading.Event()  # the client's end left open
            threading.Thread(
                target=self._requests, args=(client, server, held), daemon=True
            ).start()
            threading.Thread(target=self._answers, args=(server, client, held), daemon=True).start()

    def _requests(
        self, client: socket.socket, server: socket.socket, held: threading.Event
    ) -> None:
        """The client's messages to the server, one by one, until a cut."""
        with _ending(client, server):
            head = _exactly(client, 4)  # the startup message: its length, no type
            body = None if head is None else _exactly(client, _length(head) - 4)
            if head is None or body is None:
                return
            server.sendall(head + body)
            committing = False
            while True:
                head = _exactly(client, 5)
                body = None if head is None else _exactly(client, _length(head[1:]) - 4)
                if head is None or body is None:
                    return
                if _commits(head[:1], body) and self._take("before"):
                    return  # the server never gets the COMMIT
                if head[:1] == _SYNC and committing and self._take("ended"):
                    held.set()
                    assert self._end_session is not None
                    self._end_session(server.getsockname()[1])
                    # The server never gets the Sync, nor anything after it: read and
                    # dropped until the client closes its end, or for ``HELD`` seconds at
                    # most (a client waiting for the end of the connection waits no
                    # longer: the end reaches it late, not never).
                    client.settimeout(HELD)
                    while _exactly(client, 1 << 16, partial=True):
                        pass
                    return
                if head[:1] in (_SYNC, _QUERY):
                    committing = False  # the next message begins anew
                if _commits(head[:1], body) and head[:1] == _PARSE:
                    committing = True  # a COMMIT in a pipeline: its Sync follows
                server.sendall(head + body)

    def _answers(self, server: socket.socket, client: socket.socket, held: threading.Event) -> None:
        """The server's messages to the client, one by one, until a cut (or, the session
        ended, until the server closes: the client's end is then left open)."""
        try:
            with _ending(server):
                while True:
                    head = _exactly(server, 5)
                    if head is None:
                        return
                    body = _exactly(server, _length(head[1:]) - 4)
                    if body is None:
                        return
                    if head[:1] == _COMPLETE and body == _COMMITTED and self._take("after"):
                        return  # the commit is done on the server; the client never hears
                    client.sendall(head + body)
        finally:
            if not held.is_set():
                _close(client)

    def _take(self, moment: str) -> bool:
        with self._lock:
            if self._armed[moment] == 0:
                return False
            self._armed[moment] -= 1
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


def _exactly(sock: socket.socket, size: int, *, partial: bool = False) -> bytes | None:
    """``size`` bytes from ``sock`` (``partial``: what comes first, up to ``size``); None
    when it closed first."""
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        if partial:
            return chunk
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
