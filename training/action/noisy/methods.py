"""Training routines for noisy audio-visual data, all on one backbone (an :class:`AVActionNet`) and one budget
(``epochs`` passes over the training clips, batch size, AdamW + one-cycle):

- ``ce``: plain cross-entropy on the given labels;
- ``gce``: generalized cross-entropy, q = 0.7;
- ``sce``: symmetric cross-entropy, alpha = 0.1, beta = 1.0, log 0 = -4;
- ``coteaching``: two networks, each trained on the small-loss part of the batch chosen by the other; the
  forget rate ramps to the label-noise rate over the first quarter of training (two networks: twice the
  compute, as in the paper);
- ``ntl``: noise-tolerant learning. Phase 1 (``phase1_frac`` of the epochs) learns from the pairing only:
  a symmetric cross-modal InfoNCE weighted per pair by the estimated probability that the pair corresponds
  (a 2-component mixture fitted each epoch to the per-pair losses over the whole set), plus a category-level
  loss against k-means prototypes. Phase 2 trains the classifier on the given labels, then, refreshed every
  ``refresh`` epochs, on targets that keep a given label where a loss mixture trusts it and put a kNN-corrected
  label (from the classifier's features) where it does not and the correction is confident; a pair estimated
  not to correspond keeps its label but is trained with its audio zeroed, with probability 1 - its weight.

Every routine returns ``(model, info)``; ``info`` holds per-epoch logs and, for ``ntl``, the estimation AUC
and label-correction counts when the true noise is passed in. Each takes its clips as a
:class:`~training.action.noisy.source.ClipSource`: stacked in RAM (:class:`~training.action.noisy.arrays.ArraySet`)
or streamed from a manifest (:class:`~training.action.noisy.stream.StreamedClips`), on one code path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.action.noisy import estimation as est
from training.action.noisy.losses import (
    cross_modal_nce,
    gce_loss,
    hybrid_targets,
    prototype_nce,
    sce_loss,
    soft_cross_entropy,
    weighted_mean,
)
from training.action.noisy.source import ClipSource
from training.data.noise import NoiseReport
from training.engine import Loop, Run, fit

log = logging.getLogger(__name__)


@dataclass
class NTLConfig:
    phase1_frac: float = 0.25  # share of the epochs spent on label-free contrastive training
    tau: float = 0.1  # instance-level InfoNCE temperature
    warmup: int = 2  # phase-1 epochs with every pair at full weight before the mixture is trusted
    proto_weight: float = 0.5
    proto_tau: float = 0.1
    clusters_per_class: int = 2  # k-means prototypes: this many per class (categories are found, not given)
    knn_k: int = 20
    correct_from: float = 0.3  # share of phase 2 trained on the given labels before the first correction
    refresh: int = 2  # phase-2 epochs between kNN label refreshes
    consistent: bool = True  # a corrected label counts only where the classifier's own prediction agrees
    q_min: float = 0.6  # ... and where its vote share reaches this
    hard_trust: bool = True  # trust in a given label: 1 where the loss mixture's clean posterior > 0.5, else 0
    chance_trust: bool = True  # distrust no label when the mixture's high-loss part is not below chance
    per_class_trust: bool = True  # one loss mixture per given class
    loss_average: bool = True  # trust from each clip's loss averaged over the phase-2 epochs so far
    mute_suspect_audio: bool = True  # phase 2: zero a pair's audio with probability 1 - w instead of weighing it
    min_weight: float = 0.0  # floor of a pair's weight
    # ablation switches
    contrastive: bool = True  # phase 1 at all (off: every epoch is phase 2, features from the classifier)
    estimation: bool = True  # cross-modal noise estimation (off: every pair weighs 1)
    category: bool = True  # category-level (prototype) loss
    trust: bool = True  # phase-2 trust in the given labels from the loss mixture (off: every given label counts)
    correction: bool = True  # phase-2 corrected labels (off: given labels only)
    given: bool = True  # phase-2 given labels (off: corrected labels only)


@dataclass
class RunConfig:
    epochs: int = 16
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    modality_dropout: float = 0.15
    seed: int = 0
    gce_q: float = 0.7
    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    forget_rate: float | None = None  # co-teaching; None: the label noise rate of the run
    ramp_frac: float = 0.25
    ntl: NTLConfig = field(default_factory=NTLConfig)


ModelFactory = Callable[[], nn.Module]
EpochHook = Callable[[nn.Module, int, dict], None]


# ---------------------------------------------------------------------------------------------- shared pieces


def _batches(n: int, bs: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    bs = min(bs, n)
    return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]  # drop the last partial batch


def _optimizer(params, cfg: RunConfig, steps: int):
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    return opt, sched


def _modality_dropout(video: torch.Tensor, audio: torch.Tensor, p: float, u: np.ndarray) -> np.ndarray:
    """In place, as ``train_action.zero_modalities``, from one uniform ``u`` per sample: with probability p a sample
    loses its video, with probability p its audio. Returns the mask of samples whose audio was zeroed."""
    if p > 0:  # the masks go to the inputs' device (a streamed batch is there already)
        video[torch.from_numpy(u < p).to(video.device)] = 0.0
        audio[torch.from_numpy((u >= p) & (u < 2 * p)).to(audio.device)] = 0.0
    return (u >= p) & (u < 2 * p) if p > 0 else np.zeros(video.shape[0], dtype=bool)


@dataclass
class _Batch:
    """This rank's share of a global batch: clip indices, inputs on the device, audio-zeroed mask; ``rows``: the
    whole global batch's clips (after any replacement of a file that failed), ``logs``: the source's per-step
    scalars."""

    idx: np.ndarray
    video: torch.Tensor
    audio: torch.Tensor
    audio_off: np.ndarray
    rows: np.ndarray
    logs: dict[str, float]


def _train_batch(run: Run, data: ClipSource, idx: np.ndarray, cfg: RunConfig, rng: np.random.Generator,
                 dropout: bool = True, mute: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
                 ) -> _Batch:
    """The source cuts this rank's share of the global batch ``idx`` (an in-RAM set draws the window starts from
    ``rng`` first); modality dropout and (``mute``) further muted audio are drawn for the global batch from ``rng``
    (the same stream on every rank). A window without sound counts as audio-zeroed (a video-only sample)."""
    part = data.batch(idx, rng, run)
    u = rng.random(len(idx))
    muted = mute(part.rows, rng) if mute is not None else None
    mine = np.asarray(run.shard(range(len(idx))), dtype=np.int64)
    video, audio = part.video, part.audio
    audio_off = _modality_dropout(video, audio, cfg.modality_dropout if dropout else 0.0, u[mine])
    if muted is not None:
        extra = muted[mine] & ~audio_off
        audio[torch.from_numpy(extra).to(audio.device)] = 0.0
        audio_off = audio_off | extra
    return _Batch(part.idx, video.to(run.device), audio.to(run.device), audio_off | part.silent, part.rows,
                  part.logs)


def _epoch_loop(run: Run, models: list[nn.Module], optimizers: list, schedulers: list, data: ClipSource,
                cfg: RunConfig, epochs: int, rng: np.random.Generator,
                step: Callable[[np.ndarray], tuple[torch.Tensor, dict[str, float]]],
                epoch_end: Callable[[int, dict], dict | None], offset: int = 0, total: int | None = None,
                state: Callable[[], dict] = dict, load_state: Callable[[dict], None] = lambda _d: None) -> Loop:
    """``epochs`` passes over ``data`` in batches of a fresh permutation each (drawn from ``rng`` at the epoch's
    start): ``step(global batch indices)`` gives the loss and logs of a step; ``epoch_end(epoch, record)`` is
    called after each epoch with ``{"epoch", "loss", "seconds"}``. The source is told each epoch's batches (keyed by
    the run's epoch, over all loops of the run) before the first of them is asked for."""
    per_epoch = max(len(data) // min(cfg.batch_size, len(data)), 1)
    cur: dict[str, Any] = {"epoch": None, "batches": [], "loss": 0.0, "n": 0}
    t0 = [time.perf_counter()]
    live: list[int | None] = [None]  # the epoch whose batches the source was told of

    def one_step(i: int) -> tuple[torch.Tensor, dict[str, float], int]:
        epoch, b = divmod(i, per_epoch)
        if cur["epoch"] != epoch:  # a new epoch (a resumed run restores the one it was in)
            cur.update(epoch=epoch, batches=[torch.from_numpy(x) for x in _batches(len(data), cfg.batch_size, rng)])
        if live[0] != epoch:  # a new epoch, or the first step after a resume
            data.start_epoch(offset // per_epoch + epoch, [x.numpy() for x in cur["batches"]], b, run)
            live[0] = epoch
        idx = cur["batches"][b].numpy()
        loss, logs = step(idx)
        cur["loss"] += loss.item()
        cur["n"] += 1
        return loss, {"loss": loss.item(), **logs}, len(idx) // run.world_size

    def round_end(epoch: int, _done: int) -> dict:
        data.end_epoch()  # before the epoch's end forks workers of its own (NTL's whole-set passes, validation)
        live[0] = None
        r = run.reduce_sums({"loss": cur["loss"], "n": cur["n"]})
        record = {"epoch": epoch, "loss": r["loss"] / max(r["n"], 1), "seconds": time.perf_counter() - t0[0]}
        cur.update(loss=0.0, n=0)
        metrics = epoch_end(epoch, record) or {}
        t0[0] = time.perf_counter()
        return metrics

    def full_state() -> dict:
        source = data.state()  # {} in RAM: its checkpoints stay as they were
        return {"epochs": dict(cur), **state(), **({"source": source} if source else {})}

    def load_full(d: dict) -> None:
        cur.update(d["epochs"])
        if "source" in d:
            data.load_state(d["source"])
        load_state(d)

    return Loop(models=models, optimizers=optimizers, schedulers=schedulers, steps=epochs * per_epoch,
                round_steps=per_epoch, step=one_step, round_end=round_end, state=full_state, load_state=load_full,
                generators={"batches": rng}, offset=offset, total=total)


def accuracy(model: nn.Module, data: ClipSource, zero: str | None = None, run: Run | None = None) -> float:
    """The share of clips whose mean window softmax (the service's sliding windows) picks their label. A streamed
    set's clips are split over the ranks and the counts summed: call it on every rank."""
    return data.accuracy(model, run or Run.local(next(model.parameters()).device), zero)


@torch.inference_mode()
def embed(model: nn.Module, data: ClipSource, batch: int = 64, run: Run | None = None
          ) -> dict[str, torch.Tensor] | None:
    """Of every clip's middle window, eval mode: video and audio embeddings ``v``, ``a`` (``forward_features``),
    the classifier's penultimate activations ``h`` and its ``logits``; (N, ...) tensors on the model's device, on
    rank 0 (None on the other ranks; call it on every rank). An in-RAM set is embedded whole on rank 0; a streamed
    one is decoded and embedded by every rank for its share, and rank 0 gathers the shares."""
    run = run or Run.local(next(model.parameters()).device)
    if not data.sharded and not run.is_main:
        return None
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"v": [], "a": [], "h": [], "logits": []}
    head = model.head
    for _, video, audio in data.middle_windows(run, batch):
        v, a = model.forward_features(video, audio)
        h = head[:-1](torch.cat([v, a], dim=1))  # (B, D) input of the last linear layer
        for key, x in (("v", v), ("a", a), ("h", h), ("logits", head[-1](h))):
            out[key].append(x)
    mine = {k: torch.cat(x) for k, x in out.items()} if out["v"] else None
    if not (data.sharded and run.distributed):
        return mine
    device = next(model.parameters()).device
    parts = run.gather_to_main(None if mine is None else {k: x.cpu() for k, x in mine.items()})
    if parts is None:
        return None
    return {k: torch.cat([p[k] for p in parts if p is not None]).to(device) for k in out}


@torch.inference_mode()
def bank_pair_losses(v: torch.Tensor, a: torch.Tensor, tau: float, chunk: int = 4096) -> torch.Tensor:
    """Per-pair symmetric InfoNCE over the whole set (every other clip a negative): the statistic the
    correspondence mixture is fitted to. Tiled (:func:`est.pair_nce_losses`), never an N x N matrix.
    Shape: (N, D), (N, D) -> (N,)."""
    return est.pair_nce_losses(v, a, tau, chunk)


def _supervised(model: nn.Module, data: ClipSource, cfg: RunConfig, epochs: int,
                loss_fn: Callable[[torch.Tensor, np.ndarray, np.ndarray], torch.Tensor],
                hook: EpochHook | None = None, rng: np.random.Generator | None = None,
                mute: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                run: Run | None = None, offset: int = 0, total: int | None = None,
                state: Callable[[], dict] = dict, load_state: Callable[[dict], None] = lambda _d: None
                ) -> list[dict]:
    """A supervised loop on the engine; ``loss_fn(logits, clip indices, audio-zeroed mask)`` gives the batch loss;
    ``mute(clip indices, rng)``, if given, marks further samples whose audio is zeroed for this step."""
    run = run or Run.local()
    rng = rng or np.random.default_rng(cfg.seed)
    steps = epochs * max(len(data) // min(cfg.batch_size, len(data)), 1)
    opt, sched = _optimizer(model.parameters(), cfg, steps)
    history: list[dict] = []

    def forward(m: nn.Module, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        with run.autocast():
            return m(video, audio).float()

    train_step = run.wrap(forward, model)

    def step(idx: np.ndarray) -> tuple[torch.Tensor, dict]:
        b = _train_batch(run, data, idx, cfg, rng, mute=mute)
        return loss_fn(train_step(b.video, b.audio), b.idx, b.audio_off), b.logs

    def epoch_end(epoch: int, record: dict) -> dict:
        if hook is not None:
            hook(model, epoch, record)
        history.append(record)
        log.debug("epoch %d %s", epoch, record)
        return {"epoch": offset // max(steps // max(epochs, 1), 1) + epoch}

    loop = _epoch_loop(run, [model], [opt], [sched], data, cfg, epochs, rng, step, epoch_end, offset, total,
                       state=lambda: {"history": list(history), **state()},
                       load_state=lambda d: (history.__setitem__(slice(None), d["history"]), load_state(d)))
    fit(run, loop)
    return history


def _labels(data: ClipSource) -> torch.Tensor:
    return torch.from_numpy(data.labels)


# ------------------------------------------------------------------------------------------------- baselines


def train_ce(make: ModelFactory, data: ClipSource, cfg: RunConfig, noise: NoiseReport | None = None,
             hook: EpochHook | None = None, run: Run | None = None, **loop: Any):
    run = run or Run.local()
    model, y = make().to(run.device), _labels(data).to(run.device)
    hist = _supervised(model, data, cfg, cfg.epochs,
                       lambda logits, idx, _: F.cross_entropy(logits, y[idx]), hook, run=run, **loop)
    return model, {"history": hist}


def train_gce(make: ModelFactory, data: ClipSource, cfg: RunConfig, noise: NoiseReport | None = None,
              hook: EpochHook | None = None, run: Run | None = None, **loop: Any):
    run = run or Run.local()
    model, y = make().to(run.device), _labels(data).to(run.device)
    hist = _supervised(model, data, cfg, cfg.epochs,
                       lambda logits, idx, _: gce_loss(logits, y[idx], cfg.gce_q).mean(), hook, run=run, **loop)
    return model, {"history": hist}


def train_sce(make: ModelFactory, data: ClipSource, cfg: RunConfig, noise: NoiseReport | None = None,
              hook: EpochHook | None = None, run: Run | None = None, **loop: Any):
    run = run or Run.local()
    model, y = make().to(run.device), _labels(data).to(run.device)
    hist = _supervised(model, data, cfg, cfg.epochs,
                       lambda logits, idx, _: sce_loss(logits, y[idx], cfg.sce_alpha, cfg.sce_beta).mean(), hook,
                       run=run, **loop)
    return model, {"history": hist}


def train_coteaching(make: ModelFactory, data: ClipSource, cfg: RunConfig, noise: NoiseReport | None = None,
                     hook: EpochHook | None = None, run: Run | None = None, state: Callable[[], dict] = dict,
                     load_state: Callable[[dict], None] = lambda _d: None, **_loop: Any):
    """Co-teaching (Han et al., 2018). Returns the first network (the paper's convention). Under torchrun each
    rank picks the small-loss samples of its own share of the batch."""
    run = run or Run.local()
    rng = np.random.default_rng(cfg.seed)
    m1, m2 = make().to(run.device), make().to(run.device)
    y = _labels(data).to(run.device)
    forget = cfg.forget_rate
    if forget is None:
        forget = float(noise.settings.get("label_noise", 0.0)) if noise is not None else 0.0
    ramp = max(1, round(cfg.ramp_frac * cfg.epochs))
    steps = cfg.epochs * max(len(data) // min(cfg.batch_size, len(data)), 1)
    (o1, s1), (o2, s2) = _optimizer(m1.parameters(), cfg, steps), _optimizer(m2.parameters(), cfg, steps)
    per_epoch = max(len(data) // min(cfg.batch_size, len(data)), 1)
    history: list[dict] = []

    def forward(a: nn.Module, b: nn.Module, video: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor,
                rate: float) -> torch.Tensor:
        with run.autocast():
            z1, z2 = a(video, audio), b(video, audio)
        l1 = F.cross_entropy(z1.float(), labels, reduction="none")
        l2 = F.cross_entropy(z2.float(), labels, reduction="none")
        keep = max(1, int(round((1 - rate) * len(labels))))
        pick1 = torch.argsort(l1.detach())[:keep]  # m1's small-loss samples teach m2, and vice versa
        pick2 = torch.argsort(l2.detach())[:keep]
        return l1[pick2].mean() + l2[pick1].mean()

    train_step = run.wrap(forward, m1, m2)

    def rate_at(epoch: int) -> float:
        return forget * min(1.0, epoch / ramp)

    def step(idx: np.ndarray) -> tuple[torch.Tensor, dict]:
        b = _train_batch(run, data, idx, cfg, rng)
        epoch = len(history)
        loss = train_step(b.video, b.audio, y[torch.from_numpy(b.idx).to(y.device)], rate_at(epoch))
        return loss, b.logs

    def epoch_end(epoch: int, record: dict) -> dict:
        record = {"epoch": epoch, "loss": record["loss"] / 2, "forget_rate": rate_at(epoch),
                  "seconds": record["seconds"]}
        if hook is not None:
            hook(m1, epoch, record)
        history.append(record)
        return {"epoch": epoch, "forget_rate": record["forget_rate"]}

    loop = _epoch_loop(run, [m1, m2], [o1, o2], [s1, s2], data, cfg, cfg.epochs, rng, step, epoch_end,
                       state=lambda: {"history": list(history), **state()},
                       load_state=lambda d: (history.__setitem__(slice(None), d["history"]), load_state(d)))
    assert loop.steps == cfg.epochs * per_epoch
    fit(run, loop)
    return m1, {"history": history}


# ------------------------------------------------------------------------------------------------------- NTL


@dataclass
class _PairState:
    # what the phase-1 loop indexes per batch stays in numpy on the host; the estimation behind it runs on the
    # model's device (:func:`_update_pairs`)
    weights: np.ndarray  # (N,) probability that each pair corresponds
    assign: np.ndarray | None = None  # (N,) cluster per clip
    proto_v: torch.Tensor | None = None  # (C, D)
    proto_a: torch.Tensor | None = None


def _on(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A host array as a tensor on ``like``'s device."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(like.device)


def _pair_weights(losses: torch.Tensor, audible: np.ndarray, c: NTLConfig) -> torch.Tensor:
    """The mixture's posterior that each pair corresponds, fitted to the pairs with sound only; a pair without sound
    never corresponds (weight 0)."""
    if audible.all():
        return est.gmm_clean_probability(losses).clamp_min(c.min_weight)
    keep = _on(audible, losses)
    w = torch.zeros_like(losses)
    if keep.sum() >= 2:
        w[keep] = est.gmm_clean_probability(losses[keep]).clamp_min(c.min_weight).to(w.dtype)
    return w


def _update_pairs(e: dict[str, torch.Tensor], data: ClipSource, c: NTLConfig, num_classes: int, state: _PairState,
                  epoch: int, noise: NoiseReport | None, seed: int) -> dict:
    """After a phase-1 epoch, from every clip's embeddings ``e``: per-pair losses over the whole set -> mixture ->
    weights; k-means prototypes. All on the model's device, chunked (memory O(N k), not O(N^2))."""
    v, a = e["v"], e["a"]
    losses = bank_pair_losses(v, a, c.tau)
    record: dict = {}
    if noise is not None and len(noise.corr_noisy):
        record["corr_auc_loss"] = est.roc_auc(losses, _on(noise.corr_mask(), losses))
    trusted = epoch + 1 >= c.warmup
    if c.estimation and trusted:
        w = _pair_weights(losses, data.audible, c)
        state.weights = w.cpu().numpy()
        if noise is not None and len(noise.corr_noisy):
            mask = noise.corr_mask()
            record["corr_auc"] = est.roc_auc(1.0 - w, _on(mask, w))
            record["weight_clean_mean"] = float(state.weights[~mask].mean())
            record["weight_noisy_mean"] = float(state.weights[mask].mean())
    if c.category and trusted:
        vn, an = est.l2_normalize(v.float()), est.l2_normalize(a.float())
        k = c.clusters_per_class * num_classes
        w = _on(state.weights, vn)
        _, assign = est.kmeans(vn + an, k, weights=w, seed=seed + epoch)
        state.assign = assign.cpu().numpy()
        state.proto_v = est.cluster_sums(vn, assign, k, w)
        state.proto_a = est.cluster_sums(an, assign, k, w)
    return record


def _correction_stats(corrected: torch.Tensor, data: ClipSource, noise: NoiseReport | None) -> dict:
    if noise is None:
        return {}
    corrected = corrected.cpu().numpy()
    wrong = noise.label_mask()
    clean = noise.clean_labels
    return {
        "label_noisy": int(wrong.sum()),
        "corrected": int((corrected[wrong] == clean[wrong]).sum()),  # wrong given labels whose correction is right
        "broken": int((corrected[~wrong] != clean[~wrong]).sum()),  # right given labels the correction changes
        "corrected_label_accuracy": float((corrected == clean).mean()),
        "given_label_accuracy": float((data.labels == clean).mean()),
    }


def _between_phases(run: Run, model: nn.Module, data: ClipSource, c: NTLConfig, k_cls: int, pairs: _PairState,
                    info: dict, nt: dict, noise: NoiseReport | None, e1: int) -> None:
    """After phase 1, once: the estimates' scores against the planted noise (when known), and phase 2's first
    targets, the given labels."""
    if e1 and noise is not None and len(noise.corr_noisy) and "corr_auc" in info["phase1"][-1]:
        info["corr_auc"] = info["phase1"][-1]["corr_auc"]
    if e1 and noise is not None and len(noise.corr_noisy):
        info["corr_auc_loss"] = info["phase1"][-1]["corr_auc_loss"]
    given = data.labels
    e = embed(model, data, run=run) if e1 and noise is not None else None
    if e is not None:  # diagnostic (rank 0): how well would phase-1 features alone correct
        feats = torch.cat([est.l2_normalize(e["v"]), est.l2_normalize(e["a"])], dim=1)
        votes = est.knn_label_votes(feats, _on(given, feats), k_cls, c.knn_k, weights=_on(pairs.weights, feats))
        info["phase1_knn"] = _correction_stats(votes.argmax(1), data, noise)
        log.info("ntl phase-1 features, kNN labels: %s", info["phase1_knn"])
    nt["targets"] = torch.from_numpy(np.eye(k_cls, dtype=np.float32)[given])
    nt["between"] = True


def _tensors(x: Any) -> Any:
    """numpy arrays and scalars in ``x`` as torch tensors and Python numbers (what a weights-only load accepts)."""
    if isinstance(x, dict):
        return {k: _tensors(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_tensors(v) for v in x)
    if isinstance(x, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(x))}
    if isinstance(x, np.generic):
        return x.item()
    return x


def _arrays(x: Any) -> Any:
    """The inverse of :func:`_tensors`."""
    if isinstance(x, dict):
        if set(x) == {"__ndarray__"}:
            return x["__ndarray__"].numpy()
        return {k: _arrays(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_arrays(v) for v in x)
    return x


def train_ntl(make: ModelFactory, data: ClipSource, cfg: RunConfig, noise: NoiseReport | None = None,
              hook: EpochHook | None = None, run: Run | None = None, state: Callable[[], dict] = dict,
              load_state: Callable[[dict], None] = lambda _d: None, **_loop: Any):
    """Noise-tolerant learning: label-free noise-tolerant contrastive phase, then hybrid supervision. The phases
    are two loops of one run (their optimizers differ); every estimate between epochs is made once, on rank 0,
    and broadcast, so all ranks train on the same weights and targets."""
    run = run or Run.local()
    c = cfg.ntl
    rng = np.random.default_rng(cfg.seed)
    model = make().to(run.device)
    k_cls = int(model.cfg.num_classes)
    n = len(data)
    pairs = _PairState(weights=np.where(data.audible, 1.0, 0.0))  # a pair without sound never corresponds
    info: dict = {"phase1": [], "phase2": [], "corrections": []}
    nt: dict[str, Any] = {"targets": None, "loss_sum": 0.0, "between": False}  # loss_sum: (N,) once summed

    def ntl_state() -> dict:
        return {"pairs": _tensors(dataclasses.asdict(pairs)), "info": _tensors(info), "between": nt["between"],
                "targets": nt["targets"], "loss_sum": nt["loss_sum"], **state()}

    def ntl_load(d: dict) -> None:
        for k, v in _arrays(d["pairs"]).items():
            setattr(pairs, k, v)
        info.clear()
        info.update(_arrays(d["info"]))
        nt.update(between=d["between"], targets=d["targets"], loss_sum=d["loss_sum"])
        load_state(d)

    # ---- phase 1: cross-modal contrast, weighted by estimated correspondence, plus category-level contrast
    e1 = round(c.phase1_frac * cfg.epochs) if c.contrastive else 0
    per_epoch = max(n // min(cfg.batch_size, n), 1)
    steps = e1 * per_epoch
    total = cfg.epochs * per_epoch
    if e1:
        opt, sched = _optimizer(model.parameters(), cfg, steps)
        sums = [0.0, 0.0, 0]

        def forward1(m: nn.Module, video: torch.Tensor, audio: torch.Tensor, w: torch.Tensor,
                     assign: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            """Both losses over the global batch (``w``, ``assign``: global; under torchrun the embeddings are
            gathered from every rank, so each clip's negatives are the whole batch's other clips)."""
            with run.autocast():
                v, a = m.forward_features(video, audio)
            v, a = run.gather_batch(v.float()), run.gather_batch(a.float())
            loss_i = weighted_mean(cross_modal_nce(v, a, c.tau), w)
            loss_c = torch.zeros((), device=v.device)
            if assign is not None:
                loss_c = weighted_mean(prototype_nce(v, a, pairs.proto_v.to(v.device), pairs.proto_a.to(v.device),
                                                     assign, c.proto_tau), w)
            return loss_i, loss_c

        step1 = run.wrap(forward1, model)

        def p1_step(idx: np.ndarray) -> tuple[torch.Tensor, dict]:
            b = _train_batch(run, data, idx, cfg, rng, dropout=False)
            w = torch.from_numpy(pairs.weights[b.rows]).float().to(run.device)
            assign = (torch.from_numpy(pairs.assign[b.rows]).to(run.device)
                      if c.category and pairs.assign is not None else None)
            loss_i, loss_c = step1(b.video, b.audio, w, assign)
            sums[0] += loss_i.item()
            sums[1] += loss_c.item()
            sums[2] += 1
            return loss_i + c.proto_weight * loss_c, {"loss_instance": loss_i.item(), "loss_category": loss_c.item(),
                                                      **b.logs}

        def p1_end(epoch: int, rec: dict) -> dict:
            s = run.reduce_sums({"i": sums[0], "c": sums[1], "n": sums[2]})
            sums[:] = [0.0, 0.0, 0]
            record = {"epoch": epoch, "loss_instance": s["i"] / max(s["n"], 1),
                      "loss_category": s["c"] / max(s["n"], 1)}
            e = embed(model, data, run=run)  # on rank 0 (a streamed set: every rank embeds its share)
            if run.is_main:
                record.update(_update_pairs(e, data, c, k_cls, pairs, epoch, noise, cfg.seed))
            record, shared = run.broadcast((record, dataclasses.asdict(pairs)))
            for k, v in shared.items():
                setattr(pairs, k, v)
            record["seconds"] = rec["seconds"]
            info["phase1"].append(record)
            log.info("ntl phase 1 epoch %d %s", epoch, {k: round(v, 4) for k, v in record.items()})
            return {"epoch": epoch, **{k: v for k, v in record.items() if k not in ("epoch", "seconds")}}

        fit(run, _epoch_loop(run, [model], [opt], [sched], data, cfg, e1, rng, p1_step, p1_end, 0, total,
                             state=ntl_state, load_state=ntl_load))
        if run.stop_requested:
            return model, info
    if not nt["between"]:
        _between_phases(run, model, data, c, k_cls, pairs, info, nt, noise, e1)

    # ---- phase 2: hybrid supervision with given and kNN-corrected labels
    given = data.labels
    # phase 2 weighs (or mutes) what the estimate doubts; a pair without sound has no foreign audio to doubt: it is a
    # video-only sample (its batches mark it audio-zeroed)
    pair_w = np.where(data.audible, pairs.weights, 1.0) if c.estimation else np.ones(n)

    def given_loss(e: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(e["logits"], _on(given, e["logits"]), reduction="none").double()

    def refresh(e: dict[str, torch.Tensor], ce: torch.Tensor) -> None:
        """Corrected labels from a kNN vote among the current features; trust in each given label from
        :func:`est.label_trust` over the classifier's per-clip losses ``ce`` on it (small loss: probably right).
        On the features' device; the new targets live there too."""
        given_t = _on(given, e["h"])
        p_given = (est.label_trust(ce, k_cls, c.hard_trust, c.chance_trust, given_t if c.per_class_trust else None)
                   if c.trust else torch.ones(n, dtype=torch.float64, device=given_t.device))
        votes = est.knn_label_votes(e["h"], given_t, k_cls, c.knn_k, weights=_on(pair_w, p_given) * p_given + 1e-3)
        corrected, q, _ = est.corrected_labels(votes, given_t)
        q = torch.where(q >= c.q_min, q, 0.0) if c.correction else torch.zeros_like(q)
        if c.consistent:  # two views (neighbours, classifier) must agree before a correction counts
            q = torch.where(e["logits"].argmax(1) == corrected, q, 0.0)
        if c.given:
            nt["targets"] = hybrid_targets(given_t, corrected, p_given, q, k_cls).float()
        else:
            nt["targets"] = F.one_hot(corrected, k_cls).float()
        stats = _correction_stats(corrected, data, noise)
        stats["changed"] = int((corrected != given_t).sum())
        stats["doubted"] = int((p_given < 0.5).sum())
        if noise is not None and len(noise.label_noisy):
            stats["label_auc"] = est.roc_auc(1.0 - p_given, _on(noise.label_mask(), p_given))
        info["corrections"].append(stats)
        log.info("ntl label refresh %s", stats)

    e2 = cfg.epochs - e1

    def on_epoch(m: nn.Module, epoch: int, record: dict) -> None:
        # the first refresh comes after `correct_from` of phase 2 on the given labels: the classifier must have
        # learned the classes (it fits the clean majority before it memorises the wrong labels)
        # with ``loss_average`` every epoch's losses are kept: a wrong label fitted late, by memorisation, keeps
        # the high losses of the early epochs
        start = max(1, round(c.correct_from * e2))
        due = epoch + 1 >= start and (epoch + 1 - start) % c.refresh == 0 and epoch + 1 < e2
        if due or c.loss_average:
            e = embed(m, data, run=run)
            if run.is_main:  # once, on rank 0; the result is broadcast
                ce = given_loss(e)
                nt["loss_sum"] = nt["loss_sum"] + ce
                if due:
                    refresh(e, nt["loss_sum"] / (epoch + 1) if c.loss_average else ce)
            shared = run.broadcast((nt["targets"], nt["loss_sum"], info["corrections"]))
            nt["targets"], nt["loss_sum"], info["corrections"] = shared
        if hook is not None:
            hook(m, e1 + epoch, record)

    def loss_fn(logits: torch.Tensor, idx: np.ndarray, audio_off: np.ndarray) -> torch.Tensor:
        w = np.ones(len(idx)) if c.mute_suspect_audio else pair_w[idx].copy()
        w[audio_off] = 1.0  # a clip whose (maybe foreign) audio was dropped is a clean video-only sample
        target = nt["targets"][torch.from_numpy(idx)].to(logits.device)
        return weighted_mean(soft_cross_entropy(logits, target), torch.from_numpy(w).float().to(logits.device))

    def mute(idx: np.ndarray, r: np.random.Generator) -> np.ndarray:
        """A pair that probably does not correspond keeps its label (it describes the picture) but loses its
        audio: muted with probability 1 - w."""
        return r.random(len(idx)) >= pair_w[idx]

    info["phase2"] = _supervised(model, data, cfg, e2, loss_fn, on_epoch, rng,
                                 mute if c.mute_suspect_audio else None, run=run, offset=steps, total=total,
                                 state=ntl_state, load_state=ntl_load)
    if info["corrections"]:
        info["labels_corrected"] = info["corrections"][-1].get("corrected")
        info["labels_broken"] = info["corrections"][-1].get("broken")
    info["ntl"] = asdict(c)
    return model, info


METHODS: dict[str, Callable] = {
    "ce": train_ce,
    "gce": train_gce,
    "sce": train_sce,
    "coteaching": train_coteaching,
    "ntl": train_ntl,
}
