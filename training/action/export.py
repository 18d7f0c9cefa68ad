"""Export an action checkpoint (``logits`` over the run's labels) and score a candidate before it is published."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from training.export import candidate, export_av_model

log = logging.getLogger(__name__)


def action_export(ckpt: dict[str, Any], out_dir: Path) -> tuple[Path, dict[str, Any]]:
    path, fields = export_av_model(ckpt, out_dir, "action", ["logits"])
    return path, {**fields, "labels": list(ckpt["labels"])}


def score_action_candidate(path: Path, fields: dict[str, Any], eval_data: str, cache_dir: str):
    """Accuracy and top-5 of the exported graph on ``eval_data``, and each modality alone (the other zeroed)."""
    from training.action.score import decode_eval_set, score_action
    from training.data.datasets import read_records, resolve_data

    model = candidate(path, fields)
    records = read_records(resolve_data(eval_data, cache_dir))
    clips = decode_eval_set(records, model.manifest.clip, model.manifest.labels, progress=True)
    fused = score_action(model, clips)
    metrics = {"accuracy": fused["accuracy"], "top5": fused["top5"]}
    metrics["accuracy_audio_only"] = score_action(model, clips, zero="video")["accuracy"]
    metrics["accuracy_video_only"] = score_action(model, clips, zero="audio")["accuracy"]
    log.info("scored on %s: %s", eval_data, metrics)
    return metrics, f"{eval_data} ({fused['n']} clips; single-modality rows feed zeros for the other input)"
