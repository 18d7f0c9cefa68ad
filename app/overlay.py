"""Heatmaps drawn over video: a colour map, a PNG of one frame and an MP4 of the whole video with its audio.

Frames are decoded again from the uploaded file at their own resolution (capped at ``max_side`` pixels, even
sizes for yuv420p); each frame takes the heatmap interpolated linearly in time between the nearest heatmap frames,
upsampled bilinearly. The overlay's opacity follows the heatmap, so cold regions show the picture untouched.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from model_store.heatmaps import Heatmaps, upsample
from model_store.media import FrameScaler, MediaError, open_media, video_stream

# (position, RGB) stops of a perceptually ordered map: dark blue -> blue -> cyan -> yellow -> red
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 90], [0, 60, 255], [0, 230, 230], [255, 230, 0], [230, 0, 0]], dtype=np.float32)
MAX_OPACITY = 0.65


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """[0, 1] values -> RGB float32 in [0, 255]. Shape: (H, W) -> (H, W, 3)."""
    x = np.clip(heatmap, 0.0, 1.0)
    return np.stack([np.interp(x, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def blend(frame: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """A uint8 RGB frame (H, W, 3) with a heatmap (h, w) in [0, 1] drawn over it; returns uint8 (H, W, 3)."""
    h, w = frame.shape[:2]
    hm = upsample(heatmap, h, w)
    alpha = (MAX_OPACITY * np.clip(hm, 0.0, 1.0) ** 0.75)[..., None]
    out = frame.astype(np.float32) * (1.0 - alpha) + colourise(hm) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def heatmap_at(maps: Heatmaps, t_s: float) -> np.ndarray:
    """The heatmap at time ``t_s``, linear between the neighbouring heatmap frames (held before/after)."""
    times = maps.times_s
    if t_s <= times[0]:
        return maps.maps[0]
    if t_s >= times[-1]:
        return maps.maps[-1]
    j = int(np.searchsorted(times, t_s))
    u = float((t_s - times[j - 1]) / (times[j] - times[j - 1]))
    return maps.maps[j - 1] * (1.0 - u) + maps.maps[j] * u


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _video_frames(container: av.container.InputContainer, size: tuple[int, int]):
    """(t_s relative to the first frame, uint8 RGB frame) for every decoded frame."""
    stream = video_stream(container)
    stream.thread_type = "AUTO"
    scale = FrameScaler(*size)
    t0 = None
    n = 0
    rate = stream.average_rate or stream.guessed_rate or 25
    for frame in container.decode(stream):
        t = float(frame.time) if frame.time is not None else n / float(rate)
        n += 1
        t0 = t if t0 is None else t0
        yield t - t0, scale(frame)


def _media_errors(render: Callable[..., bytes]) -> Callable[..., bytes]:
    """FFmpeg's failures on the upload (and PyAV's ValueErrors, e.g. audio that changes format midway) are the
    upload's problem: a 422, not a 500."""

    @functools.wraps(render)
    def wrapper(*args, **kwargs) -> bytes:
        try:
            return render(*args, **kwargs)
        except MediaError:
            raise
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"the video could not be drawn over ({getattr(exc, 'strerror', None) or exc})") from exc

    return wrapper


@_media_errors
def render_png(path: str | Path, maps: Heatmaps, t_s: float, max_side: int = 1280) -> bytes:
    """The video's frame shown at ``t_s`` (the last frame at or before it) with the heatmap at ``t_s``."""
    from PIL import Image

    with open_media(path) as container:
        ctx = video_stream(container).codec_context
        size = output_size(ctx.width, ctx.height, max_side) if max(ctx.width, ctx.height) > max_side else (
            ctx.width, ctx.height)
        chosen = None
        for t, rgb in _video_frames(container, size):
            if chosen is not None and t > t_s + 1e-6:
                break
            chosen = rgb
    if chosen is None:
        raise MediaError("the video stream holds no decodable frame")
    buf = io.BytesIO()
    Image.fromarray(blend(chosen, heatmap_at(maps, t_s))).save(buf, format="PNG")
    return buf.getvalue()


@_media_errors
def render_mp4(path: str | Path, maps: Heatmaps, max_side: int = 640) -> bytes:
    """The whole video with the heatmap drawn over every frame (h264), and its original audio (AAC)."""
    out = io.BytesIO()
    with open_media(path) as src, av.open(out, mode="w", format="mp4") as dst:
        vin = video_stream(src)
        size = output_size(vin.codec_context.width, vin.codec_context.height, max_side)
        rate = Fraction(vin.average_rate or vin.guessed_rate or 25).limit_denominator(1001)
        if rate > 60:
            rate = Fraction(30)
        vout = dst.add_stream("libx264", rate=rate)
        vout.width, vout.height = size
        vout.pix_fmt = "yuv420p"
        vout.options = {"preset": "veryfast", "crf": "23"}
        ain = src.streams.audio[0] if src.streams.audio else None
        aout = resampler = None
        if ain is not None:
            sr = ain.codec_context.sample_rate or 44100
            layout = "stereo" if (ain.codec_context.channels or 1) >= 2 else "mono"
            aout = dst.add_stream("aac", rate=sr, layout=layout)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=sr)
        i = 0
        for t, rgb in _video_frames(src, size):
            frame = av.VideoFrame.from_ndarray(blend(rgb, heatmap_at(maps, t)), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            dst.mux(vout.encode(frame))
            i += 1
        dst.mux(vout.encode(None))
        if ain is not None:
            src.seek(0)
            fifo = av.AudioFifo()
            chunk = aout.codec_context.frame_size or 1024
            pts = 0
            for frame in src.decode(ain):
                for r in resampler.resample(frame):
                    fifo.write(r)
                while fifo.samples >= chunk:
                    f = fifo.read(chunk)
                    f.pts = pts
                    pts += chunk
                    dst.mux(aout.encode(f))
            for r in resampler.resample(None):
                fifo.write(r)
            if fifo.samples:
                f = fifo.read()
                f.pts = pts
                dst.mux(aout.encode(f))
            dst.mux(aout.encode(None))
    if i == 0:
        raise MediaError("the video stream holds no decodable frame")
    return out.getvalue()

