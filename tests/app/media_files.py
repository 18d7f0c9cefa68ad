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


# ---------------------------------------------------------------- files that are not (playable) videos


def _picture(width: int = 64, height: int = 48, shift: int = 0) -> np.ndarray:
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:, :, 0] = np.arange(width, dtype=np.uint8)[None, :] * 4
    img[:, :, 1] = np.arange(height, dtype=np.uint8)[:, None] * 5
    img[8:24, (8 + shift) % width : (24 + shift) % width or width] = 255
    return img


def write_image(path: Path, fmt: str) -> Path:
    """A still picture through Pillow (``fmt``: PNG, JPEG, WEBP, GIF, BMP, TIFF)."""
    from PIL import Image

    Image.fromarray(_picture()).save(path, format=fmt)
    return path


def write_animated_gif(path: Path, frames: int = 10) -> Path:
    """A GIF of ``frames`` moving pictures at 10 fps: moving pictures, so a video."""
    from PIL import Image

    images = [Image.fromarray(_picture(shift=4 * i)) for i in range(frames)]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


SVG = ('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48">'
       '<rect width="64" height="48" fill="#c33"/><circle cx="32" cy="24" r="10" fill="#3c3"/></svg>\n')
SRT = "1\n00:00:00,000 --> 00:00:01,500\nhello\n\n2\n00:00:01,500 --> 00:00:03,000\nworld\n"


def m3u8_playlist(target: Path | str) -> str:
    """An HLS playlist whose one segment is ``target`` (a path or URL)."""
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXTINF:2.5,\n{target}\n#EXT-X-ENDLIST\n"


def m3u_playlist(target: Path | str) -> str:
    return f"#EXTM3U\n#EXTINF:2,clip\n{target}\n"


def ffconcat_script(*targets: Path | str) -> str:
    return "ffconcat version 1.0\n" + "".join(f"file '{t}'\n" for t in targets)


def write_data_only(path: Path, packets: int = 20) -> Path:
    """An MPEG-TS holding one data stream (no audio, no video)."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_data_stream()
        for i in range(packets):
            packet = av.Packet(b"telemetry %04d " % i * 8)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i * 9000, i * 9000, Fraction(1, 90000)
            container.mux(packet)
    return path


def write_cover_art_audio(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """An .m4a whose only picture is cover art (a PNG with the attached_pic disposition) beside aac audio."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(_picture()).save(png, format="PNG")
    with av.open(str(path), mode="w", format="mp4") as container:
        audio = container.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        cover = container.add_stream("png")
        cover.width, cover.height, cover.pix_fmt = 64, 48, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(png.getvalue())
        packet.stream, packet.pts, packet.dts, packet.time_base = cover, 0, 0, Fraction(1, 90000)
        container.mux(packet)
        _write_audio(container, audio, _tone(seconds, sample_rate), sample_rate)
    return path


def write_encoded(path: Path, codec: str, fmt: str | None = None, pix_fmt: str = "yuv420p", frames: int = 24,
                  fps: int = 12, width: int = 64, height: int = 48) -> Path:
    """A video-only file of ``frames`` moving pictures in any codec/container PyAV can write."""
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_picture(width, height, 3 * i), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_unknown_codec(path: Path) -> Path:
    """An AVI whose video stream names a codec (fourcc ``QQQQ``) no decoder knows: FFmpeg opens it, cannot decode."""
    write_encoded(path, "mjpeg", pix_fmt="yuvj420p")
    path.write_bytes(path.read_bytes().replace(b"MJPG", b"QQQQ"))
    return path


def write_audio_rate_change(path: Path) -> Path:
    """An MPEG-TS whose audio changes sample rate midway (two .ts files back to back, 16 kHz then 44.1 kHz)."""
    first = write_video(path.with_suffix(".a.ts"), seconds=1.0, sample_rate=16000)
    second = write_video(path.with_suffix(".b.ts"), seconds=1.0, sample_rate=44100)
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return path
