"""Per-session explanations: which features made a session score as an anomaly.

Contributions are in **anomaly-score units, positive = pushes towards anomaly**.

- Isolation Forest: exact **baseline Shapley values** of the mean path length E[h]
  against the typical session (the training median), in numpy (`baseline_shapley`):
  the same reference as occlusion below, with interactions shared out exactly. They
  are rescaled onto the score `s = 2 ** (-E[h] / c)` so that, per session, they sum
  to `s(x) - s(typical)` (one positive factor per row: signs and ranking are
  unchanged). No `shap` import, which would bring numba, llvmlite and matplotlib
  (~95 MB) into the serving worker. `method="tree_shap"` (`shap.TreeExplainer`:
  path-dependent TreeSHAP against the training data) stays for models logged with
  it and for comparison (`benchmarks/explain_methods.py`).
- Extended forests (`eif`, `isotree`): TreeSHAP does not apply (their splits
  are oblique hyperplanes inside compiled objects), so they get **occlusion against the
  training median**: contribution_j = s(x) - s(x with feature j set to its
  training median). One batch of `n_features + 1` rows per session, so it is as
  fast as scoring. It ignores interactions; `benchmarks/explain_methods.py`
  compares it with the Shapley values on the Isolation Forest and with KernelSHAP
  on EIF (top-feature agreement and ms per session; figures in docs/models.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from pipelines.models.estimators import Detector, IsolationForestDetector

ExplainMethod = Literal["baseline_shap", "tree_shap", "occlusion"]
AXIS_PARALLEL_METHODS = ("baseline_shap", "tree_shap")


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
        method: None picks baseline Shapley for the Isolation Forest, occlusion for extended
            forests.
    """

    def __init__(self, detector: Detector, background: np.ndarray,
                 feature_names: Sequence[str], method: ExplainMethod | None = None):
        background = np.asarray(background, dtype=np.float64)
        if background.ndim != 2 or background.shape[1] != len(feature_names):
            raise ValueError("background must be a 2-D matrix with one column per feature name")
        axis_parallel = isinstance(detector, IsolationForestDetector)
        if method is None:
            method = "baseline_shap" if axis_parallel else "occlusion"
        if method in AXIS_PARALLEL_METHODS and not axis_parallel:
            raise ValueError(f"{method} needs scikit-learn's axis-parallel trees; use occlusion "
                             "for extended forests")
        self.detector = detector
        self.feature_names = list(feature_names)
        self.method: ExplainMethod = method
        self.typical = np.median(background, axis=0)
        self._tree_explainer: Any = None
        self._nodes: ForestNodes | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tree_explainer"] = state["_nodes"] = None  # rebuilt lazily after unpickling
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
                                  _tree_explainer=None, _nodes=None)
        return explainer

    def contributions(self, rows: Any) -> np.ndarray:
        """Attribution matrix `(n_rows, n_features)` in score units, positive = more anomalous."""
        X = np.asarray(rows, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if len(X) == 0:
            return np.zeros((0, len(self.feature_names)))
        if self.method == "baseline_shap":
            return self._baseline_shap(X)
        if self.method == "tree_shap":
            return self._tree_shap(X)
        return self._occlusion(X)

    def _baseline_shap(self, X: np.ndarray) -> np.ndarray:
        if self._nodes is None:
            try:
                self._nodes = forest_nodes(self.detector, self.typical)
            except AttributeError:  # a scikit-learn without the per-node path lengths
                return self._tree_shap(X)
        path_phi, path = baseline_shapley(self._nodes, X)
        return _onto_score(path_phi, path, self._nodes.typical_path, self._nodes.c_value)

    def _tree_shap(self, X: np.ndarray) -> np.ndarray:
        import shap

        if self._tree_explainer is None:
            self._tree_explainer = shap.TreeExplainer(self.detector.forest_)
        path_shap = np.asarray(self._tree_explainer.shap_values(X, check_additivity=False))
        expected_path = float(np.ravel(self._tree_explainer.expected_value)[0])
        path = expected_path + path_shap.sum(axis=1)
        c_value = average_path_length(int(self.detector.forest_.max_samples_))
        return _onto_score(path_shap, path, expected_path, c_value)

    def _occlusion(self, X: np.ndarray) -> np.ndarray:
        n, d = X.shape
        batch = np.repeat(X, d + 1, axis=0).reshape(n, d + 1, d)
        diagonal = np.arange(d)
        batch[:, diagonal + 1, diagonal] = self.typical
        scores = self.detector.score_samples(batch.reshape(-1, d)).reshape(n, d + 1)
        return scores[:, :1] - scores[:, 1:]


def _onto_score(path_phi: np.ndarray, path: np.ndarray, base_path: float,
                c_value: float) -> np.ndarray:
    """Attributions of the mean path length, rescaled per row onto the score
    `2 ** (-path / c)`: they then sum to `s(x) - s(base)`, positive = more anomalous."""
    scores = 2.0 ** (-path / c_value)
    base_score = 2.0 ** (-base_path / c_value)
    delta_path = path - base_path
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(np.abs(delta_path) > 1e-12,
                          (scores - base_score) / -delta_path, np.log(2) * scores / c_value)
    return -path_phi * factor[:, None]


@dataclass(frozen=True)
class ForestNodes:
    """Every node of a fitted Isolation Forest in flat arrays (one tree after another), with
    the side of each split that the typical row takes."""

    left: np.ndarray  # int64 child index, -1 at a leaf
    right: np.ndarray
    feature: np.ndarray  # int64, the column of the input matrix
    threshold: np.ndarray  # float64; a row goes left when its float32 value <= threshold
    typical_left: np.ndarray  # bool
    value: np.ndarray  # float64, a leaf's path length divided by the number of trees
    roots: np.ndarray  # int64, the root of each tree
    n_features: int
    typical_path: float  # mean path length of the typical row
    c_value: float  # the score's normaliser c(max_samples)


def forest_nodes(detector: IsolationForestDetector, typical: np.ndarray) -> ForestNodes:
    """The `ForestNodes` of `detector`'s forest, with `typical` as the baseline row.

    Raises:
        AttributeError: this scikit-learn lacks what `compiled_trees` reads.
    """
    trees, _denominator = detector.compiled_trees()
    if trees is None:
        raise AttributeError("the forest has no per-node path lengths to walk")
    n_trees = len(trees)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("left", "right", "feature", "threshold", "value")}
    roots, offset = [], 0
    for tree, features, leaf_path in trees:
        leaf = tree.children_left == -1
        column = np.maximum(tree.feature, 0)
        roots.append(offset)
        parts["left"].append(np.where(leaf, -1, tree.children_left + offset))
        parts["right"].append(np.where(leaf, -1, tree.children_right + offset))
        parts["feature"].append(np.where(leaf, 0, column if features is None
                                         else features[column]))
        parts["threshold"].append(tree.threshold)
        parts["value"].append(leaf_path / n_trees)  # the path length the scorer adds up
        offset += tree.node_count
    flat = {k: np.concatenate(v) for k, v in parts.items()}
    typical32 = np.asarray(typical, dtype=np.float32).astype(np.float64)
    typical_left = typical32[flat["feature"]] <= flat["threshold"]
    nodes = ForestNodes(flat["left"].astype(np.int64), flat["right"].astype(np.int64),
                        flat["feature"].astype(np.int64), flat["threshold"], typical_left,
                        flat["value"], np.asarray(roots, np.int64), int(detector.n_features_in_),
                        0.0, average_path_length(int(detector.forest_.max_samples_)))
    _, path = baseline_shapley(nodes, typical32[None, :])
    return replace(nodes, typical_path=float(path[0]))


