"""Reading an ``avsync`` model's class activation maps as sound-source heatmaps (numpy only).

The service and ``evaluate localization`` both call :func:`video_heatmaps`, so what is scored is what is served:

- each window's CAM ``(T', h, w)`` is split into its ``T'`` time steps; step ``k`` of a window starting at ``s``
  stands for the time ``s + (k + 0.5) * window_s / T'``;
- the sliding windows cover the whole video and the last one may overlap its predecessor: a step is kept only if
  its time lies after the end of the previous window, so the frames' times increase;
- values are min-max normalised over the whole video into [0, 1], so quiet moments look quieter than loud ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Heatmaps:
    times_s: np.ndarray  # (F,) float64, increasing
    maps: np.ndarray  # (F, h, w) float32 in [0, 1]
    window: np.ndarray  # (F,) int: the window each frame comes from

    def peak(self, i: int) -> tuple[float, float]:
        """Normalised image coordinates (x, y) of frame ``i``'s maximum (cell centre)."""
        h, w = self.maps.shape[1:]
        y, x = np.unravel_index(int(np.argmax(self.maps[i])), (h, w))
        return (x + 0.5) / w, (y + 0.5) / h

    def at(self, t_s: float) -> int:
        """Index of the frame nearest to ``t_s``."""
        return int(np.argmin(np.abs(self.times_s - t_s)))


def frame_times(starts_s: np.ndarray, steps: int, window_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times of the kept CAM steps of sliding windows: (times (F,), window index (F,), step index (F,))."""
    times, owners, ks = [], [], []
    prev_end = -np.inf
    for i, start in enumerate(np.asarray(starts_s, dtype=np.float64)):
        for k in range(steps):
            t = start + (k + 0.5) * window_s / steps
            if t >= prev_end - 1e-9:
                times.append(t)
                owners.append(i)
                ks.append(k)
        prev_end = start + window_s
    return np.array(times), np.array(owners, dtype=int), np.array(ks, dtype=int)


def normalise(maps: np.ndarray) -> np.ndarray:
    lo, hi = float(maps.min()), float(maps.max())
    return ((maps - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def video_heatmaps(cam: np.ndarray, starts_s: np.ndarray, window_s: float) -> Heatmaps:
    """Heatmaps for a whole video from the CAMs of its sliding windows.

    Shape: cam (W, T', h, w), starts_s (W,) -> Heatmaps with F <= W * T' frames of (h, w)
    """
    cam = np.asarray(cam, dtype=np.float32)
    times, owners, ks = frame_times(starts_s, cam.shape[1], window_s)
    return Heatmaps(times, normalise(cam[owners, ks]), owners)


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling (half-pixel centres, edges clamped). Shape: (..., h, w) -> (..., height, width)."""
    maps = np.asarray(maps, dtype=np.float32)
    h, w = maps.shape[-2:]

    def axis(n: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip((np.arange(n) + 0.5) * g / n - 0.5, 0.0, g - 1.0)
        i0 = np.floor(u).astype(int)
        i1 = np.minimum(i0 + 1, g - 1)
        return i0, i1, (u - i0).astype(np.float32)

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    rows = maps[..., y0, :] * (1 - fy)[:, None] + maps[..., y1, :] * fy[:, None]  # (..., height, w)
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx
