"""The Isolation Forest detector scores through each tree's compiled `apply`, not through
scikit-learn's `score_samples`; the scores must be the very same floats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipelines.models.estimators import (
    IsolationForestDetector,
    detector_state,
    restore_detector,
)


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 2] = rng.integers(0, 3, size=n)  # ties on thresholds
    X[: n // 10, 0] *= 50  # far-out rows
    return X


@pytest.mark.parametrize("max_features", [1.0, 0.5, 2])
@pytest.mark.parametrize("max_samples", [256, 0.3])
def test_scores_equal_scikit_learns_bit_for_bit(max_features, max_samples):
    detector = IsolationForestDetector(n_estimators=30, max_samples=max_samples,
                                       max_features=max_features, random_state=3)
    detector.fit(_rows(2000, 1))
    X = _rows(777, 2)
    X[5] = X[6]  # a duplicate row
    X[7] = np.float32(X[7]).astype(np.float64) + 1e-12  # below float32 resolution

    expected = -detector.forest_.score_samples(X)
    assert np.array_equal(detector.score_samples(X), expected)
    assert np.array_equal(detector.score_samples(X[:1]), expected[:1])
    assert detector.score_samples(X[:0]).shape == (0,)


def test_a_refit_or_a_restore_scores_with_its_own_trees():
    detector = IsolationForestDetector(n_estimators=20, random_state=4).fit(_rows(500, 3))
    X = _rows(200, 5)
    first = detector.score_samples(X)
    detector.set_params(random_state=5).fit(_rows(500, 6))
    assert np.array_equal(detector.score_samples(X), -detector.forest_.score_samples(X))
    assert not np.array_equal(detector.score_samples(X), first)

    restored = restore_detector(pickle.loads(pickle.dumps(detector_state(detector))))
    assert np.array_equal(restored.score_samples(X), detector.score_samples(X))
    assert "_compiled" not in pickle.loads(pickle.dumps(detector)).__dict__


def test_one_training_row_scores_one_as_scikit_learn_does():
    detector = IsolationForestDetector(n_estimators=5, random_state=0).fit(_rows(1, 0))
    X = _rows(10, 1)
    assert np.array_equal(detector.score_samples(X), -detector.forest_.score_samples(X))
