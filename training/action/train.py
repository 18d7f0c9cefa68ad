"""Supervised audio-visual action training: ``python -m training train-action [CONFIG] [key=value ...]``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model_store.manifest import ClipSpec
from training.data.datasets import ClipData, WindowDataset, load_clips, read_records, resolve_data
from training.data.synthav import ACTION_CLASSES
from training.models import clip_spec_for, create_model, model_config
from training.utils import save_checkpoint, start_run

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train: str = "synthav:seed=1,n=1600"
    val: str = "synthav:seed=2,n=160"
    cache_dir: str = "data/synthav"
    workers: int = 2


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05


@dataclass
class ActionTrainConfig:
    model: str = "av_action_small"
    labels: list[str] = field(default_factory=lambda: list(ACTION_CLASSES))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    modality_dropout: float = 0.15  # per sample, zero one modality's input so each stream learns alone
    seed: int = 0
    deterministic: bool = False
    threads: int = 0
    out: str = "runs/action"
    progress: bool = True
    # a pretrained avsync (pretext) checkpoint whose network initialises the model's backbone ('' for none)
    init_checkpoint: str = ""


def zero_modalities(video: torch.Tensor, audio: torch.Tensor, p: float, gen: torch.Generator) -> None:
    """In place: with probability p a sample loses its video, with probability p its audio (never both)."""
    if p <= 0:
        return
    u = torch.rand(video.shape[0], generator=gen)
    video[u < p] = 0.0
    audio[(u >= p) & (u < 2 * p)] = 0.0


def step(model: nn.Module, batch, criterion: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass shared by training and evaluation: returns (loss, logits)."""
    video, audio, label = batch[0].to(device), batch[1].to(device), batch[2].to(device)
    logits = model(video, audio)
    return criterion(logits, label), logits


def train_one_epoch(model, loader, optimizer, scheduler, criterion, device, modality_dropout, gen, progress):
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="train", leave=False, unit="batch")
    for batch in it:
        zero_modalities(batch[0], batch[1], modality_dropout, gen)
        loss, logits = step(model, batch, criterion, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = batch[2].shape[0]
        total += n
        loss_sum += loss.item() * n
        correct += (logits.argmax(1).cpu() == batch[2]).sum().item()
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


@torch.inference_mode()
def evaluate(model, loader, criterion, device, zero: str | None = None) -> dict[str, float]:
    """Clip-level accuracy: window probabilities averaged per clip, as the service does."""
    model.eval()
    probs: dict[int, list[torch.Tensor]] = {}
    labels: dict[int, int] = {}
    loss_sum, n = 0.0, 0
    for video, audio, label, ci in loader:
        if zero == "video":
            video = torch.zeros_like(video)
        elif zero == "audio":
            audio = torch.zeros_like(audio)
        loss, logits = step(model, (video, audio, label), criterion, device)
        loss_sum += loss.item() * len(label)
        n += len(label)
        for p, c, y in zip(logits.softmax(1).cpu(), ci.tolist(), label.tolist(), strict=True):
            probs.setdefault(c, []).append(p)
            labels[c] = y
    clip_p = torch.stack([torch.stack(probs[c]).mean(0) for c in sorted(probs)])
    y = torch.tensor([labels[c] for c in sorted(probs)])
    top5 = clip_p.topk(min(5, clip_p.shape[1]), dim=1).indices
    return {
        "loss": loss_sum / max(n, 1),
        "accuracy": (clip_p.argmax(1) == y).float().mean().item(),
        "top5": (top5 == y[:, None]).any(1).float().mean().item(),
        "n": len(y),
    }


def load_split(spec: str, clip: ClipSpec, labels: list[str], data: DataConfig, progress: bool) -> list[ClipData]:
    root = resolve_data(spec, data.cache_dir)
    return load_clips(read_records(root), clip, labels, workers=data.workers, progress=progress)


def load_pretrained_backbone(model: nn.Module, checkpoint: str | Path) -> None:
    """Initialise ``model.backbone`` from a pretext checkpoint (``python -m training pretrain``)."""
    from training.utils import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != "avsync" or not hasattr(model, "load_backbone"):
        raise ValueError(f"init_checkpoint {checkpoint}: needs an avsync pretext checkpoint and a model with a sync "
                         f"backbone (e.g. avsync_action_small); got kind {ckpt.get('kind')!r}")
    model.load_backbone(ckpt["state_dict"])
    log.info("backbone initialised from %s (%s)", checkpoint, ckpt.get("metrics", {}))


def train_action(cfg: ActionTrainConfig, init_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train, validate each epoch, keep the best checkpoint; returns the final metrics."""
    device, out = start_run(cfg)

    mcfg = model_config(cfg.model, num_classes=len(cfg.labels))
    clip = clip_spec_for(cfg.model)
    train_clips = load_split(cfg.data.train, clip, cfg.labels, cfg.data, cfg.progress)
    val_clips = load_split(cfg.data.val, clip, cfg.labels, cfg.data, cfg.progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(WindowDataset(train_clips, clip, train=True, seed=cfg.seed),
                              batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True, generator=gen)
    val_loader = DataLoader(WindowDataset(val_clips, clip, train=False), batch_size=64)

    model = create_model(cfg.model, num_classes=len(cfg.labels)).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    elif cfg.init_checkpoint:
        load_pretrained_backbone(model, cfg.init_checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.optim.lr, total_steps=cfg.optim.epochs * len(train_loader), pct_start=0.15
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    history, best = [], None
    for epoch in range(cfg.optim.epochs):
        t0 = time.perf_counter()
        tr = train_one_epoch(model, train_loader, optimizer, scheduler, criterion, device,
                             cfg.modality_dropout, gen, cfg.progress)
        va = evaluate(model, val_loader, criterion, device)
        history.append({"epoch": epoch, "train": tr, "val": va, "seconds": time.perf_counter() - t0})
        log.info("epoch %d train loss %.3f acc %.3f | val loss %.3f acc %.3f (%.0f s)", epoch, tr["loss"],
                 tr["accuracy"], va["loss"], va["accuracy"], time.perf_counter() - t0)
        if best is None or va["accuracy"] >= best["val"]["accuracy"]:
            best = history[-1]
            payload = {
                "kind": "action",
                "model": cfg.model,
                "model_config": dataclasses.asdict(mcfg),
                "config": dataclasses.asdict(cfg),
                "labels": cfg.labels,
                "state_dict": model.state_dict(),
                "metrics": {"epoch": epoch, **{f"val_{k}": float(v) for k, v in va.items()}},
            }
            save_checkpoint(out / "best.pt", payload)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    final = {f"val_{k}": float(v) for k, v in best["val"].items()}
    final["epoch"] = best["epoch"]
    final["train_seconds"] = float(np.sum([h["seconds"] for h in history]))
    return final
