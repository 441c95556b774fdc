"""The ceiling of the HTTP benchmark: a FastAPI endpoint that does nothing.

Same stack as the API (uvicorn, one worker, FastAPI, a synchronous route run in the
thread pool, a JSON body parsed and a JSON answer), no ledger and no key check.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/noop")
def noop(body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}
