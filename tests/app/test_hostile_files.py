"""Files that are not playable videos get a 4xx problem with a clear detail, never a 500; references to other files
(playlists, concat scripts) are never followed; odd but real videos are analysed; errors keep the connection."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from media_files import (
    SRT,
    SVG,
    ffconcat_script,
    m3u8_playlist,
    m3u_playlist,
    write_animated_gif,
    write_audio_rate_change,
    write_cover_art_audio,
    write_data_only,
    write_encoded,
    write_image,
    write_unknown_codec,
    write_video,
)
from test_server import uvicorn_server

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A playable video where a followed reference would find it: beside the service's saved uploads (the temp dir,
    for relative references) and named by absolute path."""
    path = Path(tempfile.gettempdir()) / f"avscene-target-{uuid.uuid4().hex}.mp4"
    write_video(path, seconds=2.5)
    yield path
    path.unlink(missing_ok=True)


Builder = Callable[[Path, Path], bytes]


def _file(write: Callable[[Path], Path], name: str) -> Builder:
    return lambda d, target: write(d / name).read_bytes()


# name -> (builder, status, words the detail must hold)
NOT_VIDEOS: dict[str, tuple[Builder, int, str]] = {
    "png": (_file(lambda p: write_image(p, "PNG"), "x.png"), 415, "not a video: the file is a still image"),
    "jpeg": (_file(lambda p: write_image(p, "JPEG"), "x.jpg"), 415, "not a video: the file is a still image"),
    "webp": (_file(lambda p: write_image(p, "WEBP"), "x.webp"), 415, "not a video: the file is a still image"),
    "gif_still": (_file(lambda p: write_image(p, "GIF"), "x.gif"), 415, "not a video: the video stream holds a single"),
    "svg": (lambda d, t: SVG.encode(), 415, "not a video: the file is an SVG vector image"),
    "srt": (lambda d, t: SRT.encode(), 422, "not a video: the file has no video stream (it holds subtitle streams)"),
    "data_only": (_file(write_data_only, "data.ts"), 422, "no video stream (it holds data streams)"),
    "cover_art": (_file(write_cover_art_audio, "cover.m4a"), 415, "not a video: its only picture is cover art"),
    "unknown_codec": (_file(write_unknown_codec, "qqqq.avi"), 415, "no decoder for its video codec"),
    "one_frame": (_file(lambda p: write_encoded(p, "libx264", frames=1), "one.mp4"), 415, "a single picture"),
    "m3u8_absolute": (lambda d, t: m3u8_playlist(t).encode(), 415, "not a video"),
    "m3u8_relative": (lambda d, t: m3u8_playlist(t.name).encode(), 415, "not a video"),
    "m3u8_url": (lambda d, t: m3u8_playlist("http://127.0.0.1:9/x.ts").encode(), 415, "not a video"),
    "m3u": (lambda d, t: m3u_playlist(t).encode(), 415, "not a video"),
    "ffconcat_absolute": (lambda d, t: ffconcat_script(t, t).encode(), 415, "not a video: the file is an ffconcat"),
    "ffconcat_relative": (lambda d, t: ffconcat_script(t.name).encode(), 415, "not a video: the file is an ffconcat"),
}

# odd codecs and containers that are real videos: analysed like any other
VIDEOS: dict[str, Callable[[Path], Path]] = {
    "ffv1.mkv": lambda p: write_encoded(p, "ffv1"),
    "mjpeg.avi": lambda p: write_encoded(p, "mjpeg", pix_fmt="yuvj420p"),
    "vp9.webm": lambda p: write_encoded(p, "libvpx-vp9"),
    "mpeg4.avi": lambda p: write_encoded(p, "mpeg4"),
    "mpeg2.mpg": lambda p: write_encoded(p, "mpeg2video", fmt="mpeg"),
    "prores.mov": lambda p: write_encoded(p, "prores_ks", pix_fmt="yuv422p10le"),
    "rawvideo.nut": lambda p: write_encoded(p, "rawvideo", fmt="nut", pix_fmt="rgb24"),
    "y4m.y4m": lambda p: write_encoded(p, "rawvideo", fmt="yuv4mpegpipe"),
    "png_frames.mov": lambda p: write_encoded(p, "png", pix_fmt="rgb24"),
    "animated.gif": write_animated_gif,
    "audio_rate_change.ts": write_audio_rate_change,
}


def post(client: TestClient | httpx.Client, body: bytes, name: str = "upload.bin") -> httpx.Response:
    return client.post("/v1/actions", files={"file": (name, body, "application/octet-stream")})


@pytest.mark.parametrize("kind", list(NOT_VIDEOS))
def test_not_a_video_is_a_clear_4xx(kind: str, client: TestClient, tmp_path: Path, target: Path) -> None:
    build, status, needle = NOT_VIDEOS[kind]
    r = post(client, build(tmp_path, target), name=f"upload.{kind}")
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["type"] == "urn:avscene:problem:media"
    assert needle in body["detail"]
    assert str(tmp_path) not in body["detail"] and tempfile.gettempdir() not in body["detail"]


@pytest.mark.parametrize("name", list(VIDEOS))
def test_odd_codecs_and_containers_are_analysed(name: str, client: TestClient, tmp_path: Path) -> None:
    path = VIDEOS[name](tmp_path / name)
    r = post(client, path.read_bytes(), name=name)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == "tiny-action"
    assert 0.9 < body["duration_s"] < 2.6 and body["segments"][-1]["end_s"] == body["duration_s"]


def test_errors_keep_the_connection(store_root: Path, media_dir: Path, tmp_path: Path, target: Path) -> None:
    """One client, one connection: a success, every kind of refusal, then a success again."""
    uploads = [(media_dir / "av.mp4").read_bytes()]
    uploads += [NOT_VIDEOS[kind][0](tmp_path, target) for kind in ("png", "svg", "m3u8_absolute", "unknown_codec",
                                                                      "srt", "cover_art")]
    uploads += [(media_dir / "random.bin").read_bytes(), (media_dir / "truncated.mp4").read_bytes(), b"",
                (media_dir / "av.mp4").read_bytes()]
    with uvicorn_server(tmp_path, AVSCENE_MODEL_ROOT=str(store_root), AVSCENE_INTRA_OP_THREADS="1") as base:
        with httpx.Client(base_url=base, timeout=30.0) as client:
            peers, statuses = set(), []
            for body in uploads:
                r = post(client, body)
                statuses.append(r.status_code)
                peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
                assert "connection" not in r.headers or r.headers["connection"].lower() != "close"
                if r.status_code != 200:
                    assert r.headers["content-type"] == PROBLEM and r.json()["detail"]
            r = client.post("/v1/actions?top_k=999", files={"file": ("a.mp4", uploads[0], "video/mp4")})
            statuses.append(r.status_code)
            peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
    assert statuses == [200, 415, 415, 415, 415, 422, 415, 415, 415, 422, 200, 422]
    assert len(peers) == 1, f"the connection was replaced: {peers}"

