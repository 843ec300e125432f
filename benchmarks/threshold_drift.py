"""The alert rate under drift on the real ACN exports: the trained threshold held fixed vs
re-calibrated weekly from the scores monitoring has stored (issue 12, point 5).

A fast stand-in for the time split of `evguard evaluate`, without registry or serving:

1. `inject_anomalies(all sessions, --rate, seed)`; the time split (latest 30 % scored,
   mostly 2020, against training on 2019).
2. One fixed detector per seed (`--detector`, default isotree 100 trees, 512 samples, the
   family tuning chooses on these exports) fitted on the training side without the
   rule-breaking faults (the ingest suites quarantine exactly those). Features are
   `feature_matrix`; the scored sessions' station context is replayed after the training
   sessions, as the worker has seen them. With `--train`, instead, the evaluation's own
   time-split scenario (`evaluation.scenarios.run_scenario`: ingest, `run_training` with
   the `TrainParams` grid, registry, the worker's steps) gives the scores; slower.
3. Per budget (`--budgets`): the trained threshold = that quantile of the training scores;
   the reference of the bound = 2,000 training scores, as a logged model keeps. With
   `--train`: the registered version's reference scores, and its own threshold for 1 %.
4. `evaluation.drift.drift_section`: the scored sessions in the order they reach the
   worker, in steps of `--step-days`; at each step the threshold is re-calibrated from the
   scores of the previous `--window-days` (0 = all), injected faults included.
5. Per budget: the realized alert rate on untouched sessions (target: <= 1.5 x the budget)
   and the recall on the injected ones, fixed vs re-calibrated; mean ± sd over seeds.

    .venv/bin/python benchmarks/threshold_drift.py --acn-dir /work/shared/acn --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROWS = 2000
DETECTORS = {"isotree": {"n_estimators": 100, "max_samples": 512, "extension_level": None},
             "iforest": {"n_estimators": 200, "max_samples": 1024, "max_features": 1.0},
             "eif": {"n_estimators": 100, "max_samples": 2048, "extension_level": 3}}


def scored_side(records: list[dict], rate: float, seed: int, detector_kind: str,
                budgets: list[float]) -> dict:
    """Scores, arrival times, labels and trained thresholds of the time split's scored side."""
    from evaluation.scoring import feature_frame_end_times
    from evaluation.split import split_by_time
    from pipelines.data.anomalies import RULE_BREAKING_ANOMALIES, inject_anomalies
    from pipelines.data.features import FEATURE_COLUMNS, feature_matrix
    from pipelines.models.detection_metrics import calibrate_threshold
    from pipelines.models.estimators import make_detector

    injected, labels = inject_anomalies(records, rate, seed)
    train, scored = split_by_time(injected, 0.3)
    train_types = np.array([labels.get(str(r["sessionID"]), "") for r in train], dtype=object)
    kept = [r for r, t in zip(train, train_types, strict=True)
            if t not in RULE_BREAKING_ANOMALIES]
    X_train = feature_matrix(kept)[FEATURE_COLUMNS].to_numpy()
    X_scored = feature_matrix(train + scored)[FEATURE_COLUMNS].to_numpy()[len(train):]
    detector = make_detector(detector_kind, random_state=seed, **DETECTORS[detector_kind])
    detector.fit(X_train)
    train_scores = detector.score_samples(X_train)
    rng = np.random.default_rng(seed)
    reference = train_scores[rng.choice(len(train_scores), min(REFERENCE_ROWS, len(train_scores)),
                                        replace=False)]
    return {"scores": detector.score_samples(X_scored),
            "arrival_s": feature_frame_end_times(scored) / 1e9,
            "types": np.array([labels.get(str(r["sessionID"]), "") for r in scored], dtype=object),
            "thresholds": {b: calibrate_threshold(train_scores, b) for b in budgets},
            "reference": reference}


