"""Fixtures for model_store tests: generated media with known content and tiny ONNX graphs.

Video frames carry their own index: the top three quarters are split into ``BITS`` vertical stripes,
stripe ``b`` is white when bit ``b`` of the source frame index is set and black otherwise; the bottom
quarter is pure red (to catch a BGR/RGB swap). Audio is silence with short
clicks (a 2 ms burst) at known times, so alignment can be read back with an argmax.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_store.manifest import ClipSpec

BITS = 7
CLICK_S = 0.002


def frame_image(k: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 image whose stripes spell ``k`` in binary (stripe 0 = least significant bit)."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    band = height * 3 // 4
    edges = np.linspace(0, width, BITS + 1).round().astype(int)
    for b in range(BITS):
        if (k >> b) & 1:
            img[:band, edges[b] : edges[b + 1]] = 255
    img[band:] = (255, 0, 0)
    return img


def read_index(img: np.ndarray) -> int:
    """Inverse of :func:`frame_image` on a (possibly resized, lossy) RGB frame."""
    height, width = img.shape[:2]
    gray = img.astype(np.float32).mean(axis=-1)
    k = 0
    for b in range(BITS):
        x = int((b + 0.5) * width / BITS)
        if gray[height * 3 // 8, x] > 127:
            k |= 1 << b
    return k


def click_track(duration_s: float, sample_rate: int, clicks_s: Sequence[float]) -> np.ndarray:
    audio = np.zeros(int(round(duration_s * sample_rate)), dtype=np.float32)
    n = max(1, int(round(CLICK_S * sample_rate)))
    for t in clicks_s:
        i = int(round(t * sample_rate))
        audio[i : i + n] = 0.8
    return audio


def make_media(
    path: Path,
    *,
    duration_s: float = 2.0,
    fps: Fraction | int = 25,
    width: int = 64,
    height: int = 48,
    video: bool = True,
    audio: bool = True,
    sample_rate: int = 44100,
    clicks_s: Sequence[float] = (1.0,),
    video_codec: str = "libx264",
    audio_codec: str = "aac",
) -> Path:
    """Write a video file (the container from the suffix): libx264 (yuv420p, or yuv444p for odd sizes) and/or aac
    mono with clicks, or other codecs (e.g. UCF-101's ``mpeg4`` + ``libmp3lame`` in an .avi)."""
    rate = Fraction(fps)
    with av.open(str(path), mode="w") as out:
        vstream = astream = None
        if video:
            vstream = out.add_stream(video_codec, rate=rate)
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            if video_codec == "libx264":
                vstream.options = {"preset": "superfast", "crf": "18"}  # superfast keeps B-frames
        if audio:
            astream = out.add_stream(audio_codec, rate=sample_rate, layout="mono")
        if vstream is not None:
            n_frames = int(round(duration_s * rate))
            for k in range(n_frames):
                frame = av.VideoFrame.from_ndarray(frame_image(k, width, height), format="rgb24")
                if video_codec == "libx264":
                    frame.pts = None
                else:  # other encoders want timestamps
                    frame.pts, frame.time_base = k, 1 / rate
                for packet in vstream.encode(frame.reformat(format=vstream.pix_fmt)):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if astream is not None:
            samples = click_track(duration_s, sample_rate, clicks_s)
            chunk = astream.codec_context.frame_size or 1024
            for start in range(0, len(samples), chunk):
                block = samples[start : start + chunk]
                frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


def remux(
    src: Path,
    dst: Path,
    fmt: str | None = None,
    options: dict[str, str] | None = None,
    video_only: bool = False,
) -> Path:
    """Copy packets into another container (e.g. ``fmt="h264"``: an elementary stream without timestamps)."""
    with av.open(str(src)) as inp, av.open(str(dst), mode="w", format=fmt, options=options or {}) as out:
        streams = [s for s in inp.streams if s.type == "video" or not video_only]
        mapping = {s.index: out.add_stream_from_template(s) for s in streams}
        for packet in inp.demux(*streams):
            if packet.dts is None:  # the flush packet
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    return dst


def run_with_timeout(fn: Callable[[], Any], timeout_s: float = 15.0) -> BaseException | None:
    """Run ``fn`` in a thread; fail the test if it hangs, return what it raised (or None)."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: B036 - handed back to the test
            box[0] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"call did not finish within {timeout_s} s"
    return box[0]


# ---------------------------------------------------------------- clip specs


def clip_spec(
    fps: float = 8.0,
    frames: int = 8,
    height: int = 24,
    width: int = 40,
    sample_rate: int = 16000,
    **extra: Any,
) -> ClipSpec:
    return ClipSpec(
        fps=fps,
        frames=frames,
        height=height,
        width=width,
        sample_rate=sample_rate,
        audio_samples=round(frames / fps * sample_rate),
        **extra,
    )


@pytest.fixture
def spec() -> ClipSpec:
    return clip_spec()


# helpers handed to test modules as fixtures (test modules cannot import conftest reliably)


@pytest.fixture(name="make_media", scope="session")
def _make_media() -> Callable[..., Path]:
    return make_media


@pytest.fixture(name="read_index", scope="session")
def _read_index() -> Callable[[np.ndarray], int]:
    return read_index


@pytest.fixture(name="run_with_timeout", scope="session")
def _run_with_timeout() -> Callable[..., BaseException | None]:
    return run_with_timeout


@pytest.fixture(name="remux", scope="session")
def _remux() -> Callable[..., Path]:
    return remux


@pytest.fixture(name="clip_spec", scope="session")
def _clip_spec() -> Callable[..., ClipSpec]:
    return clip_spec


@pytest.fixture(name="tiny_onnx", scope="session")
def _tiny_onnx() -> Callable[..., Path]:
    return tiny_onnx


@pytest.fixture(name="manifest_fields", scope="session")
def _manifest_fields() -> Callable[..., dict[str, Any]]:
    return manifest_fields


# ---------------------------------------------------------------- media files (built once per session)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def av_file(media_dir: Path) -> Path:
    """2.0 s, 25 fps, 64x48, aac mono 44.1 kHz with a click at 1.0 s."""
    return make_media(media_dir / "av.mp4")


@pytest.fixture(scope="session")
def clicks_file(media_dir: Path) -> Path:
    """3.0 s, 30 fps, 48 kHz audio with clicks at 0.5, 1.0 and 2.25 s."""
    return make_media(
        media_dir / "clicks.mp4", duration_s=3.0, fps=30, sample_rate=48000, clicks_s=(0.5, 1.0, 2.25)
    )


@pytest.fixture(scope="session")
def video_only_file(media_dir: Path) -> Path:
    return make_media(media_dir / "video_only.mp4", audio=False, duration_s=1.6)


@pytest.fixture(scope="session")
def audio_only_file(media_dir: Path) -> Path:
    return make_media(media_dir / "audio_only.mp4", video=False)


@pytest.fixture(scope="session")
def garbage_bytes() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------- tiny ONNX graphs


def tiny_onnx(path: Path, n_classes: int = 3, frames: int = 8, height: int = 24, width: int = 40) -> Path:
    """video (batch,3,T,H,W) -> logits (batch,n_classes) = mean over (T,H,W) of each channel @ W + b."""
    weight = np.arange(3 * n_classes, dtype=np.float32).reshape(3, n_classes) / 10
    bias = np.arange(n_classes, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["video", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
        helper.make_node("ReduceMean", ["audio", "audio_axes"], ["energy"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 3, frames, height, width]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes]),
            helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [3], [2, 3, 4]),
            helper.make_tensor("audio_axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, bias.shape, bias.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def manifest_fields(task: str = "action", n_classes: int = 3, **extra: Any) -> dict[str, Any]:
    """Fields for :meth:`ModelStore.publish` matching :func:`tiny_onnx` (no version, no sha256)."""
    spec = clip_spec()
    video_shape = ["batch", 3, spec.frames, spec.height, spec.width]
    fields: dict[str, Any] = {
        "task": task,
        "name": "tiny",
        "opset": 18,
        "inputs": [
            {"name": "video", "dtype": "float32", "shape": video_shape},
            {"name": "audio", "dtype": "float32", "shape": ["batch", spec.audio_samples]},
        ],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["batch", n_classes]},
            {"name": "energy", "dtype": "float32", "shape": ["batch"]},
        ],
        "clip": spec.model_dump(),
        "labels": [f"class{i}" for i in range(n_classes)] if task == "action" else [],
        "metrics": {"top1": 0.5},
        "metrics_data": "generated",
    }
    fields.update(extra)
    return fields


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return tiny_onnx(tmp_path / "tiny.onnx")
