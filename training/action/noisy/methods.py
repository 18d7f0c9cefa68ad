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
and label-correction counts when the true noise is passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.action.noisy import estimation as est
from training.action.noisy.arrays import ArraySet, eval_windows, random_starts, window_batch
from training.action.noisy.losses import (
    cross_modal_nce,
    gce_loss,
    hybrid_targets,
    prototype_nce,
    sce_loss,
    soft_cross_entropy,
    weighted_mean,
)
from training.data.noise import NoiseReport

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


def _modality_dropout(video: torch.Tensor, audio: torch.Tensor, p: float,
                      rng: np.random.Generator) -> np.ndarray:
    """In place, as ``train_action.zero_modalities``: with probability p a sample loses its video, with
    probability p its audio. Returns the mask of samples whose audio was zeroed."""
    u = rng.random(video.shape[0])
    if p > 0:
        video[torch.from_numpy(u < p)] = 0.0
        audio[torch.from_numpy((u >= p) & (u < 2 * p))] = 0.0
    return (u >= p) & (u < 2 * p) if p > 0 else np.zeros(video.shape[0], dtype=bool)


def _train_batch(data: ArraySet, idx: np.ndarray, cfg: RunConfig, rng: np.random.Generator, dropout: bool = True):
    video, audio = window_batch(data, idx, random_starts(data, len(idx), rng))
    audio_off = _modality_dropout(video, audio, cfg.modality_dropout if dropout else 0.0, rng)
    return video, audio, audio_off


@torch.inference_mode()
def predict(model: nn.Module, data: ArraySet, zero: str | None = None, batch: int = 64) -> np.ndarray:
    """(N, K) clip probabilities: softmax per sliding window, averaged over the clip, as the service does."""
    model.eval()
    owners, starts = eval_windows(data)
    out = None
    for s in range(0, len(owners), batch):
        video, audio = window_batch(data, owners[s : s + batch], starts[s : s + batch])
        if zero == "video":
            video.zero_()
        elif zero == "audio":
            audio.zero_()
        p = model(video, audio).softmax(1).numpy()
        out = np.zeros((len(data), p.shape[1])) if out is None else out
        np.add.at(out, owners[s : s + batch], p)
    return out / np.bincount(owners, minlength=len(data))[:, None]


def accuracy(model: nn.Module, data: ArraySet, zero: str | None = None) -> float:
    return float((predict(model, data, zero).argmax(1) == data.labels).mean())


