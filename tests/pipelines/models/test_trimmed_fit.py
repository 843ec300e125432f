"""Trimmed refit: training on a history that holds faults (pipelines.models.estimators.fit_trimmed)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.models.candidates import EvalSplit, SearchSpace
from pipelines.models.detection_metrics import calibrate_threshold
from pipelines.models.estimators import DETECTOR_KINDS, below_top, fit_trimmed, make_detector
from pipelines.models.train_params import TrainParams
from pipelines.models.tuning import TuningConfig, tune

PLANTED = 45  # 3 % of the training rows: a tight cluster of faults, 3 sd from the bulk


def _rows(rng: np.random.Generator, normal: int, planted: int) -> np.ndarray:
    return np.vstack([rng.normal(size=(normal, 3)), rng.normal(3.0, 0.05, size=(planted, 3))])


@pytest.fixture(scope="module")
def contaminated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows with planted faults; held-out rows and their labels."""
    rng = np.random.default_rng(0)
    train = _rows(rng, 1500, PLANTED)
    held_out = _rows(rng, 1000, 50)
    return train, held_out, np.r_[np.zeros(1000, dtype=bool), np.ones(50, dtype=bool)]


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_trimmed_refit_ranks_the_planted_kind_higher(kind, contaminated):
    train, held_out, labels = contaminated
    plain = make_detector(kind, n_estimators=50, max_samples=256, random_state=0).fit(train)
    trimmed = make_detector(kind, n_estimators=50, max_samples=256, random_state=0)
    kept = fit_trimmed(trimmed, train, 0.04)
    # the first fit ranks the planted rows high: they are over-represented among the dropped
    assert (~kept[-PLANTED:]).sum() / (~kept).sum() > 3 * PLANTED / len(train)
    plain_auc = roc_auc_score(labels, plain.score_samples(held_out))
    trimmed_auc = roc_auc_score(labels, trimmed.score_samples(held_out))
    assert trimmed_auc > plain_auc


def test_trim_zero_is_a_plain_fit_and_the_mask_drops_the_top_share(contaminated):
    train, held_out, _ = contaminated
    plain = make_detector("isotree", n_estimators=20, random_state=3).fit(train)
    untrimmed = make_detector("isotree", n_estimators=20, random_state=3)
    assert fit_trimmed(untrimmed, train, 0.0).all()
    np.testing.assert_array_equal(plain.score_samples(held_out), untrimmed.score_samples(held_out))
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    np.testing.assert_array_equal(below_top(scores, 0.2), scores < 0.9)
    assert below_top(scores, 0.05).all()  # rounded down: nothing to drop
    with pytest.raises(ValueError, match="trim"):
        fit_trimmed(untrimmed, train, 0.5)


def test_trimmed_eif_pickles_and_refits_identically(contaminated):
    """eif refits on unpickling from its training matrix: the kept rows, not all of them."""
    train, held_out, _ = contaminated
    detector = make_detector("eif", n_estimators=20, max_samples=128, random_state=5)
    kept = fit_trimmed(detector, train, 0.03)
    assert len(detector.training_matrix_) == kept.sum() < len(train)
    restored = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(restored.score_samples(held_out),
                                  detector.score_samples(held_out))


def test_tuning_trims_each_candidate_and_the_parameter_reaches_it(contaminated):
    train, held_out, labels = contaminated
    split = EvalSplit(train, held_out, np.where(labels, "planted", "").astype(object))
    space = SearchSpace(kinds=("iforest",), n_estimators=(20,), max_samples=(128,),
                        max_features=(1.0,))
    plain = tune(split, space, TuningConfig(seed=2, em_draws=1, em_uniform=500, n_jobs=1))
    config = TrainParams(trim=0.04, seed=2, em_draws=1, em_uniform=500,
                         n_jobs=1).tuning_config()
    assert config.trim == 0.04
    trimmed = tune(split, space, config)
    assert plain.best.metrics["trimmed_rows"] == 0
    assert trimmed.best.metrics["trimmed_rows"] == int(0.04 * len(train))
    refit = trimmed.best.candidate.build(2, n_features=3)
    fit_trimmed(refit, train, 0.04)  # what training's build_model does with the chosen one
    np.testing.assert_array_equal(refit.score_samples(held_out), trimmed.best.eval_scores)
    assert not np.array_equal(plain.best.eval_scores, trimmed.best.eval_scores)
    kept = below_top(make_detector("iforest", random_state=2, **trimmed.best.candidate.param_dict)
                     .fit(train).score_samples(train), 0.04)
    assert trimmed.best.threshold == calibrate_threshold(refit.score_samples(train[kept]), 0.01)
    with pytest.raises(ValueError, match="trim"):
        TuningConfig(trim=0.6)
