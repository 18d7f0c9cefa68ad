"""Windowed decoding (:func:`model_store.media.decode_window`): seek, decode forward, and get exactly the window that
:func:`~model_store.media.cut_windows` cuts from a full :func:`~model_store.media.decode` at the same start.

The comparison is exact (``np.array_equal`` on the uint8 frames and the float32 samples), not within a tolerance:
frames are decoded from a keyframe, which gives the same pixels as decoding from the start, and are resized by the
same converter; audio frames decoded right after the seek (without their predecessor's overlap) are dropped, and
the first kept one is trimmed to a source sample that falls on an output sample of a resampler fed from the
stream's start, so the resampler computes the same output samples from the same input samples (its first few,
whose filter reaches back before the trim, lie in the seek margin and are never part of the window).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from model_store import media
from model_store.media import MediaError


@pytest.fixture(scope="module")
def window_files(media_dir, make_media, remux) -> dict[str, Path]:
    """5-6 s files with several keyframes: mp4 (NTSC, 48 kHz), its Matroska remux (ms timestamps), an AVI
    (MPEG-4 part 2 + MP3, as UCF-101 ships), a SynthAV-style mp4 with a single keyframe, and a WebM."""
    mp4 = make_media(media_dir / "win_ntsc.mp4", duration_s=6.0, fps=Fraction(30000, 1001), sample_rate=48000,
                     clicks_s=(0.4, 1.1, 2.25, 3.3, 4.05, 5.8))
    return {
        "mp4": mp4,
        "mkv": remux(mp4, media_dir / "win_ntsc.mkv"),
        "avi": make_media(media_dir / "win.avi", duration_s=5.0, video_codec="mpeg4", audio_codec="libmp3lame",
                          clicks_s=(0.5, 1.0, 2.25, 3.3, 4.6)),
        "mp4_one_keyframe": _one_keyframe(media_dir / "win_synth.mp4"),
        # VP9 + Opus, as YouTube serves it: Opus's first frame is shorter by its pre-skip (312 samples at 48 kHz)
        "webm": make_media(media_dir / "win.webm", duration_s=5.0, video_codec="libvpx-vp9", audio_codec="libopus",
                           sample_rate=48000, clicks_s=(0.45, 1.3, 2.2, 3.35, 4.5)),
    }


def _one_keyframe(path: Path) -> Path:
    from training.data.synthav import write_video

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (96, 40, 48, 3), dtype=np.uint8)  # 4 s at 24 fps: x264 puts one keyframe
    frames[:, :20] = np.arange(96, dtype=np.uint8)[:, None, None, None] * 2  # a changing band
    t = np.arange(int(4.0 * 22050)) / 22050
    audio = 0.3 * np.sin(2 * np.pi * 330 * t) * (np.sin(2 * np.pi * 1.3 * t) > 0)
    write_video(path, frames, 24.0, audio.astype(np.float32), 22050)
    return path


def reference(decoded: media.Decoded, spec, start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The window ``cut_windows`` cuts at ``start_s`` (same index arithmetic, any start)."""
    cut = media.cut_windows(decoded, spec)  # its own starts, checked below too
    first = int(round(start_s * spec.fps))
    idx = np.minimum(np.arange(first, first + spec.frames), len(decoded.frames) - 1)
    a0 = int(round(start_s * spec.sample_rate))
    audio = np.zeros(spec.audio_samples, np.float32)
    chunk = decoded.audio[a0:a0 + spec.audio_samples]
    audio[:len(chunk)] = chunk
    assert len(cut) >= 1
    return decoded.frames[idx], audio


