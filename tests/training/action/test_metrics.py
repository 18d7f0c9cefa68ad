"""mAP as AudioSet reports it, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.action.metrics import average_precision, mean_average_precision


def test_average_precision_by_hand():
    # positives ranked 1st and 3rd: precisions 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # a perfect ranking, and the worst one
    assert average_precision(np.array([0.9, 0.1, 0.2]), np.array([1, 0, 0])) == 1.0
    assert average_precision(np.array([0.1, 0.9, 0.8]), np.array([1, 0, 0])) == pytest.approx(1 / 3)
    # a positive tied with a negative passes the threshold together with it: 0.5 * 1/2 (both at 0.5), then
    # 0.5 * 2/3 (down to 0.3); the order of tied rows does not matter
    scores, targets = np.array([0.5, 0.5, 0.1, 0.3]), np.array([1, 0, 0, 1])
    assert average_precision(scores, targets) == pytest.approx(0.25 + 1 / 3)
    assert average_precision(scores[[1, 0, 3, 2]], targets[[1, 0, 3, 2]]) == pytest.approx(0.25 + 1 / 3)
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))  # no positive: undefined


def test_mean_average_precision_skips_classes_without_positives():
    scores = np.array([[0.9, 0.2, 0.5],
                       [0.8, 0.9, 0.5],
                       [0.7, 0.4, 0.1],
                       [0.6, 0.1, 0.3]])
    targets = np.array([[1, 0, 1],
                        [0, 0, 0],
                        [1, 0, 0],
                        [0, 0, 1]])  # class 1 has no positive: left out, not counted as 0 or 1
    m_ap, classes = mean_average_precision(scores, targets)
    assert classes == 2
    assert m_ap == pytest.approx((5 / 6 + (0.25 + 1 / 3)) / 2)
    m_ap, classes = mean_average_precision(scores, np.zeros_like(targets))
    assert classes == 0 and np.isnan(m_ap)
    with pytest.raises(ValueError, match="must both be"):
        mean_average_precision(scores, targets[:, :2])
