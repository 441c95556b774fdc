"""Benchmark: authorize+capture over HTTP against a no-op endpoint on the same stack.

    apt-get install -y wrk
    .venv/bin/python -m tests.benchmarks.http [--connections 32] [--duration 10] [--rounds 3]
        [--database sqlite|postgresql] [--accounts 1] [--database-threads N]

In one run, on this machine:

* **creditledger** -- ``creditledger serve`` (one uvicorn worker, the embedded SQLite
  default in a temporary folder; with ``--database postgresql`` a fresh local PostgreSQL
  with its durable defaults, started from the installed binaries), driven by wrk: each
  connection authorizes a Veo3 request (unique ``Idempotency-Key``) and captures it with
  its usage, over and over, on one wallet (``--accounts N``: round robin over N wallets);
* **ceiling** -- a no-op FastAPI endpoint (``tests/benchmarks/noop_app.py``) on the same
  stack (uvicorn, one worker, synchronous route, JSON in and out, the interpreter's
  garbage collector tuned as ``serve`` tunes it), same wrk settings.

Rounds alternate the two servers; the figures are medians. Reported: authorizations per
second (captures are extra requests on top), all requests per second, latency
percentiles over every request, and the CPU time each server process spent per request
while wrk ran (all its threads, from ``/proc``), with the share of it spent in the kernel:
where the time goes when a server is CPU-bound, which a rate alone does not say. The
issue's target: authorizations per second at least 50% of the ceiling's requests per
second, and p99 at most 25 ms at 32 connections.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.benchmarks.proc import process_cpu
from tests.pg import TempPostgres, find_bin

HERE = Path(__file__).parent
EXE = Path(sys.executable).parent / "creditledger"
#: The wallets' ids: ``bench-0``, ``bench-1``, ...
ACCOUNT = "bench-{}"
REQUEST = {
    "account_id": ACCOUNT.format(0),
    "catalog": "veo3",
    "operation": "video",
    "params": {"prompt": "A cat playing in a garden", "video_model": "veo3_fast"},
}

CAPTURE = {"status": "COMPLETED", "usage": {"videos": 1}}

# wrk's script: per thread, a queue of authorizations waiting for their capture.
PAIRS_LUA = """
local counter = 0
local pending = {}
auths, captures, errors = 0, 0, 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function request()
  local id = table.remove(pending)
  if id then
    return wrk.format("POST", "/v1/authorizations/" .. id .. "/capture", HEADERS, CAPTURE)
  end
  counter = counter + 1
  local headers = {}
  for k, v in pairs(HEADERS) do headers[k] = v end
  headers["Idempotency-Key"] = "bench-" .. RUN .. "-" .. tid .. "-" .. counter
  local account = (tid + counter) % ACCOUNTS
  local body = AUTHORIZE_HEAD .. account .. AUTHORIZE_TAIL
  return wrk.format("POST", "/v1/authorizations", headers, body)
end

function response(status, headers, body)
  if status == 201 then
    auths = auths + 1
    local id = body:match('"id":"([^"]+)"')
    table.insert(pending, id)
  elseif status == 200 then
    captures = captures + 1
  else
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local a, c, e = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("auths"); c = c + t:get("captures"); e = e + t:get("errors")
  end
  io.write(string.format("RESULT auths=%d captures=%d errors=%d\\n", a, c, e))
