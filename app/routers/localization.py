"""``/v1/localization``: where the sound comes from, as heatmaps (JSON), one overlaid frame (PNG) or the whole
video overlaid (MP4, with its audio)."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import anyio
import numpy as np
from fastapi import APIRouter, File, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from app import overlay
from app.deps import ServiceDep
from app.schemas import Grid, HeatmapFrame, LocalizationResponse, ModelRef, Peak, problem_responses
from app.service import save_and_probe
from model_store.heatmaps import Heatmaps
from model_store.manifest import Manifest
from model_store.media import Windows
from model_store.pipelines.avsync import avsync_feeds, source_heatmaps, sync_score

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["localization"])

TASK = "avsync"
MEDIA_TYPES = {"png": "image/png", "mp4": "video/mp4"}


def _bad_t(t_s: float, duration: float) -> RequestValidationError:
    return RequestValidationError([{
        "type": "less_than_equal", "loc": ("query", "t_s"),
        "msg": f"t_s={t_s:g} lies outside the video, which lasts {duration:.3f} s (0 <= t_s <= duration)",
        "input": t_s,
    }])


def _response(manifest: Manifest, windows: Windows, maps: Heatmaps, logits: np.ndarray) -> LocalizationResponse:
    h, w = maps.maps.shape[1:]
    # rounded in float64: a float32 rounded to 4 decimals is not a 4-decimal double (0.1235 -> 0.12349999696016312),
    # and those 17-digit values had made the JSON nearly three times as long; one call for all frames, not one per frame
    values = np.round(maps.maps.astype(np.float64), 4).tolist()
    frames = []
    for i, t in enumerate(maps.times_s):
        x, y = maps.peak(i)
        frames.append(HeatmapFrame(t_s=round(float(t), 4), heatmap=values[i], peak=Peak(x=x, y=y)))
    return LocalizationResponse(model=ModelRef.of(manifest), duration_s=float(windows.duration_s),
                                has_audio=windows.has_audio, sync_score=sync_score(logits),
                                grid=Grid(height=h, width=w), frames=frames)


@router.post(
    "/localization",
    response_model=LocalizationResponse,
    responses={
        **problem_responses(413, 415, 422, 503),
        200: {"content": {"application/json": {}, "image/png": {}, "video/mp4": {}},
              "description": "JSON heatmaps, or the overlay as PNG / MP4 (headers X-Model-Name, X-Model-Version)"},
    },
)
async def localize_sound(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="a video file with its audio track")],
    format: Annotated[Literal["json", "png", "mp4"], Query(description="json heatmaps, png frame, mp4 video")] = "json",
    t_s: Annotated[float | None, Query(ge=0, description="png: the time of the frame to draw (default: the "
                                                         "frame with the strongest sound source)")] = None,
    refine: Annotated[bool, Query(description="true (default): the heatmaps as the model's manifest says to read "
                                               "them (refined along the frames' edges, on a grid near the model's "
                                               "frame size: 32x32 for the shipped model); "
                                               "false: the network's class activation map itself, on its coarse "
                                               "grid (a much smaller JSON)")] = True,
):
    """Locate the sound sources of an uploaded video: heatmaps, or the heatmap drawn over the picture."""
    model = service.model(TASK)
    manifest = model.manifest
    clip = manifest.clip
    assert service.decode_slots is not None
    path, info = await anyio.to_thread.run_sync(save_and_probe, file.file, service.media_limits)
    try:
        windows = await service.decode_saved(path, manifest, info)
        duration = float(windows.duration_s)
        if t_s is not None and t_s > duration + 1e-6:
            raise _bad_t(t_s, duration)
        feeds = await anyio.to_thread.run_sync(avsync_feeds, windows, clip)
        outputs = await service.batchers[TASK].infer(feeds)
        maps = await anyio.to_thread.run_sync(source_heatmaps, outputs["cam"], windows, clip,
                                              manifest.heatmap if refine else None)
        log.info("localization: %.2f s, %d windows, %d heatmaps, format %s", duration, len(windows),
                 len(maps.times_s), format)
        if format == "json":
            return _response(manifest, windows, maps, outputs["sync_logit"])
        headers = {"X-Model-Task": manifest.task, "X-Model-Name": manifest.name,
                   "X-Model-Version": str(manifest.version)}
        async with service.decode_slots:
            if format == "png":
                when = t_s if t_s is not None else float(maps.times_s[int(maps.maps.reshape(len(maps.times_s), -1)
                                                                          .max(axis=1).argmax())])
                headers["X-Frame-Time"] = f"{when:.4f}"
                body = await anyio.to_thread.run_sync(overlay.render_png, path, maps, when)
            else:
                body = await anyio.to_thread.run_sync(overlay.render_mp4, path, maps)
        return Response(body, media_type=MEDIA_TYPES[format], headers=headers)
    finally:
        path.unlink(missing_ok=True)
