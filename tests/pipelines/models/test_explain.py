"""Explanations: TreeSHAP for the Isolation Forest, occlusion for EIF."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipelines.models.estimators import make_detector
from pipelines.models.explain import Explainer, explain

NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2000, 4))


@pytest.mark.parametrize("kind", ["iforest", "eif", "isotree"])
def test_the_perturbed_feature_explains_the_anomaly(kind, data):
    detector = make_detector(kind, n_estimators=60, random_state=0).fit(data)
    explainer = Explainer(detector, data, NAMES)
    assert explainer.method == ("tree_shap" if kind == "iforest" else "occlusion")
    rows = np.tile(np.median(data, axis=0), (4, 1))
    for j in range(4):
        rows[j, j] = 9.0
    explanations = explain(explainer, rows, top_k=2)
    assert [e[0]["feature"] for e in explanations] == NAMES
    for j, top in enumerate(explanations):
        assert top[0]["contribution"] > 0 and top[0]["value"] == 9.0
        assert top[0]["typical"] == pytest.approx(np.median(data[:, j]))
        assert len(top) == 2


def test_tree_shap_contributions_add_up_to_the_score(data):
    detector = make_detector("iforest", n_estimators=60, random_state=0).fit(data)
    explainer = Explainer(detector, data, NAMES)
    rows = np.vstack([data[:50], [[6.0, 0, 0, -6.0]]])
    contributions = explainer.contributions(rows)
    scores = detector.score_samples(rows)
    # sum over features = score(x) - score(baseline), the same baseline for every row
    baselines = scores - contributions.sum(axis=1)
    np.testing.assert_allclose(baselines, baselines[0], atol=1e-6)
    assert 0.3 < baselines[0] < 0.6


def test_explainer_pickles_and_takes_dataframes(data):
    import pandas as pd

    detector = make_detector("eif", n_estimators=20, extension_level=1, random_state=0).fit(data)
    explainer = pickle.loads(pickle.dumps(Explainer(detector, data, NAMES)))
    frame = pd.DataFrame(data[:3][:, ::-1], columns=NAMES[::-1])  # columns in another order
    assert explain(explainer, frame) == explain(explainer, data[:3])
    assert explain(explainer, np.zeros((0, 4))) == []
    with pytest.raises(ValueError):
        Explainer(detector, data, NAMES, method="tree_shap")
