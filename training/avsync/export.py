"""Export a sync-network checkpoint (``sync_logit`` and ``cam``) and score a candidate before it is published."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model_store.manifest import HeatmapSpec
from training.export import candidate, export_av_model

log = logging.getLogger(__name__)


def avsync_export(ckpt: dict[str, Any], out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The sync network with two outputs: ``sync_logit`` (batch,) and ``cam`` (batch, T', h, w); its heatmaps are
    read with the guided refinement (``HeatmapSpec``'s defaults, chosen on SynthAV seed 2024)."""
    path, fields = export_av_model(ckpt, out_dir, "avsync", ["sync_logit", "cam"],
                                   training={"shift_s": ckpt.get("shift_s")})
    return path, {**fields, "heatmap": HeatmapSpec().model_dump()}


def score_avsync_candidate(path: Path, fields: dict[str, Any], eval_data: str, cache_dir: str):
    """Alignment accuracy and localization (with its baselines) of the exported graph on ``eval_data``."""
    from training.avsync.score import eval_shifts, load_eval_clips, score_alignment, score_localization
    from training.data.datasets import read_records, resolve_data

    model = candidate(path, fields)
    records = read_records(resolve_data(eval_data, cache_dir))
    align = score_alignment(model, load_eval_clips(records, model.manifest.clip), eval_shifts(model.manifest))
    loc = score_localization(model, records, progress=True)
    metrics = {"accuracy": align["accuracy"], **{k: loc[k] for k in ("ciou_success", "auc", "mean_ciou")}}
    for name, base in loc["baselines"].items():
        metrics.update({f"{name}_{k}": base[k] for k in ("ciou_success", "auc", "mean_ciou")})
    log.info("scored on %s: %s", eval_data, metrics)
    return metrics, (f"{eval_data} ({loc['n']} clips; alignment: {align['n']} held-out windows, half shifted; "
                     "centre_* and motion_* are the localization baselines; with a refined heatmap, cam_* is the CAM "
                     "as it is and *_refined each baseline through the same refinement)")