end
"""

NOOP_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _serve(
    command: list[str], env: dict[str, str], url: str, cwd: Path, log: Path
) -> Iterator[int]:
    """The server ``command`` running, answering ``url``; yields its process id. Its log
    (stderr) is appended to ``log``, as a server's log is kept."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{command} did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wrk(url: str, script: str, connections: int, duration: int, server: int) -> dict[str, Any]:
    """wrk's figures for ``script`` against ``url``, with the CPU time the server process
    (``server``, a pid) spent per request meanwhile, and the share of it in the kernel."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    user, system = process_cpu(server)
    try:
        ran = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{duration}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if ran.returncode != 0:
            raise RuntimeError(f"wrk failed: {ran.stderr or ran.stdout}")
        out = ran.stdout
        user_after, system_after = process_cpu(server)
        used = (user_after - user, system_after - system)
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {}
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        latency[f"p{pct}_ms"] = round(float(m.group(1)) * scale, 2)
    result: dict[str, Any] = {"requests_per_s": rps, **latency}
    done = re.search(r"(\d+) requests in", out)
    if done and int(done.group(1)):
        result["server_cpu_ms_per_request"] = round(sum(used) * 1000 / int(done.group(1)), 3)
        result["server_cpu_system_share"] = round(used[1] / sum(used), 3) if sum(used) else 0.0
    m = re.search(r"RESULT auths=(\d+) captures=(\d+) errors=(\d+)", out)
    if m:
        result.update(
            authorizations_per_s=round(int(m.group(1)) / duration, 1),
            captures=int(m.group(2)),
            errors=int(m.group(3)),
        )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the ledger's database (default: the embedded SQLite)",
    )
    parser.add_argument(
        "--accounts", type=int, default=1, help="wallets the authorizations go round (default 1)"
    )
    parser.add_argument(
        "--database-threads",
        type=int,
        default=None,
        help="the server's CREDITLEDGER_DATABASE_THREADS (default: its own default)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="serve with its access log (a line per request, to a file): what it costs",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.accounts < 1:
        parser.error("--accounts must be at least 1")
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk")
        return 2
    if args.database == "sqlite":
        return _run(args, None)
    bindir = find_bin()
    if bindir is None:
        print("postgresql: no server binaries installed (apt-get install postgresql)")
        return 2
    server = TempPostgres(bindir, durable=True).start()
    try:
        return _run(args, server.url())
    finally:
        server.stop()


def _run(args: argparse.Namespace, database_url: str | None) -> int:
    """The rounds against the ledger on ``database_url`` (None: a SQLite file in the
    run's temporary folder) and the no-op, then the summary."""

    admin = f"bench-admin-{secrets.token_urlsafe(16)}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CREDITLEDGER_")}
    ledger_results, noop_results = [], []
    with tempfile.TemporaryDirectory(prefix="creditledger-http-") as folder:
        work = Path(folder)
        env = {
            **base,
            "CREDITLEDGER_DATABASE_URL": database_url or f"sqlite:///{work / 'creditledger.db'}",
            "CREDITLEDGER_ADMIN_KEY": admin,
        }
        if args.database_threads is not None:
            env["CREDITLEDGER_DATABASE_THREADS"] = str(args.database_threads)
        lport, nport = _port(), _port()
        lurl, nurl = f"http://127.0.0.1:{lport}", f"http://127.0.0.1:{nport}"
        ledger_cmd = [str(EXE), "serve", "--port", str(lport)]
        if args.access_log:
            ledger_cmd.append("--access-log")
        noop_cmd = [sys.executable, "-m", "tests.benchmarks.noop_app", "--port", str(nport)]
        auth = {"Authorization": f"Bearer {admin}"}
        headers = (
            "{"
            + ", ".join(
                f"[{_lua_string(k)}] = {_lua_string(v)}"
                for k, v in {**auth, "Content-Type": "application/json"}.items()
            )
            + "}"
        )
        # The authorization's body around its wallet's number (ACCOUNT's ``{}``).
        head, tail = json.dumps({**REQUEST, "account_id": ACCOUNT}).split("{}")
        for round_no in range(args.rounds):
            with _serve(ledger_cmd, env, f"{lurl}/healthz", work, work / "serve.log") as pid:
                if round_no == 0:
                    with httpx.Client(base_url=lurl, headers=auth) as http:
                        for n in range(args.accounts):
                            account = ACCOUNT.format(n)
                            http.post("/v1/accounts", json={"id": account, "unit": "credit"})
                            http.post(f"/v1/accounts/{account}/topups", json={"amount": 10**15})
                script = (
                    f"HEADERS = {headers}\n"
                    f"RUN = {_lua_string(str(round_no))}\n"
                    f"ACCOUNTS = {args.accounts}\n"
                    f"AUTHORIZE_HEAD = {_lua_string(head)}\n"
                    f"AUTHORIZE_TAIL = {_lua_string(tail)}\n"
                    f"CAPTURE = {_lua_string(json.dumps(CAPTURE))}\n" + PAIRS_LUA
                )
                ledger_results.append(_wrk(lurl, script, args.connections, args.duration, pid))
            cwd = HERE.parent.parent
            noop_env = {**base, "PYTHONPATH": str(cwd)}
            with _serve(noop_cmd, noop_env, f"{nurl}/docs", cwd, work / "noop.log") as pid:
                script = f"BODY = {_lua_string(json.dumps(REQUEST))}\n" + NOOP_LUA
                noop_results.append(
                    _wrk(f"{nurl}/noop", script, args.connections, args.duration, pid)
                )

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    def cpu(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return round(statistics.median(values), 3) if values else None

    auths = med(ledger_results, "authorizations_per_s")
    ceiling = med(noop_results, "requests_per_s")
    summary = {
        "database": args.database,
        "database_threads": args.database_threads,
        "accounts": args.accounts,
        "connections": args.connections,
        "authorizations_per_s": auths,
        "ledger_requests_per_s": med(ledger_results, "requests_per_s"),
        "ledger_p50_ms": med(ledger_results, "p50_ms"),
        "ledger_p99_ms": med(ledger_results, "p99_ms"),
        "noop_requests_per_s": ceiling,
        "noop_p99_ms": med(noop_results, "p99_ms"),
        "ledger_cpu_ms_per_request": cpu(ledger_results, "server_cpu_ms_per_request"),
        "ledger_cpu_system_share": cpu(ledger_results, "server_cpu_system_share"),
        "noop_cpu_ms_per_request": cpu(noop_results, "server_cpu_ms_per_request"),
        "noop_cpu_system_share": cpu(noop_results, "server_cpu_system_share"),
        "ratio": round(auths / ceiling, 3),
        "ledger_rounds": ledger_results,
        "noop_rounds": noop_results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{args.rounds} rounds x {args.duration} s, {args.connections} connections, "
        f"{args.database}, {args.accounts} wallet(s), medians; "
        "target: authorizations/s >= 50% of the no-op's requests/s, p99 <= 25 ms"
    )
    print(f"{'':28} {'auth/s':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"{'creditledger (auth+capture)':28} {auths:9.1f} {summary['ledger_requests_per_s']:9.1f} "
        f"{summary['ledger_p50_ms']:8.2f} {summary['ledger_p99_ms']:8.2f}"
    )
    print(
        f"{'no-op endpoint (ceiling)':28} {'':>9} {ceiling:9.1f} {'':>8} "
        f"{summary['noop_p99_ms']:8.2f}"
    )
    print(f"ratio authorizations/s : ceiling = {summary['ratio']:.3f}")
    for name, who in (("creditledger", "ledger"), ("no-op", "noop")):
        per_request = summary[f"{who}_cpu_ms_per_request"]
        system = summary[f"{who}_cpu_system_share"]
        if per_request is not None and system is not None:
            print(
                f"{name} server CPU per request: {per_request:.3f} ms, "
                f"{system * 100:.0f}% of it in the kernel"
            )
    errors = sum(r.get("errors", 0) for r in ledger_results)
    if errors:
        print(f"WARNING: {errors} ledger requests failed (not 200/201)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
