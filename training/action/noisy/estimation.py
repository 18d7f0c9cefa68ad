"""Noise estimation and label correction from features: the per-pair InfoNCE over a whole set, a 1-D
two-component Gaussian mixture over per-pair losses, k-means prototypes, kNN label votes, and the ROC AUC that
scores an estimate against planted noise.

Torch, on whatever device the inputs are on. Nothing here builds an N x N matrix: the pairwise work runs over
``chunk`` x ``chunk`` tiles (the InfoNCE), blocks of ``chunk`` rows against the whole set (the kNN) or against
the k centroids (k-means), so memory is O(N k + chunk N) for a set of N clips and k neighbours or clusters; a
chunk as large as N gives the dense computation. Features are used in float32, the mixture's EM runs in
float64. Every function is deterministic given its inputs (and ``seed`` where it takes one; k-means++ draws
from a CPU generator, so the draws are the same on every device).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x`` scaled to unit L2 norm along ``dim`` (norms floored at 1e-12). Shape: any -> same."""
    return F.normalize(x, dim=dim, eps=1e-12)


def pair_nce_losses(v: torch.Tensor, a: torch.Tensor, tau: float, chunk: int = 4096) -> torch.Tensor:
    """Per-pair symmetric InfoNCE of :func:`~training.action.noisy.losses.cross_modal_nce` over the whole set
    (every other clip a negative), over ``chunk`` x ``chunk`` tiles of the similarity matrix: each tile adds to
    the row-wise sums of exponentials of its rows and to the column-wise sums of its columns.

    Unit vectors bound every logit by 1 / tau, so each tile is exponentiated once, shifted by that bound (no
    overflow; no underflow while exp(-2 / tau) is a normal float32, else the tile runs in float64), and both
    sums come from the same exponentials; the sums accumulate over tiles in float64.

    Shape:
        - v, a: (N, D), L2-normalised here
        - output: (N,) float32, ``0.5 * (lse_j(v_i a_j / tau) + lse_j(v_j a_i / tau)) - v_i a_i / tau``
    """
    vn, an = l2_normalize(v.float()), l2_normalize(a.float())
    n = len(vn)
    work = torch.float32 if tau > 0.025 else torch.float64
    shift = 1.0 / tau  # the largest logit two unit vectors can give
    row_sum = torch.zeros(n, dtype=torch.float64, device=vn.device)
    col_sum = torch.zeros(n, dtype=torch.float64, device=vn.device)
    for r in range(0, n, chunk):
        vr = (vn[r : r + chunk] / tau).to(work)
        for c in range(0, n, chunk):
            e = (vr @ an[c : c + chunk].to(work).T).sub_(shift).exp_()  # (R, C) exp(logit - 1 / tau)
            row_sum[r : r + chunk] += e.sum(1)
            col_sum[c : c + chunk] += e.sum(0)
    pos = (vn * an).sum(1).double() / tau  # (N,) the matching pair's logit
    return (shift + 0.5 * (row_sum.log() + col_sum.log()) - pos).float()


