"""Separated tracks kept for download: their store, the ``hide`` box of a request, and the answer that names a
stored separation. Shared by ``/v1/separations`` and ``/v1/analyze``."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.jobs import Job, JobStore
from app.schemas import ModelRef, SeparationJob, SeparationTracks
from model_store.dsp import Box, parse_box


def job_store(service) -> JobStore:
    """The store of separated tracks, or 503 when it is not running."""
    if service.jobs is None:
        raise HTTPException(503, "the separation result store is not running")
    return service.jobs


def parse_hide(hide: str | None) -> Box | None:
    """The ``hide`` query as a box; a 422 that names it when it is malformed."""
    if hide is None:
        return None
    try:
        return parse_box(hide)
    except ValueError as exc:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("query", "hide"), "msg": f"hide={hide!r}: {exc}", "input": hide,
        }]) from exc


def job_response(request: Request, job: Job) -> SeparationJob:
    """A stored separation as the API answers it, with its tracks' download URLs."""
    def url(track: str) -> str:
        return str(request.url_for("download_track", job_id=job.id, filename=f"{track}.wav"))

    return SeparationJob(
        id=job.id, model=ModelRef(**job.model), sample_rate=job.sample_rate, duration_s=job.duration_s,
        samples=job.samples, has_audio=job.has_audio, hide=job.hide,
        tracks=SeparationTracks(on_screen=url("on_screen"), off_screen=url("off_screen")),
        created_at=datetime.fromtimestamp(job.created_at, UTC), expires_at=datetime.fromtimestamp(job.expires_at, UTC),
    )
