"""Localization scoring: cIoU, binarisation, success rate / AUC, heatmap frames and the two baselines."""

import numpy as np
import pytest

from model_store.heatmaps import frame_times, upsample, video_heatmaps
from model_store.manifest import ClipSpec
from model_store.media import Windows
from training.localization import (
    binarise,
    box_mask,
    boxes_at,
    centre_prior,
    ciou,
    motion_maps,
    score_clip,
    summarise,
)


def test_ciou_follows_the_literature_definition():
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True  # 16 pixels
    assert ciou(gt, gt) == 1.0
    pred = np.zeros_like(gt)
    pred[2:4, 2:6] = True  # half the box, nothing outside
    assert ciou(pred, gt) == pytest.approx(8 / 16)
    pred[8:10, 0:4] = True  # + 8 pixels outside the box
    assert ciou(pred, gt) == pytest.approx(8 / (16 + 8))
    assert ciou(np.ones_like(gt), gt) == pytest.approx(16 / 100)


def test_box_mask_and_nearest_box_in_time():
    m = box_mask((0.25, 0.5, 0.75, 1.0), 8, 8)
    assert m.sum() == 4 * 4 and m[4:, 2:6].all()
    boxes = [[0.0, 0, 0, 0.1, 0.1], [0.5, 0.5, 0.5, 0.6, 0.6]]
    np.testing.assert_allclose(boxes_at(boxes, np.array([0.1, 0.4])), [[0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]])


def test_binarise_is_relative_to_each_frame():
    maps = np.stack([np.linspace(0, 1, 16).reshape(4, 4), 10 + 5 * np.linspace(0, 1, 16).reshape(4, 4)])
    b = binarise(maps)
    np.testing.assert_array_equal(b[0], b[1])  # scale and offset do not matter
    assert b[0].sum() == 8


def test_success_rate_and_auc():
    s = summarise([1.0, 1.0, 0.6, 0.2])
    assert s["ciou_success"] == 0.75 and s["n"] == 4 and s["mean_ciou"] == pytest.approx(0.7)
    assert summarise([1.0] * 3)["auc"] == pytest.approx(1.0)
    assert summarise([0.0] * 3)["auc"] == pytest.approx(0.025)  # only threshold 0 is met
    assert 0.5 < s["auc"] < 0.8


def test_frame_times_cover_the_video_once_and_increase():
    times, owners, ks = frame_times(np.array([0.0, 1.5, 2.5]), steps=6, window_s=1.5)
    assert np.all(np.diff(times) > 0)
    assert times[0] == pytest.approx(0.125) and times[-1] == pytest.approx(3.875)
    assert owners[-1] == 2 and times[owners == 2].min() >= 3.0
    assert len(times) == 6 + 6 + 4


def test_heatmaps_normalised_over_the_video_and_upsampled():
    cam = np.zeros((2, 3, 4, 4), np.float32)
    cam[1, 2, 1, 3] = 5.0
    cam[0, 0, 0, 0] = -1.0
    hm = video_heatmaps(cam, np.array([0.0, 1.0]), 1.0)
    assert hm.maps.min() == 0 and hm.maps.max() == 1 and hm.maps.shape == (6, 4, 4)
    assert hm.peak(5) == (0.875, 0.375)
    up = upsample(hm.maps[5], 16, 16)
    assert up.shape == (16, 16) and np.unravel_index(up.argmax(), up.shape) in {(5, 13), (5, 14), (6, 13), (6, 14)}
    np.testing.assert_allclose(upsample(np.full((3, 3), 0.4), 7, 5), 0.4, rtol=1e-6)


CLIP = ClipSpec(fps=8, frames=8, height=32, width=32, sample_rate=800, audio_samples=800)


def _two_movers() -> tuple[Windows, list]:
    """A bright square moving along the top (the 'sounding' one, boxed) and another along the bottom."""
    video = np.zeros((1, 8, 32, 32, 3), np.uint8)
    boxes = []
    for t in range(8):
        x = 2 + 2 * t
        video[0, t, 4:10, x:x + 6] = 255
        video[0, t, 22:28, 24 - 2 * t:30 - 2 * t] = 255
        boxes.append([t / 8, x / 32, 4 / 32, (x + 6) / 32, 10 / 32])
    return Windows(video, np.zeros((1, 800), np.float32), np.zeros(1), 1.0, True), boxes


def test_motion_baseline_lights_up_every_mover():
    windows, _ = _two_movers()
    m = motion_maps(windows, CLIP, steps=4)
    assert m.shape == (4, 32, 32)
    top, bottom, background = m[1, 4:10].max(), m[1, 22:28].max(), m[1, 14:18].max()
    assert top > 0 and bottom > 0 and background == 0


def test_scores_a_map_on_the_sounding_object_above_the_baselines():
    windows, boxes = _two_movers()
    cam = np.zeros((1, 4, 8, 8), np.float32)
    for k in range(4):  # the CAM follows the top square (cells of 4 pixels)
        x = 2 + 2 * (2 * k + 1) + 3
        cam[0, k, 1:2, x // 4] = 1.0
    scores = score_clip(cam, windows, CLIP, boxes)
    assert scores["model"] > 0.4
    assert scores["model"] > scores["motion"] and scores["model"] > scores["centre"]
    assert centre_prior(1, 32, 32)[0].argmax() in {15 * 32 + 15, 15 * 32 + 16, 16 * 32 + 15, 16 * 32 + 16}
