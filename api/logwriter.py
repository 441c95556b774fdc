"""The log's writer: lines to stderr from a thread of their own (``Stderr``), so that no
request waits on a log reader. Kept apart from ``api.logs`` (the formats and the request
log, which need the API's dependencies), so that ``api.metrics`` can read its counts."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import TextIO

#: The lines held for stderr while it does not keep up (some 1-4 MB): past them, new
#: lines are dropped, and counted, rather than a request waiting for a log reader.
HELD_LINES = 10_000
#: How long exiting waits for the held lines to be written.
DRAIN_SECONDS = 5.0


class Stderr(logging.Handler):
    """Lines to stderr, written by a thread of their own.

    A request formats its line and hands it over; it never waits on the write. Where
    stderr is a pipe its reader stopped reading (a log shipper that stalled, the disk
    behind it full), a write blocks once the pipe is full: written on the event loop's
    thread, that stopped every request with it. Up to ``capacity`` lines wait here, in
    order; past that, new lines are dropped, and where they were a WARNING line says how
    many (``creditledger.log``). At exit (``logging.shutdown``) the lines waiting are
    written, for up to ``DRAIN_SECONDS``."""

    def __init__(self, capacity: int = HELD_LINES, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = sys.stderr if stream is None else stream
        # A line, with the count of the lines dropped just before it; or None: stop.
        self._lines: queue.Queue[tuple[int, str] | None] = queue.Queue(capacity)
        self._dropped = 0  # since the last count handed over; emit() holds self.lock
        #: Lines dropped since the start.
        self.dropped = 0
        self._writer = threading.Thread(
            target=self._write_lines, name="creditledger-log", daemon=True
        )
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._lines.put_nowait((self._dropped, line))
        except queue.Full:
            self._dropped += 1
            self.dropped += 1
        else:
            self._dropped = 0

    def _write_lines(self) -> None:
        while True:
            item = self._lines.get()
            taken = 1
            try:
                if item is None:
                    return
                self._write(item)
                # What else waits, then one flush for them all.
                while True:
                    try:
                        item = self._lines.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    if item is None:
                        self.stream.flush()
                        return
                    self._write(item)
                self.stream.flush()
            except Exception:  # a closed stderr: nowhere left to say so
                pass
            finally:
                for _ in range(taken):
                    self._lines.task_done()

    def _write(self, item: tuple[int, str]) -> None:
        dropped, line = item
        if dropped:
            notice = logging.makeLogRecord(
                {
                    "name": "creditledger.log",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": "%d log line(s) dropped here: stderr did not keep up",
                    "args": (dropped,),
                    "lines_dropped": dropped,
                }
            )
            self.stream.write(self.format(notice) + "\n")
        self.stream.write(line + "\n")

    def waiting(self) -> int:
        """Lines handed over, not yet written (or being written)."""
        return self._lines.unfinished_tasks

    def flush(self) -> None:
        """Wait, up to ``DRAIN_SECONDS``, until the lines handed over are written."""
        self._drained(DRAIN_SECONDS)

    def _drained(self, timeout: float) -> bool:
        """Whether the lines handed over were written within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lines.all_tasks_done:
            while self._lines.unfinished_tasks and self._writer.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lines.all_tasks_done.wait(left)
        return True

    def close(self) -> None:
        """Write what waits (for up to ``DRAIN_SECONDS``), then stop the writer; where
        stderr does not take it, the writer (a daemon thread) ends with the process."""
        if self._writer.is_alive() and self._drained(DRAIN_SECONDS):
            try:
                # Drained, so there is room, unless other threads filled it since: then
                # the writer is left to end with the process, not waited for.
                self._lines.put(None, timeout=DRAIN_SECONDS)
            except queue.Full:
                pass
            else:
                self._writer.join(DRAIN_SECONDS)
        super().close()


def flush() -> None:
    """Write the log's waiting lines before something else writes to stderr directly
    (a command's error), so that they come out in the order they happened."""
    for handler in logging.getLogger().handlers:
        handler.flush()
