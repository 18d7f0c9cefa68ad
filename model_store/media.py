"""Decode videos with PyAV into the windows a :class:`ClipSpec` asks for.

Training and serving both call :func:`load_windows`, so a served model sees exactly what it was trained on:
frames sampled at the spec's fps (each target time takes the last frame shown at or before it), resized
to the spec's size as RGB, audio resampled to mono float32 at the spec's rate and aligned to the first
video frame, cut into sliding windows that cover the whole video (the last one ends at the video's end).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from model_store.manifest import ClipSpec

Source = str | Path | bytes


class MediaError(ValueError):
    """The input cannot be used; ``status`` is the HTTP status a service should answer with."""

    status: int = 422

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status

    def __reduce__(self) -> tuple:
        return type(self), (self.detail, self.status)  # a decode in another process raises it with its status


def _too_long(limits: MediaLimits) -> MediaError:
    """A decode that ran past the duration limit (probing may miss it: a stream can run longer than it says)."""
    return MediaError(f"the video runs past {limits.max_duration_s:.0f} s; longer videos are refused", status=413)


class DecodeStopped(Exception):
    """The caller's ``stop`` callback asked decoding to end early."""


@dataclass(frozen=True)
class MediaLimits:
    max_duration_s: float = 600.0
    max_pixels: int = 3840 * 2160
    max_streams: int = 16


@dataclass(frozen=True)
class ProbeInfo:
    duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    has_audio: bool
    audio_codec: str | None
    sample_rate: int | None
    n_streams: int


@dataclass
class Decoded:
    frames: np.ndarray  # (N, H, W, 3) uint8 at spec fps
    audio: np.ndarray  # (S,) float32 mono at spec sample rate
    duration_s: float
    has_audio: bool


@dataclass
class Windows:
    video: np.ndarray  # (W, T, H, W, 3) uint8
    audio: np.ndarray  # (W, S) float32
    starts_s: np.ndarray  # (W,) float64
    duration_s: float
    has_audio: bool

    def __len__(self) -> int:
        return len(self.starts_s)


# what FFmpeg may read: the file it was given, nothing else. Playlists (hls), concat scripts, IMF, DASH and SDP
# descriptions name other files or network streams; a demuxer that follows them would let an upload read the
# server's files (another client's upload) or open sockets. Nested opens go through `io_open`, which refuses
# all but the source itself, or through protocols, of which none is whitelisted (the source is opened by
# `io_open`, not by a protocol).
_NO_PROTOCOLS = {"protocol_whitelist": "none"}
# demuxers of still pictures and text: FFmpeg opens them as a video stream, but they are not videos
_STILL_FORMATS = {"image2", "image2pipe"}
_TEXT_FORMATS = {"tty", "ffmetadata"}
# a description for files FFmpeg cannot open, from their first bytes (only to word the error)
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"<svg", "an SVG vector image"),
    (b"%PDF", "a PDF document"),
    (b"#EXTM3U", "an m3u/m3u8 playlist"),
    (b"ffconcat version", "an ffconcat script"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"<?xml", "an XML document"),
)


class _ReferenceRefused(PermissionError):
    """The file asked FFmpeg to open another file or URL."""


def _guard(allowed: str | None) -> Callable[[str, int, dict], IO[bytes]]:
    def io_open(url: str, flags: int, options: dict) -> IO[bytes]:
        if allowed is not None and url == allowed and not flags & 2:  # AVIO_FLAG_WRITE
            return open(allowed, "rb")
        raise _ReferenceRefused(f"refused to open {url!r}")

    return io_open


def _describe(source: Source) -> str | None:
    """What a file that FFmpeg cannot open looks like (SVG, playlist, ...), from its first bytes."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            head = bytes(source[:1024])
        else:
            with open(source, "rb") as fh:
                head = fh.read(1024)
    except OSError:
        return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<?xml") and b"<svg" in text:
        return "an SVG vector image"
    return next((what for magic, what in _SIGNATURES if text.startswith(magic.lower())), None)


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's message without errno numbers or the server-side path."""
    return str(getattr(exc, "strerror", None) or exc.__class__.__name__)


