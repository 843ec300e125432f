"""The report of a monitoring window (pure): volume, anomaly rate, quantiles, per site and
station, and how it reads as Markdown.

`summarize_window` aggregates the stored results of one window; the monitoring
consumer adds the drift report (`pipelines.scores.drift`) and the retraining
decision (`pipelines.scores.retraining`) and stores the whole as one report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.contracts.dates import readable_utc

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass(frozen=True)
class GroupRate:
    key: str
    volume: int
    anomalies: int

    @property
    def rate(self) -> float:
        return self.anomalies / self.volume if self.volume else 0.0


@dataclass(frozen=True)
class WindowSummary:
    start_ts: float
    end_ts: float
    volume: int
    anomalies: int
    score_quantiles: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    per_site: tuple[GroupRate, ...] = ()
    per_station: tuple[GroupRate, ...] = ()
    model_versions: dict[str, int] = field(default_factory=dict)

    @property
    def anomaly_rate(self) -> float | None:
        return self.anomalies / self.volume if self.volume else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["anomaly_rate"] = self.anomaly_rate
        for key in ("per_site", "per_station"):
            out[key] = [{**g, "rate": g["anomalies"] / g["volume"]} for g in out[key]]
        return out


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {}
    return {name: float(np.quantile(arr, q)) for name, q in QUANTILES.items()}


def _rates(rows: Sequence[Mapping], key: str) -> tuple[GroupRate, ...]:
    volume: dict[str, int] = defaultdict(int)
    anomalies: dict[str, int] = defaultdict(int)
    for row in rows:
        volume[row[key]] += 1
        anomalies[row[key]] += bool(row["is_anomaly"])
    groups = [GroupRate(k, volume[k], anomalies[k]) for k in volume]
    return tuple(sorted(groups, key=lambda g: (-g.anomalies, -g.volume, g.key)))


def summarize_window(rows: Sequence[Mapping], start_ts: float, end_ts: float,
                     top_stations: int = 20) -> WindowSummary:
    """Aggregate the results of one window.

    Args:
        rows: stored results with `score`, `is_anomaly`, `site_id`, `station_id`,
            `latency_ms` and `model_version`.
        start_ts: window start, epoch seconds.
        end_ts: window end, epoch seconds.
        top_stations: keep the stations with the most anomalies, at most this many.

    Returns:
        Volume, anomaly count and rate, score and latency quantiles, per-site and
        per-station rates, and how many results each model version scored.
    """
    versions: dict[str, int] = defaultdict(int)
    for row in rows:
        versions[str(row["model_version"])] += 1
    return WindowSummary(
        start_ts=start_ts, end_ts=end_ts, volume=len(rows),
        anomalies=sum(bool(r["is_anomaly"]) for r in rows),
        score_quantiles=_quantiles([r["score"] for r in rows]),
        latency_ms=_quantiles([r.get("latency_ms") for r in rows]),
        per_site=_rates(rows, "site_id"),
        per_station=_rates(rows, "station_id")[:top_stations],
        model_versions=dict(versions),
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def report_markdown(report: dict) -> str:
    """A window report (`WindowSummary.as_dict()` plus `drift` and `retrain`) as Markdown."""
    def when(ts: float) -> str:
        return readable_utc(ts, seconds=False)

    q, lat = report.get("score_quantiles") or {}, report.get("latency_ms") or {}
    retrain = report.get("retrain") or {}
    lines = [
        f"# Monitoring window {when(report['start_ts'])} → {when(report['end_ts'])}",
        "",
        "| volume | anomalies | anomaly rate | score p50 / p90 / p99 | latency p50 / p99 (ms) |",
        "|---:|---:|---:|---|---|",
        f"| {report['volume']} | {report['anomalies']} | {_pct(report.get('anomaly_rate'))} | "
        + " / ".join(f"{q[k]:.3f}" for k in QUANTILES if k in q) + " | "
        + " / ".join(f"{lat[k]:.0f}" for k in ("p50", "p99") if k in lat) + " |",
        "",
        f"**Retraining:** {retrain.get('state', '-')}"
        + (f" — {retrain['reason']}" if retrain.get("reason") else ""),
        "",
        "## Sites",
        "| site | volume | anomalies | rate |",
        "|---|---:|---:|---:|",
        *[f"| {g['key']} | {g['volume']} | {g['anomalies']} | {_pct(g['rate'])} |"
          for g in report.get("per_site", [])],
    ]
    drift = report.get("drift")
    lines += ["", "## Drift against the champion's reference"]
    if not drift:
        lines.append("No reference available (no champion, or the registry is unreachable).")
    else:
        lines += ["| column | PSI | KS | drifted |", "|---|---:|---:|---|"]
        lines += [f"| {c['name']} | {c['psi']:.3f} | {c['ks']:.3f} | "
                  f"{'**yes**' if c['drifted'] else 'ignored' if c.get('ignored') else 'no'} |"
                  for c in drift["columns"]]
    return "\n".join(lines) + "\n"


def drift_rows(report: dict) -> list[dict]:
    """The drift table of a window report, one row per column (empty without reference)."""
    drift = report.get("drift") or {}
    return [{"column": c["name"], "psi": round(c["psi"], 4), "ks": round(c["ks"], 4),
             "drifted": c["drifted"], "ignored": c.get("ignored", False),
             "n_current": c["n_current"]}
            for c in drift.get("columns", [])]
