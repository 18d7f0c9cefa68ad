"""Losses for learning with noisy labels and noisy audio-visual correspondence. Each returns per-sample values
(reduce them with :func:`weighted_mean`), so that noise estimates can reweight samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * v) / sum(w) (plain mean without weights); a batch whose weights are all 0 gives 0."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1e-8)


def cross_modal_nce(v: torch.Tensor, a: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between the video and audio embeddings of a batch: clip i's audio is the positive for
    its video among the batch's audios, and the other way round.

    Shape:
        - v, a: (B, D), L2-normalised here
        - output: (B,) per-pair loss, mean of the video->audio and audio->video terms
    """
    v, a = F.normalize(v, dim=1), F.normalize(a, dim=1)
    logits = v @ a.t() / tau  # (B, B)
    target = torch.arange(len(v), device=v.device)
    return 0.5 * (F.cross_entropy(logits, target, reduction="none")
                  + F.cross_entropy(logits.t(), target, reduction="none"))


def prototype_nce(v: torch.Tensor, a: torch.Tensor, proto_v: torch.Tensor, proto_a: torch.Tensor,
                  assign: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Category-level cross-modal contrast: each clip's video embedding must pick its cluster among the *audio*
    prototypes, and its audio embedding among the *video* prototypes. A prototype averages many clips, so a
    pair whose audio does not belong to it pulls its embedding towards a category, not towards one wrong
    instance.

    Shape:
        - v, a: (B, D); proto_v, proto_a: (C, D) (all L2-normalised here)
        - assign: (B,) int cluster of each clip
        - output: (B,)
    """
    v, a = F.normalize(v, dim=1), F.normalize(a, dim=1)
    pv, pa = F.normalize(proto_v, dim=1), F.normalize(proto_a, dim=1)
    return 0.5 * (F.cross_entropy(v @ pa.t() / tau, assign, reduction="none")
                  + F.cross_entropy(a @ pv.t() / tau, assign, reduction="none"))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution. Shape: logits, target (B, K) -> (B,)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu, 2018): (1 - p_y^q) / q; q -> 0 is CE, q = 1 is MAE.
    Shape: (B, K), (B,) -> (B,)."""
    p = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1).clamp(min=1e-7)
    return (1.0 - p**q) / q


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
             log_zero: float = -4.0) -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al., 2019): alpha * CE + beta * reverse CE, where the reverse CE
    -sum_k p_k log q_k with the one-hot label q takes log 0 = ``log_zero``, i.e. -log_zero * (1 - p_y).
    Shape: (B, K), (B,) -> (B,)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    p_y = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return alpha * ce + beta * (-log_zero) * (1.0 - p_y)


def hybrid_targets(given: torch.Tensor, corrected: torch.Tensor, trust_given: torch.Tensor,
                   trust_corrected: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Phase 2's complementary supervision, each label weighted by how far it can be trusted: ``p`` on the
    given label (the probability that it is right) and ``(1 - p) q`` on the corrected one (what is left,
    times the corrected label's own confidence q). The target is not normalised: a clip whose labels are
    both doubtful weighs less. Used with :func:`soft_cross_entropy` it is
    ``p CE(y) + (1 - p) q CE(y_corrected)``. Shape: (B,) ints, (B,) floats in [0, 1] -> (B, K)."""
    p, q = trust_given.clamp(0, 1), trust_corrected.clamp(0, 1)
    return p[:, None] * F.one_hot(given, num_classes) + ((1 - p) * q)[:, None] * F.one_hot(corrected, num_classes)
