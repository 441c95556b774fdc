"""What processes spent: CPU time from Linux's ``/proc``, for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def _fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command's name, which is in
    parentheses and may hold spaces and parentheses itself: the first is the state
    (field 3)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int) -> tuple[float, float]:
    """The user and system CPU seconds process ``pid`` has used so far, all its threads."""
    fields = _fields(pid)
    tick = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15, in clock ticks.
    return int(fields[11]) / tick, int(fields[12]) / tick


def parent(pid: int) -> int:
    """The process that started process ``pid`` (its ppid, field 4)."""
    return int(_fields(pid)[1])


def tree_cpu(pid: int) -> float:
    """The CPU seconds (user and system) process ``pid`` and every process below it
    have used so far: a server with a process per connection, as PostgreSQL is. A
    process that ended meanwhile is not counted (its time goes to its parent's
    children's counters only once waited for)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = parent(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # ended while listed
    tree, grew = {pid}, True
    while grew:
        below = {child for child, up in parents.items() if up in tree} - tree
        tree |= below
        grew = bool(below)
    total = 0.0
    for member in tree:
        try:
            total += sum(process_cpu(member))
        except (OSError, ValueError, IndexError):
            continue
    return total
