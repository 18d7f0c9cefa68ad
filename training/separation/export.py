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
    from training.data.datasets import read_records, resolve_data
    from training.separation.score import read_variants, score_separation

    model = candidate(path, fields)
    root = resolve_data(eval_data, cache_dir)
    result = score_separation(model, read_records(root), read_variants(root), progress=True)
    metrics = {k: result[k] for k in ("si_sdri_on", "si_sdri_off", "sdr_on", "sdr_off")}
    for variant, m in result.get("by_variant", {}).items():
        metrics.update({f"{variant}_si_sdri_on": m["si_sdri_on"], f"{variant}_si_sdri_off": m["si_sdri_off"]})
    log.info("scored on %s: %s", eval_data, metrics)
    note = " (PIT model: each clip takes the better output order)" if result["pit_oracle"] else ""
    return metrics, f"{eval_data} ({result['n']} clips, whole tracks by overlap-add{note})"


EVAL_DATA = "synthav:seed=1000,n=100,kind=speech"
CONFIG = "separation_default.yaml"


def build_separation_default(root: Path, cache_dir: str, checkpoint: str | Path | None = None) -> None:
    """Train ``configs/separation_audio_only.yaml`` then ``configs/separation_default.yaml`` warm-started from it
    (or take ``checkpoint``, a finished run of that config), export,
    score on speech clips of seed 1000 (never used in training) and publish as ``<root>/separation`` v1."""
    from training.build_defaults import CONFIGS, _publish_fresh
    from training.config import load_config
    from training.separation.train import SeparationTrainConfig, train_separation

    cfg = load_config(SeparationTrainConfig, CONFIGS / CONFIG, [f"data.cache_dir={cache_dir}"])
    metrics: dict[str, Any] = {}
    if checkpoint is None:
        # the audio-only PIT run first: its U-Net warm-starts the audio-visual model (cfg.init_unet)
        pit = load_config(SeparationTrainConfig, CONFIGS / "separation_audio_only.yaml",
                          [f"data.cache_dir={cache_dir}"])
        metrics["audio_only"] = train_separation(pit)
        cfg = load_config(SeparationTrainConfig, CONFIGS / CONFIG,
                          [f"data.cache_dir={cache_dir}", f"init_unet={Path(pit.out) / 'best.pt'}"])
        metrics["audio_visual"] = train_separation(cfg)
        checkpoint = Path(cfg.out) / "best.pt"
    extra = {"build": f"python -m training build-defaults --tasks separation (config {CONFIG})",
             "backbone": "AVSyncNet trained jointly from scratch" if not cfg.init_avsync
             else f"AVSyncNet initialised from {cfg.init_avsync}",
             "train_metrics": metrics}
    _publish_fresh(root, "separation", Path(checkpoint), EVAL_DATA, cache_dir, extra)
