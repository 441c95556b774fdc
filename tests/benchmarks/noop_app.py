"""The ceiling of the HTTP benchmark: a FastAPI endpoint that does nothing.

Same stack as the API (uvicorn, one worker, FastAPI, a synchronous route run in the
thread pool, a JSON body parsed and a JSON answer), no ledger and no key check. Served by
``python -m tests.benchmarks.noop_app --port N`` with the interpreter tuned as
``creditledger serve`` tunes its own (``api/runtime.py``), so the two differ only in the
work of their routes.
"""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/noop")
def noop(body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def main() -> None:
    import uvicorn

    from api.runtime import tune_gc
    from ledger.settings import Settings

    parser = argparse.ArgumentParser(description="Serve the no-op endpoint.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tune_gc(Settings().gc_threshold)
    uvicorn.run(app, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
