"""Multi-label metrics (numpy): average precision per class and their macro mean (mAP), as AudioSet reports it."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under one class's precision-recall curve, as a step function over the distinct scores: the sum over
    thresholds of (recall gained) x (precision there). Clips with equal scores pass a threshold together, so the
    result does not depend on their order; without ties it is the mean, over the positives, of the precision among
    the clips scored at least as high as each. NaN when the class has no positive.

    Shape: scores (N,), targets (N,) (nonzero: positive)
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(targets) > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    tp = np.cumsum(y)
    last = np.r_[s[1:] != s[:-1], True]  # the last clip of each run of equal scores: a threshold
    tp, seen = tp[last], np.flatnonzero(last) + 1
    precision = tp / seen
    gained = np.diff(np.r_[0, tp]) / n_pos  # recall gained at each threshold
    return float((gained * precision).sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """(mAP, classes): the mean of :func:`average_precision` over the classes that have at least one positive
    (AP is undefined for the others), and how many those are. mAP is NaN when no class has a positive.

    Shape: scores (N, K), targets (N, K) multi-hot
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, K)")
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1]) if (targets[:, k] > 0).any()]
    return (float(np.mean(aps)) if aps else float("nan")), len(aps)
