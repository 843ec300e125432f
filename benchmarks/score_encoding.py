"""Encoding the score results of one micro-batch: contract v1 (one message per session) against
v2 (one `evguard.scores/2` message per routing key), CPU per session, and what it costs the
consumers to parse them back.

    .venv/bin/python benchmarks/score_encoding.py [--sessions 1000] [--repeat 200]

Both encoders get what the Score step has: valid session records, their Kafka positions, the
feature frame, the scores and the explanations of the anomalies. v1 is fed as the Score step
fed it (`features.to_numpy().tolist()`, `scores.tolist()`) and builds one body per session with
`score_result_body` + `encode_score_result`, as `build_results` did; v2 is the worker's
`build_results` now. Times are the median of `--repeat` runs (process CPU time), so other
processes on the machine slow it less than wall time; /proc/pressure/cpu is printed beside.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from pipelines.contracts.score_result import (
    build_results,
    encode_score_result,
    parse_score_results,
    score_result_body,
)
from pipelines.contracts.sessions import Source
from pipelines.data.features import FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions

MODEL = {"name": "ev-session-anomaly", "version": "3", "feature_version": FEATURE_VERSION}
SCORED_AT = "2026-12-04T05:00:00.000+00:00"


def scored_batch(n: int, anomaly_rate: float = 0.05, seed: int = 7):
    """What the Score step holds before encoding: records, sources, features, scores,
    threshold and explanations (three contributions per anomaly)."""
    records, _ = generate_sessions(n, seed=seed, anomaly_rate=anomaly_rate)
    features = feature_matrix(records)
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.2, 0.55, n)
    scores[rng.random(n) < anomaly_rate] = 0.8
    threshold = 0.6
    sources = [Source("ev-station-data", i % 6, 1_000_000 + i, 1_764_824_400_000 + i)
               for i in range(n)]
    explanations = {int(i): [{"feature": c, "value": float(features.iloc[i][c]),
                              "contribution": 0.1, "typical": 1.0}
                             for c in features.columns[:3]]
                    for i in np.flatnonzero(scores >= threshold)}
    return records, sources, features, scores, threshold, explanations


def encode_v1(records, sources, features, scores, threshold, explanations):
    columns, rows, values = list(features.columns), features.to_numpy(np.float64).tolist(), \
        scores.tolist()
    return [encode_score_result(score_result_body(
        record, sources[i], dict(zip(columns, rows[i])), float(values[i]), threshold,
        explanations.get(i, []), MODEL, SCORED_AT)) for i, record in enumerate(records)]


def encode_v2(records, sources, features, scores, threshold, explanations):
    return build_results(records, sources, list(features.columns),
                         features.to_numpy(dtype=np.float64), scores, threshold, explanations,
                         MODEL, SCORED_AT)


def cpu_us_per_session(fn, n: int, repeat: int) -> float:
    fn()  # warm
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        runs.append(time.process_time() - start)
    return statistics.median(runs) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    batch = scored_batch(args.sessions)
    n = args.sessions
    v1, v2 = encode_v1(*batch), encode_v2(*batch)
    assert sorted(r.session_id for _, b in v1 for r in parse_score_results(b).results) == \
        sorted(r.session_id for _, b in v2 for r in parse_score_results(b).results)
    pressure = Path("/proc/pressure/cpu")
    print(f"batch of {n} sessions, {len(batch[5])} anomalies, {batch[2].shape[1]} features")
    print(f"cpu pressure before: {pressure.read_text().splitlines()[0] if pressure.exists() else '?'}")
    for name, fn, out in (("v1 encode", lambda: encode_v1(*batch), v1),
                          ("v2 encode", lambda: encode_v2(*batch), v2)):
        size = sum(len(body) for _, body in out)
        print(f"{name}: {cpu_us_per_session(fn, n, args.repeat):6.2f} us/session, "
              f"{len(out)} messages, {size / n:.0f} bytes/session")
    for name, out in (("v1 parse", v1), ("v2 parse", v2)):
        us = cpu_us_per_session(lambda out=out: [parse_score_results(b) for _, b in out], n,
                                max(3, args.repeat // 20))
        print(f"{name}: {us:6.2f} us/session (consumer side)")
    print(f"cpu pressure after: {pressure.read_text().splitlines()[0] if pressure.exists() else '?'}")


if __name__ == "__main__":
    main()
