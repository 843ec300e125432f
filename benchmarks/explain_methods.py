"""Explanation speed and agreement: baseline Shapley, TreeSHAP, occlusion and KernelSHAP on
real sessions.

Trains an Isolation Forest and two extended forests (eif, isotree) on the earlier 70%
of the real ACN sessions, injects labelled anomalies into the latest 30% and
explains the anomalies that alert, as the serving worker does. Reports:
- ms per explained session (one session per call, and batches of 20);
- top-1 agreement of TreeSHAP (shap's, against the training data) and of occlusion with
  the default baseline Shapley values (Isolation Forest), and of occlusion with KernelSHAP (extended forests, 50 k-means background rows, 500 samples);
- the most frequent top feature per anomaly type.

    .venv/bin/python benchmarks/explain_methods.py --acn-dir ../shared/acn
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def per_session_ms(function, rows: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        function(rows[start:start + batch])
    return (time.perf_counter() - started) / len(rows) * 1000


def kernel_shap(detector, background: np.ndarray, rows: np.ndarray, nsamples: int) -> np.ndarray:
    import shap

    summary = shap.kmeans(background, 50)
    explainer = shap.KernelExplainer(detector.score_samples, summary)
    return np.asarray(explainer.shap_values(rows, nsamples=nsamples, silent=True))


def run(args: argparse.Namespace) -> None:
    from tuning_vs_seed import load_sessions  # same time-ordered sessions as that benchmark

    from pipelines.data.anomalies import inject_anomalies
    from pipelines.data.features import FEATURE_COLUMNS, feature_matrix
    from pipelines.models.detection_metrics import calibrate_threshold
    from pipelines.models.estimators import make_detector
    from pipelines.models.explain import Explainer

    records = load_sessions(args.acn_dir)
    n_eval = round(len(records) * 0.3)
    train = feature_matrix(records[:-n_eval]).to_numpy()
    injected, labels = inject_anomalies(records[-n_eval:], 0.03, seed=args.seed)
    held_out = feature_matrix(injected).to_numpy()
    types = np.array([labels.get(str(r["sessionID"]), "") for r in injected], dtype=object)

    print(f"{len(train):,} training rows, {len(held_out):,} held out, {int((types != '').sum())} "
          f"injected anomalies\n")
    print("| model | method | ms/session (1 per call) | ms/session (batches of 20) | "
          "top-1 agreement | explained |")
    print("|---|---|---:|---:|---|---:|")
    tops: dict[str, Counter] = {}
    for kind, params in (("iforest", {"max_samples": 512}),
                         ("eif", {"max_samples": 512, "extension_level": 3}),
                         ("isotree", {"max_samples": 512, "extension_level": 15})):
        detector = make_detector(kind, n_estimators=100, random_state=args.seed, **params)
        detector.fit(train)
        threshold = calibrate_threshold(detector.score_samples(train), 0.01)
        alerting = (detector.score_samples(held_out) >= threshold) & (types != "")
        rows = held_out[alerting][: args.max_rows]
        row_types = types[alerting][: args.max_rows]
        default = Explainer(detector, train, FEATURE_COLUMNS)
        main_contrib = default.contributions(rows)
        methods = [(default.method, default)]
        if default.method == "baseline_shap":
            methods += [(name, Explainer(detector, train, FEATURE_COLUMNS, method=name))
                        for name in ("tree_shap", "occlusion")]
        for name, explainer in methods:
            explainer.contributions(rows[:1])  # one-off set-up (leaf table, shap import)
            single = per_session_ms(explainer.contributions, rows, 1)
            batched = per_session_ms(explainer.contributions, rows, 20)
            agreement = "-"
            if explainer is not default:
                same = (explainer.contributions(rows).argmax(1) == main_contrib.argmax(1)).mean()
                agreement = f"{same:.0%} with {default.method}"
            print(f"| {kind} | {name} | {single:.2f} | {batched:.2f} | {agreement} | {len(rows)} |")
        if kind != "iforest":
            subset = rows[: args.kernel_rows]
            started = time.perf_counter()
            kernel = kernel_shap(detector, train, subset, args.kernel_samples)
            kernel_ms = (time.perf_counter() - started) / len(subset) * 1000
            same = (kernel.argmax(1) == main_contrib[: len(subset)].argmax(1)).mean()
            print(f"| {kind} | KernelSHAP ({args.kernel_samples} samples) | {kernel_ms:.0f} | - | "
                  f"occlusion agrees on {same:.0%} | {len(subset)} |")
        for kind_type, contrib in zip(row_types, main_contrib):
            tops.setdefault(f"{kind} / {kind_type}", Counter())[
                FEATURE_COLUMNS[int(np.argmax(contrib))]] += 1
    print("\n| model / anomaly type | most frequent top feature (count) |\n|---|---|")
    for key in sorted(tops):
        common = ", ".join(f"{f} ({n})" for f, n in tops[key].most_common(3))
        print(f"| {key} | {common} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=ROOT.parent / "shared" / "acn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-rows", type=int, default=200)
    parser.add_argument("--kernel-rows", type=int, default=20)
    parser.add_argument("--kernel-samples", type=int, default=500)
    run(parser.parse_args())
