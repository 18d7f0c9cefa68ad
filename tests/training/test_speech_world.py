"""SynthAV speech: determinism, mixture = on + off, levels, variants, mouths that follow their own voice, the
hiding box, voices read from a folder of recordings, and the dataset directory the CLI writes."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import soundfile as sf

from training.data.synthav_speech import SpeechConfig, render_speech_clip

CFG = SpeechConfig(width=64, height=64, fps=24.0, duration_s=2.5)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def _frame_loudness(x: np.ndarray, clip) -> np.ndarray:
    hop = int(clip.sample_rate / clip.fps)
    n = len(clip.frames)
    return np.array([_rms(x[i * hop : (i + 1) * hop]) for i in range(n)])


def _mouth_opening(clip) -> np.ndarray:
    """Dark (lip) pixels in the lower half of the speaking face's box, per frame."""
    h, w = clip.frames.shape[1:3]
    out = []
    for frame, (x0, y0, x1, y1) in zip(clip.frames, clip.boxes, strict=True):
        r0, r1 = int((y0 + y1) / 2 * h), int(math.ceil(y1 * h))
        c0, c1 = int(x0 * w), int(math.ceil(x1 * w))
        region = frame[r0:r1, c0:c1].astype(int)
        out.append(int((region.max(axis=-1) < 60).sum()))
    return np.array(out, dtype=float)


def test_deterministic_and_mixture_is_the_sum() -> None:
    a, b = render_speech_clip([4, 1], "plain", CFG), render_speech_clip([4, 1], "plain", CFG)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    c = render_speech_clip([4, 2], "plain", CFG)
    assert not np.array_equal(a.audio, c.audio)
    assert a.frames.shape == (60, 64, 64, 3) and a.audio.shape == (40000,)
    np.testing.assert_allclose(a.audio, a.on_screen + a.off_screen, atol=1e-6)
    assert np.abs(a.audio).max() <= 0.951


@pytest.mark.parametrize("seed", range(4))
def test_levels_and_pitch_of_the_variants(seed: int) -> None:
    plain = render_speech_clip([seed, 0], "plain", CFG)
    same = render_speech_clip([seed, 0], "same_pitch", CFG)
    for clip in (plain, same):
        level = 20 * math.log10(_rms(clip.off_screen) / _rms(clip.on_screen))
        assert -5.01 <= level <= 5.01 and abs(level - clip.level_db) < 0.01
    assert abs(math.log(same.f0[1] / same.f0[0])) <= math.log(1.02) + 1e-9
    assert abs(math.log(plain.f0[1] / plain.f0[0])) > math.log(1.15)


@pytest.mark.parametrize("variant", ["plain", "same_pitch", "two_faces"])
def test_the_visible_mouth_follows_the_on_screen_voice(variant: str) -> None:
    on_corr, off_corr = [], []
    for seed in range(3):
        clip = render_speech_clip([seed, 7], variant, CFG)
        mouth = _mouth_opening(clip)
        on_corr.append(np.corrcoef(mouth, _frame_loudness(clip.on_screen, clip))[0, 1])
        off_corr.append(np.corrcoef(mouth, _frame_loudness(clip.off_screen, clip))[0, 1])
    assert np.mean(on_corr) > 0.6, on_corr
    assert np.mean(on_corr) > np.mean(off_corr) + 0.4, (on_corr, off_corr)


def test_two_faces_hides_the_second_face_behind_a_static_box() -> None:
    clip = render_speech_clip([2, 3], "two_faces", CFG)
    assert clip.hide is not None
    x0, y0, x1, y1 = clip.hide
    h, w = clip.frames.shape[1:3]
    inner = clip.frames[:, int(y0 * h) + 1 : int(y1 * h) - 1, int(x0 * w) + 1 : int(x1 * w) - 1]
    assert inner.size and inner.astype(int).std(axis=0).max() <= 2  # nothing moves under the box
    face = clip.boxes.mean(axis=0)  # the visible face stays clear of the box
    assert face[2] <= x0 + 0.02 or face[0] >= x1 - 0.02


