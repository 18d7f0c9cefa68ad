"""The ONNX export core that every task's exporter uses: dynamo export with a dynamic batch axis, the checker,
parity with PyTorch through ONNX Runtime at another batch size, and the manifest fields that a
``forward(video, audio)`` model implies. Task exporters live in their task packages; :mod:`training.publish`
hands a checkpoint to the right one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from model_store.manifest import ClipSpec, Manifest, TensorSpec
from model_store.registry import sha256_file
from model_store.runtime import LoadedModel, create_session
from training.models import build_from_config
from training.utils import software_versions

log = logging.getLogger(__name__)

OPSET = 18


class ExportError(RuntimeError):
    pass


def _onnx_dtype(elem_type: int) -> str:
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
            onnx.TensorProto.INT64: "int64"}[elem_type]


def _tensor_specs(values) -> list[TensorSpec]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        specs.append(TensorSpec(name=v.name, dtype=_onnx_dtype(t.elem_type), shape=shape))
    return specs


def export_onnx(model: torch.nn.Module, example: dict[str, torch.Tensor], output_names: list[str],
                path: str | Path, check_batch: int = 3, atol: float = 1e-4) -> dict[str, float]:
    """Dynamo export with a dynamic batch axis; checks the graph and compares ORT with PyTorch at a batch size
    other than the exported one. Returns the largest absolute difference per output."""
    model = model.eval()
    names = list(example)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = {n: {0: batch} for n in names}
    program = torch.onnx.export(
        model, tuple(example.values()), dynamo=True, input_names=names, output_names=output_names,
        dynamic_shapes=dynamic, opset_version=OPSET, external_data=False, verbose=False,
    )
    program.save(str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)

    gen = torch.Generator().manual_seed(0)
    check = {n: torch.randn((check_batch, *t.shape[1:]), generator=gen) * t.std().clamp(min=1e-3)
             for n, t in example.items()}
    with torch.inference_mode():
        ref = model(*check.values())
    ref = ref if isinstance(ref, tuple | list) else (ref,)
    session = create_session(path, providers=("CPUExecutionProvider",))
    got = session.run(output_names, {n: t.numpy() for n, t in check.items()})
    diffs = {}
    for name, r, g in zip(output_names, ref, got, strict=True):
        if g.shape != tuple(r.shape):
            raise ExportError(f"ONNX output {name} has shape {g.shape}, PyTorch {tuple(r.shape)}")
        diffs[name] = float(np.max(np.abs(g - r.numpy())))
        if not np.allclose(g, r.numpy(), atol=atol, rtol=1e-3):
            raise ExportError(f"ONNX output {name} differs from PyTorch by up to {diffs[name]:.2e} at batch "
                              f"{check_batch}")
    return diffs


def candidate(path: Path, fields: dict[str, Any]) -> LoadedModel:
    """An ORT session over an exported file with the manifest it would be published with."""
    manifest = Manifest.model_validate({**fields, "version": 1, "sha256": sha256_file(path)})
    return LoadedModel(manifest, create_session(path, providers=("CPUExecutionProvider",)))


def export_av_model(
    ckpt: dict[str, Any], out_dir: Path, task: str, outputs: list[str],
    clip: ClipSpec | None = None, training: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export a checkpoint of a ``forward(video, audio)`` model and gather its manifest fields.

    ``clip`` defaults to the one the model config implies (fps, frames, square size, sample rate);
    ``training`` adds task-specific provenance to the manifest's ``training`` record."""
    mcfg = ckpt["model_config"]
    model = build_from_config(ckpt["model"], mcfg)
    model.load_state_dict(ckpt["state_dict"])
    if clip is None:
        clip = ClipSpec(fps=mcfg["fps"], frames=mcfg["frames"], height=mcfg["size"], width=mcfg["size"],
                        sample_rate=mcfg["sample_rate"], audio_samples=model.cfg.audio_samples)
    example = {
        "video": torch.randn(2, 3, clip.frames, clip.height, clip.width),
        "audio": torch.randn(2, clip.audio_samples) * 0.1,
    }
    path = out_dir / "model.onnx"
    diffs = export_onnx(model, example, outputs, path)
    graph = onnx.load(str(path)).graph
    fields = {
        "task": task,
        "name": ckpt["model"],
        "opset": OPSET,
        "inputs": [s.model_dump() for s in _tensor_specs(graph.input)],
        "outputs": [s.model_dump() for s in _tensor_specs(graph.output)],
        "clip": clip.model_dump(),
        "training": {
            "config": ckpt["config"],
            "model_config": mcfg,
            **(training or {}),
            "checkpoint_metrics": ckpt.get("metrics", {}),
            "export_parity_max_abs": diffs,
            "command": " ".join(["python -m training", *sys.argv[1:]]) if sys.argv else "",
        },
        "versions": {**ckpt.get("versions", {}), **{f"export_{k}": v for k, v in software_versions().items()}},
    }
    return path, fields