def open_media(source: Source) -> av.container.InputContainer:
    """Open a file or bytes for reading with FFmpeg, which may read that source and nothing else."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return av.open(io.BytesIO(bytes(source)), mode="r", io_open=_guard(None), options=_NO_PROTOCOLS)
        return av.open(str(source), mode="r", io_open=_guard(str(source)), options=_NO_PROTOCOLS)
    except _ReferenceRefused as exc:
        raise MediaError("not a video: the file refers to other files or URLs (a playlist or similar); upload "
                         "the video itself", status=415) from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        what = _describe(source)
        if what is not None:
            raise MediaError(f"not a video: the file is {what}", status=415) from exc
        raise MediaError(f"not a decodable media file ({_ffmpeg_reason(exc)})", status=415) from exc


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream that is not a picture attached to the audio (cover art); MediaError if none."""
    fmt = container.format.name
    if fmt in _STILL_FORMATS or fmt.endswith("_pipe"):
        kind = fmt.removesuffix("_pipe") if fmt.endswith("_pipe") else "image"
        what = "an SVG vector image" if kind == "svg" else f"a still image ({kind})"
        raise MediaError(f"not a video: the file is {what}", status=415)
    if fmt in _TEXT_FORMATS:
        raise MediaError(f"not a video: the file is text ({fmt})", status=415)
    streams = container.streams
    videos = [s for s in streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        if streams.video:
            raise MediaError("not a video: its only picture is cover art attached to the audio", status=415)
        kinds = sorted({s.type for s in streams})
        held = f" (it holds {', '.join(kinds)} streams)" if kinds else " (it holds no stream at all)"
        raise MediaError(f"not a video: the file has no video stream{held}", status=422)
    video = videos[0]
    if video.codec_context is None:
        raise MediaError("not a video this service can decode: FFmpeg has no decoder for its video codec", status=415)
    return video


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def probe(source: Source, limits: MediaLimits = MediaLimits()) -> ProbeInfo:
    """Read headers only and enforce ``limits``; raises :class:`MediaError` with a user-facing detail."""
    with open_media(source) as container:
        return _probe_open(container, limits)


def _probe_open(container: av.container.InputContainer, limits: MediaLimits) -> ProbeInfo:
    streams = container.streams
    if len(streams) > limits.max_streams:
        raise MediaError(f"the file has {len(streams)} streams; at most {limits.max_streams} are accepted")
    video = video_stream(container)
    ctx = video.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise MediaError("the video stream has no frame size")
    if width * height > limits.max_pixels:
        raise MediaError(f"frames of {width}x{height} exceed the limit of {limits.max_pixels} pixels", status=413)
    duration = _duration(container, video)
    if duration is not None and duration > limits.max_duration_s:
        raise MediaError(
            f"the video lasts {duration:.1f} s; at most {limits.max_duration_s:.0f} s are accepted", status=413
        )
    rate = video.average_rate or video.guessed_rate
    audio = streams.audio[0] if streams.audio else None
    return ProbeInfo(
        duration_s=float(duration) if duration is not None else float("nan"),
        width=width,
        height=height,
        fps=float(rate) if rate else float("nan"),
        video_codec=ctx.name,
        has_audio=audio is not None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        sample_rate=audio.codec_context.sample_rate if audio is not None else None,
        n_streams=len(streams),
    )


# frames this small decode as fast on one thread as on FFmpeg's frame threads, for about a quarter less CPU (10-s
# clips, 2 cores: 128x128 18.1 ms on one thread against 18.3 ms on three, 192x192 26.1 against 25.4 ms; at 320x180
# the threads save about 5 % of the time for 25 % more CPU), so they get one thread unless a count is asked for
SMALL_FRAME_PIXELS = 200 * 200


def video_threads(width: int, height: int, threads: int = 0) -> int:
    """The video decoder's thread count for ``width`` x ``height`` frames: ``threads`` if given, else 1 for small
    frames (:data:`SMALL_FRAME_PIXELS`) and 0 (FFmpeg's choice: one per core and one more) for larger ones."""
    if threads > 0:
        return threads
    return 1 if 0 < width * height <= SMALL_FRAME_PIXELS else 0


def _configure_decoder(stream: av.video.stream.VideoStream, info: ProbeInfo, threads: int = 0) -> None:
    """Frame and slice threads as FFmpeg sees fit, as many as :func:`video_threads` says."""
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = video_threads(info.width, info.height, threads)


class _Damage:
    """Packets a decoder refuses as invalid (a frame cut off where a download ended, a damaged one): each is left out
    and decoding goes on, up to :attr:`LIMIT` of them; beyond, the file is undecodable (the error is raised).

    Without this, whether a cut file decoded depended on the decoder's threads: on one thread the cut frame's error
    is raised, with frame threads it is not (of 16 SynthAV clips cut at 60 %, 4 decoded with frame threads and none
    on one thread) -- so a service, which gives a decode one thread under load, answered the same upload 200 or 422
    by how busy it was.
    """

    LIMIT = 8

    def __init__(self) -> None:
        self.count = 0

    def decode(self, packet: av.Packet) -> list:
        try:
            return packet.decode()
        except av.InvalidDataError:
            self.count += 1
            if self.count > self.LIMIT:
                raise
            return []


# PyAV >= 17 scales with a thread pool unless told otherwise (``threads=0``: one thread per core)
_ONE_THREAD: dict[str, int] = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


class FrameScaler:
    """One single-threaded swscale context for a whole decode: frame -> (height, width, 3) uint8 RGB.

    ``VideoFrame.to_ndarray(width=..., ...)`` builds a new reformatter per frame, and on PyAV >= 17 a scaler
    with a thread per core: that set-up, and its threads fighting the decoder's for the cores, cost more than
    the scaling itself (the pixels are the same: bilinear either way).
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return self._reformatter.reformat(frame, self.width, self.height, "rgb24", **_ONE_THREAD).to_ndarray()


class _MonoTrack:
    """Audio frames -> float32 mono chunks at ``rate``, through a filter graph: abuffer -> aformat (mono, at the
    source's rate) -> aformat (float at ``rate``) -> [asetnsamples] -> abuffersink. Both decoders resample with it, so
    :func:`decode` and :func:`decode_span` give the same samples (the window tests compare them exactly).

    Downmixing before resampling resamples one channel instead of two: a 10-s stereo AAC track at 44.1 kHz costs
    2.1 ms here instead of 3.1 ms in one ``aformat`` (what ``av.AudioResampler`` builds); the samples differ from that
    one's by float rounding (1e-7). A whole decode (``block``) also regroups the output into blocks of ``block``
    samples (``asetnsamples``) and pulls every :attr:`PULL_EVERY` pushed frames: the track's 431 frames, each pulled
    (an exception when the graph has nothing) and converted, cost more than the resampling itself. A windowed decode
    (``block=0``) pulls after every frame: it counts the samples it has to know when to stop. A stream whose format,
    layout or rate changes midway gets a new graph from that frame on.
    """

    BLOCK = 8192  # output samples per pulled frame (0.5 s at 16 kHz)
    PULL_EVERY = 32  # pushed frames between pulls (0.7 s of 44.1 kHz AAC): what the graph holds in between

    def __init__(self, rate: int, block: int = BLOCK) -> None:
        self.rate, self.block = rate, block
        self.pull_every = self.PULL_EVERY if block else 1
        self.chunks: list[np.ndarray] = []
        self._graph: av.filter.Graph | None = None
        self._key: tuple | None = None
        self._pushed = 0

    def _build(self, frame: av.AudioFrame) -> av.filter.Graph:
        graph = av.filter.Graph()
        time_base = frame.time_base or Fraction(1, frame.sample_rate)
        chain = [graph.add("abuffer", sample_rate=str(frame.sample_rate), sample_fmt=frame.format.name,
                           channel_layout=frame.layout.name, time_base=str(time_base)),
                 graph.add("aformat", sample_fmts="fltp", channel_layouts="mono"),
                 graph.add("aformat", sample_rates=str(self.rate), sample_fmts="flt")]
        if self.block:
            chain.append(graph.add("asetnsamples", nb_out_samples=str(self.block), pad="0"))
        chain.append(graph.add("abuffersink"))
        for a, b in zip(chain, chain[1:], strict=False):
            a.link_to(b)
        graph.configure()
        return graph

    def _pull(self) -> None:
        assert self._graph is not None
        while True:
            try:
                out = self._graph.pull()
            except (EOFError, BlockingIOError):
                return
            self.chunks.append(out.to_ndarray()[0])

    def push(self, frame: av.AudioFrame) -> None:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self.finish()
            self._graph, self._key = self._build(frame), key
        assert self._graph is not None
        self._graph.push(frame)
        self._pushed += 1
        if self._pushed % self.pull_every == 0:
            self._pull()

    def finish(self) -> list[np.ndarray]:
        if self._graph is not None:
            self._graph.push(None)
            self._pull()
            self._graph, self._key = None, None
        return self.chunks


def _rgb_converter(spec: ClipSpec) -> Callable[[av.VideoFrame], np.ndarray]:
    """A decoded frame -> (H, W, 3) uint8 RGB at the spec's size: the one :class:`FrameScaler` both decoders use."""
    return FrameScaler(spec.width, spec.height)


class _SkipMismatch(Exception):
    """A skipped frame turned out to be one a target needed (a stream whose frame durations mislead)."""


class _FrameSkipper:
    """Which video packets :func:`decode` may let the decoder skip: those of frames that no target time needs.

    Target ``i`` (at ``i * step`` seconds from the first frame) shows the last frame at or before it, so a frame
    whose display time ``[pts, pts + duration)`` holds no target is not needed. For such packets the decoder is
    told to skip non-reference frames (``skip_frame = NONREF``): a reference frame is decoded anyway (others depend
    on it), and a frame nothing refers to is dropped, unseen by the rest of the stream. That spares the decoding of
    most B-frames at a spec fps below the source's (a 24-fps H.264 video sampled at 8 fps: about a quarter of its
    frames), with the same frames and timing as decoding everything:

    - skipping starts once a frame is out (the first frame sets the clock) and stops for good when a frame's
      timestamp is not the previous frame's plus its duration (variable frame rate: durations do not say how long a
      frame is shown); timestamps in milliseconds (Matroska, WebM, FLV) are allowed a tick either way;
    - a packet sent with the skip flag whose frame never comes out (once a later frame is out: presentation order is
      monotonic) was skipped; the targets given to the frame before it are checked against it, and any that the
      skipped frame would have shown raise :class:`_SkipMismatch`, and :func:`decode` decodes the file again without
      skipping. Exactness does not rest on the packets' durations;
    - the duration (the last frame's time plus one source frame) counts skipped frames too.
    """

    COARSE_TICK_S = 1e-4  # a time base this coarse rounds timestamps (milliseconds); one tick of slack

    def __init__(self, ctx: av.codec.context.CodecContext, time_base: Fraction | None, step: float,
                 enabled: bool) -> None:
        self._ctx, self._step = ctx, step
        self._tb = float(time_base) if time_base else 0.0
        self.enabled = enabled and self._tb > 0
        self._skipping = False
        self._durations: dict[int, int] = {}  # pts -> duration (ticks) of the video packets sent, until out
        self._pending: dict[int, float] = {}  # pts -> time from the first frame, of packets sent with the flag
        self._last: tuple[int, int] | None = None  # (pts, duration) of the latest frame shown, skipped or not
        self.skipped: list[float] = []  # times of frames found skipped and not yet checked
        self._last_skipped_t = -math.inf
        self.n_skipped = 0

    def _slack(self, duration: int) -> int:
        return 1 if self._tb >= self.COARSE_TICK_S and duration > 1 else 0

    def before(self, packet: av.Packet, t0_video: float | None) -> None:
        """Set the decoder's skip flag for ``packet`` (of the video stream)."""
        skip = False
        if self.enabled and packet.pts is not None:
            self._durations[packet.pts] = packet.duration or 0
            if t0_video is not None and packet.duration and not packet.is_keyframe:
                # as emit_until hands them out: target i goes to this frame if start - 1e-6 <= i * step < end - 1e-6
                start = packet.pts * self._tb - t0_video
                end = start + (packet.duration + self._slack(packet.duration)) * self._tb
                first = max(0, math.floor((start - 1e-6) / self._step))
                while first * self._step < start - 1e-6:
                    first += 1
                skip = start > 0 and first * self._step >= end - 1e-6
                if skip:
                    self._pending[packet.pts] = start
        if skip != self._skipping:
            self._ctx.skip_frame = "NONREF" if skip else "DEFAULT"
            self._skipping = skip

    def came_out(self, pts: int | None, rel: float) -> None:
        """A frame was decoded: those sent with the flag and shown before it were skipped."""
        if pts is None:
            if self._pending or self.n_skipped:
                raise _SkipMismatch("a frame without a timestamp after skipping")
            self.enabled = False
            return
        for key in sorted(k for k in self._pending if k < pts):
            self._found(self._pending.pop(key))
            self._shown(key)
        self._pending.pop(pts, None)
        self._shown(pts)

    def _shown(self, pts: int) -> None:
        duration = self._durations.pop(pts, 0)
        if self._last is not None and self.enabled:
            last_pts, last_duration = self._last
            if not last_duration or abs(pts - (last_pts + last_duration)) > self._slack(last_duration):
                self.enabled = False  # variable frame rate: stop skipping
        self._last = (pts, duration)

    def finish(self, last_t: float) -> float:
        """At the end of the stream: the last frame's time, ``last_t`` being the last decoded one's."""
        for key in sorted(self._pending):
            self._found(self._pending.pop(key))
        return max(last_t, self._last_skipped_t)

    def _found(self, t: float) -> None:
        self.n_skipped += 1
        self.skipped.append(t)
        self._last_skipped_t = max(self._last_skipped_t, t)

    def check(self, first_target_t: float, last_target_t: float) -> None:
        """Targets from ``first_target_t`` to ``last_target_t`` go to the frame before the skipped ones: none of
        them may lie at or after a skipped frame's time."""
        if self.skipped:
            if last_target_t >= first_target_t and min(self.skipped) <= last_target_t + 1e-6:
                raise _SkipMismatch(f"a target at {last_target_t:.4f} s fell on a skipped frame")
            self.skipped.clear()


def decode(source: Source, spec: ClipSpec, limits: MediaLimits = MediaLimits(),
           stop: Callable[[], bool] | None = None, threads: int = 0) -> Decoded:
    """Probe, then decode the whole file at the spec's fps, size and sample rate.

    ``stop`` is polled once per packet; when it returns True, :class:`DecodeStopped` is raised (a service stops a
    request whose client went away or whose deadline passed). ``threads``: the video decoder's threads (0: one for
    small frames, else FFmpeg's choice: :func:`video_threads`). Frames that no target needs are skipped where the
    codec allows (:class:`_FrameSkipper`); the result is what decoding every frame gives. Packets the decoder
    refuses are left out, a few of them (:class:`_Damage`).
    """
    try:
        return _decode(source, spec, limits, stop, threads, skip=True)
    except _SkipMismatch:
        return _decode(source, spec, limits, stop, threads, skip=False)


def _decode(source: Source, spec: ClipSpec, limits: MediaLimits, stop: Callable[[], bool] | None, threads: int,
            skip: bool) -> Decoded:
    with open_media(source) as container:
        info = _probe_open(container, limits)
        vstream = video_stream(container)
        _configure_decoder(vstream, info, threads)
        astream = container.streams.audio[0] if info.has_audio else None
        streams = [vstream] + ([astream] if astream is not None else [])
        mono = _MonoTrack(spec.sample_rate)
        damage = _Damage()
        to_rgb = FrameScaler(spec.width, spec.height)

        step = 1.0 / spec.fps
        src_rate = vstream.average_rate or vstream.guessed_rate
        src_step = 1.0 / float(src_rate) if src_rate else step
        skipper = _FrameSkipper(vstream.codec_context, vstream.time_base, step, skip)
        n_src = 0  # source frames decoded so far: the clock for frames without a timestamp
        frames = _FrameBuffer((spec.height, spec.width, 3), _expected_frames(info, spec))
        prev, prev_rgb = None, None
        t0_video: float | None = None
        t0_audio: float | None = None
        last_video_t = 0.0
        horizon = limits.max_duration_s + 1.0

        def emit_until(t_now: float) -> None:
            nonlocal prev_rgb
            # every target time strictly before t_now is shown by `prev`
            first = len(frames)
            while prev is not None and len(frames) * step < t_now - 1e-6:
                if prev_rgb is None:
                    prev_rgb = to_rgb(prev)
                frames.append(prev_rgb)
            skipper.check(first * step, (len(frames) - 1) * step)

        vtb = float(vstream.time_base) if vstream.time_base else None
        try:
            for packet in container.demux(*streams):
                if stop is not None and stop():
                    raise DecodeStopped("decoding was stopped")
                if packet.stream is vstream:
                    skipper.before(packet, t0_video)
                    for frame in damage.decode(packet):
                        t = frame.pts * vtb if frame.pts is not None and vtb else n_src * src_step
                        n_src += 1
                        if t0_video is None:
                            t0_video = t
                        rel = t - t0_video
                        if rel > horizon:
                            raise _too_long(limits)
                        skipper.came_out(frame.pts, rel)
                        emit_until(rel)
                        prev, prev_rgb = frame, None
                        last_video_t = rel
                else:
                    for frame in damage.decode(packet):
                        if t0_audio is None:
                            t0_audio = float(frame.time) if frame.time is not None else 0.0
                        mono.push(frame)
            audio_chunks = mono.finish()
        except _ReferenceRefused as exc:
            raise MediaError("not a video: the file refers to other files or URLs; upload the video itself",
                             status=415) from exc
        except av.FFmpegError as exc:
            raise MediaError(f"the file could not be decoded ({_ffmpeg_reason(exc)})") from exc

        if prev is None:
            raise MediaError("the video stream holds no decodable frame")
        last_video_t = skipper.finish(last_video_t)
        n_src += skipper.n_skipped
        if n_src == 1:
            raise MediaError("not a video: the video stream holds a single picture", status=415)
        duration = last_video_t + src_step
        emit_until(duration)
        if not frames:  # shorter than one spec frame
            frames.append(to_rgb(prev))

    n_samples = int(round(duration * spec.sample_rate))
    audio = np.zeros(n_samples, dtype=np.float32)
    has_audio = bool(audio_chunks)
    if has_audio:
        # sample i of the track lands at i + offset; chunk by chunk, with no concatenated copy of the track
        offset = int(round(((t0_audio or 0.0) - (t0_video or 0.0)) * spec.sample_rate))
        pos = 0
        for chunk in audio_chunks:
            src = max(0, -(pos + offset))
            dst = pos + offset + src
            count = min(len(chunk) - src, n_samples - dst)
            if count > 0:
                audio[dst : dst + count] = chunk[src : src + count]
            pos += len(chunk)
        audio_chunks.clear()
        np.clip(audio, -1.0, 1.0, out=audio)
    return Decoded(frames=frames.array(), audio=audio, duration_s=duration, has_audio=has_audio)


def _expected_frames(info: ProbeInfo, spec: ClipSpec) -> int:
    """Spec frames a decode will likely give, from the probed duration (a guess to size the buffer; any count works)."""
    if math.isfinite(info.duration_s) and info.duration_s > 0:
        return int(math.ceil(info.duration_s * spec.fps)) + 2
    return 64


class _FrameBuffer:
    """The decoded frames, written into one array as they come instead of a list stacked at the end, which held
    them twice (a 5-minute decode at 64x64: 29 MB more at its peak). Sized from the probe; grows by half when a video
    runs longer. Pages past the frames written are never touched, so an estimate too large costs no memory."""

    def __init__(self, shape: tuple[int, int, int], expected: int) -> None:
        self._data = np.empty((max(1, expected), *shape), dtype=np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, frame: np.ndarray) -> None:
        if self._n == len(self._data):
            grown = np.empty((self._n + self._n // 2 + 16, *self._data.shape[1:]), dtype=np.uint8)
            grown[: self._n] = self._data
            self._data = grown
        self._data[self._n] = frame
        self._n += 1

    def array(self) -> np.ndarray:
        return self._data[: self._n]


def window_starts(duration_s: float, spec: ClipSpec) -> np.ndarray:
    """Start times of sliding windows that cover ``[0, duration_s]``; the last window ends at the end."""
    win, hop = spec.window_s, spec.window_hop_s
    if duration_s <= win:
        return np.zeros(1)
    n = math.ceil((duration_s - win) / hop - 1e-6) + 1
    starts = np.arange(n) * hop
    starts[-1] = duration_s - win
    return starts


def cut_window(decoded: Decoded, spec: ClipSpec, start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The window of a full decode that starts at ``start_s``: what :func:`cut_windows` cuts for each of its starts
    (a decoded-clip cache cuts training windows with it too).

    Shape: frames (T, H, W, 3) uint8, audio (S,) float32
    """
    first = int(round(start_s * spec.fps))
    idx = np.minimum(np.arange(first, first + spec.frames), len(decoded.frames) - 1)  # short videos hold the last
    a0 = int(round(start_s * spec.sample_rate))
    audio = np.zeros(spec.audio_samples, dtype=np.float32)
    chunk = decoded.audio[a0 : a0 + spec.audio_samples]
    audio[: len(chunk)] = chunk
    return decoded.frames[idx], audio


def cut_windows(decoded: Decoded, spec: ClipSpec) -> Windows:
    starts = window_starts(decoded.duration_s, spec)
    video = np.empty((len(starts), spec.frames, spec.height, spec.width, 3), dtype=np.uint8)
    audio = np.zeros((len(starts), spec.audio_samples), dtype=np.float32)
    for i, s in enumerate(starts):
        video[i], audio[i] = cut_window(decoded, spec, float(s))
    return Windows(video=video, audio=audio, starts_s=starts, duration_s=decoded.duration_s,
                   has_audio=decoded.has_audio)


def load_windows(source: Source, spec: ClipSpec, limits: MediaLimits = MediaLimits(),
                 stop: Callable[[], bool] | None = None, threads: int = 0) -> Windows:
    """:func:`decode`, then :func:`cut_windows`: the sliding windows of the whole video."""
    return cut_windows(decode(source, spec, limits, stop, threads), spec)


# ------------------------------------------------------------------------------------------ windowed decoding

# how far before the first frame or sample it needs a windowed decode seeks: an AAC frame (the one decoded right
# after a seek lacks its overlap and is dropped), the resampler's filter and the sample-grid trim fit in it
SEEK_MARGIN_S = 0.25
AUDIO_PREROLL_S = 0.08  # audio dropped after a seek (Opus's pre-roll; at least one AAC frame)
RESAMPLER_WARMUP_S = 0.02  # resampled before the first sample needed: the resampler's filter reaches 2-3 ms back


@dataclass
class Span:
    """Frames and audio decoded for one stretch of a video, on the grids :func:`decode` uses: ``frames[k]`` is
    the spec-fps frame ``first_frame + k`` of the whole video and ``audio[k]`` its spec-rate sample
    ``first_sample + k`` (both counted from the first video frame). Frames past the video's end hold its last
    frame, as :func:`cut_windows` holds it. ``last_frame``, ``n_samples`` and ``duration_s`` are the whole
    video's last frame index, audio length and duration (as :func:`decode` measures it) when the stretch reached
    its end (None otherwise).
    """

    frames: np.ndarray  # (N, H, W, 3) uint8
    audio: np.ndarray  # (S,) float32
    first_frame: int
    first_sample: int
    last_frame: int | None
    n_samples: int | None
    duration_s: float | None
    has_audio: bool
    decoded_from_s: float  # the first decoded frame's time: the keyframe the seek found (0.0: from the start)

    def window(self, spec: ClipSpec, start_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The window starting at ``start_s``, as :func:`cut_windows` cuts it from a full decode.

        Shape: frames (T, H, W, 3) uint8, audio (S,) float32
        """
        first = int(round(start_s * spec.fps)) - self.first_frame
        if first < 0 or first + spec.frames > len(self.frames):
            raise ValueError(f"the window at {start_s:.3f} s lies outside the decoded frames")
        a0 = int(round(start_s * spec.sample_rate))
        audio = np.zeros(spec.audio_samples, dtype=np.float32)
        lo = max(a0, self.first_sample)
        hi = min(a0 + spec.audio_samples, self.first_sample + len(self.audio))
        if self.n_samples is not None:
            hi = min(hi, self.n_samples)
        if hi > lo:
            audio[lo - a0 : hi - a0] = self.audio[lo - self.first_sample : hi - self.first_sample]
        return self.frames[first:first + spec.frames], audio


@dataclass
class Window:
    video: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (S,) float32
    start_s: float
    has_audio: bool


def decode_window(source: Source, spec: ClipSpec, start_s: float, limits: MediaLimits = MediaLimits()) -> Window:
    """One window starting at ``start_s`` (seconds from the first video frame): seek, then decode forward only as
    far as the window needs. The frames and samples equal those :func:`cut_windows` cuts from :func:`decode` of the
    whole file at the same start (``tests/model_store/test_media_window.py``)."""
    span = decode_span(source, spec, start_s, start_s + spec.window_s, limits)
    video, audio = span.window(spec, start_s)
    return Window(video=video, audio=audio, start_s=start_s, has_audio=span.has_audio)


def decode_span(source: Source, spec: ClipSpec, start_s: float, end_s: float,
                limits: MediaLimits = MediaLimits()) -> Span:
    """Probe, seek to the keyframe before ``start_s``, decode forward to ``end_s``: every window that starts in
    ``[start_s, end_s - window]`` can then be cut with :meth:`Span.window`. Raises :class:`MediaError`."""
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0 or end_s < start_s:
        raise MediaError(f"no span [{start_s}, {end_s}] s to decode")
    f_lo, a_lo = int(round(start_s * spec.fps)), int(round(start_s * spec.sample_rate))
    last_start = max(start_s, end_s - spec.window_s)
    f_hi = int(round(last_start * spec.fps)) + spec.frames
    a_hi = int(round(last_start * spec.sample_rate)) + spec.audio_samples + 1
    seek_s = min(f_lo / spec.fps, a_lo / spec.sample_rate) - SEEK_MARGIN_S
    # after a seek that landed past the span (no index, odd keyframes, no timestamps): again, from the start. Frames
    # no target needs are skipped (:class:`_FrameSkipper`); if a skipped frame was needed after all, the same stretch
    # is decoded again without skipping
    for seek in ([seek_s, None] if seek_s > 0 else [None]):
        try:
            span = _open_span(source, spec, (f_lo, f_hi), (a_lo, a_hi), limits, seek, skip=True)
        except _SkipMismatch:
            span = _open_span(source, spec, (f_lo, f_hi), (a_lo, a_hi), limits, seek, skip=False)
        if span is not None:
            return span
    raise AssertionError("decoding from the start always gives the span")


def _open_span(source: Source, spec: ClipSpec, frames_needed: tuple[int, int], samples_needed: tuple[int, int],
               limits: MediaLimits, seek_s: float | None, skip: bool) -> Span | None:
    with open_media(source) as container:
        info = _probe_open(container, limits)
        _configure_decoder(container.streams.video[0], info)
        try:
            return _decode_span(container, info, spec, frames_needed, samples_needed, limits, seek_s, skip)
        except av.FFmpegError as exc:
            raise MediaError(f"the file could not be decoded: {exc}") from exc


def _start_time(stream: av.stream.Stream) -> float | None:
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def _first_frame_time(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """When the video's first frame is shown, where :func:`decode`'s clock starts, without decoding: the stream's
    start time, except in AVI, which stores no presentation times (FFmpeg derives them, and with B-frames the first
    frame is shown one frame after the stream's start): there, the first packet's. Reads that packet; the caller
    seeks afterwards."""
    if container.format.name != "avi" or stream.time_base is None:
        return _start_time(stream)
    first = next((packet for packet in container.demux(stream) if packet.pts is not None), None)
    return float(first.pts * stream.time_base) if first is not None else None


def _decode_span(container: av.container.InputContainer, info: ProbeInfo, spec: ClipSpec,
                 frames_needed: tuple[int, int], samples_needed: tuple[int, int], limits: MediaLimits,
                 seek_s: float | None, skip: bool = False) -> Span | None:
    """Frame targets ``[f_lo, f_hi)`` and samples ``[a_lo, a_hi)``, seeking to ``seek_s`` first (None: from the
    start, exactly as :func:`decode` walks the file). None when the seek landed past what is needed."""
    (f_lo, f_hi), (a_lo, a_hi) = frames_needed, samples_needed
    vstream = container.streams.video[0]
    astream = container.streams.audio[0] if info.has_audio else None
    step, sr = 1.0 / spec.fps, spec.sample_rate
    src_rate = vstream.average_rate or vstream.guessed_rate
    src_step = 1.0 / float(src_rate) if src_rate else step
    # the clocks: from the stream headers after a seek, else from the first frames (as decode reads them)
    t0_video = _first_frame_time(container, vstream) if seek_s is not None else None
    t0_audio = _start_time(astream) if seek_s is not None and astream is not None else None
    if seek_s is not None:
        if t0_video is None or vstream.time_base is None:
            return None  # no clock to seek by
        container.seek(int((t0_video + seek_s) / vstream.time_base), stream=vstream, backward=True)
    to_rgb = _rgb_converter(spec)
    horizon = limits.max_duration_s + 1.0

    # video: target i shows the last frame at or before i * step (as decode's emit_until)
    out = [None] * (f_hi - f_lo)  # rgb frames of targets f_lo..f_hi-1
    next_target: int | None = None  # the first target not given a frame yet
    prev, prev_rgb = None, None
    last_target = (-1, None)  # (index, frame) of the latest target given a frame
    last_t = first_t = 0.0
    video_done = False
    n_src = 0

    skipper = _FrameSkipper(vstream.codec_context, vstream.time_base, step, skip)

    def assign(until_t: float) -> None:
        nonlocal next_target, prev_rgb, last_target
        first = next_target
        while next_target * step < until_t - 1e-6:
            i = next_target
            if f_lo <= i < f_hi:
                if prev_rgb is None:
                    prev_rgb = to_rgb(prev)
                out[i - f_lo] = prev_rgb
            last_target = (i, prev)
            next_target += 1
        skipper.check(first * step, (next_target - 1) * step)

    # audio: resampled samples of the stream (from its first sample) starting at `q0`, trimmed onto the grid on
    # which a resampler fed from the stream's start puts its output, so that they equal decode's samples
    mono = _MonoTrack(spec.sample_rate, block=0)
    q0: int | None = None
    n_audio = 0
    preroll = 0.0  # seconds of audio dropped after the seek

    def feed(frame: av.AudioFrame) -> None:
        nonlocal q0, n_audio, preroll
        src_sr = frame.sample_rate
        if q0 is None:
            if frame.time is None or t0_audio is None:
                if seek_s is not None:
                    raise _Unseekable
                p = 0
            else:
                p = int(round((float(frame.time) - t0_audio) * src_sr))
                if astream.time_base is not None and astream.time_base > Fraction(1, src_sr):
                    # timestamps coarser than a sample (Matroska's ms): frames hold a fixed count of samples, from
                    # the stream's first sample on; Opus's first frame is shorter by its pre-skip (the codec delay,
                    # which the decoder drops), so its grid is shifted by that much
                    n = frame.samples
                    shift = astream.codec_context.delay if astream.codec_context.name == "opus" and p else 0
                    p = int(round((p + shift) / n)) * n - shift
            if seek_s is not None and p > 0 and preroll < AUDIO_PREROLL_S:
                # decoded without the frames before it (AAC's overlap, Opus's pre-roll): not what decode saw
                preroll += frame.samples / src_sr
                return
            if seek_s is not None and t0_video is not None:
                # decoded (the decoder needs them) but not resampled: frames that end well before the span
                first_needed = (a_lo - _audio_offset(t0_audio, t0_video, sr)) / sr * src_sr
                if p + frame.samples < first_needed - RESAMPLER_WARMUP_S * src_sr:
                    return
            g = src_sr // math.gcd(src_sr, sr)
            m = -(-p // g) * g  # the first source sample at or after p that falls on an output sample
            if m >= p + frame.samples:
                return
            if m > p:
                frame = _trim_audio(frame, m - p)
            q0 = m * sr // src_sr
        before = len(mono.chunks)
        mono.push(frame)
        n_audio += sum(len(chunk) for chunk in mono.chunks[before:])

    def audio_enough() -> bool:
        if astream is None:
            return True
        if q0 is None or t0_video is None or t0_audio is None:
            return False
        return q0 + _audio_offset(t0_audio, t0_video, sr) + n_audio >= a_hi

    streams = [vstream] + ([astream] if astream is not None else [])
    damage = _Damage()
    try:
        for packet in container.demux(*streams):
            if packet.stream is vstream and not video_done:
                skipper.before(packet, t0_video)
            for frame in damage.decode(packet):
                if isinstance(frame, av.VideoFrame):
                    if video_done or (seek_s is not None and next_target is None and not frame.key_frame):
                        continue  # after a seek, frames before the first keyframe may lack their references
                    if frame.time is None:
                        if seek_s is not None:
                            return None
                        t_abs = n_src * src_step
                    else:
                        t_abs = float(frame.time)
                    n_src += 1
                    if t0_video is None:
                        t0_video = t_abs
                    rel = t_abs - t0_video
                    if rel > horizon:
                        raise _too_long(limits)
                    skipper.came_out(frame.pts, rel)
                    if next_target is None:
                        skipper.skipped.clear()  # frames before the first one decoded: no target reaches them
                        first_t = rel
                        next_target = 0
                        while next_target * step < rel - 1e-6:  # shown by frames before this one
                            next_target += 1
                        if next_target > f_lo:
                            return None  # the seek landed past the first frame needed
                    else:
                        assign(rel)
                    prev, prev_rgb, last_t = frame, None, rel
                    video_done = next_target >= f_hi and rel >= a_hi / sr
                elif not audio_enough():
                    if t0_audio is None:
                        t0_audio = float(frame.time) if frame.time is not None else 0.0
                    seeking_audio = q0 is None
                    feed(frame)
                    if seeking_audio and q0 is not None and seek_s is not None and q0 > 0 \
                            and q0 + _audio_offset(t0_audio, t0_video, sr) > a_lo:
                        return None  # the audio starts past the first sample needed
            if video_done and audio_enough():
                break
        else:  # the end of the file
            mono.finish()
    except _Unseekable:
        return None
    if prev is None:
        if seek_s is not None:
            return None  # no keyframe after the seek point
        raise MediaError("the video stream holds no decodable frame")

    last_frame = n_samples = duration = None
    if not video_done:  # reached the end: as decode, the last frame lasts one source frame
        last_t = skipper.finish(last_t)
        duration = last_t + src_step
        assign(duration)
        if last_target[0] < 0:  # shorter than one spec frame
            last_target = (0, prev)
            if f_lo == 0 and out:
                out[0] = to_rgb(prev)
        last_frame = last_target[0]
        n_samples = int(round(duration * sr))
        hold = None
        for k in range(len(out)):
            if out[k] is None:  # past the end: decode's windows hold the last frame
                if hold is None:
                    hold = to_rgb(last_target[1]) if last_target[0] < f_lo or last_target[0] >= f_hi \
                        else out[last_target[0] - f_lo]
                out[k] = hold
    offset = _audio_offset(t0_audio, t0_video, sr) if t0_audio is not None else 0
    chunks = mono.chunks
    raw = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    # raw[k] is stream sample q0 + k, i.e. the video-clock sample q0 + k + offset; keep those >= 0
    first_sample = (q0 or 0) + offset
    if first_sample < 0:
        raw, first_sample = raw[-first_sample:], 0
    audio = np.clip(raw, -1.0, 1.0)
    frames = np.stack(out) if out else np.zeros((0, spec.height, spec.width, 3), np.uint8)
    return Span(frames=frames, audio=audio, first_frame=f_lo, first_sample=first_sample, last_frame=last_frame,
                n_samples=n_samples, duration_s=duration, has_audio=bool(chunks), decoded_from_s=first_t)


def _audio_offset(t0_audio: float, t0_video: float | None, sample_rate: int) -> int:
    """Where the audio stream's first sample falls on the video clock, in samples (as :func:`decode` places it)."""
    return int(round((t0_audio - (t0_video or 0.0)) * sample_rate))


class _Unseekable(Exception):
    """The audio after a seek has no timestamps to place it by."""


def _trim_audio(frame: av.AudioFrame, skip: int) -> av.AudioFrame:
    """``frame`` without its first ``skip`` samples (same format, layout, rate and time base)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data[:, skip:] if frame.format.is_planar else data[:, skip * channels:]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    out.time_base = frame.time_base
    if frame.pts is not None and frame.time_base is not None:
        out.pts = frame.pts + int(round(skip / frame.sample_rate / frame.time_base))
    return out


def normalize_video(video: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """uint8 (..., T, H, W, 3) -> float32 (..., 3, T, H, W) normalised as the spec says.

    Written channel by channel into the output (``x / 255``, minus the mean, over the std, each in float32), so the
    only memory it takes is the output's: no float temporaries of the whole video.
    """
    video = np.asarray(video)
    out = np.empty((*video.shape[:-4], 3, *video.shape[-4:-1]), dtype=np.float32)
    mean = np.asarray(spec.pixel_mean, dtype=np.float32)
    std = np.asarray(spec.pixel_std, dtype=np.float32)
    for c in range(3):
        channel = out[..., c, :, :, :]
        np.multiply(video[..., c], np.float32(1.0 / 255.0), out=channel, dtype=np.float32)
        channel -= mean[c]
        channel /= std[c]
    return out
