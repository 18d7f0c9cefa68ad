"""The per-task pipelines the routes and the scorers share: feeds from windows, answers from outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_store.heatmaps import video_heatmaps
from model_store.manifest import ClipSpec, HeatmapSpec
from model_store.media import Windows, normalize_video, window_starts
from model_store.pipelines import run_windows, window_slice
from model_store.pipelines.action import (
    action_feeds,
    clip_probabilities,
    read_actions,
    segment_spans,
    sigmoid,
    softmax,
    top_classes,
)
from model_store.pipelines.avsync import avsync_feeds, source_heatmaps, sync_probabilities, sync_score
from model_store.pipelines.separation import TRACKS, mixture_track, separated_tracks, separation_feeds

ROOT = Path(__file__).resolve().parents[2]


def make_windows(spec: ClipSpec, duration_s: float, seed: int = 0, signal: np.ndarray | None = None) -> Windows:
    """Random frames and, per window, the slice of ``signal`` (default: noise) the window covers."""
    rng = np.random.default_rng(seed)
    starts = window_starts(duration_s, spec)
    n, s = len(starts), spec.audio_samples
    if signal is None:
        signal = rng.standard_normal(int(round(duration_s * spec.sample_rate)) + s).astype(np.float32)
    audio = np.zeros((n, s), np.float32)
    for i, start in enumerate(starts):
        chunk = signal[int(round(start * spec.sample_rate)):][:s]
        audio[i, : len(chunk)] = chunk
    video = rng.integers(0, 256, (n, spec.frames, spec.height, spec.width, 3), dtype=np.uint8)
    return Windows(video, audio, starts, duration_s, True)


# ------------------------------------------------------------------------------------------------ shared


def test_run_windows_packs_batches_across_videos_and_splits_outputs_back(spec: ClipSpec) -> None:
    videos = [make_windows(spec, d, seed=i) for i, d in enumerate([2.5, 0.4, 5.0, 1.5])]  # 3, 1, 5, 2 windows
    seen: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(len(feeds["audio"]))
        return {"energy": (feeds["audio"] ** 2).sum(axis=1), "first": feeds["audio"][:, 0]}

    built: list[int] = []

    def feeds_of(w: Windows) -> dict[str, np.ndarray]:
        built.append(len(w))
        return {"audio": w.audio}

    got = run_windows(run, feeds_of, videos, batch=4)
    assert [len(w) for w in videos] == [3, 1, 5, 2]
    assert seen == [4, 4, 3]  # full batches, as many windows as there are, never more than ``batch``
    assert max(built) <= 4 and sum(built) == 11
    for w, out in zip(videos, got, strict=True):
        np.testing.assert_allclose(out["energy"], (w.audio**2).sum(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(out["first"], w.audio[:, 0])


def test_run_windows_refuses_bad_input(spec: ClipSpec) -> None:
    w = make_windows(spec, 2.0)
    with pytest.raises(ValueError, match="batch"):
        run_windows(lambda f: f, lambda x: {"a": x.audio}, [w], batch=0)
    with pytest.raises(ValueError, match="at least one window"):
        run_windows(lambda f: f, lambda x: {"a": x.audio}, [window_slice(w, 0, 0)])


def test_pipelines_import_neither_torch_nor_the_service_nor_training() -> None:
    code = ("import sys, model_store.pipelines.action, model_store.pipelines.avsync, model_store.pipelines.separation;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'fastapi', 'app', 'training'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ action


def test_softmax_rows_are_distributions_that_keep_the_ranking() -> None:
    logits = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32) * 5
    logits[0] += 1000.0  # large logits must not overflow
    p = softmax(logits)
    assert p.dtype == np.float64 and np.isfinite(p).all() and (p > 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(softmax(logits.astype(np.float64) + 3.0), p, atol=1e-12)  # shift invariant


def test_clip_probabilities_are_the_mean_of_the_window_probabilities() -> None:
    window_probs = softmax(np.random.default_rng(1).standard_normal((5, 4)))
    clip = clip_probabilities(window_probs)
    np.testing.assert_allclose(clip, window_probs.sum(axis=0) / 5, atol=1e-15)
    assert clip.sum() == pytest.approx(1.0)


def test_top_classes_best_first_and_ties_in_label_order() -> None:
    probs = np.array([0.1, 0.3, 0.3, 0.05, 0.25])
    assert top_classes(probs, 3).tolist() == [1, 2, 4]
    assert top_classes(probs, 10).tolist() == [1, 2, 4, 0, 3]
    assert top_classes(np.stack([probs, probs[::-1]]), 1).tolist() == [[1], [2]]


@pytest.mark.parametrize("duration", [0.4, 1.0, 2.5, 3.3, 7.0])
def test_segments_cover_the_video_without_gaps(spec: ClipSpec, duration: float) -> None:
    spans = segment_spans(window_starts(duration, spec), spec.window_s, duration)
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(duration)
    assert all(0.0 <= s < e <= duration + 1e-9 for s, e in spans)
    assert all(e - s <= spec.window_s + 1e-9 for s, e in spans)
    assert all(nxt[0] <= prev[1] + 1e-9 for prev, nxt in zip(spans, spans[1:], strict=False))


def test_read_actions_is_softmax_mean_and_one_segment_per_window(spec: ClipSpec) -> None:
    windows = make_windows(spec, 2.5)
    logits = np.random.default_rng(2).standard_normal((len(windows), 3)).astype(np.float32)
    actions = read_actions(logits, windows, spec)
    np.testing.assert_allclose(actions.window_probs, softmax(logits))
    np.testing.assert_allclose(actions.probs, actions.window_probs.mean(axis=0))
    assert [s for s, _ in actions.spans] == windows.starts_s.tolist() and actions.spans[-1][1] == 2.5


def test_read_actions_of_a_multi_label_model_is_per_class_sigmoids(spec: ClipSpec) -> None:
    windows = make_windows(spec, 2.5)
    logits = np.random.default_rng(3).standard_normal((len(windows), 4)).astype(np.float32) * 3
    logits[0, 0], logits[0, 1] = 1000.0, -1000.0  # no overflow either way
    actions = read_actions(logits, windows, spec, multi_label=True)
    np.testing.assert_allclose(actions.window_probs, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-12)
    assert actions.window_probs[0, 0] == 1.0 and actions.window_probs[0, 1] == 0.0
    assert np.isfinite(actions.window_probs).all() and not np.allclose(actions.window_probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(actions.probs, actions.window_probs.mean(axis=0))
    np.testing.assert_array_equal(top_classes(actions.probs, 4), np.argsort(-actions.probs, kind="stable"))
    assert actions.spans == read_actions(logits, windows, spec).spans  # segments as a single-label model's
    np.testing.assert_allclose(sigmoid(np.array([-2.0, 0.0, 2.0])), [0.11920292, 0.5, 0.88079708], atol=1e-8)


def test_action_feeds_normalise_filter_and_zero(spec: ClipSpec) -> None:
    windows = make_windows(spec, 2.0)
    feeds = action_feeds(windows, spec)
    assert feeds["video"].shape == (len(windows), 3, spec.frames, spec.height, spec.width)
    assert feeds["video"].dtype == np.float32 and feeds["audio"].dtype == np.float32
    np.testing.assert_array_equal(feeds["video"], normalize_video(windows.video, spec))
    np.testing.assert_array_equal(feeds["audio"], windows.audio)
    assert set(action_feeds(windows, spec, {"video"})) == {"video"}  # a video-only graph gets no audio
    no_video = action_feeds(windows, spec, zero="video")
    assert not no_video["video"].any() and no_video["video"].shape == feeds["video"].shape
    np.testing.assert_array_equal(no_video["audio"], windows.audio)
    no_audio = action_feeds(windows, spec, zero="audio")
    assert not no_audio["audio"].any() and no_audio["audio"].shape == feeds["audio"].shape
    np.testing.assert_array_equal(no_audio["video"], feeds["video"])
    with pytest.raises(ValueError, match="zero"):
        action_feeds(windows, spec, zero="text")


# ------------------------------------------------------------------------------------------------ avsync


def test_sync_probabilities_are_the_sigmoid_and_the_score_their_mean() -> None:
    logits = np.array([0.0, 2.0, -2.0, 40.0, -40.0], np.float32)
    p = sync_probabilities(logits)
    np.testing.assert_allclose(p, [0.5, 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0)), 1.0, 0.0], atol=1e-12)
    assert sync_score(logits) == pytest.approx(p.mean())
    assert sync_score(np.array([3.0, -3.0])) == pytest.approx(0.5)


def test_avsync_feeds(spec: ClipSpec) -> None:
    windows = make_windows(spec, 2.0)
    feeds = avsync_feeds(windows, spec)
    np.testing.assert_array_equal(feeds["video"], normalize_video(windows.video, spec))
    assert feeds["audio"].dtype == np.float32 and feeds["audio"].shape == windows.audio.shape


def test_source_heatmaps_read_the_cam_as_the_spec_says(spec: ClipSpec) -> None:
    windows = make_windows(spec, 2.5)  # 3 windows, the last overlapping its predecessor
    cam = np.random.default_rng(3).random((len(windows), 2, 3, 5)).astype(np.float32)
    plain = source_heatmaps(cam, windows, spec)
    assert plain.maps.shape[1:] == (3, 5) and plain.maps.min() == 0.0 and plain.maps.max() == 1.0
    assert (np.diff(plain.times_s) > 0).all() and plain.times_s[-1] < 2.5
    np.testing.assert_array_equal(plain.maps, video_heatmaps(cam, windows.starts_s, spec.window_s).maps)
    heat = HeatmapSpec(radius=2, blur=1, pool=4)
    refined = source_heatmaps(cam, windows, spec, heat)
    assert refined.maps.shape == (len(plain.times_s), spec.height // 4, spec.width // 4)
    np.testing.assert_array_equal(refined.times_s, plain.times_s)


# ------------------------------------------------------------------------------------------------ separation


def test_overlap_add_of_constant_windows_gives_a_constant_track(spec: ClipSpec) -> None:
    windows = make_windows(spec, 3.3)
    outputs = {name: np.full((len(windows), spec.audio_samples), value, np.float32)
               for name, value in zip(TRACKS, (0.25, -0.5), strict=True)}
    tracks = separated_tracks(outputs, windows, spec)
    assert set(tracks) == set(TRACKS)
    for name, value in zip(TRACKS, (0.25, -0.5), strict=True):
        assert tracks[name].shape == (round(3.3 * spec.sample_rate),) and tracks[name].dtype == np.float32
        np.testing.assert_allclose(tracks[name], value, rtol=1e-6)


def test_mixture_track_puts_the_signal_back_together(spec: ClipSpec) -> None:
    duration = 3.3
    signal = np.sin(np.arange(round(duration * spec.sample_rate) + spec.audio_samples) / 7.0).astype(np.float32)
    windows = make_windows(spec, duration, signal=signal)
    mix = mixture_track(windows, spec)
    np.testing.assert_allclose(mix, signal[: len(mix)], atol=1e-6)


def test_hide_blanks_the_box_in_every_frame_and_nothing_else(spec: ClipSpec) -> None:
    windows = make_windows(spec, 2.0)
    plain = separation_feeds(windows, spec)
    hidden = separation_feeds(windows, spec, (0.25, 0.5, 0.5, 1.0))  # x0, y0, x1, y1 of a 40 x 24 frame
    rows, cols = slice(12, 24), slice(10, 20)
    assert not hidden["video"][..., rows, cols].any()
    mask = np.ones((spec.height, spec.width), bool)
    mask[rows, cols] = False
    np.testing.assert_array_equal(hidden["video"][..., mask], plain["video"][..., mask])
    np.testing.assert_array_equal(hidden["audio"], plain["audio"])
    np.testing.assert_array_equal(plain["video"], normalize_video(windows.video, spec))
