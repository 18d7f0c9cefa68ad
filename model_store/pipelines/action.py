"""The action pipeline: windows -> ``video``/``audio`` feeds; logits -> window scores, the clip's scores (the mean
of its windows' scores) and one segment per window. ``/v1/actions`` serves these and ``evaluate action`` scores them.

A window's scores are a softmax over the classes (one label per clip), or, for a multi-label model (the manifest's
``multi_label``, e.g. trained on AudioSet), each class's own sigmoid: independent scores in [0, 1] that need not sum
to 1."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from model_store.manifest import ClipSpec
from model_store.media import Windows, normalize_video
from model_store.pipelines import Feeds

MODALITIES = ("video", "audio")


def action_feeds(windows: Windows, clip: ClipSpec, input_names: Collection[str] = MODALITIES,
                 zero: str | None = None) -> Feeds:
    """The graph's inputs among ``video`` (W, 3, T, H, W) and ``audio`` (W, S), float32.

    ``zero`` ("video" or "audio") feeds that modality as zeros: after normalisation, the pixel mean or silence.
    """
    if zero is not None and zero not in MODALITIES:
        raise ValueError(f"zero must be one of {MODALITIES} or None, got {zero!r}")
    feeds = {"video": normalize_video(windows.video, clip), "audio": windows.audio.astype(np.float32)}
    if zero is not None:
        feeds[zero] = np.zeros_like(feeds[zero])
    return {name: value for name, value in feeds.items() if name in input_names}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64. Shape: (W, K) -> (W, K)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64, without overflow for large logits. Shape: (W, K) -> (W, K)."""
    z = logits.astype(np.float64)
    e = np.exp(-np.abs(z))  # in (0, 1]
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def window_scores(logits: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """Each window's class scores: softmax (one label per clip) or per-class sigmoid (``multi_label``).

    Shape: (W, K) -> (W, K) float64
    """
    return sigmoid(logits) if multi_label else softmax(logits)


def clip_probabilities(window_probs: np.ndarray) -> np.ndarray:
    """A video's class probabilities: the mean of its windows' probabilities. Shape: (W, K) -> (K,)."""
    return window_probs.mean(axis=0)


def top_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most probable classes, best first; ties keep the label order.

    Shape: (..., K) -> (..., min(k, K))
    """
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]


def segment_spans(starts_s: np.ndarray, window_s: float, duration_s: float) -> list[tuple[float, float]]:
    """(start, end) of each window's segment, clipped to the video; the last one ends at the video's end.

    Shape: starts_s (W,) -> W spans
    """
    duration = float(duration_s)
    last = len(starts_s) - 1
    return [(float(s), duration if i == last else min(float(s) + window_s, duration)) for i, s in enumerate(starts_s)]


@dataclass(frozen=True)
class Actions:
    """What a video's logits say: per window, for the whole video, and where each window's segment lies."""

    window_probs: np.ndarray  # (W, K) float64: softmax rows that sum to 1, or per-class sigmoids (multi-label)
    probs: np.ndarray  # (K,) float64, the mean of window_probs
    spans: list[tuple[float, float]]  # W (start_s, end_s)


def read_actions(logits: np.ndarray, windows: Windows, clip: ClipSpec, multi_label: bool = False) -> Actions:
    """A video's answer from its windows' logits, read as the model's manifest says (``multi_label``: per-class
    sigmoids, else a softmax). Shape: logits (W, K) -> Actions."""
    window_probs = window_scores(logits, multi_label)
    return Actions(window_probs, clip_probabilities(window_probs),
                   segment_spans(windows.starts_s, clip.window_s, windows.duration_s))
