"""Admission control: a full model or upload budget answers 503 + Retry-After at once, a deadline stops the work,
a client that goes away stops costing decode and inference time, and every admission is given back.

The real app and the real (tiny) model serve every request; to hold a request in flight deterministically,
:func:`held_inference` makes the model's batcher wait on an event before each run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from service_fixtures import test_settings

from app.main import create_app
from app.settings import MIB, Settings

PROBLEM = "application/problem+json"


@contextmanager
def held_inference(client: TestClient, task: str = "action") -> Iterator[tuple[threading.Event, threading.Event]]:
    """(release, entered): every batch of ``task`` waits for ``release`` before it runs; ``entered`` is set when one
    is waiting."""
    batcher = client.app.state.service.batchers[task]
    run, release, entered = batcher._run, threading.Event(), threading.Event()

    def held(feeds):
        entered.set()
        release.wait(30)
        return run(feeds)

    batcher._run = held
    try:
        yield release, entered
    finally:
        release.set()
        batcher._run = run


def post(client: TestClient, path: Path) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/actions", files={"file": (path.name, fh, "video/mp4")})


def assert_503(r: httpx.Response, type_: str) -> dict:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == PROBLEM
    retry_after = int(r.headers["retry-after"])
    body = r.json()
    assert body["type"] == f"urn:avscene:problem:{type_}" and body["status"] == 503
    assert 1 <= retry_after <= 3600 and body["retry_after_s"] == retry_after
    return body


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {line_start}")


def budget(client: TestClient, task: str = "action"):
    return client.app.state.service.budgets[task]


def test_full_model_answers_503_at_once_then_admits_again(store_root: Path, media_dir: Path) -> None:
    with TestClient(create_app(test_settings(store_root, max_requests_in_flight=1))) as c, \
            ThreadPoolExecutor(1) as pool, held_inference(c) as (release, entered):
        first = pool.submit(post, c, media_dir / "av.mp4")
        assert entered.wait(10)
        assert (budget(c).requests, budget(c).windows) == (1, 3)
        body = assert_503(post(c, media_dir / "short.mp4"), "overloaded")
        assert "the action model is busy: 1 requests hold 3 windows" in body["detail"]
        assert "Prefer: respond-async" in body["detail"]
        assert metric(c, 'avscene_admission_refused_total{task="action"}') == 1
        assert metric(c, 'avscene_admitted_requests{task="action"}') == 1
        release.set()
        assert first.result(10).status_code == 200
        assert post(c, media_dir / "short.mp4").status_code == 200
        assert (budget(c).requests, budget(c).windows) == (0, 0)


def test_windows_bound_and_an_idle_model_takes_one_large_video(store_root: Path, media_dir: Path) -> None:
    with TestClient(create_app(test_settings(store_root, max_windows_in_flight=2))) as c, \
            ThreadPoolExecutor(1) as pool, held_inference(c) as (release, entered):
        first = pool.submit(post, c, media_dir / "av.mp4")  # 3 windows > 2, but the model is idle: admitted
        assert entered.wait(10)
        body = assert_503(post(c, media_dir / "short.mp4"), "overloaded")  # 3 + 1 > 2
        assert "this video needs 1" in body["detail"]
        release.set()
        assert len(first.result(10).json()["segments"]) == 3
        assert budget(c).windows == 0


def test_upload_bytes_held_bound(store_root: Path, media_dir: Path) -> None:
    video = media_dir / "av.mp4"
    room = (video.stat().st_size + 1000) / MIB  # one upload (and its multipart framing) fits, two do not
    settings = test_settings(store_root, max_upload_mb=room, max_upload_held_mb=room)
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(1) as pool, \
            held_inference(c) as (release, entered):
        first = pool.submit(post, c, video)
        assert entered.wait(10)
        held = c.app.state.service.upload_bytes.held
        assert video.stat().st_size < held <= room * MIB
        body = assert_503(post(c, video), "uploads-full")
        assert f"the service holds {held} bytes of uploads" in body["detail"]
        assert metric(c, "avscene_uploads_refused_total") == 1
        release.set()
        assert first.result(10).status_code == 200
        assert c.app.state.service.upload_bytes.held == 0
        assert post(c, video).status_code == 200


def test_settings_refuse_a_held_budget_below_one_upload(store_root: Path) -> None:
    with pytest.raises(ValueError, match="max_upload_held_mb"):
        Settings(model_root=store_root, max_upload_mb=10, max_upload_held_mb=5)


def test_deadline_stops_the_request(store_root: Path, media_dir: Path) -> None:
    with TestClient(create_app(test_settings(store_root, request_deadline_s=0.5))) as c, \
            held_inference(c) as (release, entered):
        body = assert_503(post(c, media_dir / "av.mp4"), "deadline")
        assert entered.is_set()  # it was waiting for inference when the deadline passed
        assert "deadline of 0.5 s" in body["detail"] and "AVSCENE_REQUEST_DEADLINE_S" in body["detail"]
        assert metric(c, 'avscene_stopped_total{reason="deadline"}') == 1
        assert (budget(c).requests, budget(c).windows) == (0, 0)
        release.set()
        assert c.get("/healthz").status_code == 200


def test_client_disconnect_stops_the_work(store_root: Path, media_dir: Path) -> None:
    """The ASGI app itself, fed the upload and then the client's disconnect while its windows wait for inference:
    the request is cancelled, nothing is answered, its windows leave the batcher's queue and its admission ends."""
    app = create_app(test_settings(store_root, max_batch=1))  # the video's 3 windows queue as 3 runs of 1
    data = (media_dir / "av.mp4").read_bytes()
    boundary = "avscene-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"av.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/actions", "raw_path": b"/v1/actions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test"), (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("test", 80)}

    with TestClient(app) as c, held_inference(c) as (release, entered):
        service = app.state.service

        async def scenario() -> list[dict]:
            sent: list[dict] = []
            gone = asyncio.Event()
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict:
                if messages:
                    return messages.pop(0)
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                sent.append(message)

            task = asyncio.create_task(app(scope, receive, send))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            assert service.budgets["action"].requests == 1
            gone.set()  # the client goes away while its windows wait for the model
            await asyncio.wait_for(task, 10)
            return sent

        sent = c.portal.call(scenario)
        assert sent == []  # nothing is written to a client that has gone
        assert (service.budgets["action"].requests, service.budgets["action"].windows) == (0, 0)
        assert service.upload_bytes.held == 0 and service.stopped == {"disconnect": 1}
        release.set()
        assert post(c, media_dir / "short.mp4").status_code == 200
        stats = service.batchers["action"].stats
        # the abandoned request's first window was running (the model cannot be interrupted), its other two left
        # the queue unrun; then the later request's one window
        assert (stats.windows, stats.batches) == (2, 2)
