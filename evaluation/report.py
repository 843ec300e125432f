"""Metrics of one evaluation scenario, from what each stage did to each scored session (pure).

Three stages can catch an injected fault, in the order a session meets them:
the worker's decode step (schema rules; the session is dead-lettered), the
Great Expectations suites of the daily ingest (the row is quarantined) and the
model (score at or above the champion's threshold). "Combined" counts a fault
caught by any of them. The seed baseline has neither validation nor a decode
step, so its combined recall is its model recall.

A top SHAP feature "matches" the fault when it is one of the features the
injection writes into (`EXPECTED_FEATURES`); it is measured on the injected
sessions the model flagged, which are the ones that carry an explanation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipelines.data.anomalies import ANOMALY_TYPES
from pipelines.data.features import FEATURE_COLUMNS
from pipelines.models.detection_metrics import label_metrics

# anomaly type -> the features its injection changes (see pipelines.data.anomalies); a log
# column counts with its linear twin, excess_kwh where delivery is pushed above the request
EXPECTED_FEATURES: dict[str, tuple[str, ...]] = {
    "meter_fault": ("kwh_delivered", "avg_kw", "charging_kw", "delivered_ratio",
                    "charging_hours", "idle_hours", "log_kwh_delivered", "log_avg_kw",
                    "log_delivered_ratio"),
    "over_delivery": ("delivered_ratio", "kwh_requested", "kwh_delivered", "charging_kw",
                      "avg_kw", "log_delivered_ratio", "log_kwh_delivered", "log_avg_kw",
                      "excess_kwh"),
    "impossible_power": ("avg_kw", "charging_kw", "kwh_delivered", "connection_hours",
                         "charging_hours", "log_avg_kw", "log_kwh_delivered", "excess_kwh"),
    "stuck_session": ("connection_hours", "idle_hours", "departure_gap_hours", "avg_kw",
                      "log_avg_kw"),
    "timestamp_inversion": ("charging_hours", "idle_hours", "charging_kw"),
    "absurd_request": ("kwh_requested", "delivered_ratio", "log_delivered_ratio", "excess_kwh"),
}
assert set(EXPECTED_FEATURES) == set(ANOMALY_TYPES)
assert {f for names in EXPECTED_FEATURES.values() for f in names} <= set(FEATURE_COLUMNS)


@dataclass
class ScenarioOutcome:
    """Per scored session, aligned arrays: its label and what every stage made of it.

    `scores` is NaN and `alerts` False for sessions the decode step dead-lettered.
    """

    types: np.ndarray  # object: anomaly type, "" for an untouched real session
    quarantined: np.ndarray  # bool: the ingest suites rejected the row
    dead_lettered: np.ndarray  # bool: the worker's decode step rejected the message
    scores: np.ndarray
    alerts: np.ndarray  # bool: is_anomaly in the published result
    threshold: float
    top_features: np.ndarray  # object: first feature of the explanation, "" when none
    baseline_scores: np.ndarray
    baseline_threshold: float
    baseline_params: dict = field(default_factory=dict)
    rules: np.ndarray | None = None  # object: the rule the Score step found broken, or ""
    model_scores: np.ndarray | None = None  # the model's own scores, before the rules


def _share(mask: np.ndarray, within: np.ndarray) -> float | None:
    return float(mask[within].mean()) if within.any() else None


def _model_metrics(scores: np.ndarray, alerts: np.ndarray, types: np.ndarray,
                   threshold: float, alert_budget: float) -> dict:
    scored = np.isfinite(scores)
    labels = types != ""
    metrics = label_metrics(scores[scored], labels[scored], threshold, alert_budget)
    out = {name: (None if math.isnan(value) else round(float(value), 6))
           for name, value in metrics.items()}
    out["recall_at_budget"] = _share(alerts, labels)
    out["false_alert_rate"] = _share(alerts, ~labels)
    out["threshold"] = round(float(threshold), 6)
    out["recall_by_type"] = {kind: _share(alerts, types == kind)
                             for kind in ANOMALY_TYPES if (types == kind).any()}
    return out


def scenario_metrics(outcome: ScenarioOutcome, alert_budget: float) -> dict:
    """Everything the report shows for one scenario.

    Args:
        outcome: per-session stage results.
        alert_budget: the share of sessions allowed to alert (for precision@k).

    Returns:
        A JSON-safe dict: counts, `evguard` and `baseline` model metrics,
        `validation`, `combined` and `explanations`.
    """
    types = np.asarray(outcome.types, dtype=object)
    labels = types != ""
    present = [kind for kind in ANOMALY_TYPES if (types == kind).any()]
    evguard = _model_metrics(outcome.scores, outcome.alerts, types, outcome.threshold,
                             alert_budget)
    baseline_alerts = outcome.baseline_scores >= outcome.baseline_threshold
    baseline = _model_metrics(outcome.baseline_scores, baseline_alerts, types,
                              outcome.baseline_threshold, alert_budget)
    baseline["params"] = outcome.baseline_params
    caught = outcome.quarantined | outcome.dead_lettered | outcome.alerts
    matches = np.array([f in EXPECTED_FEATURES.get(t, ()) for t, f
                        in zip(types, outcome.top_features)], dtype=bool)
    explained = labels & outcome.alerts & (outcome.top_features != "")
    rules = outcome.rules if outcome.rules is not None else np.full(len(types), "", object)
    broken = rules != ""
    model_scores = outcome.scores if outcome.model_scores is None else outcome.model_scores
    model_only = _model_metrics(model_scores, model_scores >= outcome.threshold, types,
                                outcome.threshold, alert_budget)
    return {
        "sessions": len(types),
        "real_sessions": int((~labels).sum()),
        "injected": int(labels.sum()),
        "injected_by_type": {kind: int((types == kind).sum()) for kind in present},
        "dead_lettered": int(outcome.dead_lettered.sum()),
        "evguard": evguard,
        "baseline": baseline,
        "validation": {
            "caught": _share(outcome.quarantined, labels),
            "caught_by_type": {k: _share(outcome.quarantined, types == k) for k in present},
            "real_quarantined_rate": _share(outcome.quarantined, ~labels),
        },
        "stream_rules": {
            "caught": _share(broken, labels),
            "caught_by_type": {k: _share(broken, types == k) for k in present},
            "real_flagged_rate": _share(broken, ~labels),
        },
        "model_only": {k: model_only[k] for k in ("pr_auc", "roc_auc", "recall_at_budget",
                                                   "false_alert_rate", "recall_by_type")},
        "combined": {
            "recall": _share(caught, labels),
            "recall_by_type": {k: _share(caught, types == k) for k in present},
            "real_flagged_rate": _share(caught, ~labels),
        },
        "explanations": {
            "explained_anomalies": int(explained.sum()),
            "top_feature_match": _share(matches, explained),
            "top_feature_match_by_type": {k: _share(matches, explained & (types == k))
                                          for k in present},
        },
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_rows(metrics: Mapping) -> list[tuple[str, str, str]]:
    """`(measure, evguard, seed baseline)` rows of one scenario, formatted for a table."""
    ev, base = metrics["evguard"], metrics["baseline"]
    rows = [("PR-AUC", _num(ev["pr_auc"]), _num(base["pr_auc"])),
            ("ROC-AUC", _num(ev["roc_auc"]), _num(base["roc_auc"])),
            ("precision at k (k = budget x sessions)", _pct(ev["precision_at_k"]),
             _pct(base["precision_at_k"])),
            ("recall at the alert budget (published)", _pct(ev["recall_at_budget"]),
             _pct(base["recall_at_budget"])),
            ("false-alert rate on untouched real sessions", _pct(ev["false_alert_rate"]),
             _pct(base["false_alert_rate"])),
            *_recalibration_rows(metrics.get("monitoring_recalibration")),
            ("PR-AUC, the model alone (no stream rules)",
             _num(metrics["model_only"]["pr_auc"]), _num(base["pr_auc"])),
            ("caught by the stream's rules",
             _pct(metrics["stream_rules"]["caught"]), "-"),
            ("caught by validation (ingest suites)", _pct(metrics["validation"]["caught"]),
             "-"),
            ("combined recall (validation + published)", _pct(metrics["combined"]["recall"]),
             _pct(base["recall_at_budget"])),
            ("top SHAP feature matches the fault",
             _pct(metrics["explanations"]["top_feature_match"]), "-")]
    return rows


def _recalibration_rows(recalibrated: Mapping | None) -> list[tuple[str, str, str]]:
    if not recalibrated:
        return []
    return [("false alerts, threshold re-calibrated weekly by monitoring",
             _pct(recalibrated["false_alert_rate"]), "-"),
            ("recall, threshold re-calibrated weekly by monitoring",
             _pct(recalibrated["recall"]), "-")]


def type_rows(metrics: Mapping) -> list[tuple[str, ...]]:
    """Per anomaly type: injected, validation, stream rules, published, combined, baseline,
    SHAP match."""
    rows = []
    for kind, count in metrics["injected_by_type"].items():
        rows.append((kind, str(count), _pct(metrics["validation"]["caught_by_type"][kind]),
                     _pct(metrics["stream_rules"]["caught_by_type"][kind]),
                     _pct(metrics["evguard"]["recall_by_type"].get(kind)),
                     _pct(metrics["combined"]["recall_by_type"][kind]),
                     _pct(metrics["baseline"]["recall_by_type"].get(kind)),
                     _pct(metrics["explanations"]["top_feature_match_by_type"][kind])))
    return rows


TYPE_HEADERS = ("anomaly type", "injected", "validation", "stream rules", "published",
                "combined", "seed baseline", "top SHAP match")


def markdown_tables(report: Mapping) -> str:
    """The report's scenarios as markdown: a summary table and a per-type table each."""
    parts = []
    for scenario in report["scenarios"].values():
        metrics = scenario["metrics"]
        parts.append(f"**{scenario['title']}** ({metrics['sessions']:,} sessions scored, "
                     f"{metrics['injected']} injected anomalies)\n")
        parts.append("| measure | evguard | seed baseline |\n|---|---:|---:|")
        parts.extend(f"| {a} | {b} | {c} |" for a, b, c in summary_rows(metrics))
        parts.append("")
        parts.append("| " + " | ".join(TYPE_HEADERS) + " |\n|---|"
                     + "---:|" * (len(TYPE_HEADERS) - 1))
        parts.extend("| " + " | ".join(row) + " |" for row in type_rows(metrics))
        parts.append("")
    return "\n".join(parts)


