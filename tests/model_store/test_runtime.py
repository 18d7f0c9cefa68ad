from __future__ import annotations

import threading

import numpy as np
import pytest

from model_store import runtime
from model_store.registry import ModelStore, RegistryError

needs_no_gpu = pytest.mark.skipif(runtime.cuda_device_present(), reason="checks the CPU-only fallback")


@pytest.fixture
def store(tmp_path, onnx_file, manifest_fields) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.publish(onnx_file, manifest_fields())
    return store


@needs_no_gpu
def test_resolve_providers_without_gpu():
    assert runtime.resolve_providers() == ["CPUExecutionProvider"]
    assert runtime.resolve_providers(["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]
    assert runtime.resolve_providers([]) == ["CPUExecutionProvider"]


def test_resolve_providers_ends_on_cpu_once(monkeypatch):
    for gpu in (False, True):
        monkeypatch.setattr(runtime, "cuda_device_present", lambda gpu=gpu: gpu)
        chosen = runtime.resolve_providers(["CPUExecutionProvider", "NoSuchExecutionProvider"])
        assert chosen == ["CPUExecutionProvider"]
        chosen = runtime.resolve_providers()
        assert chosen[-1] == "CPUExecutionProvider"
        assert [c for c in chosen if c == "CPUExecutionProvider"] == ["CPUExecutionProvider"]


def test_resolve_providers_with_gpu_options(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_device_present", lambda: True)
    monkeypatch.setattr(
        runtime.ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    chosen = runtime.resolve_providers()
    names = [c[0] if isinstance(c, tuple) else c for c in chosen]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[1][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert runtime.resolve_providers(["CUDAExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
        "CPUExecutionProvider",
    ]


def test_load_model_runs_and_names_outputs(store):
    model = runtime.load_model(store, "action", warmup_batches=(1, 2, 5), intra_op_threads=1)
    assert model.manifest.version == 1
    assert model.providers[-1] == "CPUExecutionProvider"
    if not runtime.cuda_device_present():
        assert model.providers == ["CPUExecutionProvider"]

    spec = model.manifest.clip
    rng = np.random.default_rng(0)
    video = rng.standard_normal((2, 3, spec.frames, spec.height, spec.width)).astype(np.float32)
    audio = rng.standard_normal((2, spec.audio_samples)).astype(np.float32)
    out = model.run({"video": video, "audio": audio})
    assert list(out) == ["logits", "energy"]  # named and ordered as the manifest says
    assert out["logits"].shape == (2, 3) and out["energy"].shape == (2,)
    weight = np.arange(9, dtype=np.float32).reshape(3, 3) / 10
    expected = video.mean(axis=(2, 3, 4)) @ weight + np.arange(3, dtype=np.float32)
    assert np.allclose(out["logits"], expected, atol=1e-5)
    assert np.allclose(out["energy"], audio.mean(axis=1), atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_warmup_and_dummy_feeds(store, batch):
    model = runtime.load_model(store, "action", warmup_batches=())
    feeds = model.dummy_feeds(batch)
    spec = model.manifest.clip
    assert feeds["video"].shape == (batch, 3, spec.frames, spec.height, spec.width)
    assert feeds["video"].dtype == np.float32
    assert feeds["audio"].shape == (batch, spec.audio_samples)
    model.warmup((batch, 1))
    out = model.run(feeds)
    assert out["logits"].shape == (batch, 3)
    assert np.allclose(out["logits"], np.arange(3, dtype=np.float32))  # zeros in: the bias comes out


def test_run_from_threads(store):
    model = runtime.load_model(store, "action")
    spec = model.manifest.clip
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            video = np.full((1, 3, spec.frames, spec.height, spec.width), i, dtype=np.float32)
            out = model.run({"video": video, "audio": np.zeros((1, spec.audio_samples), np.float32)})
            expected = np.full(3, i, np.float32) @ (np.arange(9, dtype=np.float32).reshape(3, 3) / 10)
            assert np.allclose(out["logits"][0], expected + np.arange(3), atol=1e-4)
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_load_model_refuses_modified_model(store):
    path = store.root / "action" / "1" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="sha256"):
        runtime.load_model(store, "action")


def test_create_session_direct(onnx_file):
    session = runtime.create_session(onnx_file, providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert [i.name for i in session.get_inputs()] == ["video", "audio"]
    assert [o.name for o in session.get_outputs()] == ["logits", "energy"]


def test_create_session_threads_and_spinning(onnx_file):
    """The service's thread settings reach ORT: intra-op threads, and no busy-waiting between runs when asked."""
    session = runtime.create_session(onnx_file, providers=["CPUExecutionProvider"], intra_op_threads=2,
                                     spinning=False)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = runtime.create_session(onnx_file, providers=["CPUExecutionProvider"]).get_session_options()
    assert default.intra_op_num_threads == 0
    with pytest.raises(Exception, match="allow_spinning"):  # not set: ORT's default (spinning) applies
        default.get_session_config_entry("session.intra_op.allow_spinning")
