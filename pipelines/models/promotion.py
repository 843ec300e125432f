"""Champion or challenger: the promotion decision for a newly registered version.

Promotion rule (`promote_if_better`): the new version must pass the gates (a
finite threshold, a finite criterion value on the evaluation split, and an
alert on at least `min_probe_recall` of the impossible-power probes). With no
champion, it becomes champion. Otherwise the champion is scored on **the same
evaluation rows** and the new version is promoted only if
`new > champion + margin * |champion|` on the criterion (PR-AUC with labels,
otherwise Excess-Mass of the fitted models, both higher = better). A champion
whose feature columns are absent from the new data cannot be compared; the new
version then replaces it (the feature code changed deliberately). Decisions
and reasons are written as tags on the new version; the aliases themselves are
described in `pipelines.models.registry`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.candidates import EvalSplit
from pipelines.models.detection_metrics import excess_mass, label_metrics, uniform_box_sample
from pipelines.models.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    find_version,
    load_model_version,
    mlflow_client,
)
from pipelines.models.sampling import uniform_subset
from pipelines.models.selection import Criterion
from pipelines.models.tuning import probe_recall
from pipelines.settings import Settings

log = logging.getLogger(__name__)

Decision = Literal["promoted", "challenger", "rejected"]


def comparison_value(model: SessionAnomalyModel, split: EvalSplit, criterion: Criterion, seed: int) -> float:
    """The promotion criterion of a fitted model on the evaluation split (higher = better)."""
    if criterion == "pr_auc":
        scores = model.detector.score_samples(split.X_eval)
        if not np.isfinite(scores).all():
            return math.nan
        return label_metrics(scores, split.eval_labels, model.threshold,
                             model.alert_budget, split.eval_weights)["pr_auc"]
    rows = uniform_subset(split.eval_weights, seed)  # a stratified sample's uniform part
    X_eval = split.X_eval if rows is None else split.X_eval[rows]
    scores = model.detector.score_samples(X_eval)
    if not np.isfinite(scores).all():
        return math.nan
    uniform, _ = uniform_box_sample(X_eval, 20_000, np.random.default_rng(seed))
    return excess_mass(scores, model.detector.score_samples(uniform), 1.0)


def split_for_columns(split: EvalSplit, columns: Sequence[str],
                      wanted: Sequence[str]) -> EvalSplit | None:
    """`split` (whose matrices hold `columns`) cut down to `wanted`, e.g. an older feature
    version's columns; None when some wanted column is not there."""
    index = {name: i for i, name in enumerate(columns)}
    if any(name not in index for name in wanted):
        return None
    take = [index[name] for name in wanted]
    return EvalSplit(split.X_train[:, take], split.X_eval[:, take], split.eval_types,
                     None if split.X_probe is None else split.X_probe[:, take],
                     split.eval_weights, split.train_rows_total, split.eval_rows_total)


@dataclass(frozen=True)
class PromotionDecision:
    decision: Decision
    reason: str
    version: str
    criterion: Criterion
    new_value: float
    champion_version: str | None = None
    champion_value: float | None = None

    def as_tags(self) -> dict[str, str]:
        tags = {"decision": self.decision, "decision_reason": self.reason,
                "criterion": self.criterion, "criterion_value": f"{self.new_value:.6g}"}
        if self.champion_version is not None:
            tags["compared_with_version"] = self.champion_version
        if self.champion_value is not None:
            tags["champion_criterion_value"] = f"{self.champion_value:.6g}"
        return tags


def _decide(settings: Settings, client: Any, version: str, new_model: SessionAnomalyModel,
            split: EvalSplit, criterion: Criterion, margin: float, seed: int,
            min_probe_recall: float) -> PromotionDecision:
    new_value = comparison_value(new_model, split, criterion, seed)
    if not math.isfinite(new_model.threshold) or not math.isfinite(new_value):
        return PromotionDecision("rejected", f"failed the evaluation gates: threshold="
                                 f"{new_model.threshold}, {criterion}={new_value}",
                                 version, criterion, new_value)
    if split.X_probe is not None and len(split.X_probe):
        flagged = probe_recall(new_model.detector, split.X_probe, new_model.threshold)
        if flagged < min_probe_recall:
            return PromotionDecision("rejected", f"failed the probe gate: flags {flagged:.1%} of "
                                     f"impossible-power probes, needs {min_probe_recall:.0%}",
                                     version, criterion, new_value)
    current = find_version(client, settings.model_name, CHAMPION)
    if current is None:
        return PromotionDecision("promoted", "first valid model: no champion yet",
                                 version, criterion, new_value)
    old_version = str(current.version)
    old_model = load_model_version(settings, old_version)
    old_split = split
    if list(old_model.feature_columns) != list(new_model.feature_columns):
        old_split = split_for_columns(split, new_model.feature_columns, old_model.feature_columns)
        # Excess-Mass values from spaces of different dimension do not compare
        if old_split is None or criterion != "pr_auc":
            return PromotionDecision(
                "promoted", f"champion v{old_version} uses feature version "
                f"{old_model.feature_version}, not comparable with {new_model.feature_version}",
                version, criterion, new_value, old_version)
    old_value = comparison_value(old_model, old_split, criterion, seed)
    if not math.isfinite(old_value):
        return PromotionDecision("promoted", f"champion v{old_version} gives {criterion}=NaN "
                                 "on the evaluation data", version, criterion, new_value,
                                 old_version, old_value)
    required = old_value + margin * abs(old_value)
    if new_value > required:
        return PromotionDecision(
            "promoted", f"{criterion} {new_value:.4f} beats champion v{old_version} "
            f"{old_value:.4f} by more than the {margin:.1%} margin",
            version, criterion, new_value, old_version, old_value)
    return PromotionDecision(
        "challenger", f"{criterion} {new_value:.4f} does not beat champion v{old_version} "
        f"{old_value:.4f} by the {margin:.1%} margin (needs > {required:.4f})",
        version, criterion, new_value, old_version, old_value)


def promote_if_better(settings: Settings, version: str, new_model: SessionAnomalyModel,
                      split: EvalSplit, criterion: Criterion, margin: float = 0.01,
                      seed: int = 0, min_probe_recall: float = 0.9) -> PromotionDecision:
    """Compare a new registered version with `@champion` on `split`, then set aliases and tags.

    Args:
        settings: gives the tracking store and the registered model name.
        version: the new version number.
        new_model: its `SessionAnomalyModel`.
        split: evaluation rows (with labels when `criterion` is PR-AUC).
        criterion: "pr_auc" or "em_mv_rank" (compared by Excess-Mass).
        margin: required relative improvement over the champion, e.g. 0.01 = 1%.
        seed: seed of the Monte Carlo volume estimate (label-free comparison).
        min_probe_recall: share of `split.X_probe` the new version must flag.

    Returns:
        The decision, also written as tags on the version.
    """
    client = mlflow_client(settings)
    name = settings.model_name
    decision = _decide(settings, client, version, new_model, split, criterion, margin, seed,
                       min_probe_recall)
    if decision.decision == "promoted":
        if decision.champion_version is not None:
            client.set_registered_model_alias(name, PREVIOUS, decision.champion_version)
        client.set_registered_model_alias(name, CHAMPION, version)
        challenger = find_version(client, name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    elif decision.decision == "challenger":
        client.set_registered_model_alias(name, CHALLENGER, version)
    tags = decision.as_tags()
    if decision.decision == "promoted":  # MLflow does not record when an alias moved
        tags["promoted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("%s v%s %s: %s", name, version, decision.decision, decision.reason)
    return decision

