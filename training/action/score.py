"""Score ONNX models through :mod:`model_store`, the service's own path: decode -> windows -> ORT session.

A single-label model is scored by accuracy and top-5 of its clip probabilities; a multi-label one (its manifest's
``multi_label``) by mAP of its clip scores, the mean of the windows' per-class sigmoids
(:mod:`training.action.metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from model_store.manifest import ClipSpec
from model_store.media import Windows, load_windows
from model_store.pipelines import run_windows
from model_store.pipelines.action import action_feeds, read_actions, top_classes
from model_store.runtime import LoadedModel
from training.action.metrics import mean_average_precision
from training.data.datasets import Record

log = logging.getLogger(__name__)


@dataclass
class EvalClip:
    windows: Windows
    label: int  # the class index (-1 for a multi-label clip)
    labels: tuple[int, ...] = ()  # every class index of the clip


def decode_eval_set(records: Sequence[Record], clip: ClipSpec, labels: Sequence[str], workers: int = 2,
                    progress: bool = False, multi_label: bool = False) -> list[EvalClip]:
    """Decode every record into the windows the service cuts, with its classes among the model's ``labels``: one per
    clip, or (``multi_label``) each clip's labels that the model has (the others dropped, with a warning)."""
    index = {name: i for i, name in enumerate(labels)}
    if multi_label:
        dropped = sorted({lab for r in records for lab in r.labels if lab not in index})
        if dropped:
            log.warning("labels %s are not among the model's %d labels: not scored", dropped[:10], len(labels))
        targets = [tuple(index[lab] for lab in r.labels if lab in index) for r in records]
    else:
        several = next((r for r in records if len(r.labels) > 1), None)
        if several is not None:
            raise ValueError(f"{several.video} has {len(several.labels)} labels, and the model is single-label")
        missing = sorted({r.label for r in records if r.label not in index}, key=str)
        if missing:
            raise ValueError(f"labels {missing} are not among the model's labels {list(labels)}")
        targets = [(index[r.label],) for r in records]
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda r: load_windows(r.video, clip), records)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(records), desc="decode", unit="clip")
        return [EvalClip(w, t[0] if not multi_label else -1, t) for w, t in zip(it, targets, strict=True)]


def action_probabilities(model: LoadedModel, clips: Sequence[EvalClip], zero: str | None = None,
                         batch: int = 32) -> np.ndarray:
    """Each clip's class scores as the service computes them (softmax per window, or per-class sigmoids for a
    multi-label model, averaged over the clip), the clips' windows sharing batches of ``batch``; ``zero``
    ("video"/"audio") blanks that modality.

    Shape: -> (N, K)
    """
    manifest = model.manifest
    feeds = partial(action_feeds, clip=manifest.clip, input_names={s.name for s in manifest.inputs}, zero=zero)
    outputs = run_windows(model.run, feeds, [c.windows for c in clips], batch)
    return np.stack([read_actions(out["logits"], c.windows, manifest.clip, manifest.multi_label).probs
                     for out, c in zip(outputs, clips, strict=True)])


def score_action(model: LoadedModel, clips: Sequence[EvalClip], zero: str | None = None) -> dict[str, float]:
    """Single-label: ``accuracy``, ``top5``; multi-label: ``mAP`` over the ``map_classes`` classes that have a
    positive among the clips. Both give ``n``, the clips."""
    p = action_probabilities(model, clips, zero)
    if model.manifest.multi_label:
        targets = np.zeros_like(p)
        for i, c in enumerate(clips):
            targets[i, list(c.labels)] = 1.0
        m_ap, classes = mean_average_precision(p, targets)
        return {"mAP": m_ap, "map_classes": classes, "n": len(clips)}
    y = np.array([c.label for c in clips])
    top5 = top_classes(p, 5)
    return {
        "accuracy": float((p.argmax(1) == y).mean()),
        "top5": float((top5 == y[:, None]).any(1).mean()),
        "n": len(y),
    }
