"""Report jobs: durable rows (queued -> running -> succeeded | failed) and their worker.

A job is asked for once: the same report asked for while an identical one is queued or
running returns that job (a partial unique index on ``dedupe`` makes this hold across
processes). A worker claims a job with a conditional update and bumps ``attempts``, which
is the job's fencing token: progress and the result are written only while the job is
still running under that attempt. A worker that dies leaves its job running with a
heartbeat that ages; past the lease another worker claims it again (at most
``max_attempts`` times). After a month closes its month-end report (all wallets, UTC,
JSON) is created once.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ledger.db import Database
from ledger.errors import InvalidInput, NotFound
from ledger.ids import new_id
from ledger.models import WALLET, accounts, report_jobs, report_outputs
from ledger.services import utcnow, wallet_id
from ledger.store import is_unavailable
from ledger.sweeper import Periodic
from reports.errors import Mismatch, ReconciliationError, ReportNotReady, ReportOverflow

if TYPE_CHECKING:
    from reports.queries import Period

# ``queries``, ``statement`` and ``render`` (pandas, pyarrow) are imported where a report
# is requested or made: every CLI command imports this module for JobView, and most of
# them never make a report (pandas alone is a third of the CLI's start-up).

log = logging.getLogger("creditledger.reports")

Clock = Callable[[], datetime]
#: progress(percent, stage)
Progress = Callable[[int, str], None]


class JobView(BaseModel):
    """A report job as callers see it."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: str
    month: str
    timezone: str
    account_id: str | None
    format: str
    origin: str
    progress: int
    stage: str
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, Any] | None


#: The formats whose files are stored gzip-compressed (Parquet compresses its own).
GZIPPED = frozenset({"csv", "json", "html"})


@dataclass(frozen=True)
class Output:
    """A succeeded job's file, as stored: ``data`` in ``encoding`` ("gzip", or None for
    the file as rendered)."""

    filename: str
    content_type: str
    #: SHA-256 of the file as rendered.
    sha256: str
    data: bytes
    encoding: str | None = None

    @cached_property
    def content(self) -> bytes:
        """The file as rendered."""
        return gzip.decompress(self.data) if self.encoding == "gzip" else self.data

    def chunks(self, most: int = 1 << 20) -> Iterator[bytes]:
        """The file as rendered, ``most`` bytes at a time at most: a month-end JSON of
        10,000 wallets is about 20 MB stored and 490 MB rendered, which a download sent
        plain (or the CLI writing it out) need never hold whole."""
        if self.encoding != "gzip":
            for at in range(0, len(self.data), most):
                yield self.data[at : at + most]
            return
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip
        # The input a slice at a time: what is left of it is copied at every step.
        for at in range(0, len(self.data), 1 << 16):
            pending = self.data[at : at + (1 << 16)]
            while pending:
                out = inflater.decompress(pending, most)
                if out:
                    yield out
                pending = inflater.unconsumed_tail
        rest = inflater.flush()
        if not inflater.eof:
            raise ValueError("the stored file ends before its gzip stream does")
        if rest:
            yield rest


#: Wallets read, reconciled and rendered at a time in a statement of every wallet
#: (``Reports._batched``). Made whole, the month-end report (JSON) of 10,000 wallets with
#: daily usage of eight models took 3.7 GB at its peak, their CSV, Parquet and HTML 2.1 GB
#: each; in batches of 500, 556 MB, 418 MB, 576 MB and 365 MB.
BATCH = 500


@dataclass(frozen=True)
class _Stored:
    """A file as it is stored: ``data`` in ``encoding``, ``sha256`` of the file as
    rendered."""

    data: bytes
    sha256: str
    encoding: str | None


