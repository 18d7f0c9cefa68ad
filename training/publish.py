"""Export a checkpoint through its task's exporter, check it, score it and publish it to the model store."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_store.manifest import Manifest
from model_store.registry import ModelStore
from training.action.export import action_export, score_action_candidate
from training.avsync.export import avsync_export, score_avsync_candidate
from training.export import ExportError
from training.separation.export import score_separation_candidate, separation_export
from training.utils import load_checkpoint

Exporter = Callable[[dict[str, Any], Path], tuple[Path, dict[str, Any]]]
Scorer = Callable[[Path, dict[str, Any], str, str], tuple[dict[str, float], str]]

# checkpoint kind -> (exporter, scorer of the exported candidate)
EXPORTERS: dict[str, tuple[Exporter, Scorer]] = {
    "action": (action_export, score_action_candidate),
    "avsync": (avsync_export, score_avsync_candidate),
    "separation": (separation_export, score_separation_candidate),
}


def export_checkpoint(checkpoint: str | Path, store: ModelStore, eval_data: str | None = None,
                      alias: str | None = "production", cache_dir: str = "data/synthav",
                      extra_training: dict[str, Any] | None = None) -> Manifest:
    """Export, check, score on ``eval_data`` (if given) through the ORT session, and publish."""
    ckpt = load_checkpoint(checkpoint)
    kind = ckpt.get("kind")
    if kind not in EXPORTERS:
        raise ExportError(f"{checkpoint}: no exporter for checkpoint kind {kind!r}")
    export, score = EXPORTERS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        path, fields = export(ckpt, Path(tmp))
        if extra_training:
            fields["training"].update(extra_training)
        if eval_data is not None:
            fields["metrics"], fields["metrics_data"] = score(path, fields, eval_data, cache_dir)
        return store.publish(path, fields, alias=alias)
