"""/v1/separations: job lifecycle, downloads (wav, flac, Range), expiry, ``hide``, whole tracks for long videos.

The model is a tiny real ONNX graph built without torch: ``g = sigmoid(mean(video))`` per window,
``on_screen = g * audio``, ``off_screen = audio - on_screen``. So the two tracks always sum to the mixture, and
blanking the whole frame (``hide=0,0,1,1``) makes the normalised video zero, hence ``g = 0.5`` exactly.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_files import write_video  # noqa: E402
from service_fixtures import test_settings  # noqa: E402

from app.main import create_app  # noqa: E402
from model_store.manifest import ClipSpec  # noqa: E402
from model_store.media import load_windows  # noqa: E402
from model_store.registry import ModelStore  # noqa: E402

CLIP = {"fps": 8, "frames": 8, "height": 32, "width": 32, "sample_rate": 8000, "audio_samples": 8000, "hop_s": 0.5}
OPSET = 17


def build_tiny_separation_onnx(path: Path) -> Path:
    t, h, w, s = CLIP["frames"], CLIP["height"], CLIP["width"], CLIP["audio_samples"]
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("ReduceMean", ["video"], ["v_mean"], axes=[1, 2, 3, 4], keepdims=0),  # (B,)
        helper.make_node("Mul", ["v_mean", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["g0"]),
        helper.make_node("Unsqueeze", ["g0", "axis1"], ["g"]),  # (B, 1)
        helper.make_node("Mul", ["audio", "g"], ["on_screen"]),
        helper.make_node("Sub", ["audio", "on_screen"], ["off_screen"]),
    ]
    axis1 = helper.make_tensor("axis1", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        nodes, "tiny_separation",
        [helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 3, t, h, w]),
         helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", s])],
        [helper.make_tensor_value_info("on_screen", TensorProto.FLOAT, ["batch", s]),
         helper.make_tensor_value_info("off_screen", TensorProto.FLOAT, ["batch", s])],
        initializer=[k, axis1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="avscene-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def separation_manifest_fields() -> dict:
    t, h, w, s = CLIP["frames"], CLIP["height"], CLIP["width"], CLIP["audio_samples"]
    return {
        "task": "separation", "name": "tiny-separation", "opset": OPSET,
        "inputs": [{"name": "video", "dtype": "float32", "shape": ["batch", 3, t, h, w]},
                   {"name": "audio", "dtype": "float32", "shape": ["batch", s]}],
        "outputs": [{"name": "on_screen", "dtype": "float32", "shape": ["batch", s]},
                    {"name": "off_screen", "dtype": "float32", "shape": ["batch", s]}],
        "clip": CLIP, "metrics": {}, "metrics_data": "none: a fixed gain for tests",
    }


@pytest.fixture(scope="module")
def sep_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sepstore") / "models"
    ModelStore(root).publish(build_tiny_separation_onnx(root.parent / "tiny_sep.onnx"), separation_manifest_fields())
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sepmedia")
    write_video(d / "av.mp4", seconds=2.5)
    write_video(d / "long.mp4", seconds=30.0, width=32, height=32)
    return d


@pytest.fixture
def client(sep_store: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = test_settings(sep_store, tasks=["separation"], results_dir=tmp_path / "results", results_ttl_s=600)
    with TestClient(create_app(settings)) as c:
        yield c


def _post(client: TestClient, video: Path, **params):
    with video.open("rb") as fh:
        return client.post("/v1/separations", params=params, files={"file": (video.name, fh, "video/mp4")})


def _wav(client: TestClient, url: str) -> tuple[np.ndarray, int]:
    r = client.get(url)
    assert r.status_code == 200, r.text
    return sf.read(io.BytesIO(r.content), dtype="float32")


def test_job_lifecycle_and_downloads(client: TestClient, videos: Path) -> None:
    r = _post(client, videos / "av.mp4")
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"].endswith(f"/v1/separations/{job['id']}")
    assert job["model"] == {"task": "separation", "name": "tiny-separation", "version": 1}
    assert job["sample_rate"] == 8000 and job["has_audio"] is True
    assert job["samples"] == round(job["duration_s"] * 8000)
    assert job["expires_at"] > job["created_at"]

    got = client.get(r.headers["location"])
    assert got.status_code == 200 and got.json() == job

    on, sr = _wav(client, job["tracks"]["on_screen"])
    off, _ = _wav(client, job["tracks"]["off_screen"])
    assert sr == 8000 and len(on) == len(off) == job["samples"]
    # the tracks add up to the decoded mixture (linear model, overlap-add of the windows), up to 16-bit rounding
    mix = load_windows(videos / "av.mp4", ClipSpec(**CLIP))
    ref = np.zeros(job["samples"], np.float32)
    from model_store.dsp import overlap_add

    ref[:] = overlap_add(mix.audio, mix.starts_s, ClipSpec(**CLIP), mix.duration_s)
    assert np.abs(on + off - ref).max() < 2e-4
    assert np.std(on) > 0.01 and np.std(off) > 0.01

    # FLAC is encoded from the stored WAV on the first download: the same 16-bit samples
    job_dir = client.app.state.service.jobs.root / job["id"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["job.json", "off_screen.wav", "on_screen.wav"]
    flac = client.get(job["tracks"]["on_screen"].replace(".wav", ".flac"))
    assert flac.status_code == 200 and flac.headers["content-type"] == "audio/flac"
    data, sr = sf.read(io.BytesIO(flac.content), dtype="int16")
    wav, _ = sf.read(io.BytesIO(client.get(job["tracks"]["on_screen"]).content), dtype="int16")
    assert sr == 8000 and np.array_equal(data, wav)
    assert (job_dir / "on_screen.flac").is_file() and not (job_dir / "off_screen.flac").exists()
    again = client.get(job["tracks"]["on_screen"].replace(".wav", ".flac"), headers={"Range": "bytes=0-3"})
    assert again.status_code == 206 and again.content == b"fLaC"

    part = client.get(job["tracks"]["off_screen"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.headers["content-range"].startswith("bytes 0-99/")
    assert len(part.content) == 100 and part.content[:4] == b"RIFF"

    deleted = client.delete(f"/v1/separations/{job['id']}")
    assert deleted.status_code == 204
    for url in (r.headers["location"], job["tracks"]["on_screen"]):
        gone = client.get(url)
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
    assert client.delete(f"/v1/separations/{job['id']}").status_code == 404


def test_expired_results_are_refused_and_removed(client: TestClient, videos: Path, tmp_path: Path) -> None:
    job = _post(client, videos / "av.mp4").json()
    store = client.app.state.service.jobs
    assert (tmp_path / "results" / job["id"] / "on_screen.wav").is_file()
    store.clock = lambda: time.time() + 601  # past the 600 s retention
    r = client.get(f"/v1/separations/{job['id']}")
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    assert not (tmp_path / "results" / job["id"]).exists()
    assert client.get(f"/v1/separations/{job['id']}").status_code == 404

    store.clock = time.time
    other = _post(client, videos / "av.mp4").json()
    store.clock = lambda: time.time() + 601
    assert store.sweep() == 1
    assert not (tmp_path / "results" / other["id"]).exists()


def test_hide_blanks_the_box(client: TestClient, videos: Path) -> None:
    plain = _post(client, videos / "av.mp4").json()
    hidden = _post(client, videos / "av.mp4", hide="0,0,1,1")
    assert hidden.status_code == 201
    assert hidden.json()["hide"] == [0.0, 0.0, 1.0, 1.0]
    on_h, _ = _wav(client, hidden.json()["tracks"]["on_screen"])
    off_h, _ = _wav(client, hidden.json()["tracks"]["off_screen"])
    np.testing.assert_allclose(on_h, off_h, atol=1e-4)  # blank frames: g = 0.5 exactly
    on_p, _ = _wav(client, plain["tracks"]["on_screen"])
    assert np.abs(on_p - on_h).max() > 0.01  # the frames did matter before blanking


@pytest.mark.parametrize("hide", ["0.5,0.5,0.2,0.9", "0,0,1", "a,b,c,d", "0,0,1.5,1", "nan,0,1,1"])
def test_bad_hide_is_422(client: TestClient, videos: Path, hide: str) -> None:
    r = _post(client, videos / "av.mp4", hide=hide)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "hide" in r.json()["detail"]


def test_unknown_job_and_track(client: TestClient, videos: Path) -> None:
    for url in ("/v1/separations/0123456789abcdef0123456789abcdef", "/v1/separations/..%2F..%2Fetc",
                "/v1/separations/nope/on_screen.wav"):
        r = client.get(url)
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
    job = _post(client, videos / "av.mp4").json()
    for name in ("middle.wav", "on_screen.mp3", "job.json"):
        r = client.get(f"/v1/separations/{job['id']}/{name}")
        assert r.status_code == 404 and "on_screen and off_screen" in r.json()["detail"]


def test_thirty_second_video_returns_whole_tracks(client: TestClient, videos: Path) -> None:
    r = _post(client, videos / "long.mp4")
    assert r.status_code == 201, r.text
    job = r.json()
    assert abs(job["duration_s"] - 30.0) < 0.05
    on, sr = _wav(client, job["tracks"]["on_screen"])
    off, _ = _wav(client, job["tracks"]["off_screen"])
    assert sr == 8000 and len(on) == len(off) == round(job["duration_s"] * 8000)
    # the tone runs to the end: no window left a silent gap
    tail = on[-2000:] + off[-2000:]
    assert np.sqrt(np.mean(tail**2)) > 0.05