def baseline_shapley(nodes: ForestNodes, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Shapley values of the mean path length for each row of `X` against the typical
    row, and the rows' mean path lengths.

    A mix z_S (the row's values on the features in S, the typical row's elsewhere) reaches
    a leaf iff every feature U that only the row sends down the leaf's path is in S and
    every feature V that only the typical row sends down it is not. The leaf's value v is
    then a game with Shapley value v (|U|-1)! |V|! / (|U|+|V|)! for each feature of U and
    -v |U|! (|V|-1)! / (|U|+|V|)! for each of V; the forest's values are their sum. The
    trees are walked level by level for all rows at once, following both children where the
    row and the typical row part; U and V are bit sets (one uint64 word per 64 features).
    """
    rows32 = np.asarray(X, dtype=np.float32).astype(np.float64)  # as scikit-learn compares
    n, d = len(rows32), nodes.n_features
    words = (d + 63) // 64
    row = np.repeat(np.arange(n), len(nodes.roots))
    node = np.tile(nodes.roots, n)
    in_u = np.zeros((len(row), words), np.uint64)
    in_v = np.zeros((len(row), words), np.uint64)
    reached: list[tuple[np.ndarray, ...]] = []
    while len(node):
        leaf = nodes.left[node] == -1
        if leaf.any():
            reached.append((row[leaf], node[leaf], in_u[leaf], in_v[leaf]))
            row, node, in_u, in_v = row[~leaf], node[~leaf], in_u[~leaf], in_v[~leaf]
        feature = nodes.feature[node]
        row_left = rows32[row, feature] <= nodes.threshold[node]
        typical_left = nodes.typical_left[node]
        word, bit = feature // 64, np.left_shift(np.uint64(1), (feature % 64).astype(np.uint64))
        at = np.arange(len(node))
        part = row_left != typical_left
        # where they part, the row's side needs the feature in S and the typical side out of it
        row_side = part & ((in_v[at, word] & bit) == 0)
        typical_side = part & ((in_u[at, word] & bit) == 0)
        u_next, v_next = in_u[row_side], in_v[typical_side]
        u_next[np.arange(len(u_next)), word[row_side]] |= bit[row_side]
        v_next[np.arange(len(v_next)), word[typical_side]] |= bit[typical_side]
        child_of_row = np.where(row_left, nodes.left[node], nodes.right[node])
        child_of_typical = np.where(typical_left, nodes.left[node], nodes.right[node])
        row = np.concatenate([row[~part], row[row_side], row[typical_side]])
        node = np.concatenate([child_of_row[~part], child_of_row[row_side],
                               child_of_typical[typical_side]])
        in_u = np.concatenate([in_u[~part], u_next, in_u[typical_side]])
        in_v = np.concatenate([in_v[~part], in_v[row_side], v_next])
    row, node, in_u, in_v = (np.concatenate(parts) for parts in zip(*reached))
    value = nodes.value[node]
    path = np.bincount(row, weights=value * ~in_v.any(axis=1), minlength=n)  # the row's leaf
    members_u = _bits(in_u, d)
    members_v = _bits(in_v, d)
    n_u, n_v = members_u.sum(axis=1), members_v.sum(axis=1)
    factorial = np.cumprod([1.0] + list(range(1, 2 * d + 1)))
    total = factorial[n_u + n_v]
    w_u = value * factorial[np.maximum(n_u - 1, 0)] * factorial[n_v] / total
    w_v = value * factorial[n_u] * factorial[np.maximum(n_v - 1, 0)] / total
    weights = members_u * w_u[:, None] - members_v * w_v[:, None]
    index = (row[:, None] * d + np.arange(d)).ravel()
    return np.bincount(index, weights.ravel(), minlength=n * d).reshape(n, d), path


def _bits(sets: np.ndarray, d: int) -> np.ndarray:
    """`(k, d)` booleans: feature j is in the bit set of entry i."""
    j = np.arange(d)
    return ((sets[:, j // 64] >> (j % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


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
