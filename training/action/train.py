"""Supervised audio-visual action training: ``python -m training train-action [CONFIG] [key=value ...]``.

``data.train`` is a SynthAV spec or a dataset directory / CSV, decoded into RAM once, or a clip manifest from
``python -m training prepare`` (``MANIFEST.csv``, its ``train`` split; ``MANIFEST.csv#SPLIT`` for another), streamed:
each window is sought and decoded in DataLoader workers (:mod:`training.data.streaming`). ``data.val`` likewise
(a manifest's ``val``/``test`` split by default).

**Multi-label** (a manifest where some clip carries several labels, e.g. AudioSet's; ``multi_label=true`` forces it,
``false`` refuses such a manifest): targets are multi-hot vectors over the run's labels, the loss is each class's
own sigmoid (``BCEWithLogitsLoss``, no label smoothing), validation scores each clip by the mean of its windows'
sigmoids (as the service does) and reports mAP (:mod:`training.action.metrics`), on which ``best.pt`` is chosen.
Labels of validation clips that the run's labels lack are dropped (counted in the log). Single-label runs are
unchanged: softmax cross-entropy, accuracy and top-5.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from model_store.manifest import ClipSpec
from training.action.metrics import mean_average_precision
from training.data.collection import ClipTable, ManifestError, MultiHot, is_manifest, read_manifest
from training.data.datasets import ClipData, Record, WindowDataset, load_clips, read_records, resolve_data
from training.data.streaming import (
    ClipWindows,
    FailureMeter,
    StreamingWindows,
    StreamOptions,
    cat_clip_windows,
    find_cache,
    loader_workers,
    normalize_frames,
)
from training.data.synthav import ACTION_CLASSES
from training.engine import Loop, Run, RunOptions, fit_to_best, val_metrics
from training.models import clip_spec_for, create_model, model_config

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train: str = "synthav:seed=1,n=1600"
    val: str = "synthav:seed=2,n=160"
    cache_dir: str = "data/synthav"
    workers: int = 2  # decoding processes
    loader_workers: int = 0  # DataLoader workers that cut and normalise the windows


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05


@dataclass
class ActionTrainConfig(RunOptions):
    model: str = "av_action_small"
    # the classes in the order of the model's outputs; empty: the training data's, in SynthAV's order when they are
    # SynthAV classes, else sorted (a manifest's vocabulary)
    labels: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stream: StreamOptions = field(default_factory=StreamOptions)  # when data.train is a manifest
    modality_dropout: float = 0.15  # per sample, zero one modality's input so each stream learns alone
    threads: int = 0
    out: str = "runs/action"
    # a pretrained avsync (pretext) checkpoint whose network initialises the model's backbone ('' for none)
    init_checkpoint: str = ""
    # per-class sigmoids on multi-hot targets, scored by mAP; None (auto): when the training manifest is multi-label
    multi_label: bool | None = None


def zero_modalities(video: torch.Tensor, audio: torch.Tensor, p: float, gen: torch.Generator) -> None:
    """In place: with probability p a sample loses its video, with probability p its audio (never both)."""
    if p <= 0:
        return
    u = torch.rand(video.shape[0], generator=gen)
    video[(u < p).to(video.device)] = 0.0
    audio[((u >= p) & (u < 2 * p)).to(audio.device)] = 0.0


def step(model: nn.Module, batch, criterion: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass shared by training and evaluation: returns (loss, logits)."""
    video, audio, label = batch[0].to(device), batch[1].to(device), batch[2].to(device)
    logits = model(video, audio)
    return criterion(logits, label), logits


