"""``/v1/jobs``: long requests run as jobs. ``POST /v1/analyze`` and ``POST /v1/separations`` answer ``202`` with a
job when asked to (``Prefer: respond-async``) or when the video is longer than ``AVSCENE_ASYNC_THRESHOLD_S``;
its status (``queued``, ``running`` with ``progress``, ``done`` with the ``result``, ``failed``, ``cancelled``)
is polled at its ``Location``, and ``DELETE`` cancels it (or removes a finished one)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated

import anyio
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.admission import Refused
from app.deps import ServiceDep
from app.jobs import FINISHED, JobFn, JobNotFound, JobRecord, JobRunner, JobsFull
from app.schemas import JobStatus, problem_responses
from app.service import ServiceState, save_and_probe
from model_store.media import ProbeInfo

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"])

JobId = Annotated[str, PathParam(description="the job id from the 202 answer's Location")]


def _runner(service: ServiceState) -> JobRunner:
    if service.job_runner is None:
        raise HTTPException(503, "the job queue is not running")
    return service.job_runner


def _time(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def job_status(request: Request, record: JobRecord) -> JobStatus:
    return JobStatus(id=record.id, kind=record.kind, status=record.status, progress=record.progress,
                     location=str(request.url_for("get_job", job_id=record.id)), created_at=_time(record.created_at),
                     started_at=_time(record.started_at), finished_at=_time(record.finished_at), detail=record.detail,
                     result=record.result)


def _get(runner: JobRunner, job_id: str) -> JobRecord:
    try:
        return runner.get(job_id)
    except JobNotFound as exc:
        raise HTTPException(404, f"no job {job_id} (never created, deleted, or expired)") from exc


def wants_async(prefer: str | None) -> bool:
    """RFC 7240: ``Prefer: respond-async`` (among other preferences, any case)."""
    return prefer is not None and any(p.split("=")[0].strip().lower() == "respond-async"
                                      for p in prefer.split(","))


@dataclass(frozen=True)
class Saved:
    """An upload saved to a temporary file (the caller's to delete), and its probe."""

    path: Path
    info: ProbeInfo


async def respond_async(request: Request, service: ServiceState, upload: IO[bytes], prefer: str | None, kind: str,
                        run: JobFn) -> JSONResponse | Saved:
    """Save and probe the upload; when the client prefers an async answer or the video is longer than the threshold
    (or of unknown length), queue ``run`` as a job on it and return the ``202`` answer, else return the saved
    upload and its probe (the file is the caller's to delete). A file that fails its probe is refused here, before
    it becomes a job."""
    runner = _runner(service)
    path, info = await anyio.to_thread.run_sync(save_and_probe, upload, service.media_limits)
    try:
        long = info.duration_s > service.settings.async_threshold_s or not math.isfinite(info.duration_s)
        if not (wants_async(prefer) or long):
            return Saved(path, info)
        try:
            record = runner.submit(kind, run, upload=path)
        except JobsFull as exc:
            raise Refused(f"the job queue is full: {exc}; retry later", service.retry_after_s() * 4,
                          "jobs-full") from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    status = job_status(request, record)
    headers = {"Location": status.location, "Retry-After": "1"}
    if wants_async(prefer):
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(status.model_dump(mode="json"), status_code=202, headers=headers)


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=problem_responses(404))
async def get_job(request: Request, service: ServiceDep, job_id: JobId) -> JobStatus:
    """A job's status and progress, and its result once done."""
    return job_status(request, _get(_runner(service), job_id))


@router.delete("/jobs/{job_id}", response_model=JobStatus, responses={204: {"description": "removed"},
                                                                     **problem_responses(404)})
async def delete_job(request: Request, service: ServiceDep, job_id: JobId):
    """Cancel a queued or running job (answers its status, ``cancelled``), or remove a finished one (204)."""
    runner = _runner(service)
    record = _get(runner, job_id)
    if record.status in FINISHED:
        await anyio.to_thread.run_sync(runner.delete, job_id)
        return Response(status_code=204)
    return job_status(request, await runner.cancel(job_id))