@torch.inference_mode()
def embed(model: nn.Module, data: ArraySet, batch: int = 64) -> dict[str, torch.Tensor]:
    """Of every clip's middle window, eval mode: video and audio embeddings ``v``, ``a`` (``forward_features``),
    the classifier's penultimate activations ``h`` and its ``logits``; (N, ...) tensors on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    mid = (data.frames.shape[1] - data.spec.frames) // 2
    out: dict[str, list[torch.Tensor]] = {"v": [], "a": [], "h": [], "logits": []}
    head = model.head
    for s in range(0, len(data), batch):
        idx = np.arange(s, min(s + batch, len(data)))
        video, audio = window_batch(data, idx, np.full(len(idx), mid))
        v, a = model.forward_features(video.to(device), audio.to(device))
        h = head[:-1](torch.cat([v, a], dim=1))  # (B, D) input of the last linear layer
        for key, x in (("v", v), ("a", a), ("h", h), ("logits", head[-1](h))):
            out[key].append(x)
    return {k: torch.cat(x) for k, x in out.items()}


@torch.inference_mode()
def bank_pair_losses(v: torch.Tensor, a: torch.Tensor, tau: float, chunk: int = 4096) -> torch.Tensor:
    """Per-pair symmetric InfoNCE over the whole set (every other clip a negative): the statistic the
    correspondence mixture is fitted to. Tiled (:func:`est.pair_nce_losses`), never an N x N matrix.
    Shape: (N, D), (N, D) -> (N,)."""
    return est.pair_nce_losses(v, a, tau, chunk)


def _supervised(model: nn.Module, data: ArraySet, cfg: RunConfig, epochs: int,
                loss_fn: Callable[[torch.Tensor, np.ndarray, np.ndarray], torch.Tensor],
                hook: EpochHook | None = None, rng: np.random.Generator | None = None,
                mute: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> list[dict]:
    """A supervised loop; ``loss_fn(logits, clip indices, audio-zeroed mask)`` gives the batch loss;
    ``mute(clip indices, rng)``, if given, marks further samples whose audio is zeroed for this step."""
    rng = rng or np.random.default_rng(cfg.seed)
    steps = epochs * max(len(data) // min(cfg.batch_size, len(data)), 1)
    opt, sched = _optimizer(model.parameters(), cfg, steps)
    history = []
    for epoch in range(epochs):
        model.train()
        t0, loss_sum, nb = time.perf_counter(), 0.0, 0
        for idx in _batches(len(data), cfg.batch_size, rng):
            video, audio, audio_off = _train_batch(data, idx, cfg, rng)
            if mute is not None:
                extra = mute(idx, rng) & ~audio_off
                audio[torch.from_numpy(extra)] = 0.0
                audio_off = audio_off | extra
            loss = loss_fn(model(video, audio), idx, audio_off)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, nb = loss_sum + loss.item(), nb + 1
        record = {"epoch": epoch, "loss": loss_sum / max(nb, 1), "seconds": time.perf_counter() - t0}
        if hook is not None:
            hook(model, epoch, record)
        history.append(record)
        log.debug("epoch %d %s", epoch, record)
    return history


def _labels(data: ArraySet) -> torch.Tensor:
    return torch.from_numpy(data.labels)


# ------------------------------------------------------------------------------------------------- baselines


def train_ce(make: ModelFactory, data: ArraySet, cfg: RunConfig, noise: NoiseReport | None = None,
             hook: EpochHook | None = None):
    model, y = make(), _labels(data)
    hist = _supervised(model, data, cfg, cfg.epochs,
                       lambda logits, idx, _: F.cross_entropy(logits, y[idx]), hook)
    return model, {"history": hist}


def train_gce(make: ModelFactory, data: ArraySet, cfg: RunConfig, noise: NoiseReport | None = None,
              hook: EpochHook | None = None):
    model, y = make(), _labels(data)
    hist = _supervised(model, data, cfg, cfg.epochs,
                       lambda logits, idx, _: gce_loss(logits, y[idx], cfg.gce_q).mean(), hook)
    return model, {"history": hist}


def train_sce(make: ModelFactory, data: ArraySet, cfg: RunConfig, noise: NoiseReport | None = None,
              hook: EpochHook | None = None):
    model, y = make(), _labels(data)
    hist = _supervised(model, data, cfg, cfg.epochs,
                       lambda logits, idx, _: sce_loss(logits, y[idx], cfg.sce_alpha, cfg.sce_beta).mean(), hook)
    return model, {"history": hist}


def train_coteaching(make: ModelFactory, data: ArraySet, cfg: RunConfig, noise: NoiseReport | None = None,
                     hook: EpochHook | None = None):
    """Co-teaching (Han et al., 2018). Returns the first network (the paper's convention)."""
    rng = np.random.default_rng(cfg.seed)
    m1, m2, y = make(), make(), _labels(data)
    forget = cfg.forget_rate
    if forget is None:
        forget = float(noise.settings.get("label_noise", 0.0)) if noise is not None else 0.0
    ramp = max(1, round(cfg.ramp_frac * cfg.epochs))
    steps = cfg.epochs * max(len(data) // min(cfg.batch_size, len(data)), 1)
    (o1, s1), (o2, s2) = _optimizer(m1.parameters(), cfg, steps), _optimizer(m2.parameters(), cfg, steps)
    history = []
    for epoch in range(cfg.epochs):
        m1.train()
        m2.train()
        rate = forget * min(1.0, epoch / ramp)
        t0, loss_sum, nb = time.perf_counter(), 0.0, 0
        for idx in _batches(len(data), cfg.batch_size, rng):
            video, audio, _ = _train_batch(data, idx, cfg, rng)
            l1 = F.cross_entropy(m1(video, audio), y[idx], reduction="none")
            l2 = F.cross_entropy(m2(video, audio), y[idx], reduction="none")
            keep = max(1, int(round((1 - rate) * len(idx))))
            pick1 = torch.argsort(l1.detach())[:keep]  # m1's small-loss samples teach m2, and vice versa
            pick2 = torch.argsort(l2.detach())[:keep]
            loss = l1[pick2].mean() + l2[pick1].mean()
            o1.zero_grad(set_to_none=True)
            o2.zero_grad(set_to_none=True)
            loss.backward()
            o1.step()
            o2.step()
            s1.step()
            s2.step()
            loss_sum, nb = loss_sum + loss.item() / 2, nb + 1
        record = {"epoch": epoch, "loss": loss_sum / max(nb, 1), "forget_rate": rate,
                  "seconds": time.perf_counter() - t0}
        if hook is not None:
            hook(m1, epoch, record)
        history.append(record)
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


def _update_pairs(model: nn.Module, data: ArraySet, c: NTLConfig, num_classes: int, state: _PairState,
                  epoch: int, noise: NoiseReport | None, seed: int) -> dict:
    """After a phase-1 epoch: per-pair losses over the whole set -> mixture -> weights; k-means prototypes.
    All on the model's device, chunked (memory O(N k), not O(N^2))."""
    e = embed(model, data)
    v, a = e["v"], e["a"]
    losses = bank_pair_losses(v, a, c.tau)
    record: dict = {}
    if noise is not None and len(noise.corr_noisy):
        record["corr_auc_loss"] = est.roc_auc(losses, _on(noise.corr_mask(), losses))
    trusted = epoch + 1 >= c.warmup
    if c.estimation and trusted:
        w = est.gmm_clean_probability(losses).clamp_min(c.min_weight)
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


def _correction_stats(corrected: torch.Tensor, data: ArraySet, noise: NoiseReport | None) -> dict:
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


def train_ntl(make: ModelFactory, data: ArraySet, cfg: RunConfig, noise: NoiseReport | None = None,
              hook: EpochHook | None = None):
    """Noise-tolerant learning: label-free noise-tolerant contrastive phase, then hybrid supervision."""
    c = cfg.ntl
    rng = np.random.default_rng(cfg.seed)
    model = make()
    k_cls = int(model.cfg.num_classes)
    n = len(data)
    state = _PairState(weights=np.ones(n))
    info: dict = {"phase1": [], "phase2": [], "corrections": []}

    # ---- phase 1: cross-modal contrast, weighted by estimated correspondence, plus category-level contrast
    e1 = round(c.phase1_frac * cfg.epochs) if c.contrastive else 0
    steps = e1 * max(n // min(cfg.batch_size, n), 1)
    if e1:
        opt, sched = _optimizer(model.parameters(), cfg, steps)
    for epoch in range(e1):
        model.train()
        t0, sums, nb = time.perf_counter(), np.zeros(2), 0
        for idx in _batches(n, cfg.batch_size, rng):
            video, audio, _ = _train_batch(data, idx, cfg, rng, dropout=False)
            v, a = model.forward_features(video, audio)
            w = torch.from_numpy(state.weights[idx]).float()
            loss_i = weighted_mean(cross_modal_nce(v, a, c.tau), w)
            loss_c = torch.zeros(())
            if c.category and state.assign is not None:
                loss_c = weighted_mean(prototype_nce(v, a, state.proto_v, state.proto_a,
                                                     torch.from_numpy(state.assign[idx]), c.proto_tau), w)
            loss = loss_i + c.proto_weight * loss_c
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += (loss_i.item(), loss_c.item())
            nb += 1
        record = {"epoch": epoch, "loss_instance": sums[0] / max(nb, 1), "loss_category": sums[1] / max(nb, 1)}
        record.update(_update_pairs(model, data, c, k_cls, state, epoch, noise, cfg.seed))
        record["seconds"] = time.perf_counter() - t0
        info["phase1"].append(record)
        log.info("ntl phase 1 epoch %d %s", epoch, {k: round(v, 4) for k, v in record.items()})
    if e1 and noise is not None and len(noise.corr_noisy) and "corr_auc" in info["phase1"][-1]:
        info["corr_auc"] = info["phase1"][-1]["corr_auc"]
    if e1 and noise is not None and len(noise.corr_noisy):
        info["corr_auc_loss"] = info["phase1"][-1]["corr_auc_loss"]

    # ---- phase 2: hybrid supervision with given and kNN-corrected labels
    given = data.labels
    if e1 and noise is not None:  # diagnostic: how well would phase-1 features alone correct the labels
        e = embed(model, data)
        feats = torch.cat([est.l2_normalize(e["v"]), est.l2_normalize(e["a"])], dim=1)
        votes = est.knn_label_votes(feats, _on(given, feats), k_cls, c.knn_k, weights=_on(state.weights, feats))
        info["phase1_knn"] = _correction_stats(votes.argmax(1), data, noise)
        log.info("ntl phase-1 features, kNN labels: %s", info["phase1_knn"])
    targets = torch.from_numpy(np.eye(k_cls, dtype=np.float32)[given])
    pair_w = state.weights if c.estimation else np.ones(n)

    loss_sum: torch.Tensor | float = 0.0

    def given_loss(e: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(e["logits"], _on(given, e["logits"]), reduction="none").double()

    def refresh(e: dict[str, torch.Tensor], ce: torch.Tensor) -> None:
        """Corrected labels from a kNN vote among the current features; trust in each given label from
        :func:`est.label_trust` over the classifier's per-clip losses ``ce`` on it (small loss: probably right).
        On the features' device; the new targets live there too."""
        nonlocal targets
        given_t = _on(given, e["h"])
        p_given = (est.label_trust(ce, k_cls, c.hard_trust, c.chance_trust, given_t if c.per_class_trust else None)
                   if c.trust else torch.ones(n, dtype=torch.float64, device=given_t.device))
        votes = est.knn_label_votes(e["h"], given_t, k_cls, c.knn_k, weights=_on(pair_w, p_given) * p_given + 1e-3)
        corrected, q, _ = est.corrected_labels(votes, given_t)
        q = torch.where(q >= c.q_min, q, 0.0) if c.correction else torch.zeros_like(q)
        if c.consistent:  # two views (neighbours, classifier) must agree before a correction counts
            q = torch.where(e["logits"].argmax(1) == corrected, q, 0.0)
        if c.given:
            targets = hybrid_targets(given_t, corrected, p_given, q, k_cls).float()
        else:
            targets = F.one_hot(corrected, k_cls).float()
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
        nonlocal loss_sum
        start = max(1, round(c.correct_from * e2))
        due = epoch + 1 >= start and (epoch + 1 - start) % c.refresh == 0 and epoch + 1 < e2
        if due or c.loss_average:
            e = embed(m, data)
            ce = given_loss(e)
            loss_sum = loss_sum + ce
            if due:
                refresh(e, loss_sum / (epoch + 1) if c.loss_average else ce)
        if hook is not None:
            hook(m, e1 + epoch, record)

    def loss_fn(logits: torch.Tensor, idx: np.ndarray, audio_off: np.ndarray) -> torch.Tensor:
        w = np.ones(len(idx)) if c.mute_suspect_audio else pair_w[idx].copy()
        w[audio_off] = 1.0  # a clip whose (maybe foreign) audio was dropped is a clean video-only sample
        return weighted_mean(soft_cross_entropy(logits, targets[idx]), torch.from_numpy(w).float())

    def mute(idx: np.ndarray, r: np.random.Generator) -> np.ndarray:
        """A pair that probably does not correspond keeps its label (it describes the picture) but loses its
        audio: muted with probability 1 - w."""
        return r.random(len(idx)) >= pair_w[idx]

    info["phase2"] = _supervised(model, data, cfg, e2, loss_fn, on_epoch, rng,
                                 mute if c.mute_suspect_audio else None)
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
