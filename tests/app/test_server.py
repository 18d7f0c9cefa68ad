"""The real server: ``uvicorn app.main:app`` in a subprocess, configured by environment, over TCP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from service_fixtures import LABELS

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, base: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server was not ready within {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")


@contextmanager
def uvicorn_server(tmp_path: Path, **settings: str) -> Iterator[str]:
    """``uvicorn app.main:app`` in a subprocess on a free loopback port, configured by the ``AVSCENE_*`` variables
    in ``settings`` (CPU provider unless they say otherwise); yields the base URL once ``/readyz`` answers, stops
    the server afterwards, and fails if its log (``tmp_path / "server.log"``) shows a traceback."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AVSCENE_PROVIDERS": "CPUExecutionProvider", **settings,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(proc, base, log_path)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log_path.read_text()


def test_uvicorn_serves_actions(store_root: Path, media_dir: Path, tmp_path: Path) -> None:
    with uvicorn_server(tmp_path, AVSCENE_MODEL_ROOT=str(store_root), AVSCENE_INTRA_OP_THREADS="1") as base:
        with httpx.Client(base_url=base, timeout=30.0) as client:
            assert client.get("/v1/models").json()["models"][0]["version"] == 1
            with open(media_dir / "av.mp4", "rb") as fh:
                files = {"file": ("av.mp4", fh, "video/mp4")}
                r = client.post("/v1/actions", params={"top_k": 2}, files=files)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/json"
            body = r.json()
            assert body["model"] == {"task": "action", "name": "tiny-action", "version": 1}
            assert len(body["top_k"]) == 2 and all(i["label"] in LABELS for i in body["top_k"])
            assert body["segments"][0]["start_s"] == 0
            assert body["segments"][-1]["end_s"] == body["duration_s"]
            bad = client.post("/v1/actions", files={"file": ("x.mp4", b"not a video at all", "video/mp4")})
            assert bad.status_code == 415
            assert bad.headers["content-type"] == "application/problem+json"
