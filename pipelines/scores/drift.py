"""Drift of features and score against the champion's training-time reference (pure).

PSI (population stability index) on quantile bins of the reference decides;
the two-sample Kolmogorov-Smirnov statistic is reported next to it. Rule of
thumb for PSI: < 0.1 stable, 0.1-0.25 moderate, > 0.25 drifted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-4  # floor on a bin's share, so an empty bin costs a finite amount


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def psi(reference: Sequence[float | None], current: Sequence[float | None], bins: int = 10) -> float:
    """Population stability index of `current` against `reference`.

    Args:
        reference: the training-time sample.
        current: the sample to judge.
        bins: number of quantile bins of the reference (ties merge bins).

    Returns:
        PSI >= 0, or NaN when either sample has no finite value.
    """
    ref, cur = _finite(reference), _finite(current)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)))[1:-1]
    if edges.size == 0:  # constant reference: below, equal, above
        edges = np.array([ref[0], np.nextafter(ref[0], np.inf)])
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    ref_p = np.clip(ref_share / ref.size, _EPS, None)
    cur_p = np.clip(cur_share / cur.size, _EPS, None)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


def ks_statistic(reference: Sequence[float | None], current: Sequence[float | None]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (largest CDF gap), NaN for an empty sample."""
    ref, cur = np.sort(_finite(reference)), np.sort(_finite(current))
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    points = np.concatenate([ref, cur])
    gap = (np.searchsorted(ref, points, side="right") / ref.size
           - np.searchsorted(cur, points, side="right") / cur.size)
    return float(np.max(np.abs(gap)))


@dataclass(frozen=True)
class ColumnDrift:
    name: str
    psi: float
    ks: float
    n_reference: int
    n_current: int
    drifted: bool
    ignored: bool = False


@dataclass(frozen=True)
class DriftReport:
    columns: tuple[ColumnDrift, ...]
    psi_threshold: float

    @property
    def drifted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    def as_dict(self) -> dict:
        return {"psi_threshold": self.psi_threshold,
                "columns": [c.__dict__ for c in self.columns]}


def drift_report(reference: Mapping[str, Sequence[float | None]],
                 current: Mapping[str, Sequence[float | None]],
                 psi_threshold: float = 0.25, min_current: int = 1,
                 ignore: Collection[str] = ()) -> DriftReport:
    """PSI and KS of every column present in both the reference and the current window.

    Args:
        reference: column name -> training-time sample (the champion's `reference`,
            features and "score").
        current: column name -> values seen in the window.
        psi_threshold: a column whose PSI exceeds this is drifted.
        min_current: columns with fewer current values are reported, never drifted.
        ignore: columns reported but never drifted, e.g. calendar features, which a
            short window always shows as one hour and one weekday.

    Returns:
        One `ColumnDrift` per shared column, in the reference's order.
    """
    columns = []
    for name, ref_values in reference.items():
        if name not in current:
            continue
        ref, cur = _finite(ref_values), _finite(current[name])
        value = psi(ref, cur)
        judged = cur.size >= min_current and np.isfinite(value) and name not in ignore
        columns.append(ColumnDrift(name=name, psi=value, ks=ks_statistic(ref, cur),
                                   n_reference=int(ref.size), n_current=int(cur.size),
                                   drifted=bool(judged and value > psi_threshold),
                                   ignored=name in ignore))
    return DriftReport(columns=tuple(columns), psi_threshold=psi_threshold)


def window_samples(rows: Sequence[Mapping]) -> dict[str, list[float | None]]:
    """Column -> values of a window's stored results: each feature plus "score"."""
    samples: dict[str, list[float | None]] = {"score": [r["score"] for r in rows]}
    for row in rows:
        for name, value in (row.get("features") or {}).items():
            samples.setdefault(name, []).append(value)
    return samples
