"""Reading an ``avsync`` model's class activation maps as sound-source heatmaps (numpy and scipy.ndimage).

The service and ``evaluate localization`` both call :func:`video_heatmaps`, so what is scored is what is served:

- each window's CAM ``(T', h, w)`` is split into its ``T'`` time steps; step ``k`` of a window starting at ``s``
  stands for the time ``s + (k + 0.5) * window_s / T'``;
- the sliding windows cover the whole video and the last one may overlap its predecessor: a step is kept only if
  its time lies after the end of the previous window, so the frames' times increase;
- when the model's manifest carries a :class:`~model_store.manifest.HeatmapSpec` (``refine="guided"``), each step
  is refined at the model's frame size by a colour guided filter whose guide is the frame at the step's time
  (:func:`refine_guided`), so the heatmap follows the edges of what is in the picture;
- values are min-max normalised over the whole video into [0, 1], so quiet moments look quieter than loud ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from model_store.manifest import HeatmapSpec


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


def video_heatmaps(cam: np.ndarray, starts_s: np.ndarray, window_s: float, video: np.ndarray | None = None,
                   spec: HeatmapSpec | None = None) -> Heatmaps:
    """Heatmaps for a whole video from the CAMs of its sliding windows.

    ``spec`` (the manifest's ``heatmap``) refines each step with :func:`refine_guided`, guided by the window's
    frame at the step's time; ``video`` (the decoded windows, uint8) is then needed.

    Shape: cam (W, T', h, w), starts_s (W,), video (W, T, H, W, 3) -> Heatmaps with F <= W * T' frames of (h, w),
    or of (H, W) when refined
    """
    cam = np.asarray(cam, dtype=np.float32)
    times, owners, ks = frame_times(starts_s, cam.shape[1], window_s)
    maps = cam[owners, ks]
    if spec is not None:
        if video is None:
            raise ValueError("a refined heatmap needs the decoded frames it is guided by")
        maps = refine_guided(maps, step_frames(video, owners, ks, cam.shape[1]), spec.radius, spec.eps, spec.blur,
                             spec.pool)
    return Heatmaps(times, normalise(maps), owners)


def step_frames(video: np.ndarray, owners: np.ndarray, ks: np.ndarray, steps: int) -> np.ndarray:
    """The frame at each kept CAM step's time (:func:`frame_times`), as float colours in [0, 1].

    Shape: video (W, T, H, W, 3) uint8 -> (F, H, W, 3) float32
    """
    frames = video.shape[1]
    at = np.minimum(((np.asarray(ks) + 0.5) * frames / steps).astype(int), frames - 1)
    return video[owners, at].astype(np.float32) / 255.0


def box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 square around each pixel of the last two axes (edge-padded). r = 0: unchanged.

    Two running sums in float64 (``scipy.ndimage.uniform_filter1d``, ``mode="nearest"`` is the edge padding), then
    float32: the same numbers as a cumulative-sum box filter, at the cost of one library call per axis.
    """
    if r == 0:
        return np.asarray(x, dtype=np.float32)
    k = 2 * r + 1
    y = ndimage.uniform_filter1d(np.asarray(x, dtype=np.float64), k, axis=-2, mode="nearest")
    return ndimage.uniform_filter1d(y, k, axis=-1, mode="nearest").astype(np.float32)


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter (He, Sun & Tang, ECCV 2010): in every (2r+1)^2 window, ``p`` is fitted as a linear
    function of the guide's RGB colour (ridge ``eps``), and each pixel averages the fits of the windows that hold
    it. The output keeps ``p``'s coarse layout but takes the guide's edges.

    Shape: guide (..., H, W, 3) float, p (..., H, W) -> (..., H, W) float32
    """
    guide = np.asarray(guide, dtype=np.float32)
    p = np.asarray(p, dtype=np.float32)
    if guide.shape[-1] != 3 or guide.shape[:-1] != p.shape:
        raise ValueError(f"guide {guide.shape} must be the map's shape {p.shape} with 3 colour channels")
    r, g, b = (guide[..., c] for c in range(3))
    mr, mg, mb, mp = (box_blur(x, radius) for x in (r, g, b, p))
    # the colours' covariance in each window (symmetric 3 x 3, ridge on the diagonal) and their covariance with p
    s_rr = box_blur(r * r, radius) - mr * mr + eps
    s_rg = box_blur(r * g, radius) - mr * mg
    s_rb = box_blur(r * b, radius) - mr * mb
    s_gg = box_blur(g * g, radius) - mg * mg + eps
    s_gb = box_blur(g * b, radius) - mg * mb
    s_bb = box_blur(b * b, radius) - mb * mb + eps
    c_r, c_g, c_b = (box_blur(x * p, radius) - m * mp for x, m in ((r, mr), (g, mg), (b, mb)))
    # solve by the adjugate, every window at once
    i_rr, i_rg, i_rb = s_gg * s_bb - s_gb * s_gb, s_rb * s_gb - s_rg * s_bb, s_rg * s_gb - s_rb * s_gg
    i_gg, i_gb, i_bb = s_rr * s_bb - s_rb * s_rb, s_rg * s_rb - s_rr * s_gb, s_rr * s_gg - s_rg * s_rg
    det = s_rr * i_rr + s_rg * i_rg + s_rb * i_rb
    a_r = (i_rr * c_r + i_rg * c_g + i_rb * c_b) / det
    a_g = (i_rg * c_r + i_gg * c_g + i_gb * c_b) / det
    a_b = (i_rb * c_r + i_gb * c_g + i_bb * c_b) / det
    offset = mp - a_r * mr - a_g * mg - a_b * mb
    out = box_blur(a_r, radius) * r + box_blur(a_g, radius) * g + box_blur(a_b, radius) * b + box_blur(offset, radius)
    return out.astype(np.float32)


def refine_guided(maps: np.ndarray, frames: np.ndarray, radius: int, eps: float, blur: int, pool: int = 1,
                  chunk: int = 64) -> np.ndarray:
    """Coarse maps drawn along the edges of their frames: upsampled to the frames' size, guided-filtered with the
    frame as guide, box-blurred by ``blur`` pixels (which fills thin gaps the colour fit leaves), then averaged
    over ``pool`` x ``pool`` blocks. ``chunk`` frames at a time, so long videos stay in cache.

    Shape: maps (F, h, w), frames (F, H, W, 3) float in [0, 1] -> (F, H / pool, W / pool)
    """
    n, height, width = frames.shape[:3]
    out = np.empty((n, height // pool, width // pool), np.float32)
    for s in range(0, n, chunk):
        m = box_blur(guided_filter(frames[s:s + chunk], upsample(maps[s:s + chunk], height, width), radius, eps), blur)
        out[s:s + chunk] = m.reshape(len(m), height // pool, pool, width // pool, pool).mean(axis=(2, 4))
    return out


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
