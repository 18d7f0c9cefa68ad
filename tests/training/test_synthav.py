"""SynthAV actions world: determinism, ground truth, audio-visual sync, ambiguity by design, files."""

import csv
import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from training.data.synthav import (
    ACTION_CLASSES,
    WorldConfig,
    _render_scene,
    render_action_clip,
    write_action_dataset,
    write_video,
)

CFG = WorldConfig()
T = round(CFG.duration_s * CFG.fps)
S = round(CFG.duration_s * CFG.sample_rate)
LABELS = list(range(len(ACTION_CLASSES)))


def _energy(x: np.ndarray, sr: int, t0: float, t1: float) -> float:
    a, b = max(int(t0 * sr), 0), max(int(t1 * sr), 0)
    return float(np.mean(x[a:b].astype(np.float64) ** 2)) if b > a else 0.0


def test_action_classes_order() -> None:
    assert ACTION_CLASSES == (
        "ball_click",
        "ball_ring",
        "stick_ring",
        "stick_thud",
        "bar_rasp",
        "bar_hum",
        "wheel_buzz",
        "face_voice",
    )


def test_same_seed_same_clip_different_seed_different_clip() -> None:
    a, b = render_action_clip(7), render_action_clip(7)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.event_times, b.event_times)
    assert a.label == b.label
    c = render_action_clip(8, label=a.label)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.allclose(a.audio, c.audio)
    d, e = render_action_clip([3, 1], label=2), render_action_clip([3, 2], label=2)
    np.testing.assert_array_equal(d.audio, render_action_clip((3, 1), label=2).audio)
    assert not np.array_equal(d.frames, e.frames)


def test_label_drawn_from_seed_and_validated() -> None:
    labels = {render_action_clip(s).label for s in range(24)}
    assert len(labels) >= 5 and labels <= set(LABELS)
    assert render_action_clip(5).label == render_action_clip(5).label
    with pytest.raises(ValueError):
        render_action_clip(0, label=len(ACTION_CLASSES))


@pytest.mark.parametrize("label", LABELS)
def test_shapes_dtypes_ranges(label: int) -> None:
    clip = render_action_clip(100 + label, label)
    assert clip.frames.shape == (T, CFG.height, CFG.width, 3) and clip.frames.dtype == np.uint8
    for x in (clip.audio, clip.on_screen, clip.off_screen):
        assert x.shape == (S,) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.abs(clip.audio).max() <= 1.0
    assert clip.boxes.shape == (T, 4) and clip.boxes.dtype == np.float32
    assert (clip.boxes >= 0).all() and (clip.boxes <= 1).all()
    assert (clip.boxes[:, 2] > clip.boxes[:, 0]).all() and (clip.boxes[:, 3] > clip.boxes[:, 1]).all()
    extent = np.maximum(clip.boxes[:, 2] - clip.boxes[:, 0], clip.boxes[:, 3] - clip.boxes[:, 1])
    assert extent.min() >= 0.12  # big enough to be seen at 64x64
    assert clip.label == label and clip.label_name == ACTION_CLASSES[label]
    ev = clip.event_times
    assert len(ev) >= 3 and (np.diff(ev) > 0).all() and ev.min() >= 0 and ev.max() < CFG.duration_s
    assert clip.fps == CFG.fps and clip.sample_rate == CFG.sample_rate


def test_other_config_shapes() -> None:
    cfg = WorldConfig(width=96, height=64, fps=8.0, sample_rate=8000, duration_s=2.5)
    clip = render_action_clip(1, 6, cfg)
    assert clip.frames.shape == (20, 64, 96, 3)
    assert clip.audio.shape == (20000,) and clip.sample_rate == 8000
    assert clip.boxes.shape == (20, 4) and (clip.boxes >= 0).all() and (clip.boxes <= 1).all()


@pytest.mark.parametrize("label", LABELS)
def test_sounding_object_drawn_inside_its_box(label: int) -> None:
    scene = _render_scene(200 + label, label, CFG)
    clip, mask = scene.clip, scene.object_mask
    ys = (np.arange(CFG.height) + 0.5)[:, None] / CFG.height
    xs = (np.arange(CFG.width) + 0.5)[None, :] / CFG.width
    diff = np.abs(clip.frames.astype(np.float32) - scene.background[None] * 255.0).max(axis=-1)  # (T, H, W)
    pad = 1.5 / CFG.width
    for k in range(T):
        x0, y0, x1, y1 = clip.boxes[k]
        inside = (xs >= x0 - pad) & (xs <= x1 + pad) & (ys >= y0 - pad) & (ys <= y1 + pad)
        assert mask[k][~inside].max() < 0.05, f"frame {k}: object drawn outside its box"
        solid = mask[k] > 0.9
        assert solid.sum() >= 20
        assert solid[inside].sum() / max(inside.sum(), 1) > 0.08
        assert diff[k][solid].mean() > 40.0  # stands out from the background


