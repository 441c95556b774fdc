"""Monthly reports: ask for one (a durable job), follow it, download its file."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import JournalReader, ServicesDep, ensure_own
from api.errors import documented
from api.routing import JsonRoute, is_head
from api.schemas import ReportCreate, ReportPublic
from ledger.keys import Principal
from reports.jobs import JobView

router = APIRouter(prefix="/v1", route_class=JsonRoute, tags=["reports"])

_ERRORS = documented(401, 403, 404, 409, 422)


def _public(job: JobView, request: Request) -> ReportPublic:
    url = str(request.url_for("download_report", id=job.id)) if job.status == "succeeded" else None
    return ReportPublic(**job.model_dump(), download_url=url)


def _owner(caller: Principal) -> str | None:
    return caller.account if caller.role == "customer" else None


@router.post("/reports", status_code=202, response_model=ReportPublic, responses=_ERRORS)
async def create_report(
    body: ReportCreate, caller: JournalReader, services: ServicesDep, request: Request
) -> ReportPublic:
    """Queue a monthly statement; the identical one already queued or running is returned
    instead. The server's report worker runs it: follow ``GET /v1/reports/{id}``."""
    account_id = body.account_id
    if caller.role == "customer":
        account_id = account_id or caller.account
        ensure_own(caller, str(account_id))
    job, _created = await run_in_threadpool(
        services.reports.db.repeatable,
        services.reports.request,
        body.month,
        body.format,
        account_id=account_id,
        timezone=body.timezone,
        requested_by=caller.key_id,
    )
    return _public(job, request)


@router.get("/reports/{id}", response_model=ReportPublic, responses=_ERRORS)
async def read_report(
    id: str, caller: JournalReader, services: ServicesDep, request: Request
) -> ReportPublic:
    """A report job: status, progress, error, and once done its summary and download URL."""
    job = await run_in_threadpool(
        services.reports.db.reading, services.reports.get, id, owner=_owner(caller)
    )
    return _public(job, request)


@router.get(
    "/reports/{id}/download",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "The report file",
            "content": {
                "text/csv": {},
                "application/json": {},
                "application/vnd.apache.parquet": {},
                "text/html": {},
            },
        },
    },
)
async def download_report(
    id: str, caller: JournalReader, services: ServicesDep, request: Request
) -> Response:
    """The file of a succeeded report (409 while it is queued or running, or if it failed).
    CSV, JSON and HTML files are sent gzip-compressed (``Content-Encoding: gzip``) to a
    client whose ``Accept-Encoding`` takes gzip, as they are stored."""
    out = await run_in_threadpool(
        services.reports.db.reading, services.reports.output, id, owner=_owner(caller)
    )
    headers = {"Content-Disposition": f'attachment; filename="{out.filename}"'}
    etag = out.sha256
    if out.encoding is not None:
        headers["Vary"] = "Accept-Encoding"
        if not accepts(request.headers.get("accept-encoding", ""), out.encoding):
            # Decompressed as it is sent, a chunk at a time (no Content-Length: the size
            # is known only once sent): never the whole file in memory. A HEAD, whose
            # body the server drops, has none made.
            headers["ETag"] = f'"{etag}"'
            body = iter(()) if is_head(request) else out.chunks()
            return StreamingResponse(body, media_type=out.content_type, headers=headers)
        # Sent as stored: the representation has its own strong validator.
        headers["Content-Encoding"] = out.encoding
        etag = f"{out.sha256}-{out.encoding}"
    headers["ETag"] = f'"{etag}"'
    return Response(out.data, media_type=out.content_type, headers=headers)


def accepts(header: str, coding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes ``coding``: named, or by ``*``, with a
    weight above 0 (RFC 9110, 12.5.3; ``gzip;q=0`` refuses it)."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if name:
            weights[name.lower()] = weight
    aliases = (coding, "x-gzip") if coding == "gzip" else (coding,)
    named = [weights[a] for a in aliases if a in weights]
    weight = named[0] if named else weights.get("*", 0.0)
    return weight > 0
