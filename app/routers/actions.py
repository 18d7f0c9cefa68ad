"""``/v1/actions``: action recognition over sliding windows of an uploaded video."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
import numpy as np
from fastapi import APIRouter, File, Query, UploadFile
from fastapi.exceptions import RequestValidationError

from app.deps import ServiceDep
from app.schemas import ActionResponse, ActionSegment, LabelScore, ModelRef, problem_responses
from model_store.manifest import ClipSpec
from model_store.media import Windows, normalize_video

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["actions"])

TASK = "action"
DEFAULT_TOP_K = 5


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64. Shape: (W, K) -> (W, K)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_labels(probs: np.ndarray, labels: list[str], k: int) -> list[LabelScore]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [LabelScore(label=labels[i], score=float(probs[i])) for i in order]


def action_feeds(windows: Windows, clip: ClipSpec, input_names: set[str]) -> dict[str, np.ndarray]:
    """Model inputs: ``video`` (W, 3, T, H, W) and, if the graph takes it, ``audio`` (W, S)."""
    feeds = {"video": normalize_video(windows.video, clip), "audio": windows.audio.astype(np.float32)}
    return {name: value for name, value in feeds.items() if name in input_names}


def _check_top_k(top_k: int, n_labels: int) -> None:
    if top_k > n_labels:
        raise RequestValidationError([{
            "type": "less_than_equal", "loc": ("query", "top_k"),
            "msg": f"Input should be less than or equal to {n_labels} (the model's number of labels)",
            "input": top_k,
        }])


@router.post(
    "/actions", response_model=ActionResponse, responses=problem_responses(413, 415, 422, 503)
)
async def recognize_actions(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="a video file (any container/codec FFmpeg decodes)")],
    top_k: Annotated[
        int | None, Query(ge=1, description="labels to return, 1..len(labels); default 5 or all if fewer")
    ] = None,
) -> ActionResponse:
    """Recognize the actions in an uploaded video, overall and per window."""
    model = service.model(TASK)
    manifest = model.manifest
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, len(manifest.labels))
    _check_top_k(top_k, len(manifest.labels))
    windows = await service.decode_upload(file.file, manifest)
    feeds = await anyio.to_thread.run_sync(
        action_feeds, windows, manifest.clip, {spec.name for spec in manifest.inputs}
    )
    outputs = await service.batchers[TASK].infer(feeds)
    probs = softmax(outputs["logits"])  # (W, K)
    labels = manifest.labels
    duration = float(windows.duration_s)
    window_s = manifest.clip.window_s
    segments = []
    for i, start in enumerate(windows.starts_s):
        end = duration if i == len(windows) - 1 else min(float(start) + window_s, duration)
        segments.append(
            ActionSegment(start_s=float(start), end_s=end, top_k=top_labels(probs[i], labels, top_k))
        )
    overall = probs.mean(axis=0)
    log.info("actions: %.2f s, %d windows, top %s", duration, len(windows), labels[int(overall.argmax())])
    return ActionResponse(
        model=ModelRef.of(manifest),
        duration_s=duration,
        has_audio=windows.has_audio,
        top_k=top_labels(overall, labels, top_k),
        segments=segments,
    )
