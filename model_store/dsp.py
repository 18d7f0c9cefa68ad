"""Signal processing around the separation graph (numpy only): the ``hide`` box and the overlap-add that turns
per-window outputs into whole tracks without seams (both used by :mod:`model_store.pipelines.separation`).

The STFT and inverse STFT are inside the published graph (real-valued ops), so serving needs no FFT here.
"""

from __future__ import annotations

import numpy as np

from model_store.manifest import ClipSpec

Box = tuple[float, float, float, float]


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` (normalised, 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1) -> tuple; ValueError otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"expected 4 comma-separated numbers x0,y0,x1,y1, got {len(parts)}")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError as exc:
        raise ValueError(f"not numbers: {text!r}") from exc
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError("coordinates must be finite")
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError("need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (normalised image coordinates)")
    return (x0, y0, x1, y1)


def box_slices(box: Box, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns a normalised box covers (any pixel it touches)."""
    x0, y0, x1, y1 = box
    return (slice(int(np.floor(y0 * height)), int(np.ceil(y1 * height))),
            slice(int(np.floor(x0 * width)), int(np.ceil(x1 * width))))


def crossfade_window(n: int, floor: float = 1e-3) -> np.ndarray:
    """Hann weights with a small floor, so that every sample of every window counts: (n,) float64."""
    return np.maximum(np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2, floor)


def overlap_add(chunks: np.ndarray, starts_s: np.ndarray, spec: ClipSpec, duration_s: float) -> np.ndarray:
    """Per-window outputs (W, S) -> one track of ``round(duration_s * sample_rate)`` samples: each window
    placed at its start, weighted by :func:`crossfade_window`, divided by the summed weights (no seams, and
    exactly the window's output where only one window covers a sample)."""
    sr, n = spec.sample_rate, chunks.shape[-1]
    total = int(round(duration_s * sr))
    acc = np.zeros(total + n, dtype=np.float64)
    weight = np.zeros(total + n, dtype=np.float64)
    w = crossfade_window(n)
    for chunk, s in zip(chunks, starts_s, strict=True):
        a0 = max(0, int(round(float(s) * sr)))
        acc[a0 : a0 + n] += chunk * w
        weight[a0 : a0 + n] += w
    out = acc[:total] / np.maximum(weight[:total], 1e-12)
    return out.astype(np.float32)