def _quantile(sorted_x: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile (numpy's default) of an ascending 1-D tensor, without torch.quantile's
    16M-element limit."""
    pos = q * (len(sorted_x) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_x) - 1)
    return sorted_x[lo] + (sorted_x[hi] - sorted_x[lo]) * (pos - lo)


def gmm_clean_probability(losses: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Posterior of the low-mean component of a 2-component 1-D Gaussian mixture fitted by EM to ``losses``.

    As in noisy-correspondence work (DivideMix, NCR): a network fits clean pairs before noisy ones, so after a
    warm-up the per-pair losses are bimodal and the low-loss mode holds the clean pairs. Losses are min-max
    scaled first; ``eps`` floors the variances. EM runs in float64.

    Shape:
        - losses: (N,)
        - output: (N,) float64 in [0, 1], on the losses' device
    """
    x = losses.detach().to(torch.float64).flatten()
    if len(x) < 2:
        return torch.ones(len(x), dtype=torch.float64, device=x.device)
    lo, hi = x.aminmax()
    if float(hi - lo) < 1e-12:
        return torch.ones(len(x), dtype=torch.float64, device=x.device)
    x = (x - lo) / (hi - lo)
    xs = x.sort().values
    mu = torch.stack([_quantile(xs, 0.25), _quantile(xs, 0.75)])
    var = (x.var(correction=0) / 4 + eps).expand(2).clone()
    pi = torch.full((2,), 0.5, dtype=torch.float64, device=x.device)
    r = torch.empty(len(x), 2, dtype=torch.float64, device=x.device)
    for _ in range(iters):
        log_p = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * torch.log(2 * math.pi * var) + pi.log()  # (N, 2)
        r = (log_p - log_p.amax(1, keepdim=True)).exp()
        r = r / r.sum(1, keepdim=True)
        nk = r.sum(0) + 1e-12
        mu = (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + eps
        pi = nk / nk.sum()
    return r[:, int(mu.argmin())]


def label_trust(losses: torch.Tensor, num_classes: int, hard: bool = True, chance_guard: bool = True,
                groups: torch.Tensor | None = None) -> torch.Tensor:
    """Trust in each given label from the classifier's per-clip losses on it: the clean posterior of
    :func:`gmm_clean_probability`, thresholded at 0.5 when ``hard``.

    The mixture splits any loss distribution in two, a clean one too. A wrong label that the classifier has not
    memorised sits below chance (its loss exceeds log K), so with ``chance_guard`` a doubted part whose mean
    loss stays under log K is no noise, and every label is trusted. With ``groups`` (the given labels), one
    mixture per group: a class the classifier learns late has high losses on its right labels too, and one
    mixture over every class would doubt it whole.

    Shape:
        - losses: (N,); groups: (N,) ints or None
        - output: (N,) float64 in [0, 1], on the losses' device
    """
    x = losses.detach().to(torch.float64).flatten()
    if groups is not None:
        out = torch.ones(len(x), dtype=torch.float64, device=x.device)
        for g in torch.unique(groups):
            sel = groups == g
            out[sel] = label_trust(x[sel], num_classes, hard, chance_guard)
        return out
    p = gmm_clean_probability(x)
    doubted = p < 0.5
    if chance_guard and (not bool(doubted.any()) or float(x[doubted].mean()) < math.log(num_classes)):
        return torch.ones(len(x), dtype=torch.float64, device=x.device)
    return (p > 0.5).to(torch.float64) if hard else p


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count half); nan if one class
    is empty. 0.5 is chance. Tied scores share their average rank (one sort, no Python loop over the set).

    Shape: scores (N,), positive (N,) bool -> float.
    """
    s = scores.detach().to(torch.float64).flatten()
    pos = positive.to(device=s.device, dtype=torch.bool).flatten()
    n_pos = int(pos.sum())
    n_neg = len(s) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_s, order = s.sort(stable=True)
    _, counts = torch.unique_consecutive(sorted_s, return_counts=True)  # tie groups, in rank order
    mean_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based average rank of each group
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank.to(torch.float64).repeat_interleave(counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int, weights: torch.Tensor | None = None,
                 chunk: int = 4096) -> torch.Tensor:
    """Per-cluster weighted sums of rows, ``sum_{i: assign_i = j} w_i x_i``, as one-hot matmuls over chunks of
    rows (deterministic on CUDA too, unlike an atomic ``index_add_``).

    Shape:
        - x: (N, D); assign: (N,) ints in [0, k); weights: (N,) or None
        - output: (k, D) in x's dtype
    """
    out = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        if weights is not None:
            xs = xs * weights[s : s + chunk, None].to(x.dtype)
        out += F.one_hot(assign[s : s + chunk], k).to(x.dtype).T @ xs  # (k, C) @ (C, D)
    return out


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of each row's most similar centroid (largest dot product; the first on ties), over chunks of rows.

    Shape: x (N, D), centroids (k, D) -> (N,) int64.
    """
    return torch.cat([(x[s : s + chunk] @ centroids.T).argmax(1) for s in range(0, len(x), chunk)])


def kmeans_plusplus(x: torch.Tensor, k: int, weights: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """k-means++ seeding for cosine distance: each new centre is drawn with probability proportional to
    ``weights * (1 - max cosine to the centres so far)``. Keeps one running (N,) maximum, so memory is O(N).
    The draws are those of ``rng.integers`` / ``rng.choice(p=...)`` (numpy's stream, as the seeding has always
    drawn them), by inverse CDF over the data's device.

    Shape:
        - x: (N, D) unit rows; weights: (N,)
        - output: (k, D) rows of x
    """
    n = len(x)
    first = int(rng.integers(n))
    centres = [x[first]]
    best = x @ x[first]  # (N,) cosine to the nearest centre so far
    for _ in range(1, k):
        cdf = ((1.0 - best).clamp_min(0) * weights).to(torch.float64).cumsum(0)
        if float(cdf[-1]) > 0:
            u = torch.tensor([rng.random()], dtype=torch.float64, device=x.device)
            i = int(torch.searchsorted(cdf / cdf[-1], u, right=True))
        else:
            i = int(rng.integers(n))
        centres.append(x[min(i, n - 1)])
        best = torch.maximum(best, x @ centres[-1])
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 20, seed: int = 0,
           chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine) with k-means++ seeding. ``weights`` scale each point's pull on its centroid
    (estimated-noisy pairs pull less). Assignment and update run over chunks of rows: memory O(N k + chunk D).

    Shape:
        - x: (N, D) (L2-normalised here, in float64: near-ties decide assignments); weights: (N,) or None
        - output: unit centroids (k, D) float32, assignment (N,) int64
    """
    x = l2_normalize(x.double())
    n = len(x)
    w = torch.ones(n, device=x.device) if weights is None else weights.to(device=x.device, dtype=x.dtype) + 1e-6
    k = min(k, n)
    c = kmeans_plusplus(x, k, w, np.random.default_rng(seed))
    for _ in range(iters):
        new = cluster_sums(x, nearest_centroid(x, c, chunk), k, w, chunk)
        empty = new.norm(dim=1) < 1e-12
        new[empty] = c[empty]
        c = l2_normalize(new)
    return c.float(), nearest_centroid(x, c, chunk)


def nearest_neighbours(x: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar other rows of each row (dot product; a row is never its own neighbour): blocks of
    ``chunk`` rows against the whole set, then their top k. Memory O(N k + chunk N). Neighbours come in no
    particular order.

    (Computing only the upper half of the symmetric similarity matrix halves the matmul, but the column-wise
    top k it then needs cost as much as the matmul saved, and the tiles' many small steps were slower on a
    shared 2-core CPU: 30-40 s against 17-31 s for these blocks at N = 40,000.)

    Shape:
        - x: (N, D)
        - output: similarities (N, k), indices (N, k) int64, with k capped at N - 1
    """
    n = len(x)
    k = min(k, n - 1)
    sims, idx = [], []
    for s in range(0, n, chunk):
        sim = x[s : s + chunk] @ x.T  # (C, N)
        rows = torch.arange(len(sim), device=x.device)
        sim[rows, rows + s] = -math.inf  # not one's own neighbour
        top, pos = sim.topk(k, dim=1, sorted=False)  # (C, k)
        sims.append(top)
        idx.append(pos)
    return torch.cat(sims), torch.cat(idx)


def knn_label_votes(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 20,
                    weights: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """Label distribution among each clip's k nearest neighbours (cosine; the clip itself excluded), votes
    weighted by similarity and by ``weights`` (how far each neighbour's pair can be trusted). Neighbours from
    :func:`nearest_neighbours`: memory O(N k + chunk N).

    Shape:
        - features: (N, D) (L2-normalised here, float32); labels: (N,) ints; weights: (N,) or None
        - output: (N, num_classes) float64, rows summing to 1
    """
    f = l2_normalize(features.float())
    n = len(f)
    w = torch.ones(n, device=f.device) if weights is None else weights.to(device=f.device, dtype=f.dtype)
    labels = labels.to(f.device)
    sim, nn = nearest_neighbours(f, k, chunk)  # (N, k)
    votes = torch.empty(n, num_classes, dtype=torch.float64, device=f.device)  # summed in float64: q and the
    for s in range(0, n, chunk):  # targets built from it then do not depend on the order of the neighbours
        vote = sim[s : s + chunk].clamp_min(0) * w[nn[s : s + chunk]] + 1e-6  # (C, k)
        votes[s : s + chunk] = (F.one_hot(labels[nn[s : s + chunk]], num_classes) * vote[..., None].double()).sum(1)
    return votes / votes.sum(1, keepdim=True)


def corrected_labels(votes: torch.Tensor, given: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From kNN votes: (corrected label, its vote share q, the given label's vote share t).

    Shape: votes (N, K), given (N,) ints -> (N,) int64, (N,), (N,).
    """
    corrected = votes.argmax(1)
    q = votes.gather(1, corrected[:, None]).squeeze(1)
    t = votes.gather(1, given.to(votes.device)[:, None].long()).squeeze(1)
    return corrected, q, t
