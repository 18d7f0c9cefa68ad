"""Regenerate the shipped default models from scratch, deterministically: ``python -m training build-defaults``.

Each task is trained from its config in ``training/configs``, exported, scored on SynthAV clips of a seed
that training never saw (the score goes into the manifest), and published as version 1 of a fresh store
that then replaces ``<root>/<task>``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from model_store.registry import ModelStore

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"
EVAL_DATA = {"action": "synthav:seed=1000,n=200"}


def build_action(root: Path, cache_dir: str) -> None:
    from training.config import load_config
    from training.train_action import ActionTrainConfig, train_action

    config = CONFIGS / "action_default.yaml"
    cfg = load_config(ActionTrainConfig, config, [f"data.cache_dir={cache_dir}"])
    metrics = train_action(cfg)
    extra = {"build": f"python -m training build-defaults --tasks action (config {config.name})",
             "train_metrics": metrics}
    _publish_fresh(root, "action", Path(cfg.out) / "best.pt", EVAL_DATA["action"], cache_dir, extra)


def _publish_fresh(root: Path, task: str, checkpoint: Path, eval_data: str, cache_dir: str, extra: dict) -> None:
    from training.export import export_checkpoint

    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.exists() else None) as tmp:
        manifest = export_checkpoint(checkpoint, ModelStore(tmp), eval_data=eval_data, cache_dir=cache_dir,
                                     extra_training=extra)
        target = root / task
        old = root / f".{task}.old"
        shutil.rmtree(old, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.rename(old)
        shutil.move(str(Path(tmp) / task), target)
        shutil.rmtree(old, ignore_errors=True)
    log.info("default %s model: v%d, metrics %s", task, manifest.version, manifest.metrics)


BUILDERS = {"action": build_action}


def build_defaults(root: Path, tasks: list[str], cache_dir: str = "data/synthav") -> None:
    for task in tasks:
        if task not in BUILDERS:
            raise SystemExit(f"build-defaults: no builder for task {task!r} ({', '.join(BUILDERS)})")
        BUILDERS[task](root, cache_dir)
