"""The avsync pipeline: windows -> ``video``/``audio`` feeds; ``sync_logit`` -> the probability that sound and
picture are in sync; ``cam`` -> sound-source heatmaps read as the manifest's ``heatmap`` says
(:func:`model_store.heatmaps.video_heatmaps`). ``/v1/localization`` serves these and ``evaluate`` scores them."""

from __future__ import annotations

import numpy as np

from model_store.heatmaps import Heatmaps, video_heatmaps
from model_store.manifest import ClipSpec, HeatmapSpec
from model_store.media import Windows, normalize_video
from model_store.pipelines import Feeds


def avsync_feeds(windows: Windows, clip: ClipSpec) -> Feeds:
    """Graph inputs: ``video`` (W, 3, T, H, W) and ``audio`` (W, S), float32."""
    return {"video": normalize_video(windows.video, clip), "audio": windows.audio.astype(np.float32)}


def sync_probabilities(logits: np.ndarray) -> np.ndarray:
    """The sigmoid of each window's ``sync_logit`` in float64: > 0.5 reads as in sync. Shape: (W,) -> (W,)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def sync_score(logits: np.ndarray) -> float:
    """A video's sync score: the mean of its windows' sync probabilities. Shape: logits (W,)."""
    return float(np.mean(sync_probabilities(logits)))


def source_heatmaps(cam: np.ndarray, windows: Windows, clip: ClipSpec, spec: HeatmapSpec | None = None) -> Heatmaps:
    """Heatmaps of a whole video from its windows' CAMs, refined as ``spec`` (the manifest's ``heatmap``) says;
    ``None`` reads the CAM as it is.

    Shape: cam (W, T', h, w) -> Heatmaps of F <= W * T' frames, (h, w) or refined (H / pool, W / pool)
    """
    return video_heatmaps(cam, windows.starts_s, clip.window_s, windows.video, spec)
