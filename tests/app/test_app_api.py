"""The HTTP API v1 on a tiny real ONNX model published to a temporary store."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import LABELS, action_manifest_fields, build_tiny_action_onnx, publish_tiny_store, test_settings

from app.main import create_app
from model_store.media import load_windows
from model_store.pipelines import run_windows
from model_store.pipelines.action import action_feeds, read_actions
from model_store.registry import ModelStore
from model_store.runtime import load_model

PROBLEM_JSON = "application/problem+json"


def post_video(client: TestClient, path: Path, params: dict | None = None, mime: str = "video/mp4"):
    with open(path, "rb") as fh:
        return client.post("/v1/actions", params=params, files={"file": (path.name, fh, mime)})


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def assert_top_k(top_k: list[dict], k: int) -> None:
    assert len(top_k) == k
    scores = [item["score"] for item in top_k]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    assert sum(scores) <= 1 + 1e-6
    assert len({item["label"] for item in top_k}) == k
    assert all(item["label"] in LABELS for item in top_k)


def test_health_and_ready(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    tiny = {"task": "action", "name": "tiny-action", "version": 1}
    assert r.json() == {"status": "ready", "models": [tiny]}


def test_models(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    (info,) = r.json()["models"]
    assert (info["task"], info["name"], info["version"]) == ("action", "tiny-action", 1)
    assert info["labels"] == LABELS
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["clip"]["fps"] == 8 and info["clip"]["audio_samples"] == 16000
    assert info["metrics"] == {"accuracy": 0.125} and info["metrics_data"].startswith("none")
    assert [i["name"] for i in info["inputs"]] == ["video", "audio"] and info["created"]
    assert info["multi_label"] is False  # softmax scores
    assert client.get("/v1/models/action").json() == info
    body = assert_problem(client.get("/v1/models/separation"), 404)
    assert "separation" in body["detail"]
    assert_problem(client.get("/v1/models/nonsense"), 404)


def test_actions(client: TestClient, media_dir: Path) -> None:
    r = post_video(client, media_dir / "av.mp4", {"top_k": 3})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model"] == {"task": "action", "name": "tiny-action", "version": 1}
    assert body["duration_s"] == pytest.approx(2.5, abs=1e-3)
    assert body["has_audio"] is True
    assert_top_k(body["top_k"], 3)
    segments = body["segments"]
    assert len(segments) == 3  # 1 s windows over 2.5 s: [0,1], [1,2], [1.5,2.5]
    assert segments[0]["start_s"] == 0
    assert segments[-1]["end_s"] == body["duration_s"]
    for prev, seg in zip(segments, segments[1:], strict=False):
        assert seg["start_s"] <= prev["end_s"]  # no gap
    for seg in segments:
        assert seg["end_s"] - seg["start_s"] == pytest.approx(1.0)
        assert_top_k(seg["top_k"], 3)
    # default top_k is 5; all labels allowed
    assert len(post_video(client, media_dir / "av.mp4").json()["top_k"]) == 5
    full = post_video(client, media_dir / "av.mp4", {"top_k": len(LABELS)}).json()
    assert sum(item["score"] for item in full["top_k"]) == pytest.approx(1.0, abs=1e-6)
    assert [i["label"] for i in full["top_k"][:3]] == [i["label"] for i in body["top_k"]]


def test_actions_of_a_multi_label_model_are_per_class_sigmoids(tmp_path: Path, media_dir: Path) -> None:
    """A model published with ``multi_label`` (trained on AudioSet-style data) answers each label's own sigmoid
    score, through the same pipeline the scorer uses; the route itself is unchanged."""
    root = tmp_path / "models"
    ModelStore(root).publish(build_tiny_action_onnx(tmp_path / "tiny.onnx"),
                             {**action_manifest_fields(), "multi_label": True})
    with TestClient(create_app(test_settings(root))) as c:
        assert c.get("/v1/models/action").json()["multi_label"] is True
        r = post_video(c, media_dir / "av.mp4", {"top_k": len(LABELS)})
    assert r.status_code == 200, r.text
    scores = {item["label"]: item["score"] for item in r.json()["top_k"]}
    model = load_model(ModelStore(root), "action")
    clip = model.manifest.clip
    windows = load_windows(media_dir / "av.mp4", clip)
    (out,) = run_windows(model.run, lambda w: action_feeds(w, clip), [windows])
    expected = read_actions(out["logits"], windows, clip, multi_label=True).probs
    assert [scores[label] for label in LABELS] == pytest.approx(expected.tolist(), abs=1e-6)
    assert abs(sum(scores.values()) - 1.0) > 0.05 and all(0 <= v <= 1 for v in scores.values())
    assert list(scores.values()) == sorted(scores.values(), reverse=True)
    assert abs(sum(item["score"] for item in r.json()["segments"][0]["top_k"]) - 1.0) > 0.05  # per window too


def test_actions_video_without_audio(client: TestClient, media_dir: Path) -> None:
    r = post_video(client, media_dir / "silent.mp4")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["has_audio"] is False
    assert body["segments"][-1]["end_s"] == body["duration_s"]
    assert_top_k(body["top_k"], 5)


def test_actions_shorter_than_a_window(client: TestClient, media_dir: Path) -> None:
    body = post_video(client, media_dir / "short.mp4").json()
    assert body["duration_s"] == pytest.approx(0.5, abs=1e-3)
    assert [(s["start_s"], s["end_s"]) for s in body["segments"]] == [(0, body["duration_s"])]


@pytest.mark.parametrize(
    ("name", "status", "needle"),
    [
        ("audio.m4a", 422, "no video stream"),
        ("random.bin", 415, "not a decodable"),
        ("truncated.mp4", 415, "not a decodable"),
        ("empty.mp4", 422, "empty"),
    ],
)
def test_actions_bad_media(client: TestClient, media_dir: Path, name: str, status: int, needle: str) -> None:
    body = assert_problem(post_video(client, media_dir / name), status)
    assert needle in body["detail"]
    assert body["type"] == "urn:avscene:problem:media"
    assert "/tmp" not in body["detail"] and "avscene-upload" not in body["detail"]


@pytest.mark.parametrize("top_k", [0, -1, len(LABELS) + 1, "many"])
def test_actions_top_k_out_of_range(client: TestClient, media_dir: Path, top_k) -> None:
    body = assert_problem(post_video(client, media_dir / "av.mp4", {"top_k": top_k}), 422)
    assert body["type"] == "urn:avscene:problem:validation"
    assert body["errors"][0]["loc"] == ["query", "top_k"]


def test_actions_missing_file(client: TestClient) -> None:
    body = assert_problem(client.post("/v1/actions", data={"other": "x"}), 422)
    assert ["body", "file"] in [e["loc"] for e in body["errors"]]
    assert_problem(client.post("/v1/actions"), 422)


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing"), 404)
    assert_problem(client.get("/v1/actions"), 405)


def test_upload_limit(store_root: Path, media_dir: Path) -> None:
    data = (media_dir / "av.mp4").read_bytes()
    limit_mb = 0.01  # 10 KiB; the test video is larger
    assert len(data) > limit_mb * (1 << 20)
    with TestClient(create_app(test_settings(store_root, max_upload_mb=limit_mb))) as c:
        body = assert_problem(post_video(c, media_dir / "av.mp4"), 413)
        assert body["type"] == "urn:avscene:problem:payload-too-large"

        def chunks():  # no Content-Length: counted as it arrives
            for i in range(0, len(data), 1024):
                yield data[i : i + 1024]

        boundary = "xyz"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
                "Content-Type: video/mp4\r\n\r\n").encode()

        def multipart():
            yield head
            yield from chunks()
            yield f"\r\n--{boundary}--\r\n".encode()

        r = c.post("/v1/actions", content=multipart(),
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert assert_problem(r, 413)["type"] == "urn:avscene:problem:payload-too-large"
        # small requests still pass
        assert c.get("/readyz").status_code == 200


def test_internal_errors_do_not_leak(store_root: Path, media_dir: Path) -> None:
    app = create_app(test_settings(store_root))

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internals /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
        body = assert_problem(r, 500)
        assert "secret" not in r.text and "Traceback" not in r.text
        assert body["type"] == "urn:avscene:problem:internal"


def test_internal_errors_are_answered_not_reraised(store_root: Path) -> None:
    """The 500 is the last word: nothing is re-raised to the server, which would then close the connection."""
    app = create_app(test_settings(store_root))

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    with TestClient(app) as c:  # raise_server_exceptions=True: a re-raised error would fail here
        r = c.get("/boom")
        assert assert_problem(r, 500)["detail"] == "an internal error occurred; it has been logged"
        assert c.get("/healthz").status_code == 200


def test_tampered_model_refuses_to_start(tmp_path: Path) -> None:
    from model_store.registry import RegistryError

    root = publish_tiny_store(tmp_path / "models")
    onnx_file = root / "action" / "1" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    app = create_app(test_settings(root))
    with pytest.raises(RegistryError, match="sha256"), TestClient(app):
        pass
    assert app.state.service.ready is False


def test_empty_store_is_not_ready(tmp_path: Path) -> None:
    with TestClient(create_app(test_settings(tmp_path / "empty"))) as c:
        body = assert_problem(c.get("/readyz"), 503)
        assert "no model" in body["detail"]
        assert c.get("/healthz").status_code == 200
        assert_problem(c.post("/v1/actions", files={"file": ("a.mp4", b"x", "video/mp4")}), 503)