def _scored_batches(model, loader, criterion, device, zero: str | None, spec: ClipSpec | None,
                    classes: int | None = None):
    """The validation batches through the model, for :func:`evaluate` and :func:`evaluate_multi_label`: yields
    ``(loss, logits, clip indices, targets)`` per non-empty batch. uint8 frames are normalised on ``device`` with
    ``spec``; ``zero`` blanks one modality; with ``classes``, int labels become one-hot targets."""
    for batch in loader:
        video, audio, target, ci = batch[:4]
        if video.dtype == torch.uint8:
            video = normalize_frames(video.to(device, non_blocking=True), spec)
        if len(target) == 0:
            continue
        if classes is not None and target.dim() == 1:
            target = nn.functional.one_hot(target, classes).float()
        if zero == "video":
            video = torch.zeros_like(video)
        elif zero == "audio":
            audio = torch.zeros_like(audio)
        loss, logits = step(model, (video, audio, target), criterion, device)
        yield loss, logits, ci, target


@torch.inference_mode()
def evaluate(model, loader, criterion, device, zero: str | None = None,
             spec: ClipSpec | None = None) -> dict[str, float]:
    """Clip-level accuracy: window probabilities averaged per clip, as the service does. Batches are ``(video,
    audio, label, clip index, ...)``; uint8 frames (a streamed set) are normalised on ``device`` with ``spec``."""
    model.eval()
    probs: dict[int, list[torch.Tensor]] = {}
    labels: dict[int, int] = {}
    loss_sum, n = 0.0, 0
    for loss, logits, ci, label in _scored_batches(model, loader, criterion, device, zero, spec):
        loss_sum += loss.item() * len(label)
        n += len(label)
        for p, c, y in zip(logits.softmax(1).cpu(), ci.tolist(), label.tolist(), strict=True):
            probs.setdefault(c, []).append(p)
            labels[c] = y
    if not probs:  # e.g. a rank whose share of a streamed set failed to decode
        return {"loss": 0.0, "accuracy": 0.0, "top5": 0.0, "n": 0}
    clip_p = torch.stack([torch.stack(probs[c]).mean(0) for c in sorted(probs)])
    y = torch.tensor([labels[c] for c in sorted(probs)])
    top5 = clip_p.topk(min(5, clip_p.shape[1]), dim=1).indices
    return {
        "loss": loss_sum / max(n, 1),
        "accuracy": (clip_p.argmax(1) == y).float().mean().item(),
        "top5": (top5 == y[:, None]).any(1).float().mean().item(),
        "n": len(y),
    }


@torch.inference_mode()
def evaluate_multi_label(model, loader, criterion, device, classes: int, zero: str | None = None,
                         spec: ClipSpec | None = None,
                         gather: Callable[[Any], list[Any]] | None = None) -> dict[str, float]:
    """Multi-label validation: each clip's scores are the mean of its windows' sigmoids, as the service computes
    them; mAP over the classes with a positive among the clips (``map_classes``). Targets are multi-hot ``(B, K)``
    (an int label, from a single-label set, is one-hot). ``gather`` (``Run.gather``) pools every rank's clips first,
    so that each rank returns the mAP of the whole set. Batches as :func:`evaluate`'s."""
    model.eval()
    scores: dict[int, list[torch.Tensor]] = {}
    targets: dict[int, torch.Tensor] = {}
    loss_sum, n = 0.0, 0
    for loss, logits, ci, target in _scored_batches(model, loader, criterion, device, zero, spec, classes):
        loss_sum += loss.item() * len(target)
        n += len(target)
        for p, c, y in zip(logits.float().sigmoid().cpu(), ci.tolist(), target.cpu(), strict=True):
            scores.setdefault(c, []).append(p)
            targets[c] = y
    keys = sorted(scores)
    clip_scores = torch.stack([torch.stack(scores[c]).mean(0) for c in keys]) if keys else torch.zeros(0, classes)
    clip_targets = torch.stack([targets[c] for c in keys]) if keys else torch.zeros(0, classes)
    mine = (clip_scores.numpy(), clip_targets.numpy(), loss_sum, n)
    parts = gather(mine) if gather is not None else [mine]
    clip_scores, clip_targets = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    windows = sum(p[3] for p in parts)
    if len(clip_scores) == 0:
        return {"loss": 0.0, "mAP": 0.0, "map_classes": 0, "n": 0}
    m_ap, scored = mean_average_precision(clip_scores, clip_targets)
    return {"loss": sum(p[2] for p in parts) / max(windows, 1), "mAP": m_ap, "map_classes": scored,
            "n": len(clip_scores)}


