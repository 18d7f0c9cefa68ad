"""Self-supervised audio-visual sync pretext (Owens & Efros 2018): ``python -m training pretrain [CONFIG] [k=v ...]``.

A positive is a window of a video with its own audio; its negative is the same frames with the audio of the same
video shifted by a random offset in ``[shift_min_s, shift_max_s]`` (the paper: 2.0-5.8 s on 4.2 s windows, i.e.
0.48-1.38 window lengths). Every batch holds each sampled window twice, once per label, so it is balanced. The
shifted audio always lies inside the source clip: no padding that would give the answer away.

``data.train`` / ``data.val``: a SynthAV spec or dataset directory, decoded into RAM (and an npz cache) once, or
clip manifests from ``python -m training prepare``, streamed (:mod:`training.avsync.stream`): each pair is sought
and decoded in DataLoader workers; clips without audio never become positives.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_store.manifest import ClipSpec
from training.avsync.pairs import PAPER_SHIFT, Pair, draw_batch, has_audio, heldout_pairs, pair_batch
from training.avsync.stream import PairSource, PairWindows, StepJobs, model_inputs, pair_loader
from training.data.collection import is_manifest, read_manifest
from training.data.datasets import ClipData, load_clips, read_records, resolve_data
from training.data.streaming import DataFailure, FailureMeter, StreamOptions, find_cache
from training.engine import Loop, Run, RunOptions, fit_to_best, val_metrics
from training.models import clip_spec_for, create_model, model_config
from training.utils import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class PretrainData:
    train: str = "synthav:seed=1,n=1600"
    val: str = "synthav:seed=2,n=160"
    cache_dir: str = "data/synthav"
    decoded_cache: str = "data/decoded"  # decoded clips (npz) per dataset and clip spec; '' disables
    workers: int = 2


@dataclass
class PretrainOptim:
    steps: int = 3000
    batch_size: int = 16  # windows per step; each gives a positive and a negative
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the steps


@dataclass
class PretrainConfig(RunOptions):
    model: str = "avsync_small"
    data: PretrainData = field(default_factory=PretrainData)
    optim: PretrainOptim = field(default_factory=PretrainOptim)
    stream: StreamOptions = field(default_factory=StreamOptions)  # when data.train is a manifest
    # audio shift of a negative, in seconds; None: the paper's range scaled to the model's window
    shift_min_s: float | None = None
    shift_max_s: float | None = None
    flip: bool = True  # random horizontal flips
    # weight of a pairwise term softplus(logit_shifted - logit_in_sync) beside the per-sample BCE: the video-only
    # part of the logit cancels in the difference, so early gradients carry only the audio-visual agreement
    pair_weight: float = 1.0
    # weight of a region contrast on the in-sync CAM (:func:`region_loss`); 0 = the paper's pretext only
    region_weight: float = 0.0
    region_thresholds: tuple[float, float] = (0.6, 0.3)  # foreground / background, on the min-max normalised map
    # weight of a third track per window: another clip's in-sync audio (a negative that differs in what sounds,
    # not only when). Its BCE and ranking terms are weighted by this, and the region contrast gains the foreground
    # under that audio as a further negative. 0 = shifted negatives only (the paper)
    other_weight: float = 0.0
    # weight of the preservation term of :class:`KeepLoss` (0 = off): the binarised in-sync CAM, used as a mask,
    # must keep enough of the frames for the network as initialised (a frozen judge) to still hear them in sync;
    # ``keep_area`` weighs the mask's area against it, so the mask shrinks to what carries the evidence
    keep_weight: float = 0.0
    keep_area: float = 1.0
    keep_margin: float = 3.0  # the judge's in-sync minus shifted logit that counts as "still in sync"
    keep_delete: float = 0.0  # weight of the deletion term: the masked part stilled, the judge should not hear sync
    init: str = ""  # a sync-network checkpoint to start from: its tensors whose names and shapes match
    eval_every: int = 250
    out: str = "runs/avsync"


def shift_range(cfg: PretrainConfig, clip: ClipSpec) -> tuple[float, float]:
    lo = cfg.shift_min_s if cfg.shift_min_s is not None else PAPER_SHIFT[0] * clip.window_s
    hi = cfg.shift_max_s if cfg.shift_max_s is not None else PAPER_SHIFT[1] * clip.window_s
    if not 0 < lo <= hi:
        raise ValueError(f"shift range [{lo}, {hi}] s is empty")
    return lo, hi


# ------------------------------------------------------------------------------------------------- data


def load_decoded(spec: str, clip: ClipSpec, data: PretrainData, progress: bool = False) -> list[ClipData]:
    """Decode a dataset with the service's decoder once; later calls read the npz cache."""
    root = resolve_data(spec, data.cache_dir)
    records = read_records(root)
    key = hashlib.sha256(json.dumps([str(root.resolve()), clip.model_dump()], sort_keys=True).encode())
    cache = Path(data.decoded_cache) / f"{root.name}-{key.hexdigest()[:12]}.npz" if data.decoded_cache else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            frames, audio, fo, ao, durations = (z[k] for k in ("frames", "audio", "frame_offsets", "audio_offsets",
                                                               "durations"))
            sound = z["has_audio"] if "has_audio" in z.files else np.ones(len(records), dtype=bool)
        return [ClipData(frames[fo[i]:fo[i + 1]], audio[ao[i]:ao[i + 1]], float(durations[i]), -1,
                         {"record": r, "has_audio": bool(sound[i])})
                for i, r in enumerate(records)]
    labels = sorted({r.label for r in records if r.label is not None})
    clips = load_clips(records, clip, labels, workers=data.workers, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, frames=np.concatenate([c.frames for c in clips]),
                 audio=np.concatenate([c.audio for c in clips]),
                 frame_offsets=np.cumsum([0] + [len(c.frames) for c in clips]),
                 audio_offsets=np.cumsum([0] + [len(c.audio) for c in clips]),
                 durations=np.array([c.duration_s for c in clips]),
                 has_audio=np.array([has_audio(c) for c in clips], dtype=bool))
        tmp.rename(cache)
    return clips


