"""Monthly reports through the HTTP API: ask, follow, download, on each database."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from ledger.models import report_jobs
from reports.jobs import Output
from tests.e2e.conftest import Api
from tests.factories import Traffic


def run_worker(api: Api) -> int:
    """One round of the report worker ``creditledger serve`` runs."""
    ran: int = api.app.state.report_worker.run_once()
    return ran


def jobs(api: Api) -> int:
    with api.ledger.db.transaction(write=False) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(report_jobs)).scalar_one())


def test_ask_follow_and_download_every_format(api: Api, traffic: Traffic) -> None:
    ids = {}
    for fmt in ("csv", "json", "parquet", "html"):
        r = api.post("/v1/reports", {"month": "2026-10", "format": fmt})
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["status"], body["stage"], body["progress"]) == ("queued", "queued", 0)
        assert (body["attempts"], body["origin"], body["error"]) == (0, "request", None)
        assert body["download_url"] is None
        ids[fmt] = body["id"]
        # The same report while it is queued: the same job.
        again = api.post("/v1/reports", {"month": "2026-10", "format": fmt})
        assert again.status_code == 202
        assert again.json()["id"] == body["id"]
    download = api.get(f"/v1/reports/{ids['csv']}/download")
    assert download.status_code == 409
    assert download.json()["error"] == "report_not_ready"

    # The worker also queues October's month-end report (JSON, all wallets, UTC): that is
    # the JSON job asked for above, so it is not made twice.
    assert run_worker(api) == 4
    for fmt, job_id in ids.items():
        r = api.get(f"/v1/reports/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        assert (job["status"], job["progress"], job["format"]) == ("succeeded", 100, fmt)
        assert job["summary"]["reconciled"] is True
        assert job["summary"]["accounts"] == len(traffic.wallets)
        assert job["download_url"].endswith(f"/v1/reports/{job_id}/download")

    csv = api.get(f"/v1/reports/{ids['csv']}/download")
    assert csv.headers["content-type"].startswith("text/csv")
    assert 'filename="statement-2026-10.csv"' in csv.headers["content-disposition"]
    lines = pd.read_csv(io.StringIO(csv.text))
    closing = lines[(lines["section"] == "balance") & (lines["item"] == "closing")]
    for row in closing.itertuples():
        assert (
            row.amount
            == api.ledger.balance(
                str(row.account_id),
                as_of=pd.Timestamp("2026-10-31T23:59:59.999999Z").to_pydatetime(),
            ).balance
        )

    parquet = api.get(f"/v1/reports/{ids['parquet']}/download")
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pd.read_parquet(io.BytesIO(parquet.content))
    assert set(table["account_id"]) == set(traffic.wallets)

    report = api.get(f"/v1/reports/{ids['json']}/download")
    assert report.headers["content-type"] == "application/json"
    assert json.loads(report.content)["reconciled"] is True

    page = api.get(f"/v1/reports/{ids['html']}/download")
    assert page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text
    assert "Daily usage by model" in page.text


def test_the_worker_makes_last_months_report_unasked_and_once(api: Api, traffic: Traffic) -> None:
    """Once a month has closed, the report worker queues and makes its month-end report
    (every wallet, UTC, JSON) with nobody asking; its next rounds make nothing more."""
    assert jobs(api) == 0
    assert run_worker(api) == 1
    with api.ledger.db.transaction(write=False) as conn:
        (made,) = conn.execute(sa.select(report_jobs)).all()
    assert (made.origin, made.month, made.timezone, made.format, made.account_id) == (
        "month_end",
        "2026-10",
        "UTC",
        "json",
        None,
    )
    job = api.get(f"/v1/reports/{made.id}").json()
    assert (job["status"], job["summary"]["accounts"]) == ("succeeded", len(traffic.wallets))
    assert api.get(f"/v1/reports/{made.id}/download").status_code == 200
    assert (run_worker(api), run_worker(api), jobs(api)) == (0, 0, 1)


def test_a_file_is_sent_gzip_compressed_to_a_client_that_takes_it(
    api: Api, traffic: Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CSV, JSON and HTML are stored compressed and sent so where ``Accept-Encoding``
    takes gzip (the body then decodes to the same file); otherwise, and for Parquet, the
    file as rendered. Each representation has its own ETag."""
    ids = {}
    for fmt in ("json", "parquet"):
        ids[fmt] = api.post("/v1/reports", {"month": "2026-10", "format": fmt}).json()["id"]
    assert run_worker(api) == 2
    path = f"/v1/reports/{ids['json']}/download"
    plain = api.get(path, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200, plain.text
    assert "content-encoding" not in plain.headers
    # Decompressed as it is sent, a chunk at a time: no Content-Length, the whole file.
    assert "content-length" not in plain.headers
    assert hashlib.sha256(plain.content).hexdigest() == plain.headers["etag"].strip('"')
    assert json.loads(plain.content)["reconciled"] is True
    assert plain.headers["vary"] == "Accept-Encoding"
    sha = plain.headers["etag"].strip('"')
    for accepted in ("gzip", "br;q=1.0, *;q=0.5", "x-gzip", "deflate, GZIP;q=0.2"):
        packed = api.get(path, headers={"Accept-Encoding": accepted})
        assert packed.status_code == 200, packed.text
        assert packed.headers["content-encoding"] == "gzip", accepted
        assert packed.headers["etag"] == f'"{sha}-gzip"'
        assert packed.content == plain.content  # decoded by the client
        assert int(packed.headers["content-length"]) * 5 < len(plain.content)
    for refused in ("gzip;q=0, *", "br", "*;q=0", "gzip;q=zero", ""):
        sent = api.get(path, headers={"Accept-Encoding": refused})
        assert "content-encoding" not in sent.headers, refused
        assert sent.content == plain.content
        assert sent.headers["etag"] == f'"{sha}"'
    # HEAD sizes the download as GET would send it, streamed or stored, without the file;
    # a streamed one is not decompressed for a body the server would drop.
    inflated = []
    chunks = Output.chunks

    def counted(self: Output) -> Iterator[bytes]:
        inflated.append(self.filename)
        return chunks(self)

    monkeypatch.setattr(Output, "chunks", counted)
    for accepted, etag in (("identity", f'"{sha}"'), ("gzip", f'"{sha}-gzip"')):
        got = api.get(path, headers={"Accept-Encoding": accepted})
        head = api.call("HEAD", path, headers={"Accept-Encoding": accepted})
        assert (head.status_code, head.content, head.headers["etag"]) == (200, b"", etag)
        for name in ("content-length", "content-type", "vary", "content-disposition"):
            assert head.headers.get(name) == got.headers.get(name), (accepted, name)
    assert len(inflated) == 1  # the GET's, sent plain
    parquet = api.get(f"/v1/reports/{ids['parquet']}/download", headers={"Accept-Encoding": "gzip"})
    assert parquet.status_code == 200
    assert "content-encoding" not in parquet.headers
    assert "vary" not in parquet.headers
    assert parquet.headers["etag"] == f'"{hashlib.sha256(parquet.content).hexdigest()}"'


def test_a_customer_reports_on_its_own_wallet_only(api: Api, traffic: Traffic) -> None:
    acme = api.customer("acme")
    r = api.post("/v1/reports", {"month": "2026-10", "format": "json"}, as_key=acme)
    assert r.status_code == 202, r.text
    assert r.json()["account_id"] == "acme"
    mine = r.json()["id"]
    other = api.post("/v1/reports", {"month": "2026-10", "account_id": "tokyo"}, as_key=acme)
    assert other.status_code == 404
    theirs = api.post("/v1/reports", {"month": "2026-10", "account_id": "tokyo"}).json()["id"]
    run_worker(api)
    got = api.get(f"/v1/reports/{mine}/download", as_key=acme)
    assert got.status_code == 200
    body = json.loads(got.content)
    assert [a["account_id"] for a in body["accounts"]] == ["acme"]
    assert api.get(f"/v1/reports/{theirs}", as_key=acme).status_code == 404
    assert api.get(f"/v1/reports/{theirs}/download", as_key=acme).status_code == 404
    assert api.post("/v1/reports", {"month": "2026-10"}, as_key="service").status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"month": "2026-13"}, 422, "month"),
        ({"month": "Oct 2026"}, 422, "month"),
        ({"month": "2026-11"}, 422, "month"),  # not over yet
        ({"month": 202610}, 422, "month"),
        ({"month": "2026-10", "format": "xlsx"}, 422, "format"),
        ({"month": "2026-10", "timezone": "Mars/Olympus"}, 422, "timezone"),
        ({"month": "2026-10", "timezone": "../../etc/passwd"}, 422, "timezone"),
        ({"month": "2026-10", "timezone": "localtime"}, 422, "timezone"),
        ({"month": "2026-10", "account_id": "nobody"}, 404, "account_id"),
        # Opened on November 21: its October is refused now, not queued to fail.
        ({"month": "2026-10", "account_id": "acme"}, 404, "account_id"),
        ({"month": "2026-10", "colour": "blue"}, 422, "colour"),
        ({}, 422, "month"),
    ],
)
def test_bad_requests_name_the_field_and_queue_nothing(
    api: Api, body: dict[str, object], status: int, field: str
) -> None:
    api.wallet("acme", "credit")
    r = api.post("/v1/reports", body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    if field == "format":
        assert all(f in r.json()["allowed"] for f in ("csv", "json", "parquet", "html"))
    assert jobs(api) == 0


def test_unknown_report_is_404(api: Api) -> None:
    assert api.get("/v1/reports/nope").status_code == 404
    assert api.get("/v1/reports/nope/download").status_code == 404
