"""The background jobs of a running server: hold expiry, grant expiry, monthly allocations,
and deleting idempotency keys past their retention.

Each job is a ledger use case that is safe to run twice, late, or on two processes at
once (each resolves rows with conditional updates and records allocation periods once),
so the sweeper needs no coordination: it runs them every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ledger.db import first_line
from ledger.services import Ledger
from ledger.store import is_unavailable

log = logging.getLogger("creditledger.sweeper")

#: Holds expired (or idempotency keys deleted) per transaction; a sweep runs batches
#: until one comes back short.
BATCH = 1000
#: The most batches of idempotency keys a round deletes (a backlog, after the retention
#: was shortened, is worked off over several rounds rather than delaying hold expiry).
PRUNE_BATCHES = 20


class Swept(NamedTuple):
    holds_expired: int
    grants_expired: int
    allocations_granted: int
    keys_pruned: int = 0


#: What a job's rounds are told to (``Periodic.on_round``): the job's ``task``, how long
#: the round took in seconds, and whether it ended without error.
RoundObserver = Callable[[str, float, bool], None]


class Periodic:
    """A job run every ``interval`` seconds on a daemon thread until stopped.

    A round that raises is logged and the next round runs as usual: every job given to
    this is safe to run again. Each round of the loop is timed and its outcome handed to
    ``on_round`` (the server's metrics: a job whose rounds fail, or stop, is seen there).
    """

    name = "creditledger-periodic"
    #: The job's short name, as the metrics label it.
    task = "periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: Told of each round the loop runs (the server's metrics set it).
        self.on_round: RoundObserver | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> object:
        raise NotImplementedError

    def run_round(self) -> bool:
        """One round as the loop runs it: a failure logged, not raised; timed and told
        to ``on_round``. Whether it ended without error."""
        started = time.perf_counter()
        ok = False
        try:
            self.run_once()
            ok = True
        except Exception as exc:
            if is_unavailable(exc):
                # The database is away (a restart, an outage): a line per round, not a
                # traceback; requests meanwhile are answered 503.
                log.warning(
                    "%s: round failed, the database is unavailable (%s); retrying in %s s",
                    self.name,
                    first_line(exc),
                    self.interval,
                )
            else:
                log.exception("%s: round failed; retrying in %s s", self.name, self.interval)
        if self.on_round is not None:
            self.on_round(self.task, time.perf_counter() - started, ok)
        return ok

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_round()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class Sweeper(Periodic):
    name = "creditledger-sweeper"
    task = "sweeper"

    def __init__(
        self,
        ledger: Ledger,
        interval: float,
        *,
        on_swept: Callable[[Swept], None] | None = None,
    ) -> None:
        super().__init__(interval)
        self.ledger = ledger
        self.on_swept = on_swept

    def run_once(self) -> Swept:
        """Expire due holds and grants, grant due allocations, delete old idempotency keys;
        what each did."""
        holds = 0
        while True:
            batch = self.ledger.expire_holds(limit=BATCH)
            holds += batch
            if batch < BATCH:
                break
        pruned = 0
        for _ in range(PRUNE_BATCHES):
            batch = self.ledger.prune_idempotency_keys(limit=BATCH)
            pruned += batch
            if batch < BATCH:
                break
        swept = Swept(holds, self.ledger.expire_grants(), self.ledger.roll_allocations(), pruned)
        if any(swept):
            # What the round did, for the operator (a quiet round says nothing).
            log.info(
                "swept: %s lapsed hold(s) released, %s grant(s) expired, %s monthly "
                "allocation(s) granted, %s idempotency key(s) deleted",
                *swept,
                extra=swept._asdict(),
            )
        if self.on_swept is not None:
            self.on_swept(swept)
        return swept
