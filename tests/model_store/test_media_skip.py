"""``decode`` and ``decode_span`` skip frames that no target time needs (``_FrameSkipper``) and must give exactly
what decoding every frame gives: the same frames, audio and duration, for every codec, container and timing,
including timings whose packet durations mislead (then they decode again without skipping)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from model_store import media
from model_store.manifest import ClipSpec
from model_store.media import MediaLimits, decode


def spec(fps: float) -> ClipSpec:
    frames = 4
    return ClipSpec(fps=fps, frames=frames, height=24, width=32, sample_rate=8000,
                    audio_samples=round(frames / fps * 8000))


def write(path: Path, codec: str, pts: list[int], rate: int, options: dict[str, str] | None = None,
          fmt: str | None = None, audio: bool = True) -> Path:
    """Moving pictures at the given pts (time base 1/``rate``), with a tone track, as ``codec`` in ``fmt``."""
    rng = np.random.default_rng(len(pts))
    texture = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    with av.open(str(path), mode="w", format=fmt) as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = Fraction(1, rate)
        video.codec_context.time_base = Fraction(1, rate)
        video.options = options or {}
        sound = out.add_stream("libopus" if fmt == "webm" else "aac", rate=48000 if fmt == "webm" else 16000,
                               layout="mono") if audio else None
        for i, p in enumerate(pts):
            img = np.roll(texture, (i, 2 * i), axis=(0, 1))[:48, :64].copy()
            img[(3 * i) % 40 : (3 * i) % 40 + 8, 10:18] = (250, 30, 30)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = p, Fraction(1, rate)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            sr, n = sound.codec_context.sample_rate, sound.codec_context.frame_size or 1024
            t = np.arange(int((pts[-1] + 1) / rate * sr)) / sr
            wave = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
            for start in range(0, len(wave) - n + 1, n):
                frame = av.AudioFrame.from_ndarray(wave[None, start : start + n], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


class Spy:
    """Counts the frames skipped and the decodes that fell back to decoding everything."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.skipped = 0
        self.fallbacks = 0
        finish, decode_ = media._FrameSkipper.finish, media._decode

        def counted_finish(skipper: media._FrameSkipper, last_t: float) -> float:
            last = finish(skipper, last_t)
            self.skipped += skipper.n_skipped
            return last

        def counted_decode(*args, skip: bool, **kwargs):
            if not skip:
                self.fallbacks += 1
            return decode_(*args, skip=skip, **kwargs)

        monkeypatch.setattr(media._FrameSkipper, "finish", counted_finish)
        monkeypatch.setattr(media, "_decode", counted_decode)


FULL_DECODE = media._decode  # every frame decoded: the reference (the spy counts only decode's own fallbacks)


def assert_same_as_full(path: Path, clip: ClipSpec, threads: int = 0) -> None:
    full = FULL_DECODE(path, clip, MediaLimits(), None, threads, skip=False)
    got = decode(path, clip, threads=threads)
    assert got.frames.shape == full.frames.shape
    np.testing.assert_array_equal(got.frames, full.frames)
    np.testing.assert_array_equal(got.audio, full.audio)
    assert got.duration_s == full.duration_s and got.has_audio == full.has_audio


def assert_windows_as_full(path: Path, audio_atol: float = 0.0) -> None:
    """The windowed decoder (which skips too, after a seek or from the start) cuts the full decode's windows."""
    for fps in (8, 12):
        clip = spec(fps)
        full = FULL_DECODE(path, clip, MediaLimits(), None, 0, skip=False)
        for start in (0.0, 0.4, 0.9, full.duration_s - clip.window_s):
            window = media.decode_window(path, clip, start)
            video, audio = media.cut_window(full, clip, start)
            np.testing.assert_array_equal(window.video, video)
            np.testing.assert_allclose(window.audio, audio, rtol=0, atol=audio_atol)


