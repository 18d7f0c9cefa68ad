"""``decode(..., audio_thread=True)``: the audio decoded and resampled in a thread of its own gives exactly what
decoding it in line gives, stops with the decode, and reports the same errors."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from model_store import media


def audio_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "audio-decode"]


@pytest.fixture(scope="module")
def files(media_dir: Path, make_media, remux) -> dict[str, Path]:
    """Containers and audio codecs of several kinds, and two MPEG-TS files back to back whose audio rate changes
    midway (a new resampling graph from there)."""
    mp4 = make_media(media_dir / "at_ntsc.mp4", duration_s=6.0, fps=Fraction(30000, 1001), sample_rate=48000,
                     clicks_s=(0.4, 1.1, 2.25, 3.3, 4.05, 5.8))
    first = make_media(media_dir / "at_rate_a.ts", duration_s=2.0, sample_rate=16000, clicks_s=(0.5, 1.5))
    second = remux(make_media(media_dir / "at_rate_b0.ts", duration_s=2.0, sample_rate=44100, clicks_s=(0.5, 1.5)),
                   media_dir / "at_rate_b.ts", options={"output_ts_offset": "2"})
    changing = media_dir / "at_rate_change.ts"
    changing.write_bytes(first.read_bytes() + second.read_bytes())
    return {
        "mp4": mp4,
        "mkv": remux(mp4, media_dir / "at_ntsc.mkv"),
        "avi": make_media(media_dir / "at.avi", duration_s=5.0, video_codec="mpeg4", audio_codec="libmp3lame",
                          clicks_s=(0.5, 1.0, 2.25, 3.3, 4.6)),
        "webm": make_media(media_dir / "at.webm", duration_s=5.0, video_codec="libvpx-vp9", audio_codec="libopus",
                           sample_rate=48000, clicks_s=(0.45, 1.3, 2.2, 3.35, 4.5)),
        "rate_change": changing,
        "no_audio": make_media(media_dir / "at_silent.mp4", duration_s=2.0, audio=False),
    }


@pytest.mark.parametrize("name", ["mp4", "mkv", "avi", "webm", "rate_change", "no_audio"])
@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_the_audio_thread_gives_the_in_line_decode(files, clip_spec, name, sample_rate) -> None:
    spec = clip_spec(fps=12.0, frames=8, sample_rate=sample_rate)
    here = media.decode(files[name], spec)
    apart = media.decode(files[name], spec, audio_thread=True)
    assert np.array_equal(apart.frames, here.frames) and np.array_equal(apart.audio, here.audio)
    assert apart.duration_s == here.duration_s and apart.has_audio == here.has_audio == (name != "no_audio")
    if here.has_audio:
        assert np.abs(here.audio).max() > 0.01  # there were clicks to compare
    assert not audio_threads()


def test_a_stopped_decode_ends_its_audio_thread(files, clip_spec) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 100

    with pytest.raises(media.DecodeStopped):
        media.decode(files["mp4"], clip_spec(), stop=stop, audio_thread=True)
    assert len(calls) == 101 and not audio_threads()


def _garbled_audio(src: Path, dst: Path) -> Path:
    """``src`` with every audio packet's payload replaced by noise (the video untouched)."""
    rng = np.random.default_rng(0)
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "audio":
                noise = av.Packet(rng.integers(0, 256, max(8, packet.size), dtype=np.uint8).tobytes())
                noise.pts, noise.dts, noise.time_base = packet.pts, packet.dts, packet.time_base
                packet = noise
                packet.stream = mapping[inp.streams.audio[0].index]
            else:
                packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    return dst


def test_an_error_in_the_audio_thread_is_the_in_line_error(files, clip_spec, tmp_path, run_with_timeout) -> None:
    """Audio packets of noise: the decoder refuses them, and past the limit of refused packets the file is a
    MediaError, with the same detail either way; the caller does not hang on a thread that failed."""
    path = _garbled_audio(files["mp4"], tmp_path / "garbled.mp4")
    spec = clip_spec()
    errors = [run_with_timeout(lambda apart=apart: media.decode(path, spec, audio_thread=apart))
              for apart in (False, True)]
    assert all(isinstance(e, media.MediaError) for e in errors), errors
    assert errors[0].detail == errors[1].detail and "could not be decoded" in errors[1].detail
    assert not audio_threads()
