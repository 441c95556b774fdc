"""The log of a real ``creditledger serve`` (``api/logs.py``): every line with its UTC
time, level and logger, as text or as JSON; with the access log, a line per request that
names it by the id its answer carries, with its outcome, duration and key."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.e2e.served import Served, free_port
from tests.e2e.test_cli import EXE

VEO_FAST = {
    "account_id": "veo-user",
    "catalog": "veo3",
    "operation": "video",
    "params": {"prompt": "A cat", "video_model": "veo3_fast"},
}
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_TEXT_LINE = re.compile(rf"({_TIME.pattern}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)")


def _key_id(key: str) -> str:
    """The id of a key ``clk_<id>_<secret>``: what the ledger and the log name it by."""
    return key.split("_")[1]


def _requests(http: httpx.Client) -> dict[str, httpx.Response]:
    """The requests whose lines the tests look for, by what they show."""
    made = {
        "created": http.post("/v1/accounts", json={"id": "veo-user", "unit": "credit"}),
        "refused": http.post(
            "/v1/authorizations", json=VEO_FAST, headers={"X-Request-ID": "gw-trace-402"}
        ),
        "no key": http.get("/v1/accounts/veo-user", headers={"Authorization": "Bearer nope"}),
        # A path whose decoded form holds a line break, and a query.
        "queried": http.get("/v1/accounts/a%0Ab/entries", params={"limit": "5"}),
        # Answered as a GET (api.routing.HeadAsGet), logged as the HEAD it is.
        "headed": http.head("/v1/accounts/veo-user"),
    }
    assert [r.status_code for r in made.values()] == [201, 402, 401, 404, 200]
    return made


def test_json_log_has_an_object_per_line_and_names_each_request_by_its_id(
    database_url: str, serve: Callable[..., Served]
) -> None:
    env = {
        "CREDITLEDGER_DATABASE_URL": database_url,
        "CREDITLEDGER_LOG_FORMAT": "json",
        "CREDITLEDGER_SWEEP_INTERVAL_SECONDS": "0.2",
    }
    server = serve(env, ["--access-log"]).start()
    assert server.admin is not None
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin}"}, timeout=30
    ) as http:
        made = _requests(http)
        # A hold left to lapse (its authorization sent twice with one idempotency key: the
        # second is a replay): the sweeper's round that releases it says so.
        once = {"Idempotency-Key": "lapse-1"}
        lapsing = [
            http.post("/v1/accounts/veo-user/topups", json={"amount": 240}),
            http.post("/v1/authorizations", json={**VEO_FAST, "ttl_seconds": 1}, headers=once),
            http.post("/v1/authorizations", json={**VEO_FAST, "ttl_seconds": 1}, headers=once),
        ]
    assert [r.status_code for r in lapsing] == [201, 201, 201]
    assert lapsing[2].headers["idempotent-replayed"] == "true"
    deadline = time.monotonic() + 30
    while '"logger": "creditledger.sweeper"' not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.1)
    server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    [swept] = [line for line in lines if line["logger"] == "creditledger.sweeper"]
    assert (swept["level"], swept["holds_expired"]) == ("INFO", 1)
    assert swept["message"].startswith("swept: 1 lapsed hold(s) released, ")
    for line in lines:
        assert _TIME.fullmatch(line["time"]), line
        assert line["level"] in ("INFO", "WARNING"), line
        assert "color_message" not in line
    # The admin key it made: a notice, its key a field of its own too.
    [notice] = [line for line in lines if line["logger"] == "creditledger.serve"]
    assert (notice["level"], notice["admin_key"]) == ("WARNING", server.admin)
    assert any(line["message"].startswith("Uvicorn running on") for line in lines)
    [start] = [line for line in lines if line["logger"] == "creditledger.server"]
    kind = "SQLite file" if database_url.startswith("sqlite") else "PostgreSQL postgresql+psycopg"
    assert start["message"].startswith(f"serving the ledger in {kind}")
    assert "veo3 seed-003" in start["message"]

    access = {line["request_id"]: line for line in lines if line["logger"] == "creditledger.access"}
    admin = f"key:{_key_id(server.admin)}"
    seen = {what: access[r.headers["x-request-id"]] for what, r in made.items()}
    refused = seen["refused"]
    assert refused["request_id"] == "gw-trace-402"  # the gateway's own id
    assert {k: refused[k] for k in ("method", "path", "query", "status", "actor")} == {
        "method": "POST",
        "path": "/v1/authorizations",
        "query": None,
        "status": 402,
        "actor": admin,
    }
    assert refused["message"].startswith("request gw-trace-402: POST /v1/authorizations -> 402 in ")
    assert isinstance(refused["duration_ms"], float)
    assert refused["duration_ms"] > 0
    assert refused["client"].startswith("127.0.0.1:")
    assert (seen["created"]["status"], seen["created"]["actor"]) == (201, admin)
    assert (seen["no key"]["status"], seen["no key"]["actor"]) == (401, None)
    queried = seen["queried"]
    assert (queried["path"], queried["query"], queried["status"]) == (
        "/v1/accounts/a%0Ab/entries",
        "limit=5",
        404,
    )
    first, again = (access[r.headers["x-request-id"]] for r in lapsing[1:])
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert " -> 201 replayed in " in again["message"]
    headed = seen["headed"]
    assert (headed["method"], headed["status"], headed["actor"]) == ("HEAD", 200, admin)
    assert len(access) == len(made) + len(lapsing)


def test_text_log_by_default_one_line_per_event_without_requests(
    tmp_path: Path, serve: Callable[..., Served]
) -> None:
    """By default: text lines, each with its time, level and logger; no line per request.
    With ``--access-log``, a request's line, its path's decoded line break not breaking
    it (no forged line)."""
    database = {"CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    quiet = serve(database).start()
    assert quiet.admin is not None
    with httpx.Client(
        base_url=quiet.url, headers={"Authorization": f"Bearer {quiet.admin}"}, timeout=30
    ) as http:
        _requests(http)
    quiet.stop()
    text = quiet.log.read_text()
    parsed = [_TEXT_LINE.fullmatch(line) for line in text.splitlines()]
    assert all(parsed), text
    loggers = {found.group(3) for found in parsed if found}
    assert loggers == {"creditledger.serve", "creditledger.server", "uvicorn.error"}
    # Which file it serves, by its whole path (the default is relative to where it started).
    where = (
        f"INFO creditledger.server: serving the ledger in SQLite file {tmp_path / 'ledger.db'}; "
    )
    assert where + "catalog versions in force: cosmic " in text
    assert f"Admin key (shown this once, store it now): {quiet.admin}" in text

    logged = serve(database, ["--access-log"]).start()
    with httpx.Client(
        base_url=logged.url, headers={"Authorization": f"Bearer {quiet.admin}"}, timeout=30
    ) as http:
        r = http.get("/v1/accounts/a%0Ab/entries", params={"limit": "5"})
    assert r.status_code == 404
    logged.stop()
    lines = logged.log.read_text().splitlines()
    assert all(_TEXT_LINE.fullmatch(line) for line in lines), lines
    [line] = [line for line in lines if " creditledger.access: " in line]
    admin = f"key:{_key_id(quiet.admin)}"
    made = r.headers["x-request-id"]
    assert f"request {made}: GET /v1/accounts/a%0Ab/entries?limit=5 -> 404 in " in line
    assert f" ms ({admin}, client 127.0.0.1:" in line


def _serve_quietly(
    env: dict[str, str], folder: Path, *options: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``serve`` at a level that does not log uvicorn's "running" line: started once
    ``/healthz`` answers."""
    port = free_port()
    log = folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [EXE, "serve", "--port", str(port), "--access-log", *options],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("CREDITLEDGER_")},
                **env,
            },
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_a_quieter_level_still_shows_the_admin_key_it_made(tmp_path: Path) -> None:
    """``CREDITLEDGER_LOG_LEVEL=error`` leaves out uvicorn's lines, but not the notice of
    the admin key made at the first start (it is shown once), nor the request lines asked
    for with ``--access-log``."""
    env = {
        "CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "CREDITLEDGER_LOG_LEVEL": "error",
    }
    proc, url, log = _serve_quietly(env, tmp_path)
    try:
        text = log.read_text()
        key = re.search(r"store it now\): (\S+)", text)
        assert key is not None, text
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        assert httpx.get(f"{url}/v1/accounts", headers=headers, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    notice, *requests = log.read_text().splitlines()
    assert " WARNING creditledger.serve: No admin key was configured" in notice
    assert requests, "no request line"
    assert all(" INFO creditledger.access: request " in line for line in requests), requests
    assert " GET /v1/accounts -> 200 in " in requests[-1]


def test_log_options_override_the_environment(tmp_path: Path) -> None:
    """``--log-format`` and ``--log-level`` win over the environment's settings."""
    env = {
        "CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "CREDITLEDGER_LOG_FORMAT": "text",
        "CREDITLEDGER_LOG_LEVEL": "info",
    }
    proc, url, log = _serve_quietly(env, tmp_path, "--log-format", "json", "--log-level", "error")
    try:
        made = json.loads(log.read_text().splitlines()[0])
        headers = {"Authorization": f"Bearer {made['admin_key']}"}
        assert httpx.get(f"{url}/v1/accounts", headers=headers, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["level"], line["logger"]) for line in lines[:1]] == [
        ("WARNING", "creditledger.serve")
    ]
    assert {line["logger"] for line in lines[1:]} == {"creditledger.access"}  # no INFO else
    assert (lines[-1]["path"], lines[-1]["status"]) == ("/v1/accounts", 200)


