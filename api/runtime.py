"""The interpreter of a serving process: keep the garbage collector off the request path.

CPython's cycle collector runs a young-generation pass every 700 net allocations and,
from time to time, a full pass over every tracked object. A serving process holds a large,
long-lived heap from its imports (FastAPI, pydantic, SQLAlchemy, pandas, ...) that those
full passes traverse again and again: under load they were the long tail of the latency
(p99 about 137 ms against 40 ms without them, `tests/benchmarks/http.py`, 32 connections).

``tune_gc`` collects once after start-up, freezes what is left (moved to a permanent
generation that collections skip; nothing of it is freed or leaked by that) and spaces the
young-generation passes out. Reference counting still frees acyclic garbage at once; only
cyclic garbage waits for the next, rarer pass.
"""

from __future__ import annotations

import gc


def tune_gc(threshold: int) -> None:
    """Freeze the start-up heap; with ``threshold`` > 0, run a generation-0 collection
    every ``threshold`` net allocations (0 keeps Python's default)."""
    gc.collect()
    gc.freeze()
    if threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)
