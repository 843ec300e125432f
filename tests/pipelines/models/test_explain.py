"""Explanations: baseline Shapley values for the Isolation Forest, occlusion for EIF."""

from __future__ import annotations

import itertools
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.models.estimators import make_detector
from pipelines.models.explain import (
    Explainer,
    average_path_length,
    baseline_shapley,
    explain,
    forest_nodes,
)

NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2000, 4))


@pytest.mark.parametrize("kind", ["iforest", "eif", "isotree"])
def test_the_perturbed_feature_explains_the_anomaly(kind, data):
    detector = make_detector(kind, n_estimators=60, random_state=0).fit(data)
    explainer = Explainer(detector, data, NAMES)
    assert explainer.method == ("baseline_shap" if kind == "iforest" else "occlusion")
    rows = np.tile(np.median(data, axis=0), (4, 1))
    for j in range(4):
        rows[j, j] = 9.0
    explanations = explain(explainer, rows, top_k=2)
    assert [e[0]["feature"] for e in explanations] == NAMES
    for j, top in enumerate(explanations):
        assert top[0]["contribution"] > 0 and top[0]["value"] == 9.0
        assert top[0]["typical"] == pytest.approx(np.median(data[:, j]))
        assert len(top) == 2


def _mean_path(detector, rows: np.ndarray) -> np.ndarray:
    c = average_path_length(int(detector.forest_.max_samples_))
    return -np.log2(detector.score_samples(rows)) * c


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def testbaseline_shapley_equals_the_shapley_values_of_every_mix(data, max_features):
    """Against the definition: the value of a coalition S is the forest's mean path length
    for the row's values on S and the typical row's elsewhere; 2^4 coalitions per row."""
    detector = make_detector("iforest", n_estimators=40, max_features=max_features,
                             random_state=1).fit(data)
    explainer = Explainer(detector, data, NAMES)
    rows = np.vstack([data[:30], [[6.0, 0, 0, -6.0], [0, 9.0, 9.0, 0]]])
    d, typical = len(NAMES), explainer.typical
    value = {s: _mean_path(detector, np.where(np.array(s, bool), rows, typical))
             for s in itertools.product([0, 1], repeat=d)}
    expected = np.zeros_like(rows)
    for s, v in value.items():
        for j in (j for j in range(d) if not s[j]):
            with_j = s[:j] + (1,) + s[j + 1:]
            weight = math.factorial(sum(s)) * math.factorial(d - sum(s) - 1) / math.factorial(d)
            expected[:, j] += weight * (value[with_j] - v)
    phi, path = baseline_shapley(forest_nodes(detector, typical), rows)
    np.testing.assert_allclose(phi, expected, atol=1e-9)
    np.testing.assert_allclose(path, _mean_path(detector, rows), atol=1e-9)


@pytest.mark.parametrize("method", ["baseline_shap", "tree_shap"])
def test_shapley_contributions_add_up_to_the_score(data, method):
    detector = make_detector("iforest", n_estimators=60, random_state=0).fit(data)
    explainer = Explainer(detector, data, NAMES, method=method)
    rows = np.vstack([data[:50], [[6.0, 0, 0, -6.0]]])
    contributions = explainer.contributions(rows)
    scores = detector.score_samples(rows)
    # sum over features = score(x) - score(baseline), the same baseline for every row
    baselines = scores - contributions.sum(axis=1)
    np.testing.assert_allclose(baselines, baselines[0], atol=1e-6)
    if method == "baseline_shap":  # the baseline is the typical row itself
        typical_score = detector.score_samples(explainer.typical[None, :])[0]
        assert baselines[0] == pytest.approx(typical_score, abs=1e-9)
    assert 0.3 < baselines[0] < 0.6


def test_a_forest_without_per_node_path_lengths_is_explained_by_tree_shap(data):
    """`forest_nodes` reads scikit-learn's per-node path lengths (private, as the fast
    scorer does); a version without them still explains, with shap's TreeSHAP."""
    detector = make_detector("iforest", n_estimators=20, random_state=0).fit(data)
    rows = np.vstack([data[:5], [[6.0, 0, 0, -6.0]]])
    expected = Explainer(detector, data, NAMES, method="tree_shap").contributions(rows)
    del detector.forest_._decision_path_lengths
    np.testing.assert_allclose(Explainer(detector, data, NAMES).contributions(rows), expected)


def test_the_default_explanations_do_not_import_shap():
    """shap brings numba, llvmlite and matplotlib (~90 MB) into the serving worker."""
    code = ("import sys, numpy as np\n"
            "from pipelines.models.estimators import make_detector\n"
            "from pipelines.models.explain import Explainer, explain\n"
            "x = np.random.default_rng(0).normal(size=(500, 3))\n"
            "d = make_detector('iforest', n_estimators=10, random_state=0).fit(x)\n"
            "explain(Explainer(d, x, ['a', 'b', 'c']), x[:5])\n"
            "print(sorted(m for m in ('shap', 'numba', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]"


def test_explainer_pickles_and_takes_dataframes(data):
    import pandas as pd

    detector = make_detector("eif", n_estimators=20, extension_level=1, random_state=0).fit(data)
    explainer = pickle.loads(pickle.dumps(Explainer(detector, data, NAMES)))
    frame = pd.DataFrame(data[:3][:, ::-1], columns=NAMES[::-1])  # columns in another order
    assert explain(explainer, frame) == explain(explainer, data[:3])
    assert explain(explainer, np.zeros((0, 4))) == []
    for method in ("baseline_shap", "tree_shap"):
        with pytest.raises(ValueError):
            Explainer(detector, data, NAMES, method=method)


def test_an_isolation_forest_explainer_pickles(data):
    detector = make_detector("iforest", n_estimators=20, random_state=0).fit(data)
    explainer = Explainer(detector, data, NAMES)
    before = explain(explainer, data[:3])  # builds the node arrays, which are not pickled
    assert pickle.loads(pickle.dumps(explainer))._nodes is None
    assert explain(pickle.loads(pickle.dumps(explainer)), data[:3]) == before
