"""ONNX Runtime sessions for published models: provider choice, GPU options, warm-up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_store.manifest import Manifest
from model_store.registry import DEFAULT_ALIAS, ModelStore

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def cuda_device_present() -> bool:
    """onnxruntime-gpu lists CUDA even without a GPU; ask the driver whether a device is there."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def resolve_providers(preferred: Sequence[str] = DEFAULT_PROVIDERS) -> list[str | tuple[str, dict]]:
    """The preferred providers that can run here, with their options, always ending on CPU."""
    available = set(ort.get_available_providers())
    gpu = cuda_device_present()
    chosen: list[str | tuple[str, dict]] = []
    for name in preferred:
        if name not in available or name == "CPUExecutionProvider":
            continue
        if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and not gpu:
            continue
        if name == "CUDAExecutionProvider":
            chosen.append((name, {"cudnn_conv_algo_search": "HEURISTIC"}))
        elif name == "TensorrtExecutionProvider":
            chosen.append((name, {"trt_fp16_enable": False, "trt_engine_cache_enable": True}))
        else:
            chosen.append(name)
    chosen.append("CPUExecutionProvider")
    return chosen


def create_session(
    path: str | Path, providers: Sequence[str] = DEFAULT_PROVIDERS, intra_op_threads: int = 0,
    spinning: bool = True,
) -> ort.InferenceSession:
    """A session on the first of ``providers`` that can run here. ``intra_op_threads``: the CPU threads one run
    uses (0: ORT's choice, one per physical core); ``spinning``: whether those threads busy-wait for work between
    and within runs (ORT's default; quicker alone, but under concurrent load it burns the cores that decoders and
    other requests need). The graph runs sequentially, so ORT keeps no inter-op threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=resolve_providers(providers))
    log.info("loaded %s on %s", path, session.get_providers())
    return session


@dataclass
class LoadedModel:
    """A verified, warmed ONNX session with its manifest. ``run`` is thread-safe (ORT sessions are)."""

    manifest: Manifest
    session: ort.InferenceSession

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.manifest.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def dummy_feeds(self, batch: int) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.manifest.inputs:
            shape = [batch if isinstance(d, str) else d for d in spec.shape]
            feeds[spec.name] = np.zeros(shape, dtype=_NP_DTYPES[spec.dtype])
        return feeds

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        for b in batch_sizes:
            self.run(self.dummy_feeds(b))


def load_model(
    store: ModelStore,
    task: str,
    version: int | str | None = DEFAULT_ALIAS,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    intra_op_threads: int = 0,
    warmup_batches: Sequence[int] = (1,),
    spinning: bool = True,
) -> LoadedModel:
    manifest, path = store.load(task, version)
    model = LoadedModel(manifest, create_session(path, providers, intra_op_threads, spinning))
    model.warmup(warmup_batches)
    return model
