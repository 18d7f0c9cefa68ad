from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from model_store import media
from model_store.media import MediaError, MediaLimits

# (source fps, spec fps, width, height): frame-rate conversion down and up, NTSC, non-square and odd sizes
VARIANTS = {
    "25fps": (Fraction(25), 8.0, 64, 48),
    "ntsc": (Fraction(30000, 1001), 8.0, 64, 48),
    "12fps_up": (Fraction(12), 25.0, 64, 48),
    "30fps_wide": (Fraction(30), 10.0, 96, 32),
    "odd": (Fraction(25), 6.0, 63, 47),
}


@pytest.fixture(scope="session")
def variant_files(media_dir, make_media) -> dict[str, Path]:
    return {
        name: make_media(media_dir / f"{name}.mp4", fps=fps, width=w, height=h, duration_s=2.0)
        for name, (fps, _, w, h) in VARIANTS.items()
    }


def _clicks(audio: np.ndarray, sample_rate: int, times: list[float], search_s: float = 0.05) -> list[float]:
    """Where the click nearest each expected time starts (first sample above half the local peak)."""
    found = []
    for t in times:
        lo = max(0, int((t - search_s) * sample_rate))
        seg = np.abs(audio[lo : int((t + search_s) * sample_rate)])
        found.append((lo + int(np.argmax(seg > 0.5 * seg.max()))) / sample_rate)
    return found


# ---------------------------------------------------------------- probe


def test_probe_fields(av_file, video_only_file, variant_files):
    info = media.probe(av_file)
    assert info.duration_s == pytest.approx(2.0, abs=0.01)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(25.0)
    assert info.video_codec == "h264"
    assert info.has_audio and info.audio_codec == "aac" and info.sample_rate == 44100
    assert info.n_streams == 2

    info = media.probe(video_only_file)
    assert info.duration_s == pytest.approx(1.6, abs=0.01)
    assert not info.has_audio and info.audio_codec is None and info.sample_rate is None
    assert info.n_streams == 1

    info = media.probe(variant_files["ntsc"])
    assert info.fps == pytest.approx(30000 / 1001)
    info = media.probe(variant_files["odd"].read_bytes())
    assert (info.width, info.height) == (63, 47)


# ---------------------------------------------------------------- frames


@pytest.mark.parametrize("name", list(VARIANTS))
def test_frames_sampled_at_spec_fps(name, variant_files, clip_spec, read_index):
    src_fps, spec_fps, _, _ = VARIANTS[name]
    spec = clip_spec(fps=spec_fps, frames=4, height=30, width=50)
    decoded = media.decode(variant_files[name], spec)
    n_src = round(2.0 * src_fps)
    duration = n_src / src_fps
    assert decoded.duration_s == pytest.approx(float(duration), abs=1e-3)
    assert decoded.frames.dtype == np.uint8
    assert decoded.frames.shape == (math.ceil(duration * spec_fps - 1e-6), 30, 50, 3)
    # target time i / spec_fps shows the last source frame at or before it
    expected = [math.floor(i / spec_fps * src_fps + 1e-6) for i in range(len(decoded.frames))]
    assert [read_index(f) for f in decoded.frames] == expected
    # RGB order: the bottom band was encoded pure red
    red = decoded.frames[:, -3, 25].astype(int)
    assert (red[:, 0] > 200).all() and (red[:, 1:] < 60).all()


def test_frame_count_is_ceil_of_duration(av_file, clip_spec):
    for fps, count in [(8.0, 16), (3.0, 6), (7.0, 14), (0.5, 1), (30.0, 60)]:
        decoded = media.decode(av_file, clip_spec(fps=fps, frames=1))
        assert len(decoded.frames) == count, fps


# ---------------------------------------------------------------- audio


@pytest.mark.parametrize("sample_rate", [16000, 22050, 48000])
def test_audio_resampled_mono_and_aligned(clicks_file, clip_spec, sample_rate):
    spec = clip_spec(fps=10.0, frames=10, sample_rate=sample_rate)
    decoded = media.decode(clicks_file, spec)
    assert decoded.has_audio
    assert decoded.audio.dtype == np.float32 and decoded.audio.ndim == 1
    assert len(decoded.audio) == round(3.0 * sample_rate)
    clicks = [0.5, 1.0, 2.25]
    for found, t in zip(_clicks(decoded.audio, sample_rate, clicks), clicks, strict=True):
        assert found == pytest.approx(t, abs=0.003)
    assert np.abs(decoded.audio).max() == pytest.approx(0.8, abs=0.25)
    quiet = np.ones(len(decoded.audio), dtype=bool)
    for t in clicks:  # away from the clicks (and the codec's smear around them) there is silence
        quiet[int((t - 0.05) * sample_rate) : int((t + 0.05) * sample_rate)] = False
    assert np.abs(decoded.audio[quiet]).max() < 0.02