def pr_curves_png(curves: Mapping[str, Mapping[str, np.ndarray]]) -> bytes:
    """Precision-recall curves of evguard vs the seed baseline, one panel per scenario.

    Args:
        curves: scenario title -> `labels`, `evguard`, `baseline` score arrays (NaN
            scores are dropped) and `evguard_threshold`, `baseline_threshold`; a dot marks
            each model's operating point at its alert threshold. An optional
            `evguard_model` array (the model's scores before the stream's rules) is drawn
            dashed.

    Returns:
        The PNG bytes.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 5.0), dpi=110,
                             squeeze=False)
    for ax, (title, data) in zip(axes[0], curves.items()):
        labels = np.asarray(data["labels"], bool)
        for key, name, color, style in (
                ("evguard", "evguard", "#4c72b0", "-"),
                ("evguard_model", "evguard, model alone (no stream rules)", "#4c72b0", "--"),
                ("baseline", "seed baseline", "#dd8452", "-")):
            if key not in data:
                continue
            scores = np.asarray(data[key], float)
            keep = np.isfinite(scores)
            precision, recall, _ = precision_recall_curve(labels[keep], scores[keep])
            ap = average_precision_score(labels[keep], scores[keep])
            ax.step(recall, precision, where="post", color=color, linestyle=style,
                    label=f"{name} (AP {ap:.3f})")
            if f"{key}_threshold" not in data:
                continue
            alerts = scores[keep] >= data[f"{key}_threshold"]
            if alerts.any():
                ax.plot(alerts[labels[keep]].mean(), labels[keep][alerts].mean(), "o",
                        color=color)
        ax.axhline(labels.mean(), color="grey", linestyle=":", label="random ranking")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7.5,
                  frameon=False)  # below the axes: the curves fill the top right
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
