"""Generate small real media files with PyAV for the API tests (h264 + aac, like SynthAV renders)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _frames(n: int, width: int, height: int) -> list[np.ndarray]:
    frames = []
    size = max(4, min(width, height) // 4)
    for i in range(n):
        img = np.full((height, width, 3), 30, dtype=np.uint8)
        x = int((width - size) * (i / max(1, n - 1)))
        y = (height - size) // 2
        img[y : y + size, x : x + size] = (220, 60, 40)
        frames.append(img)
    return frames


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


def write_video(
    path: Path,
    seconds: float = 2.5,
    fps: int = 24,
    width: int = 64,
    height: int = 48,
    audio: bool = True,
    sample_rate: int = 16000,
) -> Path:
    """An mp4: a square moving left to right (libx264 yuv420p) and, if ``audio``, a mono aac tone."""
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.options = {"preset": "ultrafast"}
        astream = None
        if audio:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        for i, img in enumerate(_frames(int(round(seconds * fps)), width, height)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None:
            _write_audio(container, astream, _tone(seconds, sample_rate), sample_rate)
    return path


def _write_audio(container, stream, samples: np.ndarray, rate: int, chunk: int = 1024) -> None:
    for start in range(0, len(samples), chunk):
        block = samples[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_audio_only(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """A mono aac .m4a: a media file with no video stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        _write_audio(container, stream, _tone(seconds, sample_rate), sample_rate)
    return path
