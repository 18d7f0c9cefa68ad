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
from model_store.manifest import Manifest
from model_store.media import Windows
from model_store.pipelines.action import action_feeds, read_actions, top_classes

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["actions"])

TASK = "action"
DEFAULT_TOP_K = 5


def top_labels(probs: np.ndarray, labels: list[str], k: int) -> list[LabelScore]:
    """The ``k`` most probable labels with their scores. Shape: probs (K,)."""
    return [LabelScore(label=labels[i], score=float(probs[i])) for i in top_classes(probs, k)]


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
    return action_response(manifest, windows, outputs["logits"], top_k)


def action_response(manifest: Manifest, windows: Windows, logits: np.ndarray, top_k: int) -> ActionResponse:
    """The answer from the windows' logits (also a part of ``/v1/analyze``)."""
    actions = read_actions(logits, windows, manifest.clip, multi_label=manifest.multi_label)
    labels = manifest.labels
    segments = [ActionSegment(start_s=start, end_s=end, top_k=top_labels(p, labels, top_k))
                for (start, end), p in zip(actions.spans, actions.window_probs, strict=True)]
    duration = float(windows.duration_s)
    log.info("actions: %.2f s, %d windows, top %s", duration, len(windows), labels[int(actions.probs.argmax())])
    return ActionResponse(
        model=ModelRef.of(manifest),
        duration_s=duration,
        has_audio=windows.has_audio,
        top_k=top_labels(actions.probs, labels, top_k),
        segments=segments,
    )
