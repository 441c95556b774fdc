"""The ``creditledger`` console script's entry point.

Loading the CLI takes about a second (SQLAlchemy, FastAPI, pandas, the catalogs); a
Ctrl-C in that second would end the process with a traceback of whatever module was
being imported. This module imports nothing of its own, so it can stop such a Ctrl-C
quietly, with the CLI's exit code for it (130), as a Ctrl-C while a command runs does.
"""

from __future__ import annotations

import sys

#: Stopped by Ctrl-C (SIGINT) while loading, or before ``serve`` served: the shell's
#: 128 + 2, as when Python dies of it.
EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from api.cli import main as run
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    run()