H264_B = {"preset": "veryfast", "bf": "3", "g": "48"}
CASES = {
    "h264 b-pyramid mp4": ("libx264", None, "mp4", H264_B),
    "h264 b-pyramid mkv": ("libx264", None, "matroska", H264_B),  # millisecond timestamps
    "h264 no b-frames": ("libx264", None, "mp4", {"preset": "veryfast", "bf": "0"}),
    "hevc b-frames": ("libx265", None, "mp4", {"preset": "fast", "x265-params": "log-level=none:bframes=4"}),
    "mpeg4 b-frames avi": ("mpeg4", None, "avi", {"bf": "2"}),
    "mpeg2 b-frames ts": ("mpeg2video", None, "mpegts", {"bf": "2"}),
    "vp9 webm": ("libvpx-vp9", None, "webm", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "16"}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rate", [24, 30])
def test_skipping_gives_the_full_decode(tmp_path: Path, case: str, rate: int, monkeypatch: pytest.MonkeyPatch) -> None:
    codec, _, fmt, options = CASES[case]
    ext = {"mp4": "mp4", "matroska": "mkv", "avi": "avi", "mpegts": "ts", "webm": "webm"}[fmt]
    path = write(tmp_path / f"v.{ext}", codec, list(range(2 * rate)), rate, options, fmt)
    spy = Spy(monkeypatch)
    for fps in (8, 12, 10, 25, 7.5):
        assert_same_as_full(path, spec(fps))
    assert_same_as_full(path, spec(8), threads=1)
    # Opus at 48 kHz resampled to 8 kHz from just before a window differs from the whole track's resampling in the
    # last bits (2e-6); every other case is exact
    assert_windows_as_full(path, audio_atol=1e-5 if fmt == "webm" else 0.0)
    if case.startswith("h264 b-pyramid"):
        assert spy.skipped > 0  # B-frames that no target needs are skipped, not decoded
    assert spy.fallbacks == 0 or fmt == "mpegts"


def test_variable_frame_rate_stops_the_skipping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames 1 to 4 ticks apart: a packet's duration is not how long its frame is shown, so the decode stops
    skipping at the first frame that does not follow on from the one before, and gives the full decode."""
    gaps = np.random.default_rng(5).integers(1, 5, size=60)
    pts = np.concatenate([[0], np.cumsum(gaps)]).tolist()
    path = write(tmp_path / "vfr.mp4", "libx264", pts, 48, H264_B, "mp4")
    spy = Spy(monkeypatch)
    for fps in (8, 12, 10, 25):
        assert_same_as_full(path, spec(fps))
    assert spy.fallbacks == 0


def test_a_skipped_frame_that_was_needed_is_caught_and_the_file_decoded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactness does not rest on the skipping rule: with a rule that skips every non-reference frame it can, the
    decode notices the targets that fell on skipped frames and decodes the file again, every frame."""
    path = write(tmp_path / "v.mp4", "libx264", list(range(48)), 24, H264_B, "mp4")
    before = media._FrameSkipper.before

    def greedy(skipper: media._FrameSkipper, packet: av.Packet, t0_video: float | None) -> None:
        before(skipper, packet, t0_video)
        if skipper.enabled and t0_video is not None and not packet.is_keyframe and packet.pts is not None:
            skipper._pending[packet.pts] = packet.pts * skipper._tb - t0_video
            skipper._ctx.skip_frame, skipper._skipping = "NONREF", True

    monkeypatch.setattr(media._FrameSkipper, "before", greedy)
    spy = Spy(monkeypatch)
    for fps in (8, 12, 24):
        assert_same_as_full(path, spec(fps))
    assert spy.fallbacks == 3


def test_skipping_keeps_the_duration_when_the_last_frames_are_skipped(tmp_path: Path) -> None:
    """The duration is the last frame's time plus one frame, skipped or not; and a video of one picture is still
    refused when the other frames were skipped."""
    path = write(tmp_path / "v.mp4", "libx264", list(range(37)), 24, H264_B, "mp4", audio=False)
    for fps in (8, 3, 1):
        assert_same_as_full(path, spec(fps))


def test_small_frames_decode_on_one_thread() -> None:
    """Frame threads buy no time on frames this small and cost CPU: one thread, unless a count is asked for."""
    assert media.video_threads(128, 128) == 1 and media.video_threads(200, 200) == 1
    assert media.video_threads(320, 180) == 0 and media.video_threads(1920, 1080) == 0
    assert media.video_threads(128, 128, threads=3) == 3 and media.video_threads(1920, 1080, threads=2) == 2


def cut_at(src: Path, path: Path, fraction: float) -> Path:
    """``src`` with its index up front (``faststart``), cut at ``fraction`` of its bytes: the headers promise the
    whole video, the last packet read is cut off."""
    aside = path.with_name(f"{path.stem}.full.mp4")
    with av.open(str(src)) as inp, av.open(str(aside), "w", options={"movflags": "faststart"}) as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
    data = aside.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_a_cut_file_decodes_as_far_as_it_goes_whatever_the_threads(tmp_path: Path) -> None:
    """A download cut mid-frame: the cut frame's packet is left out and the rest decodes, on one thread as with
    frame threads (on one thread its error used to make the whole file undecodable), by both decoders."""
    src = write(tmp_path / "v.mp4", "libx264", list(range(96)), 24, {**H264_B, "g": "24"}, "mp4")
    clip = spec(8)
    for k, fraction in enumerate((0.37, 0.5, 0.61, 0.83)):
        path = cut_at(src, tmp_path / f"cut{k}.mp4", fraction)
        outcomes = []
        for threads in (1, 3):
            got = decode(path, clip, threads=threads)
            assert 0.5 < got.duration_s < 4.0 and len(got.frames) == math.ceil(got.duration_s * 8 - 1e-6)
            outcomes.append(got.duration_s)
        assert abs(outcomes[0] - outcomes[1]) < 0.25  # frame threads may lose a few more frames around the cut
        head = media.decode_span(path, clip, 0.0, clip.window_s)
        assert head.frames.shape == (clip.frames, 24, 32, 3)


def test_a_file_of_damaged_packets_is_still_undecodable(tmp_path: Path) -> None:
    """Leaving out refused packets has a limit: a video whose packets are garbage stays a MediaError."""
    src = write(tmp_path / "v.mp4", "libx264", list(range(48)), 24, H264_B, "mp4", audio=False)
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    mdat = data.find(b"mdat") + 4
    moov = data.find(b"moov")
    lo, hi = (mdat, moov) if moov > mdat else (mdat, len(data))
    data[lo + 64 : hi - 64] = rng.integers(0, 256, size=hi - lo - 128, dtype=np.uint8).tobytes()
    (tmp_path / "garbage.mp4").write_bytes(bytes(data))
    with pytest.raises(media.MediaError):
        decode(tmp_path / "garbage.mp4", spec(8), threads=1)


def test_windows_of_mpeg4_with_b_frames_in_avi_equal_the_full_decode(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """AVI stores no presentation times; with B-frames FFmpeg shows the first frame one frame after the stream's
    start time, where decode's clock starts. A windowed decode after a seek once took the stream's start time for its
    clock and cut every window one source frame off (found in the fifth session, skipping or not)."""
    path = write(tmp_path / "v.avi", "mpeg4", list(range(48)), 24, {"bf": "2"}, "avi")
    real = media._open_span
    monkeypatch.setattr(media, "_open_span", lambda *a, skip, **k: real(*a, skip=False, **k))  # skipping is not it
    assert_windows_as_full(path)
