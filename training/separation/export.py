"""Export a separation checkpoint: frames + mixture waveform in, on-screen + off-screen waveforms out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model_store.manifest import ClipSpec
from training.export import candidate, export_av_model

log = logging.getLogger(__name__)

OUTPUTS = ["on_screen", "off_screen"]


def separation_export(ckpt: dict[str, Any], out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Exports with STFT and inverse STFT inside the graph; parity with PyTorch on the waveforms is checked
    at a batch size other than the exported one (``export_onnx``)."""
    training = {"pit": bool(ckpt.get("pit", False)), "init_avsync": ckpt.get("init_avsync", {})}
    return export_av_model(ckpt, out_dir, "separation", OUTPUTS, clip=ClipSpec.model_validate(ckpt["clip"]),
                           training=training)


def score_separation_candidate(path: Path, fields: dict[str, Any], eval_data: str, cache_dir: str):
    """Score on ``eval_data``: one set, or several as ``SPEC|NAME=SPEC|...``: the first set's metrics are
    unprefixed, each further set's carry its ``NAME_`` prefix (e.g. ``voices_si_sdri_on``)."""
    from training.data.datasets import read_records, resolve_data
    from training.separation.score import read_variants, score_separation

    model = candidate(path, fields)
    metrics: dict[str, float] = {}
    described = []
    for n, part in enumerate(eval_data.split("|")):
        name, spec = ("", part) if n == 0 else part.split("=", 1)
        prefix = f"{name}_" if name else ""
        root = resolve_data(spec, cache_dir)
        result = score_separation(model, read_records(root), read_variants(root), progress=True)
        metrics.update({prefix + k: result[k] for k in ("si_sdri_on", "si_sdri_off", "sdr_on", "sdr_off")})
        for variant, m in result.get("by_variant", {}).items():
            metrics.update({f"{prefix}{variant}_si_sdri_on": m["si_sdri_on"],
                            f"{prefix}{variant}_si_sdri_off": m["si_sdri_off"]})
        note = " (PIT model: each clip takes the better output order)" if result["pit_oracle"] else ""
        label = f"{name}_*: " if name else ("" if "|" not in eval_data else "unprefixed: ")
        described.append(f"{label}{spec} ({result['n']} clips, whole tracks by overlap-add{note})")
    log.info("scored on %s: %s", eval_data, metrics)
    return metrics, "; ".join(described)
