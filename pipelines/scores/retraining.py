"""When a monitoring window warrants retraining (pure): drift or anomaly rate, and a cooldown."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.scores.drift import DriftReport
from pipelines.scores.window_report import WindowSummary


@dataclass(frozen=True)
class RetrainPolicy:
    """When a window warrants retraining, and how long to wait between two triggers."""

    psi_threshold: float = 0.25
    anomaly_rate: float = 0.2
    min_volume: int = 50
    cooldown_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.psi_threshold <= 0:
            raise ValueError(f"psi_threshold must be > 0, got {self.psi_threshold}")
        if not 0 < self.anomaly_rate <= 1:
            raise ValueError(f"anomaly_rate must be in (0, 1], got {self.anomaly_rate}")
        if self.min_volume < 1 or self.cooldown_s < 0:
            raise ValueError("min_volume must be >= 1 and cooldown_s >= 0")


def retrain_reason(summary: WindowSummary, drift: DriftReport | None,
                   policy: RetrainPolicy) -> str | None:
    """Why this window warrants retraining, or None when it does not.

    A window smaller than `policy.min_volume` never triggers: a handful of
    sessions says nothing about drift.
    """
    if summary.volume < policy.min_volume:
        return None
    reasons = []
    rate = summary.anomaly_rate or 0.0
    if rate > policy.anomaly_rate:
        reasons.append(f"anomaly rate {rate:.1%} > {policy.anomaly_rate:.1%}")
    if drift is not None:
        worst = sorted(drift.drifted, key=lambda c: -c.psi)
        if worst:
            listed = ", ".join(f"{c.name} PSI {c.psi:.2f}" for c in worst[:5])
            reasons.append(f"drift over PSI {drift.psi_threshold:g}: {listed}")
    if not reasons:
        return None
    return f"{'; '.join(reasons)} (window of {summary.volume} sessions)"


def cooldown_remaining(last_trigger_ts: float | None, now_ts: float,
                       policy: RetrainPolicy) -> float:
    """Seconds until another retraining may start (0 = now)."""
    if last_trigger_ts is None:
        return 0.0
    return max(0.0, last_trigger_ts + policy.cooldown_s - now_ts)