# ---------------------------------------------------------------------------------------------- training


def minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` rescaled to [0, 1] over ``dims`` (each map's own range), as the localization scorer reads a map."""
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return (x - lo) / (hi - lo + 1e-6)


def region_loss(cam: torch.Tensor, thresholds: tuple[float, float] = (0.6, 0.3), tau: float = 0.05,
                tracks: int = 2) -> torch.Tensor:
    """Region contrast on the CAM of each frame of the in-sync windows (after "Localizing Visual Sounds the Hard
    Way", Chen et al. 2021): a soft foreground (the map above ``thresholds[0]`` of its min-max range) and background
    (below ``thresholds[1]``) are read off the in-sync map, without gradient through the masks; the foreground's
    mean evidence must beat the background's in the same frame and the same foreground's under each other track
    (the shifted audio; another clip's): cross-entropy over them, the foreground the target.

    Shape: cam (kB, T', H', W'), track-major with the in-sync windows first, k >= 2 -> scalar
    """
    pos, *negs = cam.view(tracks, -1, *cam.shape[1:]).flatten(3).unbind(0)  # (B, T', N) each
    with torch.no_grad():
        norm = minmax(pos, (-1,))
        fg = torch.sigmoid((norm - thresholds[0]) / tau)
        bg = 1.0 - torch.sigmoid((norm - thresholds[1]) / tau)
    fg_pos = (fg * pos).sum(-1) / (fg.sum(-1) + 1e-6)
    bg_pos = (bg * pos).sum(-1) / (bg.sum(-1) + 1e-6)
    fg_negs = [(fg * neg).sum(-1) / (fg.sum(-1) + 1e-6) for neg in negs]
    scores = torch.stack([fg_pos, bg_pos, *fg_negs], dim=-1).flatten(0, 1)  # (B * T', k + 1)
    return nn.functional.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=cam.device))


class KeepLoss:
    """Preservation with a frozen judge: the in-sync CAM of each window, min-max normalised per step and
    binarised softly at half its range (the binarisation :mod:`training.avsync.score` scores), masks the window's
    frames; outside the mask they are replaced by the window's temporal mean (still, so no motion is left there).
    The judge (the sync network as it was when training started, frozen) must still tell the masked frames' own
    audio from the shifted one by ``margin``; the mask's area costs ``area`` per unit of frame. Gradients reach
    the model only through the mask, i.e. its CAM: the map is asked to cover what makes the frames sound in sync,
    and no more. With ``delete``, the converse too: with the masked part stilled instead, the judge should no longer
    prefer the own audio (``softplus`` of its margin). No labels are read.

    Shape: video (B, 3, T, H, W), audio (kB, S) track-major (in sync, shifted, ...), cam (kB, T', h, w) -> scalar
    """

    def __init__(self, judge: nn.Module, weight: float = 1.0, area: float = 1.0, margin: float = 3.0,
                 tau: float = 0.1, delete: float = 0.0) -> None:
        self.judge = copy.deepcopy(judge).eval()
        for p in self.judge.parameters():
            p.requires_grad_(False)
        self.weight, self.area, self.margin, self.tau, self.delete = weight, area, margin, tau, delete

    def mask(self, cam: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """Soft binarised maps at the frames' size, each step's map over the frames it covers.

        Shape: cam (B, T', h, w) -> (B, 1, T, H, W)
        """
        b, steps = cam.shape[:2]
        up = nn.functional.interpolate(cam.flatten(0, 1)[:, None], size=size[1:], mode="bilinear",
                                       align_corners=False)  # (B T', 1, H, W)
        m = torch.sigmoid((minmax(up, (2, 3)) - 0.5) / self.tau)  # upsampled, then binarised, as scored
        return m.view(b, steps, *size[1:]).repeat_interleave(size[0] // steps, dim=1)[:, None]  # (B, 1, T, H, W)

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        b = len(video)
        m = self.mask(cam[:b], tuple(video.shape[2:]))
        still = video.mean(2, keepdim=True)
        logit, _ = self.judge.forward_shared_video(video * m + still * (1 - m), audio[:2 * b])
        margin = logit[:b] - logit[b:2 * b]
        loss = self.weight * nn.functional.softplus(self.margin - margin).mean() + self.area * m.mean()
        if self.delete:
            logit, _ = self.judge.forward_shared_video(video * (1 - m) + still * m, audio[:2 * b])
            loss = loss + self.delete * nn.functional.softplus(logit[:b] - logit[b:2 * b]).mean()
        return loss


def step(model: nn.Module, video: torch.Tensor, audio: torch.Tensor, label: torch.Tensor, pair_weight: float = 0.0,
         region_weight: float = 0.0, region_thresholds: tuple[float, float] = (0.6, 0.3), other_weight: float = 1.0,
         keep: KeepLoss | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward shared by training and evaluation: (loss, logit). ``audio`` holds 2 tracks per video, in sync
    first, then shifted, or 3 with another clip's audio last (``pair_batch``); the loss is the BCE plus
    ``pair_weight`` times the pairwise ranking term, each over the in-sync and shifted tracks plus ``other_weight``
    times the same over the in-sync and other-clip tracks (plus ``region_weight`` times :func:`region_loss`)."""
    logit, cam = model.forward_shared_video(video, audio)
    tracks = len(audio) // len(video)
    n = 2 * len(video)
    loss = nn.functional.binary_cross_entropy_with_logits(logit[:n], label[:n])  # in sync and shifted, balanced
    if tracks > 2:
        loss = loss + other_weight / 2 * nn.functional.binary_cross_entropy_with_logits(logit[n:], label[n:])
    pos, *negs = logit.view(tracks, -1)
    if pair_weight:
        ranks = [nn.functional.softplus(neg - pos).mean() for neg in negs]
        loss = loss + pair_weight * (ranks[0] + other_weight * sum(ranks[1:]))
    if region_weight:
        loss = loss + region_weight * region_loss(cam, region_thresholds, tracks=tracks)
    if keep is not None:
        loss = loss + keep(video, audio, cam)
    return loss, logit


def eval_sums(model: nn.Module, clips: Sequence[ClipData], clip: ClipSpec, pairs: Sequence[Pair],
              device: torch.device, batch: int = 32) -> dict[str, float]:
    """Summed loss, correct answers and count on fixed held-out pairs (one positive and one negative each)."""
    model.eval()
    correct, loss_sum, n = 0.0, 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(pairs), batch):
            v, a, y = (torch.from_numpy(x).to(device) for x in pair_batch(clips, clip, pairs[s:s + batch]))
            loss, logit = step(model, v, a, y)
            correct += ((logit > 0).float() == y).sum().item()
            loss_sum += loss.item() * len(y)
            n += len(y)
    return {"loss_sum": loss_sum, "correct": correct, "n": n}


def eval_sums_streamed(model: nn.Module, loader, clip: ClipSpec, device: torch.device) -> dict[str, float]:
    """:func:`eval_sums` over streamed held-out pairs (:mod:`training.avsync.stream`); pairs that failed to decode
    or are silent are left out."""
    model.eval()
    correct, loss_sum, n = 0.0, 0.0, 0
    with torch.inference_mode():
        for batch in loader:
            keep = ~batch[-1]
            if not keep.any():
                continue
            v, a, y = model_inputs([x[keep] for x in batch[:3]], clip, device, other=False)
            loss, logit = step(model, v, a, y)
            correct += ((logit > 0).float() == y).sum().item()
            loss_sum += loss.item() * len(y)
            n += len(y)
    return {"loss_sum": loss_sum, "correct": correct, "n": n}


def evaluate(model: nn.Module, clips: Sequence[ClipData], clip: ClipSpec, pairs: Sequence[Pair],
             device: torch.device, batch: int = 32) -> dict[str, float]:
    """Held-out alignment accuracy and loss on fixed pairs."""
    return _means(eval_sums(model, clips, clip, pairs, device, batch))


def _means(s: dict[str, float]) -> dict[str, float]:
    if not s["n"]:
        raise DataFailure("no held-out pair could be decoded (or every one was silent): check data.val")
    return {"loss": s["loss_sum"] / s["n"], "accuracy": s["correct"] / s["n"], "n": int(s["n"])}


def train_steps(model, clips, clip, shifts, optimizer, scheduler, device, rng, steps, batch_size, flip,
                pair_weight=0.0, region_weight=0.0, region_thresholds=(0.6, 0.3), other_weight=0.0, keep=None):
    """``steps`` plain optimisation steps on freshly drawn pairs, one process, no checkpoints (for tests and
    experiments; :func:`pretrain` runs the same steps on the engine); returns mean loss and accuracy."""
    model.train()
    loss_sum, correct, n = 0.0, 0, 0
    for _ in range(steps):
        pairs, flips = draw_batch(rng, clips, clip, shifts, batch_size, flip, other_weight > 0)
        v, a, y = (torch.from_numpy(x).to(device) for x in pair_batch(clips, clip, pairs, flips, other_weight > 0))
        loss, logit = step(model, v, a, y, pair_weight, region_weight, region_thresholds, other_weight, keep)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += ((logit.detach() > 0).float() == y).sum().item()
        n += len(y)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train the sync network on the pretext; keep the checkpoint with the best held-out accuracy."""
    run = Run(cfg, "avsync")
    device = run.device

    clip = clip_spec_for(cfg.model)
    shifts = shift_range(cfg, clip)
    streaming = is_manifest(cfg.data.train)
    with run.main_first():
        if streaming:
            if not is_manifest(cfg.data.val):
                raise ValueError(f"data.train is a manifest: data.val must be one too (got {cfg.data.val!r})")
            train_src = PairSource(read_manifest(cfg.data.train), clip, shifts)
            val_src = PairSource(read_manifest(cfg.data.val, val=True), clip, shifts)
            caches = (find_cache(train_src.table, clip, cfg.stream), find_cache(val_src.table, clip, cfg.stream))
            n_train, val_pairs = len(train_src), val_src.heldout_jobs()
        else:
            train_clips = load_decoded(cfg.data.train, clip, cfg.data, cfg.progress)
            val_clips = load_decoded(cfg.data.val, clip, cfg.data, cfg.progress)
            n_train, val_pairs = sum(map(has_audio, train_clips)), heldout_pairs(val_clips, clip, shifts)
            if not n_train:
                raise ValueError(f"no clip of {cfg.data.train} has audio: the pretext has no positive to learn")
    if cfg.other_weight > 0 and n_train < cfg.optim.batch_size:
        raise ValueError(f"other_weight needs a batch of distinct clips: {n_train} clips < optim.batch_size")
    log.info("pretext: %d train clips, %d held-out pairs, window %.2f s, shifts %.2f-%.2f s, %d process(es)%s",
             n_train, len(val_pairs), clip.window_s, *shifts, run.world_size, ", streamed" if streaming else "")

    model = create_model(cfg.model).to(device)
    if cfg.init:
        own = model.state_dict()
        state = {k: v for k, v in load_checkpoint(cfg.init)["state_dict"].items()
                 if k in own and own[k].shape == v.shape}
        model.load_state_dict(state, strict=False)
        log.info("init: %d of %d tensors from %s (matching names and shapes)", len(state), len(own), cfg.init)
    mcfg = model_config(cfg.model)
    keep = (KeepLoss(model, cfg.keep_weight, cfg.keep_area, cfg.keep_margin, delete=cfg.keep_delete)
            if cfg.keep_weight else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.optim.lr, total_steps=cfg.optim.steps,
                                                    pct_start=cfg.optim.warmup)
    other = cfg.other_weight > 0
    train_step = run.wrap(lambda m, v, a, y: step(m, v, a, y, cfg.pair_weight, cfg.region_weight,
                                                  tuple(cfg.region_thresholds), cfg.other_weight, keep), model)
    rng = np.random.default_rng(cfg.seed)  # the global batch stream, the same on every rank
    meter = FailureMeter(cfg.stream, run.reduce_sums)  # streamed windows that failed to decode, over all ranks
    st: dict[str, Any] = {"history": [], "best": None, "seconds": 0.0, "round": {"loss": 0.0, "correct": 0.0,
                                                                                 "n": 0}, "stream": meter.state()}
    t_round = time.perf_counter()
    stream: dict[str, Any] = {"next": None, "it": None}  # the streamed batches' iterator and the step it yields next

    def streamed_batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        if stream["next"] != i:  # first step, or after a resume: batches from step i on (a pure function of i)
            mine = run.shard(range(cfg.optim.batch_size))
            jobs = StepJobs(train_src, cfg.seed, i, cfg.optim.steps, cfg.optim.batch_size, cfg.flip, other, mine)
            dataset = PairWindows(train_src, cfg.seed, cfg.stream, cache=caches[0])
            stream["it"] = iter(pair_loader(dataset, jobs, cfg.stream.workers, cfg.stream.prefetch,
                                            device.type == "cuda", cfg.seed * 100_003 + i))
        batch = next(stream["it"])
        stream["next"] = i + 1
        _, _, _, _, failures, silent, lost = batch
        skipped = meter.update(len(lost) - int(lost.sum()), int(failures.sum()), int(lost.sum()))
        return (*model_inputs(batch, clip, device, other), {"skipped": skipped, "silent": float(silent.sum())})

    def one_step(i: int) -> tuple[torch.Tensor, dict[str, float], int]:
        logs: dict[str, float] = {}
        if streaming:
            v, a, y, logs = streamed_batch(i)
            n_mine = len(v)
        else:
            pairs, flips = draw_batch(rng, train_clips, clip, shifts, cfg.optim.batch_size, cfg.flip, other)
            mine = run.shard(range(len(pairs)))
            n_mine = len(mine)
            v, a, y = (torch.from_numpy(x).to(device) for x in
                       pair_batch(train_clips, clip, [pairs[k] for k in mine],
                                  None if flips is None else flips[mine], other))
        loss, logit = train_step(v, a, y)
        correct = ((logit.detach() > 0).float() == y).sum().item()
        r = st["round"]
        r["loss"] += loss.item() * len(y)
        r["correct"] += correct
        r["n"] += len(y)
        return loss, {"loss": loss.item(), "accuracy": correct / len(y), **logs}, n_mine

    def round_end(_r: int, done: int) -> dict[str, float]:
        nonlocal t_round
        if streaming:
            loader = pair_loader(PairWindows(val_src, cfg.seed, cfg.stream, retries=0, cache=caches[1]),
                                 [val_pairs[run.rank::run.world_size][s:s + 32]
                                  for s in range(0, len(val_pairs[run.rank::run.world_size]), 32)],
                                 cfg.stream.workers, cfg.stream.prefetch, device.type == "cuda", cfg.seed)
            sums = eval_sums_streamed(model, loader, clip, device)
        else:
            sums = eval_sums(model, val_clips, clip, val_pairs[run.rank::run.world_size], device)
        va = _means(run.reduce_sums(sums))
        tr = run.reduce_sums({"loss_sum": st["round"]["loss"], "correct": st["round"]["correct"],
                              "n": st["round"]["n"]})
        tr = _means(tr) if tr["n"] else {"loss": float("nan"), "accuracy": float("nan")}
        seconds = time.perf_counter() - t_round
        st["seconds"] += seconds
        st["history"].append({"step": done, "train": {k: tr[k] for k in ("loss", "accuracy")}, "val": va,
                              "seconds": seconds})
        st["round"] = {"loss": 0.0, "correct": 0.0, "n": 0}
        log.info("step %d train loss %.3f acc %.3f | val loss %.3f acc %.3f (%.0f s)", done, tr["loss"],
                 tr["accuracy"], va["loss"], va["accuracy"], seconds)
        if st["best"] is None or va["accuracy"] >= st["best"]["val"]["accuracy"]:
            st["best"] = st["history"][-1]
            run.save("best.pt", run.checkpoint_payload(model, **provenance(),
                                                       metrics={"step": done, **val_metrics(va)}))
        t_round = time.perf_counter()
        return val_metrics(va)

    def provenance() -> dict[str, Any]:
        return {"model": cfg.model, "model_config": dataclasses.asdict(mcfg), "shift_s": list(shifts)}

    def state() -> dict[str, Any]:
        return {**st, "stream": meter.state()}

    def load_state(d: dict[str, Any]) -> None:
        st.update(d)
        if "stream" in d:
            meter.load_state(d["stream"])
        stream["next"] = None

    loop = Loop(models=[model], optimizers=[optimizer], schedulers=[scheduler], steps=cfg.optim.steps,
                round_steps=cfg.eval_every, step=one_step, round_end=round_end, state=state,
                load_state=load_state, generators={"batches": rng}, payload=provenance)
    result = fit_to_best(run, loop, st, at="step")
    if streaming:
        result.update(windows_drawn=meter.windows, windows_skipped=meter.failures)
    return result
