"""One pipeline per task: decoded windows -> model feeds, model outputs -> answers (numpy only).

The service's routes (``app/routers``) and the ``evaluate`` scorers (``training/*/score.py``) call the same
functions, so what is evaluated is what is served: :mod:`.action` (window softmax, clip probabilities, segments),
:mod:`.avsync` (sync score, sound-source heatmaps), :mod:`.separation` (``hide``, whole tracks by overlap-add).
This module holds what they share: running the windows of one or many videos through a model in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from model_store.media import Windows

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]
FeedsFn = Callable[[Windows], Feeds]


def window_slice(windows: Windows, start: int, stop: int) -> Windows:
    """Windows ``start:stop`` of a video (views, not copies), with the video's duration and audio flag."""
    return Windows(windows.video[start:stop], windows.audio[start:stop], windows.starts_s[start:stop],
                   windows.duration_s, windows.has_audio)


def run_windows(run: RunFn, feeds_of: FeedsFn, videos: Sequence[Windows], batch: int = 32) -> list[Feeds]:
    """Run the windows of ``videos``, in order, through ``run`` in batches of ``batch`` windows (a batch may span
    several videos), building each batch's feeds only when it runs (``feeds_of`` on a slice of one video's
    windows), and hand the outputs back per video.

    Shape: videos[i] with W_i windows -> outputs[i][name] (W_i, ...), in the windows' order
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if any(len(w) == 0 for w in videos):
        raise ValueError("every video needs at least one window")
    bounds = np.cumsum([0] + [len(w) for w in videos])  # video i holds windows bounds[i]:bounds[i + 1]
    parts: list[list[Feeds]] = [[] for _ in videos]
    for start in range(0, int(bounds[-1]), batch):
        stop = min(start + batch, int(bounds[-1]))
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, stop, side="left"))  # videos first..last-1 meet this batch
        pieces = [(i, max(start, int(bounds[i])) - int(bounds[i]), min(stop, int(bounds[i + 1])) - int(bounds[i]))
                  for i in range(first, last)]
        feeds = [feeds_of(window_slice(videos[i], a, b)) for i, a, b in pieces]
        outputs = run({name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
        offset = 0
        for i, a, b in pieces:
            parts[i].append({name: value[offset : offset + b - a] for name, value in outputs.items()})
            offset += b - a
    return [{name: np.concatenate([p[name] for p in ps]) for name in ps[0]} for ps in parts]
