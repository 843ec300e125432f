"""PNG figures logged with every training run (pure: arrays in, bytes out)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _figure(width: float = 7.0, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def score_histogram(scores: np.ndarray, threshold: float, labels: np.ndarray | None = None,
                    title: str = "Anomaly scores (held-out split)") -> bytes:
    """Histogram of scores with the alert threshold; anomalies stacked apart when labelled."""
    plt, fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(float(np.min(scores)), float(np.max(scores)), 60)
    if labels is not None and labels.any():
        ax.hist([scores[~labels], scores[labels]], bins=bins, stacked=True,
                label=["normal", "labelled anomaly"], color=["#4c72b0", "#dd8452"])
    else:
        ax.hist(scores, bins=bins, color="#4c72b0", label="sessions")
    ax.axvline(threshold, color="#c44e52", linestyle="--",
               label=f"threshold {threshold:.3f} ({(scores >= threshold).mean():.1%} alert)")
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="sessions", title=title)
    ax.set_yscale("log")
    ax.legend()
    return _png(plt, fig)


def pr_curve(scores: np.ndarray, labels: np.ndarray, threshold: float,
             title: str = "Precision-recall (held-out split)") -> bytes:
    """Precision-recall curve with the operating point of the calibrated threshold."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt, fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    precision, recall, _ = precision_recall_curve(labels, scores)
    ap = average_precision_score(labels, scores)
    ax.step(recall, precision, where="post", label=f"PR-AUC (AP) = {ap:.3f}")
    alerts = scores >= threshold
    if alerts.any():
        ax.plot(alerts[labels].mean(), labels[alerts].mean(), "o",
                color="#c44e52", label="at the alert threshold")
    ax.axhline(labels.mean(), color="grey", linestyle=":", label="random ranking")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="upper right")
    return _png(plt, fig)


def attribution_summary(contributions: np.ndarray, rows: np.ndarray,
                        feature_names: Sequence[str], title: str) -> bytes:
    """SHAP beeswarm summary of per-feature contributions (any attribution matrix)."""
    import shap

    plt, _fig = _figure(7.5, 5.5)
    shap.summary_plot(contributions, rows, feature_names=list(feature_names), show=False,
                      plot_size=None, max_display=12)
    plt.xlabel("contribution to the anomaly score (> 0 = more anomalous)")
    plt.title(title)
    return _png(plt, plt.gcf())