def test_voices_from_a_folder_of_recordings(tmp_path) -> None:
    """Recordings at 22.05 kHz (not the world's rate) are resampled; the mouth follows their loudness."""
    rng = np.random.default_rng(0)
    sr = 22050
    for k in range(2):
        t = np.arange(int(3.0 * sr)) / sr
        bursts = (np.sin(2 * np.pi * (2.0 + k) * t) > 0.3).astype(float)
        voice = 0.3 * bursts * np.sin(2 * np.pi * (150 + 60 * k) * t) + 0.001 * rng.normal(size=len(t))
        sf.write(tmp_path / f"voice{k}.wav", voice.astype(np.float32), sr)
    files = sorted(tmp_path.glob("*.wav"))
    clip = render_speech_clip([1, 1], "plain", CFG, voices=files)
    assert clip.sample_rate == 16000 and len(clip.on_screen) == 40000
    assert _rms(clip.on_screen) > 0.01 and _rms(clip.off_screen) > 0.01
    corr = np.corrcoef(_mouth_opening(clip), _frame_loudness(clip.on_screen, clip))[0, 1]
    assert corr > 0.6


def test_cli_writes_a_speech_dataset(tmp_path) -> None:
    from training.cli import main

    voices = tmp_path / "voices"
    voices.mkdir()
    t = np.arange(32000) / 16000
    sf.write(voices / "a.flac", (0.2 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 3 * t) > 0)), 16000)
    out = tmp_path / "ds"
    assert main(["synth", "--kind", "speech", "--n", "3", "--seed", "5", "--out", str(out), "--workers", "1",
                 "--voices", str(voices)]) == 0
    with (out / "index.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["plain", "same_pitch", "two_faces"]
    assert rows[2]["hide"] and not rows[0]["hide"]
    for r in rows:
        on, sr = sf.read(out / r["on_screen"])
        off, _ = sf.read(out / r["off_screen"])
        assert sr == 16000 and len(on) == len(off) == 64000
        assert (out / r["video"]).stat().st_size > 1000


def _speaker_bank(root, speakers=("alice", "bob", "carol")):
    """One folder per speaker, each speaker a distinct pitch (so a track's pitch names its speaker)."""
    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr
    pitches = {}
    for k, name in enumerate(speakers):
        (root / name).mkdir(parents=True)
        f0 = 120.0 + 70.0 * k
        pitches[name] = f0
        for j in range(2):
            bursts = (np.sin(2 * np.pi * (2.0 + j) * t) > 0.2).astype(float)
            sf.write(root / name / f"{j}.wav", (0.3 * bursts * np.sin(2 * np.pi * f0 * t)).astype(np.float32), sr)
    return pitches


def _pitch(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))])


def test_recorded_voices_same_pitch_takes_one_speaker_and_plain_two(tmp_path) -> None:
    """Prompts shorter than a clip are joined (not looped); ``same_pitch`` pairs a speaker with itself, the other
    variants pair two different speakers."""
    from training.data.synthav_speech import voice_bank

    pitches = _speaker_bank(tmp_path)
    bank = voice_bank(tmp_path)
    assert sorted(bank) == ["alice", "bob", "carol"] and all(len(v) == 2 for v in bank.values())
    known = np.array(sorted(pitches.values()))
    for i in range(6):
        for variant, same in (("same_pitch", True), ("plain", False), ("two_faces", False)):
            clip = render_speech_clip([3, i], variant, CFG, voices=bank)
            f_on, f_off = (known[np.argmin(np.abs(known - _pitch(x, clip.sample_rate)))]
                           for x in (clip.on_screen, clip.off_screen))
            assert (f_on == f_off) == same, (variant, f_on, f_off)
