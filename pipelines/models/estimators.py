"""Anomaly detectors behind one scikit-learn style interface.

Both detectors follow scikit-learn's conventions: `__init__` stores the
hyperparameters unchanged, `fit(X)` validates, learns attributes ending in `_`
and returns `self`, and `score_samples(X)` returns the anomaly score of
Liu et al. (2008), `s(x) = 2 ** (-E[h(x)] / c(psi))` in (0, 1]: **higher means
more anomalous**, about 0.5 for ordinary points.

`IsotreeDetector` is the extended forest of the `isotree` package (Cortes):
splits on random hyperplanes like EIF, but with split points drawn within the
range of the projected data and columns standardised first. On the real ACN
sessions it ranks injected faults far better than `eif` (docs/models.md).

`ExtendedIsolationForestDetector` wraps `eif.iForest` (Hariri et al., 2019), a
Cython object that cannot be pickled. The detector therefore pickles its
hyperparameters, the resolved seed and the training matrix, and refits on
unpickling: eif draws every sample and hyperplane from that seed, so the refit
forest is identical and scores agree bit for bit (checked across processes in
`tests/pipelines/test_estimators.py`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest

DetectorKind = Literal["iforest", "eif", "isotree"]
DETECTOR_KINDS: tuple[DetectorKind, ...] = ("iforest", "eif", "isotree")


def _as_matrix(X: Any, n_features: int | None = None) -> np.ndarray:
    """`X` as a finite, contiguous float64 matrix (of `n_features` columns when given)."""
    matrix = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("feature matrix contains NaN or infinite values")
    if n_features is not None and matrix.shape[1] != n_features:
        raise ValueError(f"expected {n_features} features, got {matrix.shape[1]}")
    return matrix


def _start_extended_fit(detector: Any, X: Any) -> np.ndarray:
    """Validate `X` for an extended forest and learn `seed_`, `n_features_in_` and
    `extension_level_` (None = fully extended); the training matrix."""
    matrix = _as_matrix(X)
    n_features = matrix.shape[1]
    level = n_features - 1 if detector.extension_level is None else int(detector.extension_level)
    if not 0 <= level < n_features:
        raise ValueError(f"extension_level must be in [0, {n_features - 1}] "
                         f"for {n_features} features, got {level}")
    detector.seed_ = _resolve_seed(detector.random_state)
    detector.n_features_in_ = n_features
    detector.extension_level_ = level
    return matrix


def _resolve_seed(random_state: int | None) -> int:
    if random_state is None:
        return int(np.random.default_rng().integers(0, 2**31 - 1))
    return int(random_state)


def _resolve_max_samples(max_samples: float, n_rows: int) -> int:
    if isinstance(max_samples, float) and 0 < max_samples <= 1:
        return max(2, int(max_samples * n_rows))
    return max(2, min(int(max_samples), n_rows))


class IsolationForestDetector(BaseEstimator):
    """scikit-learn's `IsolationForest`, with scores oriented so that higher = more anomalous.

    Args:
        n_estimators: number of trees.
        max_samples: rows drawn per tree (int) or fraction of rows (float in (0, 1]).
        max_features: fraction (float) or number (int) of features drawn per tree.
        random_state: seed; None draws one at fit time and keeps it in `seed_`.
    """

    kind: DetectorKind = "iforest"

    def __init__(self, n_estimators: int = 100, max_samples: float = 256,
                 max_features: float = 1.0, random_state: int | None = None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> IsolationForestDetector:
        """Fit the forest on the rows of `X` (labels are ignored)."""
        matrix = _as_matrix(X)
        self.seed_ = _resolve_seed(self.random_state)
        self.n_features_in_ = matrix.shape[1]
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=_resolve_max_samples(self.max_samples, len(matrix)),
            max_features=self.max_features, random_state=self.seed_, n_jobs=1,
        ).fit(matrix)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Anomaly score in (0, 1] per row; higher = more anomalous.

        Equal, bit for bit, to `-self.forest_.score_samples(X)`, without its per-call and
        per-tree dispatch (joblib, input validation: ~10 ms a call for 100 trees): each
        tree's compiled `apply` is called directly and the path lengths are summed in
        scikit-learn's order (`tests/pipelines/models/test_fast_forest.py`).
        """
        matrix = _as_matrix(X, self.n_features_in_)
        trees, denominator = self.compiled_trees()
        if trees is None:
            return -self.forest_.score_samples(matrix)
        # scikit-learn compares float32 inputs with float64 thresholds
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
        depths = np.zeros(len(rows))
        for tree, features, leaf_path in trees:
            subset = rows if features is None else np.ascontiguousarray(rows[:, features])
            depths += leaf_path[tree.apply(subset)]
        return 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                                where=denominator != 0))

    def compiled_trees(self) -> tuple[list[tuple[Any, np.ndarray | None, np.ndarray]] | None,
                                       Any]:
        """Per tree: its `tree_`, its feature subset (None for all), and each node's path
        length as a leaf; and the score's denominator. Built once per fitted forest; None
        when the forest lacks the attributes this needs (another scikit-learn version):
        then `score_samples` lets scikit-learn score, and the explanations use TreeSHAP."""
        compiled = self.__dict__.get("_compiled")
        if compiled is not None and compiled[0] is self.forest_:
            return compiled[1:]
        forest = self.forest_
        try:
            from sklearn.ensemble._iforest import _average_path_length

            subsample = forest._max_features != self.n_features_in_
            trees = [(estimator.tree_, np.asarray(features) if subsample else None,
                      np.asarray(depth + average - 1.0, dtype=np.float64))
                     for estimator, features, depth, average in zip(
                         forest.estimators_, forest.estimators_features_,
                         forest._decision_path_lengths, forest._average_path_length_per_tree,
                         strict=True)]
            denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        except (AttributeError, ImportError, TypeError, ValueError):
            trees, denominator = None, None
        self._compiled = (forest, trees, denominator)
        return trees, denominator

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_compiled", None)  # rebuilt from the forest on first use
        return state


