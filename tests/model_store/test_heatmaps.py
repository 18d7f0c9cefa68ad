"""The refined heatmap's box filter (scipy.ndimage) gives the numbers of the cumulative-sum numpy filter it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from model_store import heatmaps


def cumsum_box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """The former numpy filter, kept as the reference: edge-padded cumulative sums in float64 per axis."""
    k = 2 * r + 1
    for axis in (-2, -1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = x.shape[axis]
        x = (np.take(c, np.arange(k, k + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / k
    return x.astype(np.float32)


@pytest.mark.parametrize("shape", [(5, 64, 64), (3, 8, 8), (32, 48), (2, 2, 7, 5)])
@pytest.mark.parametrize("r", [0, 1, 3, 24])
def test_box_blur_matches_the_cumsum_filter(shape: tuple[int, ...], r: int) -> None:
    x = np.random.default_rng(r).random(shape, dtype=np.float32) * 3 - 1
    got = heatmaps.box_blur(x, r)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, cumsum_box_blur(x, r), rtol=0, atol=1e-6)  # a float32 rounding at most


def test_refined_heatmaps_match_the_cumsum_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 12, 64, 64, 3), dtype=np.uint8)  # (W, T, H, W, 3)
    cam = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)  # (W, T', h, w)
    starts = np.array([0.0, 1.5, 2.0])

    class Spec:
        radius, eps, blur, pool = 24, 1e-3, 3, 2

    got = heatmaps.video_heatmaps(cam, starts, 1.5, video, Spec)
    monkeypatch.setattr(heatmaps, "box_blur", cumsum_box_blur)
    want = heatmaps.video_heatmaps(cam, starts, 1.5, video, Spec)
    assert got.maps.shape == want.maps.shape == (len(want.times_s), 32, 32)
    np.testing.assert_allclose(got.maps, want.maps, rtol=0, atol=1e-5)
    assert [got.peak(i) for i in range(len(got.times_s))] == [want.peak(i) for i in range(len(want.times_s))]
