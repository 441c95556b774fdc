"""Identifiers: the ledger's row ids and the random tokens the API makes up.

Their randomness is the operating system's (``os.urandom``), read a block at a time: one
``getrandom`` call per block rather than per id (``uuid4`` made one per id). Each call also
lets go of Python's interpreter lock, which on a busy server another thread then holds
until it lets go in turn: under load, py-spy found the event loop in ``uuid4`` in 4-12% of
its samples, for one call per capture.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

#: Random bytes read from the operating system at a time.
BLOCK = 4096


class Entropy:
    """Random bytes from ``os.urandom``, handed out once each, a block read at a time.

    Thread-safe; a child process after ``fork`` starts with none of its parent's bytes
    (it would otherwise hand out the same ones).
    """

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        """``n`` random bytes no one else was given."""
        if not 0 < n <= self.block:
            raise ValueError(f"n must be between 1 and {self.block}, not {n}")
        with self._lock:
            at = self._at
            if at + n > len(self._bytes):
                self._bytes, at = os.urandom(self.block), 0
            self._at = at + n
            return self._bytes[at : at + n]


_entropy = Entropy()
os.register_at_fork(after_in_child=_entropy._reset)


def random_hex(n: int) -> str:
    """``n`` random bytes as ``2n`` hexadecimal digits."""
    return _entropy.take(n).hex()


_sequence = itertools.count()


def new_id() -> str:
    """A 32-hex-digit id that sorts by creation within a process (time, counter, random).

    Entries of one transaction share their posting instant; the id breaks the tie.
    """
    return f"{time.time_ns():016x}{next(_sequence) % 0x1000000:06x}{random_hex(5)}"