def load_split(spec: str, clip: ClipSpec, labels: list[str], data: DataConfig, progress: bool,
               records: list[Record] | None = None) -> list[ClipData]:
    if records is None:
        records = read_records(resolve_data(spec, data.cache_dir))
    return load_clips(records, clip, labels, workers=data.workers, progress=progress)


def resolve_labels(labels: list[str], found: set[str]) -> list[str]:
    """The run's classes: ``labels`` as given, else those ``found`` in the training data (SynthAV's order when they
    are all SynthAV classes, sorted otherwise)."""
    if labels:
        return list(labels)
    if not found:
        raise ValueError("the training data carry no labels; train-action needs a label per clip")
    return list(ACTION_CLASSES) if found <= set(ACTION_CLASSES) else sorted(found)


def load_pretrained_backbone(model: nn.Module, checkpoint: str | Path) -> None:
    """Initialise ``model.backbone`` from a pretext checkpoint (``python -m training pretrain``)."""
    from training.utils import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != "avsync" or not hasattr(model, "load_backbone"):
        raise ValueError(f"init_checkpoint {checkpoint}: needs an avsync pretext checkpoint and a model with a sync "
                         f"backbone (e.g. avsync_action_small); got kind {ckpt.get('kind')!r}")
    model.load_backbone(ckpt["state_dict"])
    log.info("backbone initialised from %s (%s)", checkpoint, ckpt.get("metrics", {}))


