"""Per-session explanations: which features made a session score as an anomaly.

Contributions are in **anomaly-score units, positive = pushes towards anomaly**.

- Isolation Forest: exact TreeSHAP (`shap.TreeExplainer`) of the expected path
  length, which is what the forest learns. The path-length SHAP values are
  rescaled onto the score `s = 2 ** (-E[h] / c)` so that, per session, they sum
  to `s(x) - s(baseline)` (the rescaling is one positive factor per row: signs
  and ranking are TreeSHAP's).
- Extended forests (`eif`, `isotree`): TreeSHAP does not apply (their splits
  are oblique hyperplanes inside compiled objects), so they get **occlusion against the
  training median**: contribution_j = s(x) - s(x with feature j set to its
  training median). One batch of `n_features + 1` rows per session, so it is as
  fast as scoring. It ignores interactions; `benchmarks/explain_methods.py`
  compares it with TreeSHAP on the Isolation Forest and with KernelSHAP on
  EIF (top-feature agreement and ms per session; figures in docs/models.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from pipelines.models.estimators import Detector, IsolationForestDetector

ExplainMethod = Literal["tree_shap", "occlusion"]


def average_path_length(n_samples: int) -> float:
    """c(n) of Liu et al.: mean path length of an unsuccessful BST search among n points."""
    if n_samples <= 2:
        return 1.0
    return 2.0 * (np.log(n_samples - 1) + np.euler_gamma) - 2.0 * (n_samples - 1) / n_samples


class Explainer:
    """Feature attributions for one fitted detector.

    Args:
        detector: a fitted detector from `pipelines.models.estimators`.
        background: training rows; their median is the "typical" value of each feature.
        feature_names: column names, in the detector's input order.
        method: None picks TreeSHAP for the Isolation Forest, occlusion for extended forests.
    """

    def __init__(self, detector: Detector, background: np.ndarray,
                 feature_names: Sequence[str], method: ExplainMethod | None = None):
        background = np.asarray(background, dtype=np.float64)
        if background.ndim != 2 or background.shape[1] != len(feature_names):
            raise ValueError("background must be a 2-D matrix with one column per feature name")
        axis_parallel = isinstance(detector, IsolationForestDetector)
        if method is None:
            method = "tree_shap" if axis_parallel else "occlusion"
        if method == "tree_shap" and not axis_parallel:
            raise ValueError("TreeSHAP needs scikit-learn's axis-parallel trees; use occlusion "
                             "for extended forests")
        self.detector = detector
        self.feature_names = list(feature_names)
        self.method: ExplainMethod = method
        self.typical = np.median(background, axis=0)
        self._tree_explainer: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tree_explainer"] = None  # rebuilt lazily after unpickling
        return state

    def state(self) -> dict[str, Any]:
        """What the explainer learned, as plain data (the detector is kept apart)."""
        return {"feature_names": list(self.feature_names), "method": self.method,
                "typical": np.asarray(self.typical, dtype=np.float64)}

    @classmethod
    def restore(cls, detector: Detector, state: dict[str, Any]) -> Explainer:
        """The explainer of `state()` for `detector`, without its training rows."""
        explainer = cls.__new__(cls)
        explainer.__dict__.update(detector=detector, feature_names=list(state["feature_names"]),
                                  method=state["method"], typical=np.asarray(state["typical"]),
                                  _tree_explainer=None)
        return explainer

    def contributions(self, rows: Any) -> np.ndarray:
        """Attribution matrix `(n_rows, n_features)` in score units, positive = more anomalous."""
        X = np.asarray(rows, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if len(X) == 0:
            return np.zeros((0, len(self.feature_names)))
        if self.method == "tree_shap":
            return self._tree_shap(X)
        return self._occlusion(X)

    def _tree_shap(self, X: np.ndarray) -> np.ndarray:
        import shap

        if self._tree_explainer is None:
            self._tree_explainer = shap.TreeExplainer(self.detector.forest_)
        path_shap = np.asarray(self._tree_explainer.shap_values(X, check_additivity=False))
        expected_path = float(np.ravel(self._tree_explainer.expected_value)[0])
        path = expected_path + path_shap.sum(axis=1)
        c_value = average_path_length(int(self.detector.forest_.max_samples_))
        scores = 2.0 ** (-path / c_value)
        base_score = 2.0 ** (-expected_path / c_value)
        delta_path = path - expected_path
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(np.abs(delta_path) > 1e-12,
                              (scores - base_score) / -delta_path, np.log(2) * scores / c_value)
        return -path_shap * factor[:, None]

    def _occlusion(self, X: np.ndarray) -> np.ndarray:
        n, d = X.shape
        batch = np.repeat(X, d + 1, axis=0).reshape(n, d + 1, d)
        diagonal = np.arange(d)
        batch[:, diagonal + 1, diagonal] = self.typical
        scores = self.detector.score_samples(batch.reshape(-1, d)).reshape(n, d + 1)
        return scores[:, :1] - scores[:, 1:]


def explain(explainer: Explainer, rows: Any, top_k: int = 3) -> list[list[dict]]:
    """Top contributing features per row, largest absolute contribution first.

    Args:
        explainer: the fitted model's explainer.
        rows: feature rows (DataFrame with the explainer's columns, or a matrix in that order).
        top_k: features per row.

    Returns:
        Per row, up to `top_k` dicts `{feature, value, contribution, typical}`
        (contract §4); contribution > 0 pushes towards anomaly.
    """
    if hasattr(rows, "columns"):
        rows = rows[explainer.feature_names].to_numpy(dtype=np.float64)
    X = np.asarray(rows, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    contrib = explainer.contributions(X)
    k = max(0, min(top_k, X.shape[1]))
    out: list[list[dict]] = []
    for row, row_contrib in zip(X, contrib):
        order = np.argsort(-np.abs(row_contrib), kind="stable")[:k]
        out.append([{"feature": explainer.feature_names[j], "value": float(row[j]),
                     "contribution": float(row_contrib[j]),
                     "typical": float(explainer.typical[j])} for j in order])
    return out
