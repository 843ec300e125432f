"""The detectors: orientation of scores, validation, and deterministic pickling of EIF."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone

from pipelines.models.estimators import IsolationForestDetector, make_detector

KINDS = ["iforest", "eif", "isotree"]


@pytest.fixture(scope="module")
def blob() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1500, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_fit_returns_self_and_far_points_score_higher(kind, blob):
    detector = make_detector(kind, n_estimators=50, random_state=1)
    assert detector.fit(blob) is detector
    far = np.array([[8.0, -8.0, 8.0, 8.0]])
    scores = detector.score_samples(np.vstack([blob[:200], far]))
    assert scores.shape == (201,)
    assert ((scores > 0) & (scores <= 1)).all()
    assert scores[-1] > np.quantile(scores[:200], 0.99)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_scores_and_clone_keeps_params(kind, blob):
    a = make_detector(kind, n_estimators=30, max_samples=128, random_state=7).fit(blob)
    b = clone(a).fit(blob)
    np.testing.assert_array_equal(a.score_samples(blob), b.score_samples(blob))
    c = make_detector(kind, n_estimators=30, max_samples=128, random_state=8).fit(blob)
    assert not np.array_equal(a.score_samples(blob), c.score_samples(blob))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_rejected(kind, blob):
    detector = make_detector(kind, n_estimators=10, random_state=0).fit(blob)
    with pytest.raises(ValueError, match="expected 4 features"):
        detector.score_samples(blob[:, :3])
    bad = blob.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_detector(kind).fit(bad)


@pytest.mark.parametrize("kind", ["eif", "isotree"])
def test_extension_level_is_checked_and_defaults_to_full(kind, blob):
    with pytest.raises(ValueError, match="extension_level"):
        make_detector(kind, extension_level=4).fit(blob)
    assert make_detector(kind, n_estimators=5).fit(blob).extension_level_ == 3
    with pytest.raises(ValueError, match="unknown detector kind"):
        make_detector("lof")


def test_unseeded_detector_records_its_seed(blob):
    detector = IsolationForestDetector(n_estimators=10).fit(blob)
    again = IsolationForestDetector(n_estimators=10, random_state=detector.seed_).fit(blob)
    np.testing.assert_array_equal(detector.score_samples(blob), again.score_samples(blob))


def test_pickled_detectors_score_identically_in_a_fresh_process(blob, tmp_path):
    """eif refits from its stored sample and seed; isotree and sklearn pickle natively."""
    detectors = {kind: make_detector(kind, n_estimators=40, random_state=None).fit(blob)
                 for kind in KINDS}
    probe = np.vstack([blob[:300], [[5.0, 5.0, -5.0, 0.0]]])
    expected = {kind: d.score_samples(probe) for kind, d in detectors.items()}
    same_process = pickle.loads(pickle.dumps(detectors["eif"]))
    np.testing.assert_array_equal(same_process.score_samples(probe), expected["eif"])

    (tmp_path / "models.pkl").write_bytes(pickle.dumps(detectors))
    np.save(tmp_path / "probe.npy", probe)
    code = ("import pickle, sys, numpy as np; ds = pickle.load(open(sys.argv[1] + '/models.pkl', "
            "'rb')); p = np.load(sys.argv[1] + '/probe.npy'); "
            "np.savez(sys.argv[1] + '/out.npz', **{k: d.score_samples(p) for k, d in ds.items()})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    loaded = np.load(tmp_path / "out.npz")
    for kind in KINDS:
        np.testing.assert_array_equal(loaded[kind], expected[kind])
