"""``/v1/analyze``: every loaded analysis of one upload (action timeline, sound-source heatmaps, separated tracks)
from one upload, decoded once per distinct clip spec, in one answer or one job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.admission import Work, work
from app.deps import ServiceDep
from app.routers import actions, localization
from app.routers.jobs import Saved, respond_async
from app.routers.tracks import job_response, job_store, parse_hide
from app.schemas import AnalyzeResponse, JobStatus, ModelRef, problem_responses
from app.service import ServiceState
from model_store.dsp import Box
from model_store.media import ProbeInfo
from model_store.pipelines.action import action_feeds
from model_store.pipelines.avsync import avsync_feeds, source_heatmaps
from model_store.pipelines.separation import separated_tracks, separation_feeds

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["analyze"])

ANALYSES = ("action", "avsync", "separation")


async def analyse(service: ServiceState, request: Request, path: Path, tasks: Sequence[str], top_k: int,
                  refine: bool, hide: Box | None, wait: bool = False,
                  info: ProbeInfo | None = None) -> AnalyzeResponse:
    """Decode ``path`` once per distinct clip spec of ``tasks``' models (admitted to their budgets: at once, or
    with ``wait`` when there is room), then run the analyses side by side, each through its model's batcher."""
    manifests = {task: service.model(task).manifest for task in tasks}
    windows = await service.decode_many(path, list(manifests.values()), wait, info)
    w = work()
    done = 0

    async def run(task: str) -> Any:
        nonlocal done
        manifest, win = manifests[task], windows[task]
        clip = manifest.clip
        if task == "action":
            feeds = await anyio.to_thread.run_sync(action_feeds, win, clip, {s.name for s in manifest.inputs})
            outputs = await service.batchers[task].infer(feeds)
            answer: Any = actions.action_response(manifest, win, outputs["logits"], top_k)
        elif task == "avsync":
            feeds = await anyio.to_thread.run_sync(avsync_feeds, win, clip)
            outputs = await service.batchers[task].infer(feeds)
            maps = await anyio.to_thread.run_sync(source_heatmaps, outputs["cam"], win, clip,
                                                  manifest.heatmap if refine else None)
            answer = localization._response(manifest, win, maps, outputs["sync_logit"])
        else:
            store = job_store(service)
            feeds = await anyio.to_thread.run_sync(separation_feeds, win, clip, hide)
            outputs = await service.batchers[task].infer(feeds)
            tracks = await anyio.to_thread.run_sync(separated_tracks, outputs, win, clip)
            job = await anyio.to_thread.run_sync(lambda: store.create(
                tracks, clip.sample_rate, model=ModelRef.of(manifest).model_dump(),
                duration_s=float(win.duration_s), has_audio=win.has_audio,
                hide=list(hide) if hide is not None else None))
            answer = job_response(request, job)
        done += 1
        if w is not None:
            w.progress(0.5 + 0.5 * done / len(tasks))
        return answer

    async with asyncio.TaskGroup() as group:  # one failing analysis cancels the others
        running = {task: group.create_task(run(task)) for task in tasks}
    first = windows[tasks[0]]
    log.info("analyze: %.2f s, %s", first.duration_s, ", ".join(f"{t} {len(windows[t])} windows" for t in tasks))
    return AnalyzeResponse(duration_s=float(first.duration_s), has_audio=first.has_audio,
                           actions=running["action"].result() if "action" in running else None,
                           localization=running["avsync"].result() if "avsync" in running else None,
                           separation=running["separation"].result() if "separation" in running else None)


def job_of(service: ServiceState, request: Request, tasks: Sequence[str], top_k: int, refine: bool, hide: Box | None,
           part: str | None = None):
    """A job function running :func:`analyse` on the job's upload; ``part`` picks one analysis's answer."""

    async def run(work_: Work, upload: Path) -> dict:
        answer = await analyse(service, request, upload, tasks, top_k, refine, hide, wait=True)
        chosen = getattr(answer, part) if part is not None else answer
        return chosen.model_dump(mode="json")

    return run


@router.post(
    "/analyze",
    response_model=AnalyzeResponse,
    responses={202: {"model": JobStatus, "description": "a job (Prefer: respond-async, or a long video): poll its "
                                                         "Location"}, **problem_responses(413, 415, 422, 503)},
)
async def analyze_video(
    request: Request,
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="a video file with its audio track")],
    top_k: Annotated[int | None, Query(ge=1, description="action labels to return; default 5 or all if fewer")] = None,
    refine: Annotated[bool, Query(description="heatmaps refined as the avsync manifest says (as "
                                               "/v1/localization)")] = True,
    hide: Annotated[str | None, Query(description="separation: x0,y0,x1,y1 (normalised) blanked in every frame, "
                                                  "so a visible source there counts as off screen")] = None,
    prefer: Annotated[str | None, Header(description="respond-async: always answer 202 with a job")] = None,
):
    """Run every loaded analysis (actions, heatmaps, separated tracks) on one upload, decoding it once per clip spec."""
    tasks = [t for t in ANALYSES if t in service.models]
    if not tasks:
        raise HTTPException(503, "no model is loaded by this service")
    if "action" in tasks:
        labels = len(service.models["action"].manifest.labels)
        top_k = top_k if top_k is not None else min(actions.DEFAULT_TOP_K, labels)
        actions._check_top_k(top_k, labels)
    elif top_k is not None:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "top_k"), "input": top_k,
                                       "msg": "top_k needs an action model, and none is loaded"}])
    box = parse_hide(hide)
    accepted = await respond_async(request, service, file.file, prefer, "analyze",
                                   job_of(service, request, tasks, top_k or 1, refine, box))
    if not isinstance(accepted, Saved):
        return accepted
    try:
        return await analyse(service, request, accepted.path, tasks, top_k or 1, refine, box, info=accepted.info)
    finally:
        accepted.path.unlink(missing_ok=True)
