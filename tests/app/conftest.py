"""Fixtures for the service tests: a tiny real ONNX action model in a temporary store, real mp4 uploads."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_files import write_audio_only, write_video  # noqa: E402
from service_fixtures import publish_tiny_store, test_settings  # noqa: E402

from app.main import create_app  # noqa: E402


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_tiny_store(tmp_path_factory.mktemp("store") / "models")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    write_video(d / "av.mp4", seconds=2.5)
    write_video(d / "silent.mp4", seconds=2.5, audio=False)
    write_video(d / "short.mp4", seconds=0.5)
    write_audio_only(d / "audio.m4a")
    full = (d / "av.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(full[: len(full) // 2])
    (d / "random.bin").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    return d


@pytest.fixture
def client(store_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(test_settings(store_root))) as c:
        yield c
