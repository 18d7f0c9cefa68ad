"""Noise estimation and label correction from features: a 1-D two-component Gaussian mixture over per-pair
losses, k-means prototypes, kNN label votes, and the ROC AUC that scores an estimate against planted noise.
numpy only; every function is deterministic given its inputs (and ``seed`` where it takes one)."""

from __future__ import annotations

import numpy as np


def gmm_clean_probability(losses: np.ndarray, iters: int = 50, eps: float = 1e-6) -> np.ndarray:
    """Posterior of the low-mean component of a 2-component 1-D Gaussian mixture fitted by EM to ``losses``.

    As in noisy-correspondence work (DivideMix, NCR): a network fits clean pairs before noisy ones, so after a
    warm-up the per-pair losses are bimodal and the low-loss mode holds the clean pairs. Losses are min-max
    scaled first; ``eps`` floors the variances. Shape: (N,) -> (N,) in [0, 1].
    """
    x = np.asarray(losses, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) < 1e-12:
        return np.ones(len(x))
    x = (x - x.min()) / np.ptp(x)
    mu = np.quantile(x, [0.25, 0.75])
    var = np.full(2, x.var() / 4 + eps)
    pi = np.array([0.5, 0.5])
    for _ in range(iters):
        log_p = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(pi)  # (N, 2)
        log_p -= log_p.max(1, keepdims=True)
        r = np.exp(log_p)
        r /= r.sum(1, keepdims=True)
        nk = r.sum(0) + 1e-12
        mu = (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + eps
        pi = nk / nk.sum()
    return r[:, int(np.argmin(mu))]


def label_trust(losses: np.ndarray, num_classes: int, hard: bool = True, chance_guard: bool = True,
                groups: np.ndarray | None = None) -> np.ndarray:
    """Trust in each given label from the classifier's per-clip losses on it: the clean posterior of
    :func:`gmm_clean_probability`, thresholded at 0.5 when ``hard``.

    The mixture splits any loss distribution in two, a clean one too. A wrong label that the classifier has not
    memorised sits below chance (its loss exceeds log K), so with ``chance_guard`` a doubted part whose mean
    loss stays under log K is no noise, and every label is trusted. With ``groups`` (the given labels), one
    mixture per group: a class the classifier learns late has high losses on its right labels too, and one
    mixture over every class would doubt it whole. Shape: (N,) -> (N,) in [0, 1].
    """
    x = np.asarray(losses, dtype=np.float64)
    if groups is not None:
        out = np.ones(len(x))
        for g in np.unique(groups):
            sel = groups == g
            out[sel] = label_trust(x[sel], num_classes, hard, chance_guard)
        return out
    p = gmm_clean_probability(x)
    doubted = p < 0.5
    if chance_guard and (not doubted.any() or x[doubted].mean() < np.log(num_classes)):
        return np.ones(len(x))
    return (p > 0.5).astype(np.float64) if hard else p


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count half); nan if one class
    is empty. 0.5 is chance."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def kmeans(x: np.ndarray, k: int, weights: np.ndarray | None = None, iters: int = 20,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (cosine) with k-means++ seeding. Returns (unit centroids (k, D), assignment (N,)).
    ``weights`` scale each point's pull on its centroid (estimated-noisy pairs pull less)."""
    rng = np.random.default_rng(seed)
    x = l2_normalize(np.asarray(x, dtype=np.float64))
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64) + 1e-6
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.stack(centres).T, axis=1)
        p = np.maximum(d, 0) * w
        centres.append(x[rng.choice(len(x), p=p / p.sum())] if p.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(centres)
    assign = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x * w[:, None])
        empty = np.linalg.norm(new, axis=1) < 1e-12
        new[empty] = c[empty]
        c = l2_normalize(new)
    return c, np.argmax(x @ c.T, axis=1)


def knn_label_votes(features: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 20,
                    weights: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """(N, K) label distribution among each clip's k nearest neighbours (cosine; the clip itself excluded),
    votes weighted by similarity and by ``weights`` (how far each neighbour's pair can be trusted)."""
    f = l2_normalize(np.asarray(features, dtype=np.float32))
    w = np.ones(len(f), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    labels = np.asarray(labels)
    k = min(k, len(f) - 1)
    votes = np.zeros((len(f), num_classes), dtype=np.float64)
    for s in range(0, len(f), chunk):
        sim = f[s : s + chunk] @ f.T  # (C, N)
        sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
        nn = np.argpartition(-sim, k, axis=1)[:, :k]  # (C, k)
        sv = np.take_along_axis(sim, nn, axis=1)
        vote = np.maximum(sv, 0) * w[nn] + 1e-6
        np.add.at(votes[s : s + chunk], (np.arange(sim.shape[0])[:, None], labels[nn]), vote)
    return votes / votes.sum(1, keepdims=True)


def corrected_labels(votes: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From kNN votes: (corrected label, its vote share q, the given label's vote share t)."""
    corrected = votes.argmax(1)
    q = votes[np.arange(len(votes)), corrected]
    t = votes[np.arange(len(votes)), np.asarray(given)]
    return corrected, q, t