@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_on_screen_energy_peaks_at_impulsive_events(label: int) -> None:
    for seed in (1, 2):
        clip = render_action_clip(seed, label)
        sr = clip.sample_rate
        for t in clip.event_times:
            after = _energy(clip.on_screen, sr, t, t + 0.02)
            before = _energy(clip.on_screen, sr, t - 0.03, t - 0.005)
            assert after > 10.0 * before + 1e-12
        # and nothing comparable happens away from the events
        onsets = np.zeros(S, dtype=bool)
        for t in clip.event_times:
            onsets[int(t * sr) : int((t + 0.02) * sr)] = True
        win = int(0.02 * sr)
        e = np.convolve(clip.on_screen.astype(np.float64) ** 2, np.ones(win) / win, mode="same")
        peak_at_events = e[onsets].max()
        quiet = np.ones(S, dtype=bool)
        for t in clip.event_times:
            quiet[max(int((t - 0.05) * sr), 0) : int((t + 0.12) * sr)] = False
        assert e[quiet].max() < 0.3 * peak_at_events


def test_ball_touches_floor_at_each_contact() -> None:
    for label in (0, 1):
        clip = render_action_clip(4, label)
        bottom = clip.boxes[:, 3]
        t = np.arange(T) / clip.fps
        for ev in clip.event_times:
            k = int(np.argmin(np.abs(t - ev)))
            # the frame nearest a contact shows the ball near the floor, falling before and rising after it
            assert bottom[k] > bottom.max() - 10.0 / CFG.height
            assert bottom[k] >= bottom[max(k - 2, 0)] and bottom[k] >= bottom[min(k + 2, T - 1)]


def test_bar_sound_follows_bar_motion() -> None:
    for label in (4, 5):
        clip = render_action_clip(9, label)
        speed = np.abs(np.diff(clip.boxes[:, 0], prepend=clip.boxes[0, 0]))
        hop = clip.sample_rate / clip.fps
        frame_energy = np.array(
            [np.mean(clip.on_screen[int((k - 1) * hop) : int(k * hop)] ** 2) if k else 0.0 for k in range(T)]
        )
        assert np.corrcoef(speed, frame_energy)[0, 1] > 0.6


@pytest.mark.parametrize("label", LABELS)
def test_event_intervals_irregular(label: int) -> None:
    stds = [np.std(np.diff(render_action_clip(seed, label).event_times)) for seed in (11, 12)]
    assert min(stds) > 0.04  # seconds: a shifted audio track cannot line up with a periodic one


@pytest.mark.parametrize("pair", [(0, 1), (2, 3), (4, 5)])
def test_visual_pairs_share_frames_but_not_sound(pair: tuple[int, int]) -> None:
    for seed in (21, 22):
        a, b = (render_action_clip(seed, label) for label in pair)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.event_times, b.event_times)
        assert abs(np.corrcoef(a.on_screen, b.on_screen)[0, 1]) < 0.5


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.fft.rfftfreq(len(x), 1.0 / sr)[np.argmax(spec)])


def _centroid_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    return float((np.fft.rfftfreq(len(x), 1.0 / sr) * spec).sum() / spec.sum())


def test_ring_sound_shared_by_ball_ring_and_stick_ring() -> None:
    for seed in (31, 32, 33):
        clips = {label: render_action_clip(seed, label) for label in (0, 1, 2, 3)}
        sr = CFG.sample_rate
        ring_ball, ring_stick = (_dominant_hz(clips[label].on_screen, sr) for label in (1, 2))
        assert 600 <= ring_ball <= 1000 and abs(ring_ball - ring_stick) < 3.0
        # the two rings differ in timing (what is seen), not in timbre
        assert not np.array_equal(clips[1].event_times, clips[2].event_times)
        assert _dominant_hz(clips[3].on_screen, sr) < 200  # thud is low
        assert _centroid_hz(clips[0].on_screen, sr) > 2000  # click is broadband