def _stored(fmt: str, pieces: Iterable[bytes]) -> _Stored:
    """The file made of ``pieces`` as stored: CSV, JSON and HTML gzip-compressed as the
    pieces come, so that the file is never whole in memory (Parquet compresses its own)."""
    digest = hashlib.sha256()
    if fmt not in GZIPPED:
        content = b"".join(pieces)
        digest.update(content)
        return _Stored(content, digest.hexdigest(), None)
    out = io.BytesIO()
    # mtime 0: the same file is stored as the same bytes.
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as file:
        for data in pieces:
            digest.update(data)
            file.write(data)
    return _Stored(out.getvalue(), digest.hexdigest(), "gzip")


class _Lost(Exception):
    """The job is no longer ours: another worker claimed it after our lease ran out."""


def _dedupe(month: str, timezone: str, account: int | None, fmt: str) -> str:
    key = f"monthly|{month}|{timezone}|{'*' if account is None else account}|{fmt}"
    return hashlib.sha256(key.encode()).hexdigest()


_VIEW = sa.select(report_jobs, accounts.c.external_id).outerjoin(
    accounts, accounts.c.id == report_jobs.c.account_id
)


def _view(row: Row[Any]) -> JobView:
    return JobView(
        id=row.id,
        status=row.status,
        month=row.month,
        timezone=row.timezone,
        account_id=row.external_id,
        format=row.format,
        origin=row.origin,
        progress=row.progress,
        stage=row.stage,
        error=row.error,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        summary=row.summary,
    )