def test_a_log_setting_not_known_is_refused_naming_it(tmp_path: Path) -> None:
    refused = (
        ("CREDITLEDGER_LOG_FORMAT", "xml", "'text' or 'json'"),
        ("CREDITLEDGER_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
        ("--log-format", "xml", "'text' or 'json'"),
        ("--log-level", "loud", "'debug', 'info', 'warning' or 'error'"),
    )
    for name, value, allowed in refused:
        option = [name, value] if name.startswith("--") else []
        done = subprocess.run(
            [EXE, "serve", "--port", str(free_port()), *option],
            env={
                **os.environ,
                "CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
                **({} if option else {name: value}),
            },
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        error: dict[str, Any] = json.loads(done.stderr)
        assert (error["error"], error["field"]) == ("invalid_configuration", name)
        assert allowed in error["message"], error
    assert not (tmp_path / "ledger.db").exists()  # refused before it touched anything


def test_a_log_reader_that_stalls_does_not_stall_the_requests(tmp_path: Path) -> None:
    """stderr a pipe nobody reads for a while (a log shipper that stalled, a full disk
    behind it): the server answers on, its lines waiting; read again, they are all
    there, in order. Written on the request's own thread, the 400th line or so filled
    the pipe and every request after it waited for a reader."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [EXE, "serve", "--port", str(port), "--access-log"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CREDITLEDGER_")},
            "CREDITLEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "CREDITLEDGER_ADMIN_KEY": "k" * 40,
        },
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                assert proc.poll() is None
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            # Each line about 130 bytes: some 260 KB, four times what a pipe holds.
            headers = {"Authorization": f"Bearer {'k' * 40}"}
            for n in range(2000):
                assert http.get(f"/v1/accounts/w{n}", headers=headers).status_code == 404
            # A pipe holds some 500 of them: the rest wait, and /metrics says so.
            scraped = http.get("/metrics").text
            waiting = re.search(r"^creditledger_log_lines_waiting (\S+)$", scraped, re.M)
            assert waiting is not None, scraped
            assert float(waiting.group(1)) > 1000, scraped
            assert "\ncreditledger_log_lines_dropped_total 0.0\n" in scraped
    finally:
        proc.send_signal(signal.SIGTERM)
        with proc.stderr:
            written = proc.stderr.read().decode()
        ended = proc.wait(timeout=30)
    asked = re.findall(r"GET /v1/accounts/w(\d+) -> 404 in ", written)
    assert asked == [str(n) for n in range(2000)], written[-2000:]
    assert "dropped" not in written
    # Ended by the signal, as ever, and its last lines still written: uvicorn raises the
    # SIGTERM again on its way out, where the default would end it unwritten.
    assert ended == -signal.SIGTERM
    assert written.splitlines()[-1].endswith(
        f"INFO uvicorn.error: Finished server process [{proc.pid}]"
    )
