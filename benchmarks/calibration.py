"""Calibration of the synthetic generator: real ACN exports vs synthetic sessions, per site.

    .venv/bin/python benchmarks/calibration.py [--acn-dir ../shared/acn] [--sessions 20000]

Prints the markdown table kept in docs/data.md. Quantiles are of the parsed
sessions and the features of `pipelines.data.features` (local time = America/Los_Angeles).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.exports import load_export
from pipelines.data.features import add_features, sessions_to_frame
from pipelines.data.synth import SITES, generate_sessions

DEFAULT_ACN = Path(__file__).resolve().parents[2] / "shared" / "acn"


def _q(series: pd.Series, qs: list[float], digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in series.quantile(qs).to_numpy())


def profile(records: list[dict]) -> dict[str, str]:
    """The calibrated figures of one set of sessions."""
    f = add_features(sessions_to_frame(records))
    local = f["connectionTime"].dt.tz_convert("America/Los_Angeles")
    weekday = local.dt.day_of_week < 5
    inputs = f["n_edits"] > 0
    return {
        "sessions": f"{len(f):,}",
        "kWhDelivered q25 / q50 / q75 / q95 / max": _q(f["kwh_delivered"],
                                                       [.25, .5, .75, .95, 1]),
        "connection h q25 / q50 / q75 / q95 / q99": _q(f["connection_hours"],
                                                       [.25, .5, .75, .95, .99]),
        "connection h max": f"{f['connection_hours'].max():.0f}",
        "connected > 24 h": f"{(f['connection_hours'] > 24).mean():.2%}",
        "charging h q50 / q95": _q(f["charging_hours"], [.5, .95]),
        "avg kW over the connection q50 / q99": _q(f["avg_kw"], [.5, .99]),
        "weekday share of sessions": f"{weekday.mean():.1%}",
        "weekday peak arrival hour (local)": str(int(local[weekday].dt.hour.mode()[0])),
        "arrivals 7-9 am local": f"{local.dt.hour.between(7, 9).mean():.1%}",
        "null userInputs": f"{(~inputs).mean():.1%}",
        "null doneChargingTime": f"{f['doneChargingTime'].isna().mean():.1%}",
        "edits per session q50 / q99 / max": _q(f.loc[inputs, "n_edits"], [.5, .99, 1], 0),
        "sessions with > 1 edit": f"{(f['n_edits'] > 1).mean():.1%}",
        "kWhRequested q50 / q95": _q(f.loc[inputs, "kWhRequested"], [.5, .95]),
        "delivered > requested": f"{(f.loc[inputs, 'delivered_ratio'] > 1).mean():.1%}",
        "departure gap h q25 / q50 / q75": _q(f.loc[inputs, "departure_gap_hours"],
                                              [.25, .5, .75]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=DEFAULT_ACN)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    columns: dict[str, dict[str, str]] = {}
    for path in sorted(args.acn_dir.glob("*.json")):
        columns[f"real {path.stem}"] = profile(load_export(path))
    records, _ = generate_sessions(args.sessions, seed=args.seed)
    for name, site in SITES.items():
        columns[f"synthetic {name}"] = profile([r for r in records if r["siteID"] == site.site_id])
    table = pd.DataFrame(columns)
    header = "| figure | " + " | ".join(table.columns) + " |"
    print(header)
    print("|---" * (len(table.columns) + 1) + "|")
    for figure, row in table.iterrows():
        print(f"| {figure} | " + " | ".join(np.asarray(row, dtype=str)) + " |")


if __name__ == "__main__":
    main()