class Reports:
    """Monthly statements as durable jobs over one database."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = utcnow,
        lease: timedelta = timedelta(seconds=120),
        max_attempts: int = 3,
        close_delay: timedelta = timedelta(minutes=5),
    ) -> None:
        self.db = db
        self.clock = clock
        self.lease = lease
        self.max_attempts = max_attempts
        #: How long after its end a month's statement may be made (see
        #: ``Settings.report_close_delay_seconds``).
        self.close_delay = close_delay

    def closes_at(self, period: Period) -> datetime:
        """When ``period``'s statement may be made: its end and the close delay after."""
        return period.end + self.close_delay

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC)

    # ---------------------------------------------------------------------- requests

    def request(
        self,
        month: Any,
        fmt: Any = "json",
        *,
        account_id: Any = None,
        timezone: Any = "UTC",
        origin: str = "request",
        requested_by: str | None = None,
    ) -> tuple[JobView, bool]:
        """Queue a monthly report, or return the identical one queued or running.

        Returns the job and whether it was created now.
        """
        from reports import queries, render

        if fmt not in render.FORMATS:
            raise InvalidInput(
                f"format must be one of {', '.join(render.FORMATS)}",
                field="format",
                allowed=list(render.FORMATS),
            )
        period = queries.period(month, timezone)
        now = self._now()
        if period.end > now:
            raise InvalidInput(
                f"{period.month} has not ended in {period.timezone} "
                f"(it ends {period.end.isoformat()}): a statement covers a closed month",
                field="month",
            )
        closes = self.closes_at(period)
        if closes > now:
            raise InvalidInput(
                f"{period.month} ended in {period.timezone} at {period.end.isoformat()}; its "
                f"statement can be made from {closes.isoformat()}, once the writes stamped "
                "with its last instants have committed (CREDITLEDGER_REPORT_CLOSE_DELAY_SECONDS)",
                field="month",
            )
        if account_id is not None and (not isinstance(account_id, str) or not account_id):
            raise InvalidInput("account_id must be a wallet's id", field="account_id")
        for _attempt in range(2):
            try:
                with self.db.transaction() as conn:
                    account = self._account(conn, account_id, period)
                    dedupe = _dedupe(period.month, period.timezone, account, fmt)
                    existing = conn.execute(
                        _VIEW.where(
                            report_jobs.c.dedupe == dedupe,
                            report_jobs.c.status.in_(["queued", "running"]),
                        )
                    ).first()
                    if existing is not None:
                        return _view(existing), False
                    job_id = new_id()
                    conn.execute(
                        report_jobs.insert().values(
                            id=job_id,
                            month=period.month,
                            timezone=period.timezone,
                            account_id=account,
                            format=fmt,
                            origin=origin,
                            dedupe=dedupe,
                            status="queued",
                            progress=0,
                            stage="queued",
                            attempts=0,
                            requested_by=requested_by,
                            created_at=now,
                        )
                    )
                    return self._get(conn, job_id), True
            except IntegrityError:
                # Another process queued the same report (or the month-end one) first.
                continue
        raise InvalidInput(f"the report for {period.month} is being created; ask again")

    @staticmethod
    def _account(conn: Connection, account_id: str | None, period: Period) -> int | None:
        """The wallet a report is asked of (None: all), refused at once when it was opened
        after the month: the job would only fail on it (``queries`` finds no such wallet)."""
        if account_id is None:
            return None
        account = wallet_id(conn, account_id)
        existed = conn.execute(
            sa.select(accounts.c.id).where(
                accounts.c.id == account, accounts.c.created_at < period.end
            )
        ).first()
        if existed is None:
            raise NotFound(
                f"no account '{account_id}' existed in {period.month} ({period.timezone}): "
                "it was opened after the month ended",
                field="account_id",
            )
        return account

    def schedule_month_end(self) -> JobView | None:
        """Queue last month's report (all wallets, UTC, JSON) once; the job, if created."""
        from reports import queries

        now = self._now()
        last = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        month = queries.period(last, "UTC")
        if self.closes_at(month) > now:
            return None  # a later round queues it, once it may be made
        end = month.end
        with self.db.transaction(write=False) as conn:
            done = conn.execute(
                sa.select(report_jobs.c.id).where(
                    report_jobs.c.origin == "month_end",
                    report_jobs.c.month == last,
                    report_jobs.c.timezone == "UTC",
                )
            ).first()
            wallets = conn.execute(
                sa.select(sa.func.count()).where(
                    accounts.c.kind == WALLET, accounts.c.created_at < end
                )
            ).scalar_one()
        if done is not None or not wallets:
            return None
        try:
            job, created = self.request(last, "json", origin="month_end", requested_by="system")
        except InvalidInput:
            return None
        return job if created else None

    # ----------------------------------------------------------------------- reading

    def _get(self, conn: Connection, job_id: str) -> JobView:
        row = conn.execute(_VIEW.where(report_jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no report '{job_id}'", field="id")
        return _view(row)

    def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        """A job; with ``owner`` (a customer's wallet), only a job of that wallet."""
        with self.db.transaction(write=False) as conn:
            job = self._get(conn, job_id)
        if owner is not None and job.account_id != owner:
            raise NotFound(f"no report '{job_id}'", field="id")
        return job

    def output(self, job_id: str, *, owner: str | None = None) -> Output:
        """A succeeded job's file; :class:`ReportNotReady` before that."""
        job = self.get(job_id, owner=owner)
        if job.status != "succeeded":
            raise ReportNotReady(job.id, job.status, job.error)
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                sa.select(report_outputs).where(report_outputs.c.job_id == job_id)
            ).one()
        return Output(
            row.filename, row.content_type, row.sha256, bytes(row.content), row.content_encoding
        )

    # ------------------------------------------------------------------------ running

    def claim(self, job_id: str | None = None) -> JobView | None:
        """Take the oldest runnable job (or ``job_id``): queued, or running past its lease.

        A job interrupted ``max_attempts`` times is failed instead of run again.
        """
        now = self._now()
        stale = now - self.lease
        runnable = sa.or_(
            report_jobs.c.status == "queued",
            sa.and_(report_jobs.c.status == "running", report_jobs.c.heartbeat_at < stale),
        )
        while True:
            with self.db.transaction() as conn:
                pick = sa.select(report_jobs.c.id, report_jobs.c.attempts).where(runnable)
                if job_id is not None:
                    pick = pick.where(report_jobs.c.id == job_id)
                pick = pick.order_by(report_jobs.c.created_at, report_jobs.c.id).limit(1)
                if not self.db.is_sqlite:
                    pick = pick.with_for_update(skip_locked=True)
                row = conn.execute(pick).first()
                if row is None:
                    return None
                if row.attempts >= self.max_attempts:
                    conn.execute(
                        report_jobs.update()
                        .where(report_jobs.c.id == row.id, runnable)
                        .values(
                            status="failed",
                            finished_at=now,
                            error=f"interrupted {row.attempts} times; not run again",
                        )
                    )
                    continue
                claimed = conn.execute(
                    report_jobs.update()
                    .where(
                        report_jobs.c.id == row.id,
                        report_jobs.c.attempts == row.attempts,
                        runnable,
                    )
                    .values(
                        status="running",
                        attempts=row.attempts + 1,
                        started_at=now,
                        heartbeat_at=now,
                        progress=0,
                        stage="claimed",
                        error=None,
                    )
                ).rowcount
                if claimed:
                    return self._get(conn, row.id)

    @staticmethod
    def _fenced(job: JobView) -> sa.Update:
        """An update of ``job`` that applies only while it is still running as ours."""
        return report_jobs.update().where(
            report_jobs.c.id == job.id,
            report_jobs.c.status == "running",
            report_jobs.c.attempts == job.attempts,
        )

    def _progress(self, job: JobView, percent: int, stage: str) -> None:
        with self.db.transaction() as conn:
            moved = conn.execute(
                self._fenced(job).values(progress=percent, stage=stage, heartbeat_at=self._now())
            ).rowcount
        if not moved:
            raise _Lost(job.id)

    def run(self, job: JobView, progress: Progress | None = None) -> JobView:
        """Make a claimed job's report and store it; the job as it ended."""
        from reports import queries

        def step(percent: int, stage: str) -> None:
            self._progress(job, percent, stage)
            if progress is not None:
                progress(percent, stage)

        try:
            step(5, "reading the ledger")
            period = queries.period(job.month, job.timezone)
            summary, stored = self._batched(job, period, step)
            step(95, "saving")
            self._finish(job, summary, stored)
            log.info(
                "report %s made: %s, %s, %s, %s",
                job.id,
                job.month,
                job.timezone,
                job.account_id or "every wallet",
                job.format,
                extra={"report_id": job.id, "month": job.month, "format": job.format},
            )
        except _Lost:
            log.warning("report %s was claimed again by another worker; dropping", job.id)
        except Exception as exc:
            if is_unavailable(exc):
                # The database went away or ended the session (one idle past even the
                # job's lease): the job stays running, and is claimed again once its
                # lease runs out. Not the report's fault, so not a failure.
                raise
            log.exception("report %s failed", job.id)
            self._fail(job, f"{type(exc).__name__}: {exc}")
        if progress is not None:
            progress(100, "done")
        return self.get(job.id)

    def _batched(
        self, job: JobView, period: Period, step: Progress
    ) -> tuple[dict[str, Any], _Stored]:
        """The statement file of ``job``, made ``BATCH`` wallets at a time (read, reconciled
        and rendered), all in one snapshot of the ledger: a statement of every wallet (the
        month-end report, finance's CSV) takes a batch's memory, not the whole month's.
        Each batch's parts of the file are kept compressed until all are made and the
        totals known; the file is then the whole statement's, byte for byte."""
        from reports import queries, render, statement

        generated_at = self._now()
        parts: list[list[bytes]] = [[] for _ in range(render.PARTS[job.format])]
        totals: list[list[dict[str, Any]]] = []
        mismatches: list[Mismatch] = []
        beyond: list[str] = []
        wallets = 0
        # Its work between reads may take longer than the idle-in-transaction limit;
        # past the lease, the job is another worker's anyway.
        with self.db.snapshot(idle=self.lease.total_seconds()) as conn:
            if job.account_id is not None:
                batches: list[list[int] | None] = [None]
                held = None
            else:
                # CSV, Parquet and HTML list wallets by id in code points, JSON in the
                # database's order: the batches follow it, so that they add up to the
                # same file.
                batches = list(
                    queries.wallet_batches(
                        conn, period, BATCH, by_code_point=job.format in render.BY_CODE_POINT
                    )
                )
                held = queries.open_holds(conn, period.end)
            for done, among in enumerate(batches, 1):
                frames = queries.load(conn, period, job.account_id, among=among, holds_open=held)
                try:
                    made = statement.build(
                        frames, account_id=job.account_id, generated_at=generated_at
                    )
                except ReportOverflow as exc:
                    beyond += exc.accounts
                    continue
                except ReconciliationError as exc:
                    mismatches += exc.mismatches
                    continue
                wallets += len(made.accounts)
                totals.append(made.totals())
                for into, data in zip(parts, render.batch_parts(made, job.format), strict=True):
                    if data:
                        into.append(zlib.compress(data, 1))
                if len(batches) > 1:
                    step(5 + 85 * done // len(batches), f"read and rendered {wallets} wallets")
        # As the whole statement would fail: on a sum beyond 64 bits first, naming all.
        if beyond:
            raise ReportOverflow(sorted(beyond))
        if mismatches:
            raise ReconciliationError(mismatches)
        merged = statement.merge_totals(totals)
        unpacked = [(zlib.decompress(data) for data in part) for part in parts]
        pieces = render.assemble(job.format, period, job.account_id, generated_at, merged, unpacked)
        return statement.summary(period, wallets, merged), _stored(job.format, pieces)

    def _finish(self, job: JobView, summary: dict[str, Any], stored: _Stored) -> None:
        from reports import render

        now = self._now()
        with self.db.transaction() as conn:
            done = conn.execute(
                self._fenced(job).values(
                    status="succeeded",
                    progress=100,
                    stage="done",
                    heartbeat_at=now,
                    finished_at=now,
                    summary=summary,
                )
            ).rowcount
            if not done:
                raise _Lost(job.id)
            conn.execute(
                report_outputs.insert().values(
                    job_id=job.id,
                    filename=render.filename(job.month, job.format, job.account_id),
                    content_type=render.CONTENT_TYPES[job.format],
                    sha256=stored.sha256,
                    content=stored.data,
                    content_encoding=stored.encoding,
                )
            )

    def _fail(self, job: JobView, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                self._fenced(job).values(
                    status="failed", finished_at=self._now(), error=error[:4000]
                )
            )

    def run_pending(self) -> int:
        """Run every runnable job, one after the other; how many ran."""
        return len(self.run_each())

    def run_each(self) -> list[JobView]:
        """Run every runnable job, one after the other; each job as it ended."""
        ran = []
        while (job := self.claim()) is not None:
            ran.append(self.run(job))
        return ran


#: What a report job runs on, imported when first used (pandas among them: about a
#: second of CPU, too long for the CLI's other commands to pay).
WORKER_MODULES = ("reports.queries", "reports.render", "reports.statement")


def preload() -> None:
    """Import the report worker's modules now, while a serving process starts. Imported
    by the worker's first round instead, they held Python's interpreter lock for a good
    part of a second against the requests being served: over the first seconds after a
    start of ``serve`` the p99 reached 120-140 ms, against 33-38 ms later."""
    for module in WORKER_MODULES:
        importlib.import_module(module)


class ReportWorker(Periodic):
    """The report worker of ``creditledger serve``: month-end scheduling, then the queue."""

    name = "creditledger-reports"
    task = "reports"

    def __init__(self, reports: Reports, interval: float) -> None:
        super().__init__(interval)
        self.reports = reports

    def run_once(self) -> int:
        self.reports.schedule_month_end()
        return self.reports.run_pending()
