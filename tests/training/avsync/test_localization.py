"""Localization scoring: cIoU, binarisation, success rate / AUC, heatmap frames and the two baselines."""

import numpy as np
import pytest

from model_store.heatmaps import (
    box_blur,
    frame_times,
    guided_filter,
    refine_guided,
    step_frames,
    upsample,
    video_heatmaps,
)
from model_store.manifest import ClipSpec, HeatmapSpec
from model_store.media import Windows
from training.avsync.score import (
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


def _square_scene(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, 32, 32, 3) in [0, 1]: a grey, slightly noisy background with an orange square at rows 6-13,
    columns 14-21; and a coarse 4 x 4 map, as a CAM of stride 8 sees it: high on cell (1, 2) (rows 8-15,
    columns 16-23), which holds most of the square, and on no other."""
    rng = np.random.default_rng(0)
    frames = 0.4 + 0.05 * rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    frames[:, 6:14, 14:22] = (0.9, 0.5, 0.1)
    coarse = np.zeros((n, 4, 4), np.float32)
    coarse[:, 1, 2] = 1.0
    return np.clip(frames, 0, 1), coarse


def test_box_blur_is_a_local_mean():
    x = np.zeros((9, 9), np.float32)
    x[4, 4] = 9.0
    np.testing.assert_allclose(box_blur(x, 1)[3:6, 3:6], 1.0)
    assert box_blur(x, 1)[0, 0] == 0 and box_blur(x, 1).sum() == pytest.approx(81 / 9)
    np.testing.assert_array_equal(box_blur(x, 0), x)


def test_guided_filter_keeps_constants_and_maps_linear_in_the_guide():
    frames, _ = _square_scene()
    np.testing.assert_allclose(guided_filter(frames, np.full(frames.shape[:3], 0.3), 4, 1e-3), 0.3, atol=1e-5)
    p = 2.0 * frames[..., 0] + 0.1  # exactly linear in the guide: reproduced up to the ridge's shrinkage
    np.testing.assert_allclose(guided_filter(frames, p, 4, 1e-6), p, atol=2e-3)


def test_guided_refinement_draws_the_coarse_map_along_the_object():
    frames, coarse = _square_scene()
    gt = np.zeros((32, 32), bool)
    gt[6:14, 14:22] = True
    plain = binarise(upsample(coarse, 32, 32))
    refined = binarise(refine_guided(coarse, frames, radius=12, eps=1e-3, blur=1))
    assert ciou(refined[0], gt) > 0.8 and ciou(refined[0], gt) > ciou(plain[0], gt) + 0.2


def test_step_frames_are_the_frames_at_the_steps_times():
    video = np.arange(12, dtype=np.uint8)[None, :, None, None, None] * np.ones((2, 12, 2, 2, 3), np.uint8)
    _, owners, ks = frame_times(np.array([0.0, 1.5]), steps=6, window_s=1.5)
    got = step_frames(video, owners, ks, 6)[:, 0, 0, 0] * 255
    np.testing.assert_allclose(got, [1, 3, 5, 7, 9, 11] * 2)  # step k spans frames 2k, 2k+1; its time is 2k+1


def test_refined_heatmaps_need_the_frames_and_come_at_their_size():
    frames, coarse = _square_scene(2)
    video = (frames[:, None] * 255).astype(np.uint8).repeat(4, axis=1)  # 2 windows of 4 identical frames
    cam = coarse[:, None].repeat(2, axis=1)  # T' = 2
    spec = HeatmapSpec()
    hm = video_heatmaps(cam, np.array([0.0, 0.5]), 0.5, video, spec)
    assert hm.maps.shape == (4, 16, 16) and hm.maps.min() == 0 and hm.maps.max() == 1  # pooled by 2
    x, y = hm.peak(0)
    assert 14 / 32 <= x <= 22 / 32 and 6 / 32 <= y <= 14 / 32
    with pytest.raises(ValueError, match="frames"):
        video_heatmaps(cam, np.array([0.0, 0.5]), 0.5, None, spec)


def test_a_refined_reading_is_scored_beside_the_cam_and_the_refined_baselines():
    windows, boxes = _two_movers()
    cam = np.zeros((1, 4, 8, 8), np.float32)
    for k in range(4):
        cam[0, k, 1:2, (2 + 2 * (2 * k + 1) + 3) // 4] = 1.0
    plain = score_clip(cam, windows, CLIP, boxes)
    refined = score_clip(cam, windows, CLIP, boxes, HeatmapSpec(radius=6, blur=1))
    assert set(refined) == {"model", "cam", "centre", "motion", "centre_refined", "motion_refined"}
    assert refined["cam"] == pytest.approx(plain["model"]) and refined["motion"] == pytest.approx(plain["motion"])
    assert refined["model"] > refined["cam"] and refined["model"] > refined["motion_refined"]
