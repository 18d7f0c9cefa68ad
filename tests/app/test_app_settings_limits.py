"""Settings from the environment, the upload-limit middleware on its own, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app import service as service_module
from app.limits import UploadLimitMiddleware
from app.service import ServiceState
from app.settings import Settings
from model_store import DEFAULT_ROOT
from model_store.media import ProbeInfo
from model_store.runtime import DEFAULT_PROVIDERS


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AVSCENE_")]:
        monkeypatch.delenv(name)
    s = Settings()
    assert s.model_root == DEFAULT_ROOT and s.model_alias == "production" and s.tasks is None
    assert s.providers == list(DEFAULT_PROVIDERS)
    assert (s.max_batch, s.batch_timeout_ms, s.max_concurrent_decodes) == (16, None, 2)
    assert s.max_upload_bytes == 200 << 20
    monkeypatch.setenv("AVSCENE_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("AVSCENE_TASKS", '["action"]')
    monkeypatch.setenv("AVSCENE_MAX_UPLOAD_MB", "0.5")
    monkeypatch.setenv("AVSCENE_MODEL_ROOT", "/srv/models")
    s = Settings()
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.tasks == ["action"] and s.max_upload_bytes == 1 << 19 and s.model_root == Path("/srv/models")
    monkeypatch.setenv("AVSCENE_TASKS", "action,juggling")
    with pytest.raises(ValidationError, match="juggling"):
        Settings()


def test_decode_threads_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """0 (the default): a decode alone gets every core, decodes side by side one each, small frames one thread
    always; a setting is taken as is."""
    monkeypatch.setattr(service_module, "_cores", lambda: 4)
    hd = ProbeInfo(10.0, 1280, 720, 25.0, "h264", True, "aac", 44100, 2)
    small = ProbeInfo(10.0, 128, 128, 24.0, "h264", True, "aac", 44100, 2)
    state = ServiceState(Settings(decode_threads=0))
    assert [state.decode_threads(hd) for state.decoding in (0, 1, 2, 3, 7)] == [4, 2, 1, 1, 1]
    assert [state.decode_threads(small) for state.decoding in (0, 1)] == [1, 1]
    state = ServiceState(Settings(decode_threads=3))
    assert [state.decode_threads(info) for state.decoding in (0, 5) for info in (hd, small)] == [3, 3, 3, 3]
    assert Settings().intra_op_spinning is False and Settings().decode_threads == 0


def _run_middleware(chunks: list[bytes], headers: list[tuple[bytes, bytes]], limit: int):
    seen: list[bytes] = []
    sent: list[dict] = []

    async def echo_app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    last = len(chunks) - 1
    messages = [{"type": "http.request", "body": c, "more_body": i < last} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/actions", "headers": headers}
    asyncio.run(UploadLimitMiddleware(echo_app, max_bytes=limit)(scope, receive, send))
    return seen, sent


def test_middleware_counts_chunked_bodies() -> None:
    seen, sent = _run_middleware([b"x" * 40] * 5, [(b"transfer-encoding", b"chunked")], limit=100)
    assert sent[0]["status"] == 413 and len(seen) == 2  # stopped reading at the third chunk
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/problem+json"
    assert json.loads(sent[1]["body"])["status"] == 413
    seen, sent = _run_middleware([b"x" * 40] * 2, [], limit=100)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"


def test_middleware_trusts_content_length_first() -> None:
    seen, sent = _run_middleware([b"x"], [(b"content-length", b"1000")], limit=100)
    assert sent[0]["status"] == 413 and seen == []  # refused before reading the body


def test_openapi_documents_every_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) >= {"/v1/actions", "/v1/models", "/v1/models/{task}", "/healthz", "/readyz"}
    for path, ops in paths.items():
        for op in ops.values():
            assert op.get("description"), path
            assert {"200", "201", "204"} & set(op["responses"]), path  # created (201) and deleted (204) too
    post = paths["/v1/actions"]["post"]
    assert "application/problem+json" in post["responses"]["415"]["content"]
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("ActionResponse")


def test_batch_timeout_waits_only_on_a_gpu() -> None:
    """Unset, a batch waits 5 ms for more windows on a GPU and not at all on CPU; a setting is taken as is."""
    from types import SimpleNamespace

    cpu, gpu = SimpleNamespace(providers=["CPUExecutionProvider"]), \
        SimpleNamespace(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert service_module.batch_timeout_s(Settings(), cpu) == 0.0
    assert service_module.batch_timeout_s(Settings(), gpu) == 0.005
    assert service_module.batch_timeout_s(Settings(batch_timeout_ms=20), cpu) == 0.02