def test_background_and_off_screen_do_not_depend_on_label() -> None:
    scenes = [_render_scene(41, label, CFG) for label in LABELS]
    for sc in scenes[1:]:
        np.testing.assert_array_equal(sc.background, scenes[0].background)
        # same off-screen content, only the level follows the on-screen level
        assert np.corrcoef(sc.clip.off_screen, scenes[0].clip.off_screen)[0, 1] > 0.999


@pytest.mark.parametrize("label", LABELS)
def test_mixture_is_sum_and_on_screen_dominates(label: int) -> None:
    clip = render_action_clip(50 + label, label)
    np.testing.assert_allclose(clip.audio, clip.on_screen + clip.off_screen, atol=1e-6, rtol=0)
    ratio_db = 10 * np.log10(np.mean(clip.on_screen**2.0) / np.mean(clip.off_screen**2.0))
    assert 5.5 <= ratio_db <= 15.5
    assert np.std(clip.off_screen) > 0  # the background is really there


def _decode(path) -> tuple[dict, int, np.ndarray]:
    with av.open(str(path)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        info = {
            "vcodec": v.codec_context.name,
            "acodec": a.codec_context.name,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "rate": v.average_rate,
            "sample_rate": a.codec_context.sample_rate,
        }
        n_frames = sum(1 for _ in container.decode(v))
    with av.open(str(path)) as container:
        pcm = np.concatenate(
            [f.to_ndarray().reshape(f.to_ndarray().shape[0], -1) for f in container.decode(audio=0)], 1
        )
    return info, n_frames, pcm


def test_write_video_roundtrip(tmp_path) -> None:
    clip = render_action_clip(60, 7)
    path = tmp_path / "clip.mp4"
    write_video(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
    info, n_frames, pcm = _decode(path)
    assert info["vcodec"] == "h264" and info["acodec"] == "aac"
    assert (info["width"], info["height"]) == (CFG.width, CFG.height)
    assert info["rate"] == Fraction(24) and abs(n_frames - T) <= 1
    assert pcm.shape[0] == 1 and info["sample_rate"] == CFG.sample_rate
    assert abs(pcm.shape[1] / CFG.sample_rate - CFG.duration_s) <= 0.1
    assert np.abs(pcm).max() > 0.05  # the audio survived encoding


def test_write_video_fractional_fps(tmp_path) -> None:
    frames = render_action_clip(61, 4).frames[:30]
    audio = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.5
    path = tmp_path / "ntsc.mp4"
    write_video(path, frames, 30000 / 1001, audio, 16000)
    info, n_frames, pcm = _decode(path)
    assert info["rate"] == Fraction(30000, 1001) and abs(n_frames - 30) <= 1
    assert abs(pcm.shape[1] / 16000 - 1.0) <= 0.1


def test_write_action_dataset(tmp_path) -> None:
    index = write_action_dataset(tmp_path / "ds", n=4, seed=3)
    assert index == tmp_path / "ds" / "index.csv"
    with index.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == ["video", "label", "start_s", "end_s", "on_screen", "off_screen", "boxes"]
    assert [r["label"] for r in rows] == list(ACTION_CLASSES[:4])
    assert [r["video"] for r in rows] == [f"clips/{i:06d}.mp4" for i in range(4)]
    for i, row in enumerate(rows):
        assert float(row["start_s"]) == 0.0 and float(row["end_s"]) == CFG.duration_s
        boxes = json.loads(row["boxes"])
        assert len(boxes) == T and all(len(b) == 5 for b in boxes)
        assert boxes[1][0] == pytest.approx(1 / CFG.fps, abs=1e-4)
        assert all(0.0 <= v <= 1.0 for b in boxes for v in b[1:])
        on, sr = sf.read(tmp_path / "ds" / row["on_screen"], dtype="float32")
        off, _ = sf.read(tmp_path / "ds" / row["off_screen"], dtype="float32")
        assert sr == CFG.sample_rate and on.shape == off.shape == (S,)
        # clip i is render_action_clip([seed, i]) whatever n is
        ref = render_action_clip([3, i], label=i)
        np.testing.assert_allclose(on, ref.on_screen, atol=1.0 / 16384)
        info, n_frames, _ = _decode(tmp_path / "ds" / row["video"])
        assert info["vcodec"] == "h264" and abs(n_frames - T) <= 1
