"""Feature versions on the real ACN exports: f1 (16 columns) vs f2 (20) vs f3 (f2 + station context).

A fast stand-in for `evguard evaluate` that isolates the features: same injection
and splits, fixed detectors instead of the tuning grid, no registry or serving.

1. `inject_anomalies(all sessions, --rate, seed)`; the evaluation's two splits
   (time split: latest 30 % scored; cross-site: train caltech, score jpl).
2. Station context: one replay (`pipelines.stations.context`) over the training and
   scored sessions together, faults included, in event time, as the worker's state
   would have seen them: the scored sessions of the time split carry the training
   history; in cross-site the scored site starts cold.
3. Training rows: the training side without the rule-breaking faults (the ingest
   suites quarantine exactly those), so meter faults, over-deliveries and stuck
   sessions stay in training, as they would in a user's data. `--clean-training`
   drops every injected session from training instead (an uncontaminated history).
4. Each detector is fitted on each version's columns (`--versions`; f1 =
   `F2_COLUMNS[:16]`, f2 = `F2_COLUMNS`, f3 = `FEATURE_COLUMNS`; `--try NAME=c1+c2`
   adds f2 plus any candidate context columns); threshold = 1 % of its training scores.
   `--trim 0.03` also trims each one (`--trim-modes`): `all` = fit, drop the top 3 % of
   the training rows by score, refit on the rest (`estimators.fit_trimmed`), threshold at
   1 % of the refit's scores of all training rows; `kept` = the same refit, threshold at
   1 % of the kept rows' scores; `cut` = one plain fit, threshold at 1 % of the training
   rows below its top 3 %.
5. Per scenario and detector: PR-AUC, precision@k (k = 1 % of scored rows), the
   false-alert rate on untouched real sessions, and per fault type the recall at
   the threshold and the ROC-AUC of that type against the untouched real sessions.
6. Probes (`--probes` per group): untouched scored sessions of each site, and of the DC
   fast chargers (stations whose median charging power is above 15 kW), rewritten to
   impossible power or to a meter fault and scored with the context of the session they
   replace; the recall at the threshold.

    .venv/bin/python benchmarks/feature_scales.py [--acn-dir ../shared/acn] [--seeds 1,2,3]
    .venv/bin/python benchmarks/feature_scales.py --cost 1000000   # speed and state size
    .venv/bin/python benchmarks/feature_scales.py --tune-cost --trim 0,0.015  # training time
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DETECTORS = (("isotree", {"n_estimators": 100, "max_samples": 512, "extension_level": None}),
             ("iforest", {"n_estimators": 200, "max_samples": 1024, "max_features": 1.0}),
             ("eif", {"n_estimators": 100, "max_samples": 2048, "extension_level": 3}))
DC_MEDIAN_KW = 15.0
PROBE_TYPES = ("impossible_power", "meter_fault")


def scenarios(records: list[dict], rate: float, seed: int) -> dict[str, tuple]:
    from evaluation.split import split_by_site, split_by_time
    from pipelines.data.anomalies import inject_anomalies

    injected, labels = inject_anomalies(records, rate, seed)
    return {"time split": (*split_by_time(injected, 0.3), labels),
            "cross-site": (*split_by_site(injected, "caltech", "jpl"), labels)}


def dc_stations(records: list[dict]) -> set[str]:
    """Stations of the real sessions whose median charging power is DC-like."""
    from pipelines.data.features import feature_matrix

    kw = feature_matrix(records)["charging_kw"].to_numpy()
    by_station: dict[str, list[float]] = {}
    for record, value in zip(records, kw, strict=True):
        by_station.setdefault(str(record.get("stationID")), []).append(value)
    return {s for s, values in by_station.items() if np.median(values) > DC_MEDIAN_KW}


def columns_of(versions: list[str], tries: dict[str, list[str]]) -> dict[str, list[str]]:
    from pipelines.data.features import F2_COLUMNS, FEATURE_COLUMNS

    known = {"f1": F2_COLUMNS[:16], "f2": F2_COLUMNS, "f3": FEATURE_COLUMNS}
    return {**{v: known[v] for v in versions}, **{n: F2_COLUMNS + c for n, c in tries.items()}}


def all_columns(records: list[dict], contexts: np.ndarray):
    """f3 features plus every candidate context column, with the given context rows."""
    import pandas as pd

    from pipelines.data.features import feature_matrix
    from pipelines.stations.context import CONTEXT_KEYS, context_features, session_facts

    rows = [dict(zip(CONTEXT_KEYS, row, strict=True)) for row in contexts.tolist()]
    frame = feature_matrix(records, rows)
    candidates = pd.DataFrame(context_features(session_facts(records), contexts),
                              index=frame.index)
    return pd.concat([frame, candidates[[c for c in candidates if c not in frame]]], axis=1)


def probes(scored: list, contexts: np.ndarray, kind: np.ndarray, dc: set[str], n: int,
           seed: int) -> dict[str, object]:
    """Per group and probe type: the features of untouched sessions rewritten to the fault."""
    from pipelines.data.anomalies import inject_anomalies

    rng = np.random.default_rng(seed)
    groups = {f"site {s}": [i for i, r in enumerate(scored)
                            if kind[i] == "" and str(r.get("siteID")) == s]
              for s in sorted({str(r.get("siteID")) for r in scored})}
    groups["DC fast chargers"] = [i for i, r in enumerate(scored)
                                  if kind[i] == "" and str(r.get("stationID")) in dc]
    out = {}
    for group, members in groups.items():
        if not members:
            continue
        chosen = sorted(rng.choice(members, min(n, len(members)), replace=False).tolist())
        for fault in PROBE_TYPES:
            rewritten, _ = inject_anomalies([scored[i] for i in chosen], 1.0, seed,
                                            types=(fault,))
            out[f"probe {fault}: {group}"] = all_columns(rewritten, contexts[chosen])
    return out


def fits(trims: list[float], modes: list[str]) -> list[tuple[float, str]]:
    """(trim, mode) per fit; an untrimmed fit has one mode."""
    return [(0.0, "all")] * (0.0 in trims) + [(t, m) for t in trims if t > 0 for m in modes]


def fit_label(version: str, trim: float, mode: str) -> str:
    return version if trim == 0 else f"{version} {mode} {trim:.1%}"


def fit_and_threshold(detector, X_train: np.ndarray, trim: float, mode: str) -> float:
    """Fit `detector` as `mode` says (module docstring, step 4); its threshold."""
    from pipelines.models.detection_metrics import calibrate_threshold
    from pipelines.models.estimators import below_top, fit_trimmed

    if mode == "cut":
        scores = detector.fit(X_train).score_samples(X_train)
        return calibrate_threshold(scores[below_top(scores, trim)], 0.01)
    kept = fit_trimmed(detector, X_train, trim)
    return calibrate_threshold(detector.score_samples(X_train[kept] if mode == "kept"
                                                      else X_train), 0.01)


def measure(train: list, scored: list, labels: dict, clean: bool, seed: int,
            versions: dict[str, list[str]], detectors: tuple, dc: set[str],
            n_probes: int, trims: tuple[tuple[float, str], ...] = ((0.0, "all"),)) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipelines.data.anomalies import ANOMALY_TYPES, RULE_BREAKING_ANOMALIES
    from pipelines.models.estimators import make_detector
    from pipelines.stations.context import replay_context_array, session_facts

    def kinds(rows: list) -> np.ndarray:
        return np.array([labels.get(str(r["sessionID"]), "") for r in rows], dtype=object)

    train_kinds, kind = kinds(train), kinds(scored)
    keep = train_kinds == "" if clean else ~np.isin(train_kinds, list(RULE_BREAKING_ANOMALIES))
    contexts = replay_context_array(session_facts(train + scored))
    features = all_columns(train + scored, contexts)
    train_rows, scored_rows = features.iloc[:len(train)][keep], features.iloc[len(train):]
    probe_rows = probes(scored, contexts[len(train):], kind, dc, n_probes, seed)
    real, is_fault = kind == "", kind != ""
    k = max(1, round(0.01 * len(scored)))
    out = {}
    for version, columns in versions.items():
        X_train, X_scored = train_rows[columns].to_numpy(), scored_rows[columns].to_numpy()
        for (detector_kind, params), (trim, mode) in itertools.product(detectors, trims):
            detector = make_detector(detector_kind, random_state=seed, **params)
            threshold = fit_and_threshold(detector, X_train, trim, mode)
            scores = detector.score_samples(X_scored)
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
            for name, rows in probe_rows.items():
                row[name] = (detector.score_samples(rows[columns].to_numpy()) >= threshold).mean()
            out[(detector_kind, fit_label(version, trim, mode))] = row
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
    rows += [(f"recall, {name}", name, True) for name in runs[0][keys[0]]
             if name.startswith("probe ")]
    for label, key, pct in rows:
        cells = []
        for column in keys:
            if pct is None:
                recall = [r[column].get(f"recall {key}") for r in runs]
                auc = [r[column].get(f"auc {key}") for r in runs]
                cells.append("-" if None in recall else
                             f"{_cell(recall, True)} / {_cell(auc, False)}")
            else:
                values = [r[column].get(key) for r in runs]
                cells.append("-" if None in values else _cell(values, pct))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost(records: list[dict], n_sessions: int) -> None:
    """Speed of the replay and of the serving path, and the size of the state, on the exports
    copied (each copy with its own stations, users and session ids) up to `n_sessions`."""
    import gc
    import time
    import tracemalloc

    from pipelines.stations.context import (
        context_of,
        observe,
        replay_context_array,
        replay_contexts,
        session_facts,
    )

    fields = ("sessionID", "stationID", "siteID", "userID", "connectionTime",
              "disconnectTime", "doneChargingTime", "kWhDelivered")
    copies = -(-n_sessions // len(records))
    many = [{**{f: r.get(f) for f in fields}, "sessionID": f"{r['sessionID']}#{c}",
             "stationID": f"{r['stationID']}#{c}",
             "userID": None if r.get("userID") is None else f"{r['userID']}#{c}"}
            for c in range(copies) for r in records][:n_sessions]
    gc.collect()
    start = time.perf_counter()
    facts = session_facts(many)
    parsed = time.perf_counter()
    replay_context_array(facts)
    replayed = time.perf_counter()
    n = len(many)
    print(f"| replay_contexts, {n:,} sessions | {(parsed - start) / n * 1e6:.1f} µs parse + "
          f"{(replayed - parsed) / n * 1e6:.1f} µs replay per session "
          f"({replayed - start:.1f} s) |")
    sample = many[: min(n, 100_000)]
    start = time.perf_counter()
    replay_contexts(sample)
    print(f"| replay_contexts (list of dicts), {len(sample):,} sessions | "
          f"{(time.perf_counter() - start) / len(sample) * 1e6:.1f} µs per session |")
    order = np.argsort(facts.end[: len(sample)], kind="stable")  # the worker: as they end
    state: dict[str, object] = {}
    start = time.perf_counter()
    for i in order.tolist():
        context_of(state, sample[i])
        observe(state, sample[i])
    elapsed = time.perf_counter() - start
    state = {}
    tracemalloc.start()  # a second pass: tracing slows the first one down tenfold
    for i in order.tolist():
        observe(state, sample[i])
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    kinds = {k: sum(1 for key in state if key.startswith(k)) for k in ("profile:", "site:",
                                                                       "user:")}
    stored = sum(len(key) + len(value.to_bytes()) for key, value in state.items())
    stations = kinds["profile:"]
    print(f"| context_of + observe, {len(sample):,} sessions in end order | "
          f"{elapsed / len(sample) * 1e6:.1f} µs per session |")
    print(f"| state after them: {stations:,} stations, {kinds['user:']:,} users, "
          f"{kinds['site:']} sites | {stored / stations:.0f} B serialised (keys + values) and "
          f"{memory / stations:.0f} B in memory per station, users and sites included; "
          f"100,000 stations like these: {memory / stations * 1e5 / 1e6:.0f} MB |")


def tune_cost(records: list[dict], trims: list[float], seed: int) -> None:
    """Seconds of `tune` on the default grid (`TrainParams()`) per trim, on the time split's
    training rows (planted faults that pass validation included) and scored rows."""
    import time

    from pipelines.data.anomalies import RULE_BREAKING_ANOMALIES
    from pipelines.data.features import FEATURE_COLUMNS
    from pipelines.models.candidates import EvalSplit
    from pipelines.models.train_params import TrainParams
    from pipelines.models.tuning import tune
    from pipelines.stations.context import replay_context_array, session_facts

    train, scored, labels = scenarios(records, 0.03, seed)["time split"]
    train_kinds = np.array([labels.get(str(r["sessionID"]), "") for r in train], dtype=object)
    contexts = replay_context_array(session_facts(train + scored))
    X = all_columns(train + scored, contexts)[FEATURE_COLUMNS].to_numpy()
    split = EvalSplit(X[:len(train)][~np.isin(train_kinds, list(RULE_BREAKING_ANOMALIES))],
                      X[len(train):], np.array([labels.get(str(r["sessionID"]), "")
                                                for r in scored], dtype=object))
    for trim in trims:
        params = TrainParams(trim=trim, seed=seed)
        started = time.perf_counter()
        result = tune(split, params.search_space(), params.tuning_config())
        print(f"| trim {trim:.1%} | {len(result.results)} candidates, n_jobs {params.n_jobs} | "
              f"{time.perf_counter() - started:.1f} s | chose {result.best.candidate.name}, "
              f"PR-AUC {result.best.metrics['pr_auc']:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn-dir", type=Path, default=ROOT.parent / "shared" / "acn")
    parser.add_argument("--seeds", default="1", help="injection and detector seeds")
    parser.add_argument("--rate", type=float, default=0.03)
    parser.add_argument("--versions", default="f2,f3", help="any of f1, f2, f3")
    parser.add_argument("--try", dest="tries", action="append", default=[],
                        metavar="NAME=COL+COL", help="also f2 plus these context columns")
    parser.add_argument("--detectors", default=",".join(d for d, _ in DETECTORS))
    parser.add_argument("--probes", type=int, default=100, help="probes per site and fault")
    parser.add_argument("--cost", type=int, default=0, metavar="N",
                        help="only measure the replay, the serving path and the state on N "
                             "sessions (the exports copied with new station ids)")
    parser.add_argument("--clean-training", action="store_true",
                        help="drop every injected session from training (not only rule-breaking)")
    parser.add_argument("--trim", default="0", metavar="Q,Q",
                        help="also trim: this share of the top-scored training rows "
                             "(0 = the plain fit)")
    parser.add_argument("--trim-modes", default="all,kept,cut",
                        help="trimmed fits: refit and threshold on all rows (all), refit and "
                             "threshold on the kept rows (kept), or no refit and threshold "
                             "below the top share (cut)")
    parser.add_argument("--tune-cost", action="store_true",
                        help="only time tuning on the default grid for each --trim (time split, "
                             "first seed)")
    args = parser.parse_args()

    from pipelines.data.exports import load_exports

    detectors = tuple(d for d in DETECTORS if d[0] in args.detectors.split(","))
    files = sorted(args.acn_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no ACN exports in {args.acn_dir}")
    records = load_exports(files)
    if args.cost:
        cost(records, args.cost)
        return
    if args.tune_cost:
        tune_cost(records, [float(t) for t in args.trim.split(",")],
                  int(args.seeds.split(",")[0]))
        return
    versions = columns_of(args.versions.split(","),
                          {t.split("=")[0]: t.split("=")[1].split("+") for t in args.tries})
    dc = dc_stations(records)
    trims = tuple(fits([float(t) for t in args.trim.split(",")],
                       args.trim_modes.split(",")))
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, (train, scored, labels) in scenarios(records, args.rate, seed).items():
            results.setdefault(name, []).append(
                measure(train, scored, labels, args.clean_training, seed, versions, detectors,
                        dc, args.probes, trims))
            print(f"seed {seed}: {name} done", flush=True)
    training = ("without any injected session" if args.clean_training
                else "without the rule-breaking faults the suites quarantine")
    print(f"\n{len(records):,} real sessions, {args.rate:.0%} injected, seeds {args.seeds}; "
          f"training rows {training}; recall at 1 % of training scores; DC fast chargers: "
          f"{', '.join(sorted(dc)) or 'none'}\n")
    for name, columns in versions.items():
        print(f"- {name}: {len(columns)} columns" + (f" (+ {', '.join(columns[20:])})"
                                                   if len(columns) > 20 else ""))
    print()
    for name, runs in results.items():
        print(markdown(name, runs) + "\n")


if __name__ == "__main__":
    main()
