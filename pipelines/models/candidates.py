"""What a hyperparameter search is made of: candidates, the grid, the split they are judged
on, and each candidate's result. Plain data, shared by tuning, selection and promotion."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.models.estimators import DetectorKind, make_detector


@dataclass(frozen=True)
class Candidate:
    """One point of the search grid: a detector kind and its hyperparameters."""

    kind: DetectorKind
    params: tuple[tuple[str, Any], ...]

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def name(self) -> str:
        short = {"n_estimators": "n", "max_samples": "s", "max_features": "f",
                 "extension_level": "ext"}
        return "-".join([self.kind] + [f"{short.get(k, k)}{v}" for k, v in self.params])

    def cost(self) -> tuple[int, int]:
        params = self.param_dict
        return int(params.get("n_estimators", 100)), int(params.get("max_samples", 256))

    def build(self, seed: int, n_features: int | None = None):
        """An unfitted detector; EIF extension levels are capped at `n_features - 1`."""
        params = self.param_dict
        if self.kind in ("eif", "isotree") and n_features is not None:
            level = params.get("extension_level")
            params["extension_level"] = n_features - 1 if level is None \
                else min(int(level), n_features - 1)
        return make_detector(self.kind, random_state=seed, **params)


@dataclass(frozen=True)
class SearchSpace:
    """Grid values; `max_features` applies to the Isolation Forest, extension levels to the
    extended forests (eif, isotree). Levels >= n_features - 1 mean fully extended."""

    kinds: tuple[DetectorKind, ...] = ("iforest", "eif", "isotree")
    n_estimators: tuple[int, ...] = (100, 200)
    max_samples: tuple[int, ...] = (256, 512)
    max_features: tuple[float, ...] = (0.5, 1.0)
    extension_levels: tuple[int, ...] = (1, 3, 64)

    def candidates(self, n_features: int) -> list[Candidate]:
        """The grid as candidates; extension levels beyond `n_features - 1` collapse into one."""
        out: list[Candidate] = []
        for kind in dict.fromkeys(self.kinds):
            if kind == "iforest":
                axes = {"n_estimators": self.n_estimators, "max_samples": self.max_samples,
                        "max_features": self.max_features}
            else:
                levels = sorted({min(int(lv), n_features - 1) for lv in self.extension_levels})
                axes = {"n_estimators": self.n_estimators, "max_samples": self.max_samples,
                        "extension_level": tuple(levels)}
            for values in itertools.product(*axes.values()):
                out.append(Candidate(kind, tuple(zip(axes.keys(), values))))
        if not out:
            raise ValueError("the search space is empty")
        return out


@dataclass
class EvalSplit:
    """Training rows, held-out rows, their anomaly types and impossible-power probes.

    A split made by `pipelines.models.sampling.sample_split` holds samples of both: the
    held-out rows carry `eval_weights` (rows of the full held-out set each one stands
    for; None = 1 each), and the `*_total` counts are the sizes before sampling.
    """

    X_train: np.ndarray
    X_eval: np.ndarray
    eval_types: np.ndarray | None = None  # object array, "" for normal rows
    X_probe: np.ndarray | None = None  # rows every shipped model must flag
    eval_weights: np.ndarray | None = None
    train_rows_total: int | None = None
    eval_rows_total: int | None = None

    @property
    def sampled(self) -> bool:
        return (self.eval_weights is not None
                or (self.train_rows_total or 0) > len(self.X_train))

    @property
    def has_labels(self) -> bool:
        return self.eval_types is not None and bool((self.eval_types != "").any())

    @property
    def eval_labels(self) -> np.ndarray:
        if self.eval_types is None:
            return np.zeros(len(self.X_eval), dtype=bool)
        return self.eval_types != ""


@dataclass
class CandidateResult:
    """The evaluation of one candidate; `eval_scores` are the held-out scores."""

    candidate: Candidate
    metrics: dict[str, float]
    threshold: float
    eval_scores: np.ndarray = field(repr=False)
