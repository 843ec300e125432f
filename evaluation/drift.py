"""The alert rate under drift: scored sessions replayed in time with the threshold re-calibrated
as monitoring would (pure).

The scored side of the time split is later than training (mostly 2020 against
2019), so a threshold set on training scores lets more sessions alert than the
budget allows. Here the sessions are taken in the order they reach the worker,
in steps (a week by default). At the start of each step the threshold is
re-calibrated by `pipelines.scores.calibration.recalibrate` from the scores
monitoring has stored by then: every session scored before the step, injected
faults included (monitoring cannot tell them apart), within `window_s`. The
step's sessions alert at that threshold. Scores do not depend on the threshold,
so one scoring pass serves every budget, with and without re-calibration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.scores.calibration import Calibration, CalibrationPolicy, recalibrate

WEEK_S = 7 * 86_400.0


@dataclass(frozen=True)
class ReplayedAlerts:
    """Per session (input order): the threshold in force when it arrived and its alert."""

    thresholds: np.ndarray
    alerts: np.ndarray
    steps: list[tuple[float, Calibration]]  # step start (epoch s) and the decision taken there

    @property
    def recalibrations(self) -> int:
        return sum(c.recalibrated for _, c in self.steps)


def replay_thresholds(scores: np.ndarray, arrival_s: np.ndarray, threshold: float,
                      policy: CalibrationPolicy, reference_scores: Sequence[float] | None,
                      window_s: float | None = None, max_scores: int | None = None,
                      step_s: float = WEEK_S) -> ReplayedAlerts:
    """Alerts of sessions scored in arrival order while the threshold is re-calibrated every
    `step_s` from the newest `max_scores` scores of the previous `window_s` (None = no limit).

    Args:
        scores: per session; NaN for one the worker dead-lettered (never stored, never alerts).
        arrival_s: per session, when it reached the worker (epoch seconds).
        threshold: the trained threshold, in force until the first re-calibration.
        policy: budget and guards of the re-calibration.
        reference_scores: the model's training reference scores (the bound).
        window_s: how far back monitoring looks.
        max_scores: the most scores it takes (the newest).
        step_s: how often monitoring re-calibrates.
    """
    scores = np.asarray(scores, dtype=float)
    arrival_s = np.asarray(arrival_s, dtype=float)
    order = np.argsort(arrival_s, kind="stable")
    times, ordered = arrival_s[order], scores[order]
    thresholds = np.empty(len(scores))
    steps: list[tuple[float, Calibration]] = []
    current = float(threshold)
    start = float(times[0]) if len(times) else 0.0
    done = 0
    while done < len(times):
        end = start + step_s
        upto = int(np.searchsorted(times, end, side="left"))
        if done:  # nothing is stored before the first step
            first = 0 if window_s is None else int(np.searchsorted(times, start - window_s))
            if max_scores is not None:
                first = max(first, done - max_scores)
            calibration = recalibrate(ordered[first:done], current, policy, reference_scores)
            current = calibration.threshold
            steps.append((start, calibration))
        thresholds[order[done:upto]] = current
        done, start = upto, end
    with np.errstate(invalid="ignore"):
        alerts = np.isfinite(scores) & (scores >= thresholds)
    return ReplayedAlerts(thresholds, alerts, steps)


def alert_rates(alerts: np.ndarray, types: np.ndarray) -> dict[str, float | None]:
    """Realized alert rate on untouched sessions, recall on injected ones, and overall."""
    types = np.asarray(types, dtype=object)
    injected = types != ""

    def share(within: np.ndarray) -> float | None:
        return float(alerts[within].mean()) if within.any() else None

    return {"false_alert_rate": share(~injected), "recall": share(injected),
            "alert_rate": share(np.ones(len(alerts), bool))}


def drift_section(scores: np.ndarray, arrival_s: np.ndarray, types: np.ndarray,
                  thresholds: Mapping[float, float], reference_scores: Sequence[float] | None,
                  window_s: float | None = None, max_scores: int | None = None,
                  step_s: float = WEEK_S,
                  policy_options: Mapping[str, float] | None = None) -> dict:
    """Per budget: the trained threshold held fixed against re-calibrated every step.

    Args:
        scores, arrival_s, types: per scored session (types "" = untouched real session).
        thresholds: alert budget -> the trained threshold for that budget.
        reference_scores: the training reference scores (the bound of the move).
        window_s, max_scores, step_s: as in `replay_thresholds`.
        policy_options: `CalibrationPolicy` fields other than the budget.

    Returns:
        A JSON-safe dict: `{"window_s", "max_scores", "step_s", "budgets": {budget: {"fixed": rates,
        "recalibrated": rates + "recalibrations" + "final_threshold"}}}`.
    """
    budgets = {}
    for budget, trained in sorted(thresholds.items()):
        policy = CalibrationPolicy(alert_budget=budget, **(policy_options or {}))
        fixed = np.isfinite(scores) & (np.nan_to_num(scores, nan=-np.inf) >= trained)
        replayed = replay_thresholds(scores, arrival_s, trained, policy, reference_scores,
                                     window_s, max_scores, step_s)
        budgets[str(budget)] = {
            "trained_threshold": float(trained),
            "fixed": alert_rates(fixed, types),
            "recalibrated": {**alert_rates(replayed.alerts, types),
                             "recalibrations": replayed.recalibrations,
                             "final_threshold": float(replayed.thresholds[np.argmax(arrival_s)])
                             if len(scores) else None},
        }
    return {"window_s": window_s, "max_scores": max_scores, "step_s": step_s,
            "budgets": budgets}
