"""``/v1/separations``: split an uploaded video's audio into what the visible sources say (``on_screen``) and
what is heard from off screen (``off_screen``), as tracks kept on disk for download until they expire."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Header, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from app.deps import ServiceDep
from app.jobs import FORMATS, Job, JobExpired, JobNotFound, JobStore
from app.routers import analyze
from app.routers.jobs import Saved, respond_async
from app.routers.tracks import job_response, job_store, parse_hide
from app.schemas import JobStatus, ModelRef, SeparationJob, problem_responses
from model_store.pipelines.separation import separated_tracks, separation_feeds

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["separations"])

TASK = "separation"


def _get_job(store: JobStore, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobExpired as exc:
        raise HTTPException(410, f"separation {job_id} has expired and its tracks were removed") from exc
    except JobNotFound as exc:
        raise HTTPException(404, f"no separation {job_id} (never created, deleted, or expired)") from exc


@router.post(
    "/separations", status_code=201, response_model=SeparationJob,
    responses={202: {"model": JobStatus, "description": "a job (Prefer: respond-async, or a long video)"},
               **problem_responses(413, 415, 422, 503)},
)
async def create_separation(
    request: Request,
    response: Response,
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="a video file with an audio track")],
    hide: Annotated[str | None, Query(description="x0,y0,x1,y1 (normalised): blank this box in every frame, "
                                                  "so a visible source there counts as off screen")] = None,
    prefer: Annotated[str | None, Header(description="respond-async: answer 202 with a job to poll")] = None,
) -> SeparationJob:
    """Separate a video's audio into on-screen and off-screen tracks; returns the job with download URLs."""
    model = service.model(TASK)
    store = job_store(service)
    manifest = model.manifest
    box = parse_hide(hide)

    accepted = await respond_async(request, service, file.file, prefer, "separation",
                                   analyze.job_of(service, request, [TASK], 1, False, box, part="separation"))
    if not isinstance(accepted, Saved):
        return accepted
    try:  # short enough to answer now, from the upload respond_async saved and probed
        windows = await service.decode_saved(accepted.path, manifest, accepted.info)
    finally:
        accepted.path.unlink(missing_ok=True)
    feeds = await anyio.to_thread.run_sync(separation_feeds, windows, manifest.clip, box)
    outputs = await service.batchers[TASK].infer(feeds)
    tracks = await anyio.to_thread.run_sync(separated_tracks, outputs, windows, manifest.clip)
    job = await anyio.to_thread.run_sync(lambda: store.create(
        tracks, manifest.clip.sample_rate, model=ModelRef.of(manifest).model_dump(),
        duration_s=float(windows.duration_s), has_audio=windows.has_audio,
        hide=list(box) if box is not None else None))
    log.info("separation %s: %.2f s, %d windows, hide=%s", job.id, windows.duration_s, len(windows), box)
    response.headers["Location"] = str(request.url_for("get_separation", job_id=job.id))
    return job_response(request, job)


JobId = Annotated[str, Path(description="the job id returned by POST /v1/separations")]


@router.get("/separations/{job_id}", response_model=SeparationJob, responses=problem_responses(404, 410))
async def get_separation(request: Request, service: ServiceDep, job_id: JobId) -> SeparationJob:
    """The separation job: model, sample rate, duration, track URLs, expiry."""
    job = await anyio.to_thread.run_sync(_get_job, job_store(service), job_id)
    return job_response(request, job)


@router.get(
    "/separations/{job_id}/{filename}",
    response_class=FileResponse,
    responses={200: {"content": {m: {} for _, _, m in FORMATS.values()}}, **problem_responses(404, 410)},
)
async def download_track(service: ServiceDep, job_id: JobId,
                         filename: Annotated[str, Path(description="on_screen.wav, off_screen.flac, ...")]
                         ) -> FileResponse:
    """Download one track (``on_screen`` or ``off_screen``, ``.wav`` or ``.flac``); Range requests work."""
    store = job_store(service)
    track, _, ext = filename.partition(".")
    _get_job(store, job_id)
    try:
        path = await anyio.to_thread.run_sync(store.track_path, job_id, track, ext)
    except JobNotFound as exc:
        raise HTTPException(404, f"no track {filename!r}; tracks are on_screen and off_screen, as "
                                 f"{' or '.join('.' + e for e in FORMATS)}") from exc
    except JobExpired as exc:
        raise HTTPException(410, f"separation {job_id} has expired and its tracks were removed") from exc
    return FileResponse(path, media_type=FORMATS[ext][2], filename=f"{job_id}-{filename}")


@router.delete("/separations/{job_id}", status_code=204, response_class=Response,
               responses=problem_responses(404, 410))
async def delete_separation(service: ServiceDep, job_id: JobId) -> Response:
    """Delete a separation job and its tracks now."""
    store = job_store(service)
    _get_job(store, job_id)
    await anyio.to_thread.run_sync(store.delete, job_id)
    return Response(status_code=204)
