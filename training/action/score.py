"""Score ONNX models through :mod:`model_store`, the service's own path: decode -> windows -> ORT session."""

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
from training.data.datasets import Record

log = logging.getLogger(__name__)


@dataclass
class EvalClip:
    windows: Windows
    label: int


def decode_eval_set(records: Sequence[Record], clip: ClipSpec, labels: Sequence[str], workers: int = 2,
                    progress: bool = False) -> list[EvalClip]:
    index = {name: i for i, name in enumerate(labels)}
    missing = sorted({r.label for r in records if r.label not in index}, key=str)
    if missing:
        raise ValueError(f"labels {missing} are not among the model's labels {list(labels)}")
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda r: load_windows(r.video, clip), records)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(records), desc="decode", unit="clip")
        return [EvalClip(w, index[r.label]) for w, r in zip(it, records, strict=True)]


def action_probabilities(model: LoadedModel, clips: Sequence[EvalClip], zero: str | None = None,
                         batch: int = 32) -> np.ndarray:
    """Each clip's class probabilities as the service computes them (softmax per window, averaged over the clip),
    the clips' windows sharing batches of ``batch``; ``zero`` ("video"/"audio") blanks that modality.

    Shape: -> (N, K)
    """
    manifest = model.manifest
    feeds = partial(action_feeds, clip=manifest.clip, input_names={s.name for s in manifest.inputs}, zero=zero)
    outputs = run_windows(model.run, feeds, [c.windows for c in clips], batch)
    return np.stack([read_actions(out["logits"], c.windows, manifest.clip).probs
                     for out, c in zip(outputs, clips, strict=True)])


def score_action(model: LoadedModel, clips: Sequence[EvalClip], zero: str | None = None) -> dict[str, float]:
    p = action_probabilities(model, clips, zero)
    y = np.array([c.label for c in clips])
    top5 = top_classes(p, 5)
    return {
        "accuracy": float((p.argmax(1) == y).mean()),
        "top5": float((top5 == y[:, None]).any(1).mean()),
        "n": len(y),
    }
