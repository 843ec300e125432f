"""Tuning on real ACN sessions: evguard's tuning vs a re-creation of the seed's approach.

Protocol, per injection seed:
1. Real sessions from the ACN exports, sorted by connectionTime; the latest
   `--eval-fraction` are held out, the earlier ones train (as is: real data,
   nothing quarantined).
2. `inject_anomalies` turns `--inject-rate` of the held-out sessions into
   labelled faults (all six types). Both approaches score the same rows.
3. evguard: all `FEATURE_COLUMNS`, the default `SearchSpace` (IF, EIF, isotree), the
   default `TuningConfig` (2 workers, EM/MV, impossible-power probe gate),
   selected by PR-AUC on the labelled held-out rows.
4. Seed: `evaluation.baseline.seed_baseline` (3 features, `GridSearchCV` scored
   by the mean of `score_samples`), threshold at the same alert budget.

Tuning time is wall time of the whole search, including evaluation. Usage:

    .venv/bin/python benchmarks/tuning_vs_seed.py --acn-dir ../shared/acn --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("tuning wall time (s)", "grid points", "chosen", "PR-AUC", "ROC-AUC",
        "precision@k (k = 1% of rows)", "recall at the 1% budget", "alert rate")


def load_sessions(acn_dir: Path) -> list[dict]:
    from pipelines.data.exports import load_exports

    files = sorted(acn_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no ACN exports in {acn_dir}")
    records = load_exports(files)
    return sorted(records, key=lambda r: (_when(r["connectionTime"]), str(r["sessionID"])))


def _when(text: str) -> float:
    from datetime import datetime

    from pipelines.contracts.dates import RFC1123

    return datetime.strptime(text, RFC1123).timestamp()


def run_once(records: list[dict], args: argparse.Namespace, seed: int) -> dict:
    from evaluation.baseline import seed_baseline
    from pipelines.data.anomalies import inject_anomalies
    from pipelines.data.features import FEATURE_COLUMNS, feature_matrix
    from pipelines.models.candidates import EvalSplit, SearchSpace
    from pipelines.models.detection_metrics import label_metrics, recall_by_type
    from pipelines.models.training_data import impossible_power_probes
    from pipelines.models.tuning import TuningConfig, tune

    n_eval = round(len(records) * args.eval_fraction)
    train, held_out = records[:-n_eval], records[-n_eval:]
    injected, labels = inject_anomalies(held_out, args.inject_rate, seed=seed)
    types = np.array([labels.get(str(r["sessionID"]), "") for r in injected], dtype=object)
    is_anomaly = types != ""

    started = time.perf_counter()
    split = EvalSplit(feature_matrix(train)[FEATURE_COLUMNS].to_numpy(),
                      feature_matrix(injected)[FEATURE_COLUMNS].to_numpy(), types,
                      impossible_power_probes(held_out, 200, seed))
    space = SearchSpace()
    ours = tune(split, space, TuningConfig(seed=seed, n_jobs=args.n_jobs,
                                           em_draws=args.em_draws))
    ours_seconds = time.perf_counter() - started
    best = ours.best
    ours_metrics = {**label_metrics(best.eval_scores, is_anomaly, best.threshold, 0.01),
                    **recall_by_type(best.eval_scores, types, best.threshold)}

    started = time.perf_counter()
    base = seed_baseline(train, injected, 0.01, seed, n_jobs=args.n_jobs)
    seed_seconds = time.perf_counter() - started
    seed_metrics = {**label_metrics(base.scores, is_anomaly, base.threshold, 0.01),
                    **recall_by_type(base.scores, types, base.threshold)}
    n_grid = 1
    from evaluation.baseline import SEED_GRID
    for values in SEED_GRID.values():
        n_grid *= len(values)
    return {"seed": seed, "train": len(train), "eval": len(held_out), "anomalies":
            int(is_anomaly.sum()),
            "evguard": {"seconds": ours_seconds, "grid": len(ours.results),
                        "chosen": best.candidate.name, **ours_metrics,
                        "probe_recall": best.metrics.get("probe_recall"),
                        "candidates": {r.candidate.name: r.metrics for r in ours.results}},
            "seed_approach": {"seconds": seed_seconds, "grid": f"{n_grid} x 3 folds",
                              "chosen": json.dumps(base.best_params), **seed_metrics}}


def _mean(values: list) -> str:
    numbers = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not numbers:
        return "-"
    if len(numbers) == 1:
        return f"{numbers[0]:.3f}"
    return f"{statistics.mean(numbers):.3f} ± {statistics.stdev(numbers):.3f}"


def markdown(runs: list[dict]) -> str:
    keys = {"tuning wall time (s)": "seconds", "grid points": "grid", "chosen": "chosen",
            "PR-AUC": "pr_auc", "ROC-AUC": "roc_auc",
            "precision@k (k = 1% of rows)": "precision_at_k",
            "recall at the 1% budget": "recall_at_budget", "alert rate": "alert_rate"}
    types = sorted({k for r in runs for k in r["evguard"] if k.startswith("recall_type_")})
    lines = ["| | evguard (all features, IF + EIF + isotree, PR-AUC) | seed (3 features, mean score) |",
             "|---|---|---|"]
    for row in (*ROWS, *types):
        key = keys.get(row, row)
        cells = []
        for side in ("evguard", "seed_approach"):
            values = [r[side].get(key) for r in runs]
            if all(isinstance(v, str) for v in values) or key == "grid":
                cells.append(", ".join(sorted({str(v) for v in values})))
            else:
                cells.append(_mean(values))
        label = row.replace("recall_type_", "recall: ") if row.startswith("recall_type_") else row
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=ROOT.parent / "shared" / "acn")
    parser.add_argument("--seeds", default="1,2,3", help="injection/tuning seeds")
    parser.add_argument("--eval-fraction", type=float, default=0.3)
    parser.add_argument("--inject-rate", type=float, default=0.03)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--em-draws", type=int, default=5, help="0 skips EM/MV (faster)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    records = load_sessions(args.acn_dir)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = run_once(records, args, seed)
        print(f"seed {seed}: evguard {run['evguard']['chosen']} PR-AUC "
              f"{run['evguard']['pr_auc']:.3f} in {run['evguard']['seconds']:.0f}s; seed approach "
              f"{run['seed_approach']['chosen']} PR-AUC {run['seed_approach']['pr_auc']:.3f} in "
              f"{run['seed_approach']['seconds']:.0f}s", flush=True)
        runs.append(run)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=str))
    first = runs[0]
    print(f"\n{len(records):,} real sessions; {first['train']:,} train, {first['eval']:,} "
          f"held out with {first['anomalies']} injected anomalies per seed; "
          f"seeds {args.seeds}\n")
    print(markdown(runs))


if __name__ == "__main__":
    main()