class EpochBatches(Sampler[list[int]]):
    """This rank's share of each global batch of one epoch, from batch ``start`` on: the epoch's order is a
    permutation seeded by (seed, epoch), the same on every rank; the last partial batch is dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.batch_size, self.rank, self.world_size, self.start = batch_size, rank, world_size, start
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()

    def __len__(self) -> int:
        return len(self.order) // self.batch_size - self.start

    def __iter__(self):
        per = self.batch_size // self.world_size
        for b in range(self.start, len(self.order) // self.batch_size):
            batch = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank * per:(self.rank + 1) * per]


def train_action(cfg: ActionTrainConfig, init_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train, validate each epoch, keep the best checkpoint; returns the final metrics."""
    run = Run(cfg, "action")
    device = run.device

    clip = clip_spec_for(cfg.model)
    streaming = is_manifest(cfg.data.train)
    multi_label = bool(cfg.multi_label)
    with run.main_first():
        if streaming:
            train_table = read_manifest(cfg.data.train)
            multi_label = train_table.multi_label if cfg.multi_label is None else cfg.multi_label
            if train_table.multi_label and not multi_label:
                raise ManifestError(f"{cfg.data.train} is multi-label (a clip carries several labels) and "
                                    "multi_label=false; leave multi_label unset to train per-class sigmoids")
            labels = resolve_labels(cfg.labels, set(train_table.labels))
            targets = train_targets(train_table, labels) if multi_label else train_table.label_index(labels)
            train_set = StreamingWindows(train_table, clip, targets, seed=cfg.seed,
                                         options=cfg.stream, cache=find_cache(train_table, clip, cfg.stream))
        else:
            records = read_records(resolve_data(cfg.data.train, cfg.data.cache_dir))
            labels = resolve_labels(cfg.labels, {r.label for r in records if r.label is not None})
            train_set = WindowDataset(load_split(cfg.data.train, clip, labels, cfg.data, cfg.progress, records),
                                      clip, train=True, seed=cfg.seed)
        val_loader = make_val_loader(cfg, clip, labels, run.rank, run.world_size, multi_label)
    if cfg.optim.batch_size % run.world_size:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} does not split over {run.world_size} processes")
    per_epoch = len(train_set) // cfg.optim.batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(train_set)} training clips make no batch of {cfg.optim.batch_size}")
    mcfg = model_config(cfg.model, num_classes=len(labels))

    model = create_model(cfg.model, num_classes=len(labels)).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    elif cfg.init_checkpoint:
        load_pretrained_backbone(model, cfg.init_checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    steps = cfg.optim.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.optim.lr, total_steps=steps,
                                                    pct_start=0.15)
    if multi_label:
        criterion: nn.Module = nn.BCEWithLogitsLoss()
        score_name = "mAP"  # what validation reports and best.pt is chosen on
        train_hit = "precision_at_1"  # the share of training windows whose top class is one of their labels
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        score_name = train_hit = "accuracy"

    def forward(m: nn.Module, video: torch.Tensor, audio: torch.Tensor, label: torch.Tensor):
        with run.autocast():
            logits = m(video, audio)
        return criterion(logits.float(), label), logits

    train_step = run.wrap(forward, model)
    gen = torch.Generator().manual_seed(cfg.seed + run.rank)  # modality dropout, per rank
    meter = FailureMeter(cfg.stream, run.reduce_sums)  # streamed windows that failed to decode, over all ranks
    st: dict[str, Any] = {"history": [], "best": None, "seconds": 0.0, "round": {"loss": 0.0, "correct": 0, "n": 0},
                          "dropout": gen.get_state(), "stream": meter.state()}
    batches: dict[str, Any] = {"epoch": None, "it": None}
    t_round = time.perf_counter()
    workers = cfg.stream.workers if streaming else cfg.data.loader_workers

    def one_step(i: int) -> tuple[torch.Tensor, dict[str, float], int]:
        epoch, b = divmod(i, per_epoch)
        if batches["epoch"] != epoch:
            train_set.epoch = epoch
            sampler = EpochBatches(len(train_set), cfg.optim.batch_size, cfg.seed, epoch, run.rank, run.world_size,
                                   start=b)
            # its own generator: a loader's iterator draws a base seed, which must not come from the global stream
            # (a resumed run creates one iterator more than an uninterrupted one)
            loader = DataLoader(train_set, batch_sampler=sampler, pin_memory=device.type == "cuda",
                                **loader_workers(workers),
                                prefetch_factor=cfg.stream.prefetch if streaming and workers else None,
                                generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            batches.update(epoch=epoch, it=iter(loader))
        logs: dict[str, float] = {}
        if streaming:
            video, audio, label, _, failures, lost = next(batches["it"])
            logs["skipped"] = meter.update(len(label) - int(lost.sum()), int(failures.sum()), int(lost.sum()))
            video = normalize_frames(video.to(device, non_blocking=True), clip)  # uint8 over the bus
            audio = audio.to(device, non_blocking=True)
            zero_modalities(video, audio, cfg.modality_dropout, gen)
        else:
            video, audio, label, _ = next(batches["it"])
            zero_modalities(video, audio, cfg.modality_dropout, gen)
            if multi_label:  # a single-label set trained with sigmoids
                label = nn.functional.one_hot(label, len(labels)).float()
        video, audio, label = (x.to(device, non_blocking=True) for x in (video, audio, label))
        loss, logits = train_step(video, audio, label)
        if multi_label:  # the top-scored class is one of the clip's labels
            correct = label.gather(1, logits.argmax(1, keepdim=True)).sum().item()
        else:
            correct = (logits.argmax(1) == label).sum().item()
        r = st["round"]
        r["loss"] += loss.item() * len(label)
        r["correct"] += correct
        r["n"] += len(label)
        return loss, {"loss": loss.item(), train_hit: correct / len(label), **logs}, len(label)

    def round_end(epoch: int, done: int) -> dict[str, float]:
        nonlocal t_round
        # end the epoch's loader (its workers and feeder thread) before validation forks its own workers: forking
        # beside a live feeder thread can leave the child stuck on a lock (seen once under torchrun)
        batches.update(epoch=None, it=None)
        if multi_label:  # mAP does not split into per-rank sums: the ranks pool their clips' scores
            va = evaluate_multi_label(model, val_loader, criterion, device, len(labels), spec=clip, gather=run.gather)
        else:
            va = evaluate(model, val_loader, criterion, device, spec=clip)
        if run.distributed and not multi_label:
            n = va.pop("n")
            sums = run.reduce_sums({"n": n, **{k: v * n for k, v in va.items()}})
            total = sums.pop("n")
            va = {**{k: v / total for k, v in sums.items()}, "n": int(total)}
        r = run.reduce_sums(st["round"])
        tr = {"loss": r["loss"] / max(r["n"], 1), train_hit: r["correct"] / max(r["n"], 1)}
        seconds = time.perf_counter() - t_round
        st["seconds"] += seconds
        st["round"] = {"loss": 0.0, "correct": 0, "n": 0}
        st["history"].append({"epoch": epoch, "step": done, "train": tr, "val": va, "seconds": seconds})
        log.info("epoch %d train loss %.3f %s %.3f | val loss %.3f %s %.3f (%.0f s)", epoch, tr["loss"], train_hit,
                 tr[train_hit], va["loss"], score_name, va[score_name], seconds)
        if st["best"] is None or better(va[score_name], st["best"]["val"][score_name]):
            st["best"] = st["history"][-1]
            run.save("best.pt", run.checkpoint_payload(model, **provenance(),
                                                       metrics={"epoch": epoch, **val_metrics(va)}))
        t_round = time.perf_counter()
        return {"epoch": epoch, **val_metrics(va)}

    def provenance() -> dict[str, Any]:
        return {"model": cfg.model, "model_config": dataclasses.asdict(mcfg), "labels": labels,
                "multi_label": multi_label}

    def state() -> dict[str, Any]:
        return {**st, "dropout": gen.get_state(), "stream": meter.state()}

    def load_state(d: dict[str, Any]) -> None:
        st.update(d)
        gen.set_state(d["dropout"])
        meter.load_state(d["stream"])
        batches["epoch"] = None

    loop = Loop(models=[model], optimizers=[optimizer], schedulers=[scheduler], steps=steps, round_steps=per_epoch,
                step=one_step, round_end=round_end, state=state, load_state=load_state, payload=provenance)
    result = fit_to_best(run, loop, st, at="epoch")
    if streaming:
        result.update(windows_drawn=meter.windows, windows_skipped=meter.failures)
    return result


def better(score: float, best: float) -> bool:
    """Whether a validation score takes best.pt from the best so far (ties go to the later epoch; NaN, an mAP over
    no class with a positive, never does unless the best is NaN too)."""
    if math.isnan(score):
        return math.isnan(best)
    return math.isnan(best) or score >= best


def train_targets(table: ClipTable, labels: list[str]) -> MultiHot:
    """Multi-hot targets of a training manifest over the run's labels."""
    targets = MultiHot(table, labels)
    if targets.dropped:
        log.warning("%d labels of the training clips are not among the run's %d labels: dropped", targets.dropped,
                    len(labels))
    return targets


def make_val_loader(cfg: ActionTrainConfig, clip: ClipSpec, labels: list[str], rank: int,
                    world_size: int, multi_label: bool = False) -> DataLoader:
    """This rank's share of the validation clips, every service window of each: streamed from a manifest, or
    decoded into RAM. ``multi_label``: a manifest's targets are multi-hot (labels the run lacks dropped)."""
    if is_manifest(cfg.data.val):
        table: ClipTable = read_manifest(cfg.data.val, val=True)
        mine = table.take(range(rank, len(table), world_size))
        workers = cfg.stream.workers
        if multi_label:
            targets = MultiHot(mine, labels)
            if targets.dropped and rank == 0:
                log.warning("%d labels of this rank's validation clips are not among the run's %d labels: dropped",
                            targets.dropped, len(labels))
        else:
            targets = mine.label_index(labels)
        return DataLoader(ClipWindows(mine, clip, targets, cache=find_cache(table, clip, cfg.stream)),
                          batch_size=8,
                          collate_fn=cat_clip_windows, **loader_workers(workers))
    val_clips = load_split(cfg.data.val, clip, labels, cfg.data, cfg.progress)
    return DataLoader(WindowDataset(val_clips[rank::world_size], clip, train=False), batch_size=64)
