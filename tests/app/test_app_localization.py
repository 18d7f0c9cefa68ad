"""``POST /v1/localization`` in its three formats, on a tiny avsync model published through the real exporter."""

from __future__ import annotations

import dataclasses
import io
import re
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_fixtures import test_settings  # noqa: E402

from app.main import create_app  # noqa: E402

WIDTH, HEIGHT, SECONDS = 96, 64, 2.0


@pytest.fixture(scope="module")
def avsync_store(tmp_path_factory) -> Path:
    from model_store.registry import ModelStore
    from training.models import create_model, model_config
    from training.publish import export_checkpoint
    from training.utils import save_checkpoint

    torch.manual_seed(0)
    model = create_model("avsync_tiny")
    tmp = tmp_path_factory.mktemp("avsync")
    save_checkpoint(tmp / "tiny.pt", {"kind": "avsync", "model": "avsync_tiny", "config": {"test": True},
                                      "model_config": dataclasses.asdict(model_config("avsync_tiny")),
                                      "shift_s": [0.5, 1.4], "state_dict": model.state_dict(), "metrics": {}})
    root = tmp / "models"
    export_checkpoint(tmp / "tiny.pt", ModelStore(root))
    return root


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    """A real SynthAV clip, 96 x 64 (not square, not the model's size), 2 s, h264 + aac."""
    from training.data.synthav import WorldConfig, render_action_clip, write_video

    clip = render_action_clip([3, 0], label=0, config=WorldConfig(width=WIDTH, height=HEIGHT, duration_s=SECONDS))
    path = tmp_path_factory.mktemp("media") / "ball.mp4"
    write_video(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
    return path.read_bytes()


@pytest.fixture(scope="module")
def client(avsync_store):
    with TestClient(create_app(test_settings(avsync_store, tasks=["avsync"]))) as c:
        yield c


def _post(client, data: bytes, **params):
    return client.post("/v1/localization", params=params, files={"file": ("clip.mp4", data, "video/mp4")})


def test_json_heatmaps_for_the_whole_video(client, video_bytes):
    r = _post(client, video_bytes)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model"] == {"task": "avsync", "name": "avsync_tiny", "version": 1}
    assert body["duration_s"] == pytest.approx(SECONDS) and body["has_audio"] is True
    assert 0 <= body["sync_score"] <= 1
    # the tiny model's 4 x 4 CAM, refined with its 32 x 32 frames (its manifest's heatmap spec), pooled by 2
    assert body["grid"] == {"height": 16, "width": 16}
    times = [f["t_s"] for f in body["frames"]]
    assert len(times) == 8 and times == sorted(times) and 0 < times[0] and times[-1] < SECONDS  # 2 windows x 4
    maps = np.array([f["heatmap"] for f in body["frames"]])
    assert maps.shape == (8, 16, 16) and maps.min() == 0.0 and maps.max() == 1.0
    for f in body["frames"]:
        hm = np.array(f["heatmap"])
        y, x = np.unravel_index(hm.argmax(), hm.shape)
        assert (f["peak"]["x"], f["peak"]["y"]) == pytest.approx(((x + 0.5) / 16, (y + 0.5) / 16))
    # values at 4 decimals in the JSON text itself (a float32 rounded to 4 decimals prints with 17 digits)
    heatmaps = re.findall(rb'"heatmap":(\[\[[^"]*\]\])', r.content)
    numbers = [n for text in heatmaps for n in re.findall(rb"-?\d+\.\d+(?:e-?\d+)?", text)]
    assert len(heatmaps) == 8 and numbers and max(len(n.split(b".")[1]) for n in numbers) <= 4


def test_refine_false_serves_the_cam_on_its_own_grid(client, video_bytes):
    body = _post(client, video_bytes, refine="false").json()
    maps = np.array([f["heatmap"] for f in body["frames"]])
    assert body["grid"] == {"height": 4, "width": 4} and maps.shape == (8, 4, 4)
    assert maps.min() == 0.0 and maps.max() == 1.0


def test_the_exported_manifest_says_how_heatmaps_are_read(client):
    info = client.get("/v1/models/avsync").json()
    assert info["heatmap"] == {"refine": "guided", "radius": 24, "eps": 1e-3, "blur": 3, "pool": 2}


def test_png_is_the_frame_with_the_heatmap_over_it(client, video_bytes):
    r = _post(client, video_bytes, format="png", t_s=0.5)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-model-name"] == "avsync_tiny" and r.headers["x-model-version"] == "1"
    assert float(r.headers["x-frame-time"]) == pytest.approx(0.5)
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (WIDTH, HEIGHT) and img.mode == "RGB"
    drawn = np.asarray(img, dtype=np.float32)
    with av.open(io.BytesIO(video_bytes)) as src:
        frame = next(f for f in src.decode(video=0) if f.time >= 0.5 - 1e-6).to_ndarray(format="rgb24")
    diff = np.abs(drawn - frame).mean(axis=-1)
    assert diff.max() > 30  # the hot region is coloured
    assert np.corrcoef(drawn.mean(-1).ravel(), frame.mean(-1).ravel())[0, 1] > 0.3  # the picture shows through
    default = _post(client, video_bytes, format="png")  # no t_s: the frame with the strongest source
    assert default.status_code == 200 and 0 <= float(default.headers["x-frame-time"]) <= SECONDS


def test_mp4_is_the_whole_video_overlaid_with_its_audio(client, video_bytes):
    r = _post(client, video_bytes, format="mp4")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.headers["x-model-task"] == "avsync"
    with av.open(io.BytesIO(r.content)) as out:
        assert len(out.streams.video) == 1 and len(out.streams.audio) == 1
        v = out.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (WIDTH, HEIGHT)
        assert out.streams.audio[0].codec_context.sample_rate == 16000
        frames = sum(1 for _ in out.decode(video=0))
        out.seek(0)
        samples = sum(f.samples for f in out.decode(audio=0))
    assert frames == round(SECONDS * 24)
    assert samples >= 0.95 * SECONDS * 16000


@pytest.mark.parametrize(("params", "needle"), [
    ({"format": "gif"}, "format"),
    ({"format": "png", "t_s": 99}, "outside the video"),
    ({"t_s": -1}, "t_s"),
    ({"refine": "maybe"}, "refine"),
])
def test_bad_parameters_are_422_problems(client, video_bytes, params, needle):
    r = _post(client, video_bytes, **params)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert needle in r.json()["detail"]


def test_not_a_video_is_a_problem(client):
    r = _post(client, b"\x00" * 100)
    assert r.status_code == 415 and r.headers["content-type"] == "application/problem+json"
