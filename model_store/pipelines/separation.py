"""The separation pipeline: windows -> ``video``/``audio`` feeds (with the ``hide`` box blanked); per-window
``on_screen``/``off_screen`` outputs -> whole tracks by overlap-add, and the mixture read back the same way.
``/v1/separations`` serves these and ``evaluate separation`` scores them."""

from __future__ import annotations

import numpy as np

from model_store.dsp import Box, box_slices, overlap_add
from model_store.manifest import ClipSpec
from model_store.media import Windows, normalize_video
from model_store.pipelines import Feeds

TRACKS = ("on_screen", "off_screen")


def separation_feeds(windows: Windows, clip: ClipSpec, hide: Box | None = None) -> Feeds:
    """Graph inputs: ``video`` (W, 3, T, H, W) float32 and ``audio`` (W, S) float32. ``hide`` is blanked in
    every frame to the pixel mean (exactly zero after normalisation), as the paper hides a visible speaker."""
    video = normalize_video(windows.video, clip)
    if hide is not None:
        rows, cols = box_slices(hide, video.shape[-2], video.shape[-1])
        video[..., rows, cols] = 0.0
    return {"video": video, "audio": windows.audio.astype(np.float32)}


def separated_tracks(outputs: Feeds, windows: Windows, clip: ClipSpec) -> dict[str, np.ndarray]:
    """The whole ``on_screen`` and ``off_screen`` tracks from the windows' outputs.

    Shape: outputs[track] (W, S) -> (round(duration_s * sample_rate),) float32
    """
    return {name: overlap_add(outputs[name], windows.starts_s, clip, windows.duration_s) for name in TRACKS}


def mixture_track(windows: Windows, clip: ClipSpec) -> np.ndarray:
    """The input mixture as one track, put together like the separated ones (the reference they improve on).

    Shape: windows.audio (W, S) -> (round(duration_s * sample_rate),) float32
    """
    return overlap_add(windows.audio, windows.starts_s, clip, windows.duration_s)
