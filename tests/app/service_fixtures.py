"""Builders shared by the service tests: a tiny real ONNX action model (no torch), its store, settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.settings import Settings
from model_store.registry import ModelStore

LABELS = ["bounce", "ring", "rasp", "buzz", "speak", "clap", "roll", "tick"]
CLIP = {"fps": 8, "frames": 8, "height": 32, "width": 32, "sample_rate": 16000, "audio_samples": 16000}
OPSET = 17


def build_tiny_action_onnx(path: Path, n_labels: int = len(LABELS), seed: int = 0) -> Path:
    """video (batch,3,T,H,W) -> channel means (batch,3); audio (batch,S) -> mean |x|, rms (batch,2);
    concat (batch,5) @ W (5,K) + b -> logits (batch,K). Real ONNX, no torch."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((5, n_labels)) * 3.0).astype(np.float32)
    bias = (rng.standard_normal(n_labels) * 0.1).astype(np.float32)
    t, h, w, s = CLIP["frames"], CLIP["height"], CLIP["width"], CLIP["audio_samples"]
    nodes = [
        helper.make_node("ReduceMean", ["video"], ["v_mean"], axes=[2, 3, 4], keepdims=0),  # (B, 3)
        helper.make_node("Abs", ["audio"], ["a_abs"]),
        helper.make_node("ReduceMean", ["a_abs"], ["a_mean_abs"], axes=[1], keepdims=1),  # (B, 1)
        helper.make_node("Mul", ["audio", "audio"], ["a_sq"]),
        helper.make_node("ReduceMean", ["a_sq"], ["a_power"], axes=[1], keepdims=1),
        helper.make_node("Sqrt", ["a_power"], ["a_rms"]),  # (B, 1)
        helper.make_node("Concat", ["v_mean", "a_mean_abs", "a_rms"], ["features"], axis=1),  # (B, 5)
        helper.make_node("MatMul", ["features", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),  # (B, K)
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_action",
        [
            helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 3, t, h, w]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", s]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="avscene-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def action_manifest_fields() -> dict:
    t, h, w, s = CLIP["frames"], CLIP["height"], CLIP["width"], CLIP["audio_samples"]
    return {
        "task": "action",
        "name": "tiny-action",
        "opset": OPSET,
        "inputs": [
            {"name": "video", "dtype": "float32", "shape": ["batch", 3, t, h, w]},
            {"name": "audio", "dtype": "float32", "shape": ["batch", s]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(LABELS)]}],
        "clip": CLIP,
        "labels": LABELS,
        "metrics": {"accuracy": 0.125},
        "metrics_data": "none: random weights for tests",
    }


def publish_tiny_store(root: Path) -> Path:
    onnx_path = build_tiny_action_onnx(root.parent / f"{root.name}-tiny_action.onnx")
    ModelStore(root).publish(onnx_path, action_manifest_fields())
    return root


def test_settings(root: Path, **overrides) -> Settings:
    base = {"model_root": root, "providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
    return Settings(**{**base, **overrides})


test_settings.__test__ = False  # a helper, not a test
