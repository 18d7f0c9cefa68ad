"""Score ONNX models through :mod:`model_store`, the service's own path: decode -> windows -> ORT session."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from model_store.manifest import ClipSpec
from model_store.media import Windows, load_windows, normalize_video
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
    """(N, K) clip probabilities: softmax per window, averaged over the clip's windows."""
    spec = model.manifest.clip
    owners = np.concatenate([np.full(len(c.windows), i) for i, c in enumerate(clips)])
    video = np.concatenate([c.windows.video for c in clips])
    audio = np.concatenate([c.windows.audio for c in clips])
    probs = []
    for s in range(0, len(owners), batch):
        v = normalize_video(video[s : s + batch], spec)
        a = audio[s : s + batch]
        if zero == "video":
            v = np.zeros_like(v)
        elif zero == "audio":
            a = np.zeros_like(a)
        logits = model.run({"video": v, "audio": a})["logits"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(e / e.sum(1, keepdims=True))
    window_p = np.concatenate(probs)
    out = np.zeros((len(clips), window_p.shape[1]))
    np.add.at(out, owners, window_p)
    return out / np.bincount(owners, minlength=len(clips))[:, None]


def score_action(model: LoadedModel, clips: Sequence[EvalClip], zero: str | None = None) -> dict[str, float]:
    p = action_probabilities(model, clips, zero)
    y = np.array([c.label for c in clips])
    top5 = np.argsort(-p, axis=1)[:, :5]
    return {
        "accuracy": float((p.argmax(1) == y).mean()),
        "top5": float((top5 == y[:, None]).any(1).mean()),
        "n": len(y),
    }