def trained_side(records: list[dict], rate: float, seed: int, budgets: list[float],
                 workdir: Path) -> dict:
    """The same, from the evaluation's time-split scenario with a trained, registered model."""
    from evaluation.scenarios import EvaluationConfig, run_scenario
    from evaluation.scoring import feature_frame_end_times
    from evaluation.split import split_by_time
    from pipelines.data.anomalies import inject_anomalies
    from pipelines.models import registry
    from pipelines.models.detection_metrics import calibrate_threshold
    from pipelines.settings import Settings

    injected, labels = inject_anomalies(records, rate, seed)
    train, scored = split_by_time(injected, 0.3)
    config = EvaluationConfig(rate=rate, seed=seed, alert_budget=min(budgets),
                              train={"log_figures": False})
    base = Settings(_env_file=None, state_dir=workdir / "state", data_dir=workdir / "data")
    report, curves = run_scenario(base, workdir / "time_split", "time split", train, scored,
                                  labels, config, lambda stage, done, total: None)
    settings = base.model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{workdir.resolve() / 'mlflow.db'}",
        "model_name": report["model"]["name"]})
    model = registry.load_version(settings, report["model"]["version"])
    reference = np.asarray(model.reference["score"], dtype=float)
    thresholds = {b: calibrate_threshold(reference, b) for b in budgets}
    thresholds[min(budgets)] = model.original_threshold
    print(f"seed {seed}: trained {report['model']['candidate']}", flush=True)
    return {"scores": np.asarray(curves["evguard"], dtype=float),
            "arrival_s": feature_frame_end_times(scored) / 1e9,
            "types": np.array([labels.get(str(r["sessionID"]), "") for r in scored], dtype=object),
            "thresholds": thresholds, "reference": reference}


def _cell(values: list[float]) -> str:
    text = f"{statistics.mean(values):.1%}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.1%}"


def markdown(sections: list[dict], budgets: list[float]) -> str:
    lines = [("| budget | false alerts, fixed | false alerts, re-calibrated | target | "
             "recall, fixed | recall, re-calibrated | re-calibrations |"),
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for budget in budgets:
        runs = [s["budgets"][str(budget)] for s in sections]
        lines.append(" | ".join([
            f"| {budget:.0%}", _cell([r["fixed"]["false_alert_rate"] for r in runs]),
            _cell([r["recalibrated"]["false_alert_rate"] for r in runs]), f"≤ {1.5 * budget:.1%}",
            _cell([r["fixed"]["recall"] for r in runs]),
            _cell([r["recalibrated"]["recall"] for r in runs]),
            "/".join(str(r["recalibrated"]["recalibrations"]) for r in runs)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=ROOT.parent / "shared" / "acn")
    parser.add_argument("--seeds", default="1", help="injection and detector seeds, e.g. 1,2,3")
    parser.add_argument("--rate", type=float, default=0.03, help="share of injected faults")
    parser.add_argument("--budgets", default="0.01,0.03", help="alert budgets")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="isotree")
    parser.add_argument("--window-days", type=float, default=0.0,
                        help="how far back monitoring looks; 0 = no limit")
    parser.add_argument("--window-scores", type=int, default=5000,
                        help="the most (newest) scores it takes; 0 = no limit")
    parser.add_argument("--step-days", type=float, default=7.0, help="re-calibrate this often")
    parser.add_argument("--tolerance", type=float, default=1.25, help="dead band (factor)")
    parser.add_argument("--max-factor", type=float, default=4.0, help="bound of the move (factor)")
    parser.add_argument("--min-tail", type=int, default=10,
                        help="fewest window scores above the new threshold")
    parser.add_argument("--train", action="store_true",
                        help="score with the evaluation's trained champion instead of a fixed "
                             "detector")
    args = parser.parse_args()

    from evaluation.drift import drift_section
    from pipelines.data.exports import load_exports
    from pipelines.data.features import FEATURE_VERSION

    files = sorted(args.acn_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no ACN exports in {args.acn_dir}")
    records = load_exports(files)
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    window_s = args.window_days * 86_400 if args.window_days > 0 else None
    options = {"tolerance": args.tolerance, "max_factor": args.max_factor,
               "min_tail": args.min_tail}
    sections = []
    for seed in seeds:
        if args.train:
            with tempfile.TemporaryDirectory(prefix="evguard-drift-") as tmp:
                side = trained_side(records, args.rate, seed, budgets, Path(tmp))
        else:
            side = scored_side(records, args.rate, seed, args.detector, budgets)
        sections.append(drift_section(side["scores"], side["arrival_s"], side["types"],
                                      side["thresholds"], side["reference"], window_s,
                                      args.window_scores or None, args.step_days * 86_400,
                                      options))
        print(f"seed {seed} done", flush=True)
    print(f"\n{len(records):,} real sessions, {args.rate:.0%} injected, seeds {args.seeds}; "
          f"time split; {'the trained champion' if args.train else args.detector} on "
          f"{FEATURE_VERSION}; re-calibrated every "
          f"{args.step_days:g} days from the newest {args.window_scores or 'all'} scores "
          f"{f'of the last {args.window_days:g} days ' if window_s else ''}"
          f"(tolerance {args.tolerance:g}, max factor {args.max_factor:g}, "
          f"min tail {args.min_tail})\n")
    print(markdown(sections, budgets))


if __name__ == "__main__":
    main()