@pytest.mark.parametrize("name", ["mp4", "mkv", "mp4_one_keyframe", "avi", "webm"])
@pytest.mark.parametrize(("fps", "sample_rate"), [(8.0, 16000), (10.0, 22050)])
def test_seek_decoded_window_equals_the_window_cut_from_a_full_decode(window_files, clip_spec, name, fps,
                                                                      sample_rate, monkeypatch):
    spec = clip_spec(fps=fps, frames=8, height=24, width=40, sample_rate=sample_rate)
    path = window_files[name]
    full = media.decode(path, spec)
    fallbacks = []
    real = media._decode_span

    def counting(*args, **kwargs):
        span = real(*args, **kwargs)
        fallbacks.append(span is None)
        return span

    monkeypatch.setattr(media, "_decode_span", counting)
    # every cut_windows start, starts on and off the frame grid, and windows running past the end
    starts = [*media.window_starts(full.duration_s, spec), 0.3, 1.2345, 2.71, full.duration_s - 0.4,
              full.duration_s - 0.05, *(np.arange(0, len(full.frames), 3) / spec.fps)]
    for s in starts:
        win = media.decode_window(path, spec, float(s))
        frames, audio = reference(full, spec, float(s))
        assert win.video.dtype == np.uint8 and win.video.shape == (8, 24, 40, 3)
        assert np.array_equal(win.video, frames), f"{name}: frames differ at {s:.3f} s"
        assert np.array_equal(win.audio, audio), f"{name}: audio differs at {s:.3f} s " \
                                                 f"(max {np.abs(win.audio - audio).max():.3g})"
        assert win.has_audio
    assert np.abs(full.audio).max() > 0.1  # the clicks / tone are there to compare
    assert not any(fallbacks), "every seek should land before its window"  # the seek path ran, not a full decode


def test_a_window_seeks_instead_of_decoding_from_the_start(window_files, clip_spec):
    """A window late in a file with keyframes is decoded from the keyframe before it, not from the start."""
    spec = clip_spec()
    span = media.decode_span(window_files["mp4"], spec, 4.5, 4.5 + spec.window_s)
    assert 2.0 < span.decoded_from_s <= 4.5 - media.SEEK_MARGIN_S
    assert media.decode_span(window_files["mp4"], spec, 0.1, 1.0).decoded_from_s == 0.0


def test_span_cuts_windows_at_two_starts(window_files, clip_spec):
    """The pretext decodes one span and cuts frames at one start and audio at another."""
    spec = clip_spec(fps=8.0, frames=8, sample_rate=16000)
    path = window_files["mp4"]
    full = media.decode(path, spec)
    span = media.decode_span(path, spec, 1.5, 1.5 + 2.5 + spec.window_s)
    for s in (1.5, 2.375, 4.0):
        frames, audio = span.window(spec, s)
        ref_frames, ref_audio = reference(full, spec, s)
        assert np.array_equal(frames, ref_frames) and np.array_equal(audio, ref_audio)
    with pytest.raises(ValueError, match="outside the decoded frames"):
        span.window(spec, 0.5)


def test_window_of_a_video_without_audio(video_only_file, spec):
    win = media.decode_window(video_only_file, spec, 0.5)
    assert not win.has_audio and not win.audio.any() and win.audio.shape == (spec.audio_samples,)
    full = media.decode(video_only_file, spec)
    assert np.array_equal(win.video, reference(full, spec, 0.5)[0])


@pytest.mark.parametrize("start", [-1.0, float("nan"), float("inf")])
def test_a_bad_start_is_a_media_error(av_file, spec, start):
    with pytest.raises(MediaError):
        media.decode_window(av_file, spec, start)


def test_garbage_and_missing_files_are_media_errors(garbage_bytes, spec, tmp_path):
    with pytest.raises(MediaError):
        media.decode_window(garbage_bytes, spec, 0.0)
    with pytest.raises(MediaError):
        media.decode_window(tmp_path / "missing.mp4", spec, 0.0)


def test_audio_whose_rate_changes_midway(media_dir, make_media, remux, clip_spec):
    """Two MPEG-TS files back to back, 16 kHz audio then 44.1 kHz: each decoder resamples the second part with a
    graph of its own (the same graph class in both); a window from the start equals the full decode's, and a window
    across the change decodes."""
    first = make_media(media_dir / "rate_a.ts", duration_s=2.0, sample_rate=16000, clicks_s=(0.5, 1.5))
    second = remux(make_media(media_dir / "rate_b0.ts", duration_s=2.0, sample_rate=44100, clicks_s=(0.5, 1.5)),
                   media_dir / "rate_b.ts", options={"output_ts_offset": "2"})  # its clock goes on from the first's
    path = media_dir / "rate_change.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    spec = clip_spec(fps=8.0, frames=8, sample_rate=16000)
    full = media.decode(path, spec)
    assert full.duration_s > 3.5 and np.abs(full.audio[int(2.6 * 16000):]).max() > 0.01  # the second part's audio
    win = media.decode_window(path, spec, 0.0)
    ref_frames, ref_audio = reference(full, spec, 0.0)
    assert np.array_equal(win.video, ref_frames) and np.array_equal(win.audio, ref_audio)
    across = media.decode_window(path, spec, 1.5)
    assert across.has_audio and np.abs(across.audio).max() > 0.01
