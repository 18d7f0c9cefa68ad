"""Export an action checkpoint (``logits`` over the run's labels; a multi-label run's manifest says ``multi_label``, so
that they are read as per-class sigmoids) and score a candidate before it is published."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from training.export import candidate, export_av_model

log = logging.getLogger(__name__)


def action_export(ckpt: dict[str, Any], out_dir: Path) -> tuple[Path, dict[str, Any]]:
    path, fields = export_av_model(ckpt, out_dir, "action", ["logits"])
    return path, {**fields, "labels": list(ckpt["labels"]), "multi_label": bool(ckpt.get("multi_label", False))}


def score_action_candidate(path: Path, fields: dict[str, Any], eval_data: str, cache_dir: str):
    """Accuracy and top-5 (multi-label: mAP) of the exported graph on ``eval_data``, and each modality alone (the
    other zeroed)."""
    from training.action.score import decode_eval_set, score_action
    from training.data.datasets import read_records, resolve_data

    model = candidate(path, fields)
    records = read_records(resolve_data(eval_data, cache_dir))
    multi_label = model.manifest.multi_label
    clips = decode_eval_set(records, model.manifest.clip, model.manifest.labels, progress=True,
                            multi_label=multi_label)
    fused = score_action(model, clips)
    key = "mAP" if multi_label else "accuracy"
    metrics = {"mAP": fused["mAP"]} if multi_label else {"accuracy": fused["accuracy"], "top5": fused["top5"]}
    metrics[f"{key}_audio_only"] = score_action(model, clips, zero="video")[key]
    metrics[f"{key}_video_only"] = score_action(model, clips, zero="audio")[key]
    if multi_label and not math.isfinite(metrics["mAP"]):  # no clip of eval_data has one of the model's labels
        raise ValueError(f"{eval_data}: no clip carries one of the model's labels; mAP is undefined")
    log.info("scored on %s: %s", eval_data, metrics)
    return metrics, f"{eval_data} ({fused['n']} clips; single-modality rows feed zeros for the other input)"
