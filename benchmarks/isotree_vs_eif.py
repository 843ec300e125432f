"""Is `isotree` worth adding? Extended isolation forests of `eif` and `isotree` side by side.

Same data as `tuning_vs_seed.py` (real ACN sessions, time split 70/30, 3 %
injected anomalies in the held-out part). `eif` runs in this venv; `isotree`
runs in a throwaway venv given by `--isotree-python` (it is not a project
dependency), on the same matrices saved to a temporary .npz. isotree's
`ndim = extension_level + 1` columns per split, normal coefficients as in
Hariri et al., with and without isotree's default standardisation of the
columns (eif has none); one thread unless stated.

    uv venv /tmp/isotree-venv
    VIRTUAL_ENV=/tmp/isotree-venv uv pip install isotree scikit-learn pandas
    .venv/bin/python benchmarks/isotree_vs_eif.py --isotree-python /tmp/isotree-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [(100, 256, 1), (100, 512, 3), (100, 512, 15)]  # trees, samples, extension level

ISOTREE_CODE = """
import json, sys, time
import numpy as np
from isotree import IsolationForest
from sklearn.metrics import average_precision_score
data = np.load(sys.argv[1], allow_pickle=True)
out = []
for trees, samples, level in json.loads(sys.argv[2]):
    for threads, standardize in ((1, False), (1, True), (2, True)):
        model = IsolationForest(ndim=level + 1, ntrees=trees, sample_size=samples,
                                coefs="normal", missing_action="fail",
                                standardize_data=standardize, nthreads=threads, random_seed=1)
        t0 = time.perf_counter(); model.fit(data["train"]); fit = time.perf_counter() - t0
        t0 = time.perf_counter(); scores = model.predict(data["held_out"])
        score = time.perf_counter() - t0
        threshold = np.quantile(model.predict(data["train"]), 0.99, method="higher")
        labels = data["labels"]
        out.append({"trees": trees, "samples": samples, "level": level, "threads": threads,
                    "standardize": standardize, "fit_s": fit, "rows_per_s": len(scores) / score,
                    "pr_auc": float(average_precision_score(labels, scores)),
                    "recall_at_budget": float((scores[labels] >= threshold).mean())})
print(json.dumps(out))
"""


def prepare(acn_dir: Path, seed: int) -> dict[str, np.ndarray]:
    from tuning_vs_seed import load_sessions

    from pipelines.data.anomalies import inject_anomalies
    from pipelines.data.features import FEATURE_COLUMNS, feature_matrix

    records = load_sessions(acn_dir)
    n_eval = round(len(records) * 0.3)
    injected, labels = inject_anomalies(records[-n_eval:], 0.03, seed=seed)
    return {"train": feature_matrix(records[:-n_eval])[FEATURE_COLUMNS].to_numpy(),
            "held_out": feature_matrix(injected)[FEATURE_COLUMNS].to_numpy(),
            "labels": np.array([str(r["sessionID"]) in labels for r in injected])}


def run_eif(data: dict[str, np.ndarray]) -> list[dict]:
    from pipelines.models.detection_metrics import calibrate_threshold, label_metrics
    from pipelines.models.estimators import make_detector

    out = []
    for trees, samples, level in CONFIGS:
        detector = make_detector("eif", n_estimators=trees, max_samples=samples,
                                 extension_level=level, random_state=1)
        started = time.perf_counter()
        detector.fit(data["train"])
        fit = time.perf_counter() - started
        started = time.perf_counter()
        scores = detector.score_samples(data["held_out"])
        score = time.perf_counter() - started
        threshold = calibrate_threshold(detector.score_samples(data["train"]), 0.01)
        metrics = label_metrics(scores, data["labels"], threshold, 0.01)
        out.append({"trees": trees, "samples": samples, "level": level, "threads": 1,
                    "standardize": False, "fit_s": fit, "rows_per_s": len(scores) / score, "pr_auc": metrics["pr_auc"],
                    "recall_at_budget": metrics["recall_at_budget"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=ROOT.parent / "shared" / "acn")
    parser.add_argument("--isotree-python", type=Path, required=True)
    parser.add_argument("--seeds", default="1,2,3", help="anomaly injection seeds")
    args = parser.parse_args()

    rows: dict[tuple, list[dict]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = prepare(args.acn_dir, seed)
        results = [("eif", r) for r in run_eif(data)]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.npz"
            np.savez(path, **data)
            done = subprocess.run([str(args.isotree_python), "-c", ISOTREE_CODE, str(path),
                                   json.dumps(CONFIGS)], check=False, capture_output=True,
                                  text=True)
        if done.returncode:
            raise SystemExit(f"isotree run failed:\n{done.stderr[-2000:]}")
        results += [("isotree", r) for r in json.loads(done.stdout.strip().splitlines()[-1])]
        for library, r in results:
            key = (library, r["trees"], r["samples"], r["level"], r["standardize"], r["threads"])
            rows.setdefault(key, []).append(r)
    print(f"{len(data['train']):,} training rows, {len(data['held_out']):,} scored, "
          f"{int(data['labels'].sum())} injected anomalies per seed; seeds {args.seeds}; "
          "medians of fit and scoring time, means of the metrics\n")
    print("| library | trees | samples | ext. level | standardised | threads | fit s "
          "| scored rows/s | PR-AUC | recall @1% |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for (library, trees, samples, level, standardize, threads), runs in rows.items():
        fit = np.median([r["fit_s"] for r in runs])
        speed = np.median([r["rows_per_s"] for r in runs])
        print(f"| {library} | {trees} | {samples} | {level} | {'yes' if standardize else 'no'} "
              f"| {threads} | {fit:.3f} | {speed:,.0f} | "
              f"{np.mean([r['pr_auc'] for r in runs]):.3f} | "
              f"{np.mean([r['recall_at_budget'] for r in runs]):.3f} |")


if __name__ == "__main__":
    main()
