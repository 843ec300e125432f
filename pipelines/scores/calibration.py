"""Re-calibrating the alert threshold from the recent scores of the model that serves (pure).

Training sets the threshold at the `1 - alert_budget` quantile of the training
scores. When the sessions drift (new users, a season, a site's new chargers),
the same threshold lets more or fewer of them alert than the budget allows. The
monitoring store holds every score the serving version gave; scores do not
depend on the threshold, so the same quantile taken over a recent window of
them is the threshold training would set on today's sessions.

The rule, `recalibrate`: the `1 - alert_budget` quantile (`method="higher"`,
as in training) of the window's scores of the serving version, with guards:

- **enough scores**: a window of fewer than `min_tail / alert_budget` scores
  (1,000 at 1 %, 334 at 3 %) keeps the threshold: the quantile would rest on
  fewer than `min_tail` sessions;
- **a dead band**: while the current threshold lets between
  `alert_budget / tolerance` and `alert_budget * tolerance` of the window alert,
  it is kept, so noise never makes the worker reload;
- **a bounded move**: the new threshold is clamped so that it would let between
  `alert_budget / max_factor` and `alert_budget * max_factor` of the model's
  training reference scores alert. A burst of true faults in the window (or a
  collapse of normal traffic) can therefore raise the threshold at most to
  where a quarter of the training budget alerts (`max_factor` 4), never above
  every fault. The bound is against training, not the last calibration, so
  successive calibrations cannot walk away from it.

The window counts every scored session, faults included: the budget is the
share of all sessions that may alert, as in training, whose rows hold faults too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Decision = Literal["recalibrated", "kept"]


@dataclass(frozen=True)
class CalibrationPolicy:
    """When and how far the threshold may follow the recent scores.

    Args:
        alert_budget: share of sessions that may alert (the model's own budget).
        min_tail: fewest window scores at or above the new threshold; the window
            needs `ceil(min_tail / alert_budget)` scores.
        tolerance: dead band, as a factor on the budget, of the current threshold's
            alert rate on the window.
        max_factor: bound, as a factor on the budget, of the new threshold's alert
            rate on the training reference scores.
    """

    alert_budget: float
    min_tail: int = 10
    tolerance: float = 1.25
    max_factor: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.alert_budget < 1:
            raise ValueError(f"alert_budget must be in (0, 1), got {self.alert_budget}")
        if self.min_tail < 1:
            raise ValueError(f"min_tail must be >= 1, got {self.min_tail}")
        if self.tolerance < 1 or self.max_factor < 1:
            raise ValueError("tolerance and max_factor must be >= 1")
        if self.alert_budget * self.max_factor >= 1:
            raise ValueError("alert_budget * max_factor must stay below 1")

    @property
    def min_scores(self) -> int:
        return math.ceil(self.min_tail / self.alert_budget)

    @property
    def quantile(self) -> float:
        return 1.0 - self.alert_budget


@dataclass(frozen=True)
class Calibration:
    """A calibration decision and its evidence.

    `threshold` is the one to serve: the new one when `decision` is
    "recalibrated", else `current_threshold`.
    """

    decision: Decision
    reason: str
    threshold: float
    current_threshold: float
    window_scores: int
    quantile: float
    window_quantile: float | None  # the raw quantile, before the bound
    alert_rate_before: float | None  # of the window, at the current threshold
    alert_rate_after: float | None  # of the window, at `threshold`
    bounds: tuple[float, float] | None  # from the training reference scores
    clamped: bool = False

    @property
    def recalibrated(self) -> bool:
        return self.decision == "recalibrated"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["bounds"] = list(self.bounds) if self.bounds else None
        return out

    def evidence(self) -> dict[str, str]:
        """The evidence as short strings (MLflow tags, a Prefect artifact)."""
        def text(value) -> str:
            return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)

        return {"window": str(self.window_scores), "quantile": text(self.quantile),
                "previous_threshold": text(self.current_threshold),
                "window_quantile": text(self.window_quantile),
                "alert_rate_before": text(self.alert_rate_before),
                "alert_rate_after": text(self.alert_rate_after),
                "bounds": "" if self.bounds is None else
                          f"{self.bounds[0]:.6g}..{self.bounds[1]:.6g}",
                "clamped": str(self.clamped).lower(), "reason": self.reason}


def reference_bounds(reference_scores: Sequence[float] | np.ndarray,
                     policy: CalibrationPolicy) -> tuple[float, float] | None:
    """The lowest and highest threshold allowed: those at which `alert_budget * max_factor`
    and `alert_budget / max_factor` of the training reference scores alert.
    None when there is no reference."""
    ref = np.asarray(reference_scores, dtype=float)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return None
    low = float(np.quantile(ref, 1 - policy.alert_budget * policy.max_factor, method="higher"))
    high = float(np.quantile(ref, 1 - policy.alert_budget / policy.max_factor, method="higher"))
    return low, high


def recalibrate(scores: Sequence[float] | np.ndarray, current_threshold: float,
                policy: CalibrationPolicy,
                reference_scores: Sequence[float] | np.ndarray | None = None) -> Calibration:
    """The threshold to serve after seeing `scores` (see the module docstring for the rule).

    Args:
        scores: the window: recent scores of the serving model version (any order;
            non-finite values are ignored).
        current_threshold: the threshold serving applies now.
        policy: budget and guards.
        reference_scores: the model's training reference scores
            (`ChampionModel.reference["score"]`); None leaves the move unbounded.

    Returns:
        The decision with its evidence.
    """
    window = np.asarray(scores, dtype=float)
    window = window[np.isfinite(window)]
    bounds = None if reference_scores is None else reference_bounds(reference_scores, policy)

    def decided(decision: Decision, reason: str, threshold: float = current_threshold,
                **evidence) -> Calibration:
        return Calibration(decision, reason, threshold, current_threshold, int(window.size),
                           policy.quantile, bounds=bounds, **evidence)

    if window.size < policy.min_scores:
        return decided("kept", f"{window.size} scores in the window, {policy.min_scores} needed",
                       window_quantile=None, alert_rate_before=None, alert_rate_after=None)
    before = float(np.mean(window >= current_threshold))
    raw = float(np.quantile(window, policy.quantile, method="higher"))
    low, high = bounds if bounds is not None else (-math.inf, math.inf)
    new = min(max(raw, low), high)
    budget, tol = policy.alert_budget, policy.tolerance
    if budget / tol <= before <= budget * tol:
        return decided("kept", f"alert rate {before:.2%} at the current threshold is within "
                       f"{budget / tol:.2%}..{budget * tol:.2%}", window_quantile=raw,
                       alert_rate_before=before, alert_rate_after=before, clamped=new != raw)
    if new == current_threshold:
        return decided("kept", "the bounded quantile equals the current threshold",
                       window_quantile=raw, alert_rate_before=before, alert_rate_after=before,
                       clamped=new != raw)
    after = float(np.mean(window >= new))
    reason = (f"alert rate {before:.2%} at {current_threshold:.4g} -> {after:.2%} at {new:.4g} "
              f"over {window.size} scores")
    if new != raw:
        reason += f" (quantile {raw:.4g} bounded to the training reference's {low:.4g}..{high:.4g})"
    return decided("recalibrated", reason, new, window_quantile=raw, alert_rate_before=before,
                   alert_rate_after=after, clamped=new != raw)


def version_scores(rows: Iterable[Mapping], model_version: str) -> np.ndarray:
    """The scores of one model version among score-store rows (`MonitoringStore.scores_between`):
    a window mixing versions would calibrate one model on another's scale."""
    return np.array([float(r["score"]) for r in rows
                     if str(r.get("model_version")) == str(model_version)], dtype=float)


def calibration_markdown(calibration: Calibration, model_name: str, version: str) -> str:
    """The decision and its evidence for people (the monitor flow's Prefect artifact)."""
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    bounds = "-" if calibration.bounds is None else (
        f"{calibration.bounds[0]:.4g} .. {calibration.bounds[1]:.4g}")
    rows = [("decision", calibration.decision), ("reason", calibration.reason),
            ("threshold served", f"{calibration.threshold:.6g}"),
            ("threshold before", f"{calibration.current_threshold:.6g}"),
            ("window", f"{calibration.window_scores} scores of v{version}"),
            ("quantile", f"{calibration.quantile:g}"),
            ("window quantile", "-" if calibration.window_quantile is None
             else f"{calibration.window_quantile:.6g}"),
            ("alert rate before / after", (f"{rate(calibration.alert_rate_before)} / "
                                          f"{rate(calibration.alert_rate_after)}")),
            ("allowed range (training reference)", bounds),
            ("bounded", "yes" if calibration.clamped else "no")]
    lines = [f"# Threshold of {model_name} v{version}", "", "| | |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in rows]) + "\n"