def test_audio_aligned_with_ntsc_video(variant_files, clip_spec):
    decoded = media.decode(variant_files["ntsc"], clip_spec())
    assert len(decoded.audio) == round(decoded.duration_s * 16000)
    assert _clicks(decoded.audio, 16000, [1.0])[0] == pytest.approx(1.0, abs=0.003)


def test_video_without_audio_gives_silence(video_only_file, spec):
    decoded = media.decode(video_only_file, spec)
    assert not decoded.has_audio
    assert decoded.audio.shape == (round(1.6 * spec.sample_rate),)
    assert not decoded.audio.any()
    windows = media.load_windows(video_only_file, spec)
    assert not windows.has_audio and not windows.audio.any()
    assert windows.audio.shape == (len(windows), spec.audio_samples)


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize("hop_s", [None, 0.25, 0.4, 1.0, 1.5])
@pytest.mark.parametrize("duration", [0.1, 0.99, 1.0, 1.0001, 1.3, 2.0, 2.5, 7.77, 60.0])
def test_window_starts_cover_the_video(clip_spec, duration, hop_s):
    spec = clip_spec(hop_s=hop_s)  # window 1.0 s
    win, hop = spec.window_s, spec.window_hop_s
    starts = media.window_starts(duration, spec)
    assert starts[0] == 0.0
    if duration <= win:
        assert starts.tolist() == [0.0]
        return
    assert starts[-1] + win == pytest.approx(duration)
    gaps = np.diff(starts)
    assert (gaps > -1e-9).all() and (gaps <= hop + 1e-9).all()
    assert np.allclose(starts[:-1], np.arange(len(starts) - 1) * hop)
    # no spare window: without the last one the end would be uncovered
    assert len(starts) == 1 or starts[-2] + win < duration - 1e-9


def test_windows_shapes_and_content(clicks_file, clip_spec, read_index):
    spec = clip_spec(fps=10.0, frames=10, height=16, width=28, hop_s=0.5)  # 1 s windows, 0.5 s hop
    windows = media.load_windows(clicks_file, spec)
    assert windows.starts_s.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert len(windows) == 5
    assert windows.video.shape == (5, 10, 16, 28, 3) and windows.video.dtype == np.uint8
    assert windows.audio.shape == (5, 16000) and windows.audio.dtype == np.float32
    assert windows.duration_s == pytest.approx(3.0) and windows.has_audio
    for w, start in enumerate(windows.starts_s):
        indices = [read_index(f) for f in windows.video[w]]
        assert indices == [math.floor((start + j / 10) * 30 + 1e-6) for j in range(10)]
    # the click at 1.0 s sits 0.5 s into the window starting at 0.5 s and opens the one at 1.0 s
    assert _clicks(windows.audio[1], 16000, [0.5])[0] == pytest.approx(0.5, abs=0.003)
    assert _clicks(windows.audio[2], 16000, [0.0])[0] == pytest.approx(0.0, abs=0.003)
    # the click at 2.25 s in the last window (2.0-3.0 s)
    assert _clicks(windows.audio[4], 16000, [0.25])[0] == pytest.approx(0.25, abs=0.003)


def test_last_window_ends_at_the_end(av_file, clip_spec, read_index):
    spec = clip_spec(fps=8.0, frames=12)  # 1.5 s windows over 2.0 s: starts 0 and 0.5
    windows = media.load_windows(av_file, spec)
    assert windows.starts_s.tolist() == pytest.approx([0.0, 0.5])
    assert read_index(windows.video[1][-1]) == math.floor((0.5 + 11 / 8) * 25)  # last target before 2.0 s
    assert len(windows.audio[1]) == spec.audio_samples


def test_short_video_is_padded_with_its_last_frame(media_dir, make_media, clip_spec, read_index):
    path = make_media(media_dir / "short.mp4", duration_s=0.4, fps=25, clicks_s=(0.2,))
    spec = clip_spec(fps=10.0, frames=10)  # a 1 s window over a 0.4 s video
    windows = media.load_windows(path, spec)
    assert len(windows) == 1 and windows.starts_s.tolist() == [0.0]
    assert windows.video.shape == (1, 10, spec.height, spec.width, 3)
    indices = [read_index(f) for f in windows.video[0]]
    assert indices == [0, 2, 5, 7] + [7] * 6
    assert np.array_equal(windows.video[0, 4:], np.repeat(windows.video[0, 3:4], 6, axis=0))
    audio = windows.audio[0]
    assert audio.shape == (spec.audio_samples,)
    assert _clicks(audio, spec.sample_rate, [0.2])[0] == pytest.approx(0.2, abs=0.003)
    assert not audio[int(0.4 * spec.sample_rate) + 1 :].any()  # zero padding after the end


