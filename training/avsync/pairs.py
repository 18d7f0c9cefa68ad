"""The sync pretext's samples: a window of a clip's frames with its own audio (in sync) and with the same clip's
audio shifted by a random offset (Owens & Efros 2018). Shared by training and by ``evaluate alignment``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_store.manifest import ClipSpec
from model_store.media import normalize_video
from training.data.datasets import ClipData, window_arrays

# the paper's shift range as a fraction of its 4.2 s window
PAPER_SHIFT = (2.0 / 4.2, 5.8 / 4.2)


@dataclass(frozen=True)
class Pair:
    """A window of ``clip`` whose frames start at ``video_s`` and whose shifted audio starts at ``audio_s``."""

    clip: int
    video_s: float
    audio_s: float


def draw_pair(rng: np.random.Generator, ci: int, duration_s: float, clip: ClipSpec,
              shifts: tuple[float, float]) -> Pair | None:
    """Frames at one start, audio at another start ``shift`` away (either direction), both inside the clip and
    on the frame grid. None when the clip is too short for the smallest shift."""
    step = 1.0 / clip.fps
    span = duration_s - clip.window_s  # latest start
    hi = min(shifts[1], span)
    if hi < shifts[0]:
        return None
    n_min, n_max = math.ceil(shifts[0] / step - 1e-6), math.floor(hi / step + 1e-6)
    if n_max < n_min:
        return None
    shift = int(rng.integers(n_min, n_max + 1)) * step
    first = int(rng.integers(0, math.floor((span - shift) / step + 1e-6) + 1)) * step
    a, b = (first, first + shift) if rng.uniform() < 0.5 else (first + shift, first)
    return Pair(ci, a, b)


def has_audio(c: object) -> bool:
    """Whether a clip can make pairs: a clip decoded without an audio stream never becomes an in-sync positive
    (clips that do not say, e.g. from an older cache, count as having audio)."""
    extra = getattr(c, "extra", None) or {}
    return bool(extra.get("has_audio", True))


def draw_batch(rng: np.random.Generator, clips: Sequence[ClipData], clip: ClipSpec, shifts: tuple[float, float],
               batch_size: int, flip: bool, other: bool) -> tuple[list[Pair], np.ndarray | None]:
    """A global batch of training pairs (from distinct clips when ``other``) and their flips."""
    pairs: list[Pair] = []
    while len(pairs) < batch_size:
        ci = int(rng.integers(len(clips)))
        if other and any(p.clip == ci for p in pairs):
            continue  # the other-clip track must come from another clip
        if not has_audio(clips[ci]):
            continue  # no audio: never an in-sync positive
        p = draw_pair(rng, ci, clips[ci].duration_s, clip, shifts)
        if p is not None:
            pairs.append(p)
    flips = rng.uniform(size=batch_size) < 0.5 if flip else None
    return pairs, flips


def heldout_pairs(clips: Sequence[ClipData], clip: ClipSpec, shifts: tuple[float, float],
                  seed: int = 0) -> list[Pair]:
    """One fixed pair per clip, drawn from ``[seed, clip index]``: the same for every model and run."""
    pairs = []
    for i, c in enumerate(clips):
        if not has_audio(c):
            continue
        p = draw_pair(np.random.default_rng([seed, i]), i, c.duration_s, clip, shifts)
        if p is not None:
            pairs.append(p)
    if not pairs:
        raise ValueError(f"no clip is long enough for a window of {clip.window_s:.2f} s and a shift of "
                         f"{shifts[0]:.2f} s")
    return pairs


def pair_batch(clips: Sequence[ClipData], clip: ClipSpec, pairs: Sequence[Pair], flips: np.ndarray | None = None,
               other: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs for ``pairs``: each window's frames once, its audio twice: in sync (label 1), then shifted
    (label 0); feed ``video`` repeated twice (or use ``forward_shared_video``). With ``other``, a third track
    (label 0): the next pair's in-sync audio, so pairs should come from different clips.

    Shape: video (N, 3, T, H, W) float32, audio (kN, S) float32, label (kN,) float32, k = 2 (3 with ``other``)
    """
    videos, pos, neg = [], [], []
    for k, p in enumerate(pairs):
        frames, shifted = window_arrays(clips[p.clip], clip, p.video_s, p.audio_s)
        _, own = window_arrays(clips[p.clip], clip, p.video_s, p.video_s)
        if flips is not None and flips[k]:
            frames = frames[:, :, ::-1]
        videos.append(frames)
        pos.append(own)
        neg.append(shifted)
    video = normalize_video(np.stack(videos), clip)
    tracks = [pos, neg] + ([pos[1:] + pos[:1]] if other else [])
    audio = np.stack([a for t in tracks for a in t])
    label = np.concatenate([np.ones(len(pairs))] + [np.zeros(len(pairs))] * (len(tracks) - 1)).astype(np.float32)
    return video, audio, label