class ExtendedIsolationForestDetector(BaseEstimator):
    """The Extended Isolation Forest of the `eif` package, picklable by deterministic refit.

    Args:
        n_estimators: number of trees.
        max_samples: rows drawn per tree (int) or fraction of rows (float in (0, 1]).
        extension_level: how many coordinates beyond one each split hyperplane may use;
            0 is the classic axis-parallel forest, `n_features - 1` fully extended.
            None means fully extended. It plays the role `max_features` plays for the
            Isolation Forest (eif has no per-tree feature sampling).
        random_state: seed; None draws one at fit time and keeps it in `seed_`.
    """

    kind: DetectorKind = "eif"

    def __init__(self, n_estimators: int = 100, max_samples: float = 256,
                 extension_level: int | None = None, random_state: int | None = None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.extension_level = extension_level
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> ExtendedIsolationForestDetector:
        """Fit the forest on the rows of `X` (labels are ignored)."""
        self.training_matrix_ = _start_extended_fit(self, X)
        self._build_forest()
        return self

    def _build_forest(self) -> None:
        import eif  # compiled extension; imported lazily so the module loads without it

        matrix = self.training_matrix_
        self.forest_ = eif.iForest(
            matrix, ntrees=int(self.n_estimators),
            sample_size=_resolve_max_samples(self.max_samples, len(matrix)),
            ExtensionLevel=self.extension_level_, seed=self.seed_,
        )

    def score_samples(self, X: Any) -> np.ndarray:
        """Anomaly score in (0, 1] per row; higher = more anomalous."""
        matrix = _as_matrix(X, self.n_features_in_)
        return np.asarray(self.forest_.compute_paths(X_in=matrix), dtype=np.float64)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("forest_", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "training_matrix_" in state:
            self._build_forest()


class IsotreeDetector(BaseEstimator):
    """The extended isolation forest of `isotree`: hyperplane splits on standardised columns.

    Args:
        n_estimators: number of trees.
        max_samples: rows drawn per tree (int) or fraction of rows (float in (0, 1]).
        extension_level: coordinates beyond one per hyperplane (isotree's `ndim - 1`);
            None means fully extended.
        standardize: standardise columns before building hyperplanes (isotree's default).
        random_state: seed; None draws one at fit time and keeps it in `seed_`.
    """

    kind: DetectorKind = "isotree"

    def __init__(self, n_estimators: int = 100, max_samples: float = 256,
                 extension_level: int | None = None, standardize: bool = True,
                 random_state: int | None = None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.extension_level = extension_level
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> IsotreeDetector:
        """Fit the forest on the rows of `X` (labels are ignored)."""
        from isotree import IsolationForest as IsotreeForest

        matrix = _start_extended_fit(self, X)
        self.forest_ = IsotreeForest(
            ndim=self.extension_level_ + 1, ntrees=int(self.n_estimators),
            sample_size=_resolve_max_samples(self.max_samples, len(matrix)), coefs="normal",
            missing_action="fail", standardize_data=bool(self.standardize), nthreads=1,
            random_seed=self.seed_,
        ).fit(matrix)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Anomaly score in (0, 1) per row; higher = more anomalous."""
        matrix = _as_matrix(X, self.n_features_in_)
        return np.asarray(self.forest_.predict(matrix), dtype=np.float64)


Detector = IsolationForestDetector | ExtendedIsolationForestDetector | IsotreeDetector


def make_detector(kind: DetectorKind, **params: Any) -> Detector:
    """Build an unfitted detector of `kind` with hyperparameters `params`.

    Args:
        kind: "iforest" (scikit-learn), "eif" (Extended Isolation Forest of `eif`) or
            "isotree" (extended forest of `isotree`).
        **params: constructor arguments of that detector.

    Returns:
        The unfitted detector.
    """
    if kind == "iforest":
        return IsolationForestDetector(**params)
    if kind == "eif":
        return ExtendedIsolationForestDetector(**params)
    if kind == "isotree":
        return IsotreeDetector(**params)
    raise ValueError(f"unknown detector kind {kind!r}; expected one of {DETECTOR_KINDS}")


def fit_trimmed(detector: Detector, X: Any, trim: float) -> np.ndarray:
    """Fit `detector` on the rows of `X` that a first fit does not rank in the top `trim`.

    Training history is contaminated: faults that break no validation rule (meter
    faults, over-deliveries, stuck sessions) stay in it, and a forest fitted on them
    learns their region as normal, so it masks their kind. A first fit on every row
    ranks them high; the refit on the rest sees fewer of them. Both fits use the
    detector's seed, so the result is as deterministic as a plain `fit`.

    Args:
        detector: unfitted detector; fitted in place on the kept rows.
        X: training rows.
        trim: share of the highest-scoring rows left out of the refit, in [0, 0.5);
            0 is a plain `fit` on every row.

    Returns:
        The kept rows as a boolean mask over `X`.
    """
    matrix = _as_matrix(X)
    if int(trim * len(matrix)) == 0:
        below_top(np.zeros(len(matrix)), trim)  # validates `trim`
        detector.fit(matrix)
        return np.ones(len(matrix), dtype=bool)
    kept = below_top(detector.fit(matrix).score_samples(matrix), trim)
    detector.fit(matrix[kept])
    return kept


def below_top(scores: np.ndarray, share: float) -> np.ndarray:
    """Mask of the rows outside the highest-scoring `share` of `scores` (rounded down).

    Ties at the cut are broken by row order (a stable sort), the same on every run.
    """
    if not 0 <= share < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {share}")
    kept = np.ones(len(scores), dtype=bool)
    kept[np.argsort(-np.asarray(scores), kind="stable")[:int(share * len(scores))]] = False
    return kept


def detector_state(detector: Detector) -> dict[str, Any]:
    """A fitted detector as plain data: its kind, hyperparameters and learned attributes.

    The learned attributes are the libraries' own objects and numpy arrays, never a
    class of this project, so a pickle of the state survives a move of this module.
    The `eif` forest is left out: it cannot be pickled, and `restore_detector` refits it.
    """
    learned = {k: v for k, v in vars(detector).items() if k.endswith("_")}
    if detector.kind == "eif":
        del learned["forest_"]
    return {"kind": detector.kind, "params": detector.get_params(), "learned": learned}


def restore_detector(state: dict[str, Any]) -> Detector:
    """The fitted detector of `detector_state(...)`, scoring exactly as the original."""
    detector = make_detector(state["kind"], **state["params"])
    detector.__setstate__({**vars(detector), **state["learned"]})
    return detector