def test_cut_windows_from_a_synthetic_decode(clip_spec):
    spec = clip_spec(fps=4.0, frames=4, height=2, width=3, sample_rate=8, hop_s=0.5)  # 1 s windows
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 3, 3), dtype=np.uint8)
    audio = np.arange(20, dtype=np.float32)
    decoded = media.Decoded(frames=frames, audio=audio, duration_s=2.5, has_audio=True)
    windows = media.cut_windows(decoded, spec)
    assert windows.starts_s.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert windows.video[:, :, 0, 0, 0].tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert windows.audio[3].tolist() == list(range(12, 20))


# ---------------------------------------------------------------- normalisation


def test_normalize_video(clip_spec):
    spec = clip_spec(height=2, width=3, pixel_mean=(0.5, 0.25, 0.0), pixel_std=(0.5, 0.25, 1.0))
    video = np.zeros((2, 8, 2, 3, 3), dtype=np.uint8)
    video[..., 0] = 255
    video[1, :, :, :, 1] = 51
    x = media.normalize_video(video, spec)
    assert x.shape == (2, 3, 8, 2, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.allclose(x[:, 0], 1.0)  # (1 - 0.5) / 0.5
    assert np.allclose(x[0, 1], -1.0)  # (0 - 0.25) / 0.25
    assert np.allclose(x[1, 1], (0.2 - 0.25) / 0.25)
    assert np.allclose(x[:, 2], 0.0)
    single = media.normalize_video(video[0], spec)  # (T, H, W, 3) -> (3, T, H, W)
    assert single.shape == (3, 8, 2, 3) and np.array_equal(single, x[0])


def test_normalize_video_is_the_whole_array_formula_bit_for_bit(clip_spec):
    """Channel by channel into the output, the same float32 operations as on the whole array at once."""
    spec = clip_spec(pixel_mean=(0.45, 0.5, 0.55), pixel_std=(0.22, 0.25, 0.3))
    video = np.random.default_rng(0).integers(0, 256, (3, 4, 24, 40, 3), dtype=np.uint8)
    whole = video.astype(np.float32) * (1.0 / 255.0)
    whole -= np.asarray(spec.pixel_mean, dtype=np.float32)
    whole /= np.asarray(spec.pixel_std, dtype=np.float32)
    np.testing.assert_array_equal(media.normalize_video(video, spec), np.moveaxis(whole, -1, -4))


# ---------------------------------------------------------------- limits and bad input


def _raises(run_with_timeout, fn) -> MediaError:
    exc = run_with_timeout(fn)
    assert isinstance(exc, MediaError), f"expected MediaError, got {exc!r}"
    assert exc.detail == str(exc) and exc.detail
    return exc


@pytest.mark.parametrize("call", ["probe", "decode", "load_windows"])
def test_limits(call, av_file, audio_only_file, spec, run_with_timeout):
    fn = getattr(media, call)
    args = (spec,) if call != "probe" else ()

    exc = _raises(run_with_timeout, lambda: fn(av_file, *args, limits=MediaLimits(max_duration_s=1.5)))
    assert exc.status == 413 and "2.0 s" in exc.detail

    exc = _raises(run_with_timeout, lambda: fn(av_file, *args, limits=MediaLimits(max_pixels=64 * 48 - 1)))
    assert exc.status == 413 and "64x48" in exc.detail
    fn(av_file, *args, limits=MediaLimits(max_pixels=64 * 48, max_duration_s=2.0))  # at the limits: fine

    exc = _raises(run_with_timeout, lambda: fn(audio_only_file, *args))
    assert exc.status == 422 and "no video stream" in exc.detail

    exc = _raises(run_with_timeout, lambda: fn(av_file, *args, limits=MediaLimits(max_streams=1)))
    assert exc.status == 422 and "streams" in exc.detail


def test_stream_without_timestamps(av_file, media_dir, remux, spec, read_index, run_with_timeout):
    """A raw H.264 stream has no duration and no frame timestamps: frames are timed by the source rate."""
    raw = remux(av_file, media_dir / "raw.h264", fmt="h264", video_only=True)
    assert math.isnan(media.probe(raw).duration_s)
    decoded = media.decode(raw, spec)
    reference = media.decode(av_file, spec)
    assert decoded.duration_s == pytest.approx(2.0)
    assert [read_index(f) for f in decoded.frames] == [read_index(f) for f in reference.frames]
    # the duration limit is still enforced while decoding
    exc = _raises(run_with_timeout, lambda: media.decode(raw, spec, MediaLimits(max_duration_s=0.5)))
    assert exc.status == 413


@pytest.mark.parametrize(
    ("kind", "as_bytes"),
    [
        (kind, as_bytes)
        for kind in ("random", "empty", "truncated_head", "truncated_half", "text")
        for as_bytes in (False, True)
    ]
    + [("missing", False)],
)
def test_bad_input_is_a_media_error(kind, as_bytes, av_file, garbage_bytes, tmp_path, spec, run_with_timeout):
    data = av_file.read_bytes()
    content = {
        "random": garbage_bytes,
        "empty": b"",
        "truncated_head": data[:200],
        "truncated_half": data[: len(data) // 2],  # the mp4 index (moov) sits at the end
        "text": b"this is not a video\n" * 50,
        "missing": None,
    }[kind]
    if content is None:
        source: Path | bytes = tmp_path / "does-not-exist.mp4"
    elif as_bytes:
        source = content
    else:
        source = tmp_path / f"{kind}.mp4"
        source.write_bytes(content)
    for fn in (
        lambda: media.probe(source),
        lambda: media.decode(source, spec),
        lambda: media.load_windows(source, spec),
    ):
        exc = _raises(run_with_timeout, fn)
        assert exc.status in (415, 422)


def test_truncated_streamable_file(av_file, media_dir, remux, spec, read_index, run_with_timeout):
    """With the index up front a cut file still opens: it is refused or decoded as far as it goes."""
    data = remux(av_file, media_dir / "faststart.mp4", options={"movflags": "faststart"}).read_bytes()
    for frac in (0.1, 0.3, 0.6, 0.9):
        cut = data[: int(len(data) * frac)]
        result: list[media.Windows] = []
        exc = run_with_timeout(lambda cut=cut, result=result: result.append(media.load_windows(cut, spec)))
        if exc is not None:
            assert isinstance(exc, MediaError), repr(exc)
            continue
        decoded = result[0]
        assert decoded.video.shape[1:] == (spec.frames, spec.height, spec.width, 3)
        indices = [read_index(f) for f in decoded.video[0]]
        assert indices == sorted(indices) and indices[0] == 0


def test_bytes_decode_like_the_path(av_file, variant_files, spec):
    for path in (av_file, variant_files["odd"]):
        from_path = media.decode(path, spec)
        for source in (path.read_bytes(), bytearray(path.read_bytes()), str(path)):
            other = media.decode(source, spec)
            assert np.array_equal(other.frames, from_path.frames)
            assert np.array_equal(other.audio, from_path.audio)
            assert other.duration_s == from_path.duration_s and other.has_audio == from_path.has_audio


@pytest.mark.parametrize("name", ["25fps", "odd"])
def test_frames_are_pyav_own_conversion(name, variant_files, clip_spec, read_index):
    """One reused single-threaded scaler gives the pixels of PyAV's per-frame ``to_ndarray`` (bilinear)."""
    spec = clip_spec(fps=8.0, frames=4, height=30, width=50)
    decoded = media.decode(variant_files[name], spec)
    with av.open(str(variant_files[name])) as container:
        want = [f.to_ndarray(width=spec.width, height=spec.height, format="rgb24") for f in container.decode(video=0)]
    for frame in decoded.frames:
        np.testing.assert_array_equal(frame, want[read_index(frame)])


@pytest.mark.parametrize("name, text", [
    ("list.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n"),
    ("relative.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:2.0,\nbeside.mp4\n#EXT-X-ENDLIST\n"),
    ("list.ffconcat", "ffconcat version 1.0\nfile beside.mp4\n"),
    ("list.ffconcat", "ffconcat version 1.0\nfile '{target}'\n"),
])
def test_references_to_other_files_are_not_followed(name, text, av_file, tmp_path, spec):
    """A playlist or concat script (its extension makes FFmpeg pick the HLS / concat demuxer) pointing at a
    playable video: refused, and the video is never opened."""
    beside = tmp_path / "beside.mp4"
    beside.write_bytes(av_file.read_bytes())
    path = tmp_path / name
    path.write_text(text.format(target=beside))
    for source in (path, path.read_bytes()):
        with pytest.raises(MediaError) as info:
            media.load_windows(source, spec)
        assert info.value.status == 415 and info.value.detail.startswith("not a video")
        assert str(tmp_path) not in info.value.detail
    assert media.load_windows(beside, spec).duration_s == pytest.approx(2.0, abs=0.05)


def test_stop_ends_decoding_between_packets(av_file, spec):
    """``stop`` is polled per packet: decoding ends at the first True, wherever it comes."""
    calls = []

    def stop_after(n):
        def stop():
            calls.append(1)
            return len(calls) > n
        return stop

    with pytest.raises(media.DecodeStopped):
        media.load_windows(av_file, spec, stop=stop_after(10))
    assert len(calls) == 11
    calls.clear()
    media.load_windows(av_file, spec, stop=stop_after(10**6))
    assert len(calls) > 20  # every packet of the 2-s file (video and audio) was a chance to stop
