"""Train the action model on noisy data with a noise-robust method and write a checkpoint that
``python -m training export`` publishes like any other: ``python -m training train-action --method ntl``.

Noise is injected into the training split (labels and correspondence) and, with the same rates but another
seed, into the validation split: the checkpoint is selected by accuracy on *noisy* validation labels, never
on clean ones. Under symmetric noise at rate r < (K-1)/K the expected noisy accuracy is
``(1 - r) acc + r (1 - acc) / (K - 1)``, increasing in the clean accuracy, so it ranks epochs as the clean
accuracy would. Only phase-2 epochs are candidates for NTL (phase 1 trains no classifier).

``data.train`` (and ``data.val``) may be a SynthAV spec or a dataset directory, decoded into RAM once
(:mod:`training.action.noisy.arrays`), or a clip manifest from ``python -m training prepare``, streamed
(:mod:`training.action.noisy.stream`, settings ``stream.*``): the methods run the same code on either. On real data
set the noise rates to 0 (the data bring their own noise); the correspondence noise of a benchmark works on a
manifest too (clip i's audio decoded from clip ``audio_source[i]``'s file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_store.manifest import ClipSpec
from training.action.noisy.arrays import load_array_set
from training.action.noisy.methods import METHODS, NTLConfig, RunConfig, accuracy
from training.action.noisy.source import ClipSource
from training.action.noisy.stream import StreamedClips
from training.action.train import DataConfig, resolve_labels
from training.data.collection import ClipTable, ManifestError, is_manifest, read_manifest
from training.data.noise import make_noise
from training.data.streaming import StreamOptions, find_cache
from training.data.synthav import ACTION_CLASSES
from training.engine import Run, RunOptions, stopped
from training.models import clip_spec_for, create_model, model_config
from training.utils import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class NoiseConfig:
    label_noise: float = 0.4
    label_noise_type: str = "sym"
    corr_noise: float = 0.2
    seed: int = 0  # the validation split's noise uses seed + 1
    on_val: bool = True


@dataclass
class NoisyOptimConfig:
    epochs: int = 24
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4


@dataclass
class NoisyActionConfig(RunOptions):
    model: str = "av_action_small"
    method: str = "ntl"
    # the classes in the order of the model's outputs; empty: a training manifest's labels (sorted, or SynthAV's order)
    labels: list[str] = field(default_factory=lambda: list(ACTION_CLASSES))
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    optim: NoisyOptimConfig = field(default_factory=NoisyOptimConfig)
    ntl: NTLConfig = field(default_factory=NTLConfig)
    stream: StreamOptions = field(default_factory=StreamOptions)  # when data.train / data.val is a manifest
    modality_dropout: float = 0.15
    array_cache: str = "runs/noise/cache"  # decoded arrays kept here ('' for none)
    out: str = "runs/action_ntl"
    progress: bool = False


def train_action_noisy(cfg: NoisyActionConfig) -> dict[str, Any]:
    """Inject the configured noise, train with ``cfg.method``, keep the best checkpoint by noisy-val accuracy."""
    if cfg.method not in METHODS:
        raise ValueError(f"method {cfg.method!r}: one of {', '.join(METHODS)}")
    run = Run(cfg, "action")
    clip = clip_spec_for(cfg.model)
    cache = cfg.array_cache or None
    labels = list(cfg.labels)
    with run.main_first():
        if is_manifest(cfg.data.train):
            table = read_manifest(cfg.data.train)
            labels = resolve_labels(cfg.labels, set(table.labels))
            train: ClipSource = _streamed(table, clip, labels, cfg)
        else:
            train = load_array_set(cfg.data.train, clip, labels, cfg.data.cache_dir, cache, cfg.data.workers,
                                   cfg.progress)
        if is_manifest(cfg.data.val):
            val: ClipSource = _streamed(read_manifest(cfg.data.val, val=True), clip, labels, cfg)
        else:
            val = load_array_set(cfg.data.val, clip, labels, cfg.data.cache_dir, cache, cfg.data.workers,
                                 cfg.progress)
    if cfg.optim.batch_size % run.world_size:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} does not split over {run.world_size} processes")
    mcfg = model_config(cfg.model, num_classes=len(labels))
    nc = cfg.noise
    noise = make_noise(train.labels, len(labels), nc.label_noise, nc.label_noise_type, nc.corr_noise, nc.seed)
    train = train.with_noise(noise.labels, noise.audio_source)
    val_noise = None
    if nc.on_val:
        val_noise = make_noise(val.labels, len(labels), nc.label_noise, nc.label_noise_type, nc.corr_noise,
                               nc.seed + 1)
        val = val.with_noise(val_noise.labels, val_noise.audio_source)
    log.info("train noise %s; val noise %s", noise.summary(), val_noise.summary() if val_noise else None)

    rc = RunConfig(epochs=cfg.optim.epochs, batch_size=cfg.optim.batch_size, lr=cfg.optim.lr,
                   weight_decay=cfg.optim.weight_decay, modality_dropout=cfg.modality_dropout, seed=cfg.seed,
                   ntl=cfg.ntl)
    first_candidate = round(cfg.ntl.phase1_frac * rc.epochs) if cfg.method == "ntl" and cfg.ntl.contrastive else 0
    history: list[dict] = []
    best: dict[str, Any] = {}
    seconds = [0.0]

    def on_epoch(model: torch.nn.Module, epoch: int, record: dict) -> None:
        val_acc = accuracy(model, val, run=run)
        history.append({**record, "epoch": epoch, "val_noisy_accuracy": val_acc})
        log.info("epoch %d loss %.4f | noisy-val accuracy %.4f (%.0f s)", epoch, record["loss"], val_acc,
                 record["seconds"])
        if epoch >= first_candidate and (not best or val_acc >= best["val_noisy_accuracy"]):
            best.update(epoch=epoch, val_noisy_accuracy=val_acc)
            run.save("best.pt", run.checkpoint_payload(model, model=cfg.model,
                                                       model_config=dataclasses.asdict(mcfg), labels=labels,
                                                       metrics={"epoch": epoch, "val_noisy_accuracy": val_acc}))

    def state() -> dict[str, Any]:
        return {"noisy_history": list(history), "noisy_best": dict(best),
                "noisy_seconds": seconds[0] + time.perf_counter() - t0}

    def load_state(d: dict[str, Any]) -> None:
        history[:] = d["noisy_history"]
        best.clear()
        best.update(d["noisy_best"])
        seconds[0] = d["noisy_seconds"]

    def make() -> torch.nn.Module:
        torch.manual_seed(cfg.seed)
        return create_model(cfg.model, num_classes=len(labels))

    t0 = time.perf_counter()
    try:
        _, info = METHODS[cfg.method](make, train, rc, noise, hook=on_epoch, run=run, state=state,
                                      load_state=load_state)
    finally:
        run.close()
    if run.stop_requested:
        return stopped(run, int(load_checkpoint(run.out / "last.pt")["step"]))
    final: dict[str, Any] = {
        "method": cfg.method,
        "noise": noise.summary(),
        "val_noise": val_noise.summary() if val_noise else None,
        "best_epoch": best.get("epoch"),
        "val_noisy_accuracy": best.get("val_noisy_accuracy"),
        "train_seconds": seconds[0] + time.perf_counter() - t0,
    }
    for key in ("corr_auc", "corr_auc_loss", "labels_corrected", "labels_broken", "phase1_knn"):
        if key in info:
            final[key] = info[key]
    if isinstance(train, StreamedClips):  # windows decoded for training and the whole-set passes, and those that failed
        final.update(windows_drawn=train.meter.windows, windows_skipped=train.meter.failures)
    if run.is_main:  # the method's diagnostics (noise estimates, label corrections) per epoch
        (run.out / "history.json").write_text(json.dumps({"epochs": history, "info": _jsonable(info)}, indent=1))
    return final


def _streamed(table: ClipTable, clip: ClipSpec, labels: list[str], cfg: NoisyActionConfig) -> StreamedClips:
    """A manifest split streamed, its labels as indices into the run's ``labels``."""
    try:
        targets = table.label_index(labels)
    except ManifestError as exc:
        raise ManifestError(f"{exc} (labels=[] takes the training manifest's labels)") from exc
    return StreamedClips(table, clip, targets, seed=cfg.seed, options=cfg.stream,
                         cache=find_cache(table, clip, cfg.stream))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
