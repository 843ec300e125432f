"""Feature versions on the real ACN exports: f1 (16 linear columns) vs f2 (plus 4 log/excess columns).

A fast stand-in for `evguard evaluate` that isolates the features: same injection
and splits, fixed detectors instead of the tuning grid, no registry or serving.

1. `inject_anomalies(all sessions, --rate, seed)`; the evaluation's two splits
   (time split: latest 30 % scored; cross-site: train caltech, score jpl).
2. Training rows: the training side without the rule-breaking faults (the ingest
   suites quarantine exactly those), so meter faults, over-deliveries and stuck
   sessions stay in training, as they would in a user's data. `--clean-training`
   drops every injected session from training instead (an uncontaminated history).
3. Each detector is fitted on the f1 columns (`FEATURE_COLUMNS[:16]`, identical to
   version f1) and on all f2 columns; threshold = 1 % of its training scores.
4. Per scenario and detector: PR-AUC, precision@k (k = 1 % of scored rows), the
   false-alert rate on untouched real sessions, and per fault type the recall at
   the threshold and the ROC-AUC of that type against the untouched real sessions
   (how far above the real sessions it ranks, whatever the threshold).

    .venv/bin/python benchmarks/feature_scales.py [--acn-dir ../shared/acn] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
F1_COLUMNS = 16
DETECTORS = (("isotree", {"n_estimators": 100, "max_samples": 512, "extension_level": None}),
             ("iforest", {"n_estimators": 200, "max_samples": 1024, "max_features": 1.0}),
             ("eif", {"n_estimators": 100, "max_samples": 2048, "extension_level": 3}))


def scenarios(records: list[dict], rate: float, seed: int) -> dict[str, tuple]:
    from evaluation.split import split_by_site, split_by_time
    from pipelines.data.anomalies import inject_anomalies

    injected, labels = inject_anomalies(records, rate, seed)
    return {"time split": (*split_by_time(injected, 0.3), labels),
            "cross-site": (*split_by_site(injected, "caltech", "jpl"), labels)}


def measure(train: list, scored: list, labels: dict, clean: bool, seed: int) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipelines.data.anomalies import ANOMALY_TYPES, RULE_BREAKING_ANOMALIES
    from pipelines.data.features import FEATURE_COLUMNS, feature_matrix
    from pipelines.models.detection_metrics import calibrate_threshold
    from pipelines.models.estimators import make_detector

    def kinds(rows: list) -> np.ndarray:
        return np.array([labels.get(str(r["sessionID"]), "") for r in rows], dtype=object)

    train_kinds, kind = kinds(train), kinds(scored)
    keep = train_kinds == "" if clean else ~np.isin(train_kinds, list(RULE_BREAKING_ANOMALIES))
    X_train = feature_matrix([r for r, k in zip(train, keep) if k])[FEATURE_COLUMNS].to_numpy()
    X_scored = feature_matrix(scored)[FEATURE_COLUMNS].to_numpy()
    real, is_fault = kind == "", kind != ""
    k = max(1, round(0.01 * len(scored)))
    out = {}
    for version, n_cols in (("f1", F1_COLUMNS), ("f2", len(FEATURE_COLUMNS))):
        for detector_kind, params in DETECTORS:
            detector = make_detector(detector_kind, random_state=seed, **params)
            detector.fit(X_train[:, :n_cols])
            threshold = calibrate_threshold(detector.score_samples(X_train[:, :n_cols]), 0.01)
            scores = detector.score_samples(X_scored[:, :n_cols])
            alerts = scores >= threshold
            row = {"pr_auc": average_precision_score(is_fault, scores),
                   "precision_at_k": is_fault[np.argsort(-scores, kind="stable")[:k]].mean(),
                   "false_alert_rate": alerts[real].mean()}
            for fault in ANOMALY_TYPES:
                mask = kind == fault
                if mask.any():
                    both = mask | real
                    row[f"recall {fault}"] = alerts[mask].mean()
                    row[f"auc {fault}"] = roc_auc_score(mask[both], scores[both])
            out[(detector_kind, version)] = row
    return out


def _cell(values: list[float], pct: bool) -> str:
    spec = ".1%" if pct else ".3f"
    text = format(statistics.mean(values), spec)
    return text if len(values) == 1 else f"{text} ± {format(statistics.stdev(values), spec)}"


def markdown(title: str, runs: list[dict]) -> str:
    from pipelines.data.anomalies import ANOMALY_TYPES

    keys = list(runs[0])
    lines = [f"**{title}**", "", "| | " + " | ".join(f"{d} {v}" for d, v in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    rows = [("PR-AUC", "pr_auc", False), ("precision@k", "precision_at_k", True),
            ("false-alert rate (real sessions)", "false_alert_rate", True)]
    rows += [(f"recall / AUC vs real: {t}", t, None) for t in ANOMALY_TYPES]
    for label, key, pct in rows:
        cells = []
        for column in keys:
            if pct is None:
                recall = [r[column].get(f"recall {key}") for r in runs]
                auc = [r[column].get(f"auc {key}") for r in runs]
                cells.append("-" if None in recall else
                             f"{_cell(recall, True)} / {_cell(auc, False)}")
            else:
                cells.append(_cell([r[column][key] for r in runs], pct))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=ROOT.parent / "shared" / "acn")
    parser.add_argument("--seeds", default="1", help="injection and detector seeds")
    parser.add_argument("--rate", type=float, default=0.03)
    parser.add_argument("--clean-training", action="store_true",
                        help="drop every injected session from training (not only rule-breaking)")
    args = parser.parse_args()

    from pipelines.data.exports import load_exports

    files = sorted(args.acn_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no ACN exports in {args.acn_dir}")
    records = load_exports(files)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, (train, scored, labels) in scenarios(records, args.rate, seed).items():
            results.setdefault(name, []).append(
                measure(train, scored, labels, args.clean_training, seed))
            print(f"seed {seed}: {name} done", flush=True)
    training = ("without any injected session" if args.clean_training
                else "without the rule-breaking faults the suites quarantine")
    print(f"\n{len(records):,} real sessions, {args.rate:.0%} injected, seeds {args.seeds}; "
          f"training rows {training}; recall at 1 % of training scores\n")
    for name, runs in results.items():
        print(markdown(name, runs) + "\n")


if __name__ == "__main__":
    main()
