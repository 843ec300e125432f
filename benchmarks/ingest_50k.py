"""Ingest time for 50,000 synthetic sessions, per step, plus the re-run and serving featurisation.

    .venv/bin/python benchmarks/ingest_50k.py [--sessions 50000] [--anomaly-rate 0.02]

Runs `pipelines.data.ingest.run_ingest` on a fresh temporary data dir (the Great
Expectations import, ~5-10 s once per process, is measured apart) and prints a
markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--anomaly-rate", type=float, default=0.02)
    args = parser.parse_args()

    started = time.perf_counter()
    import great_expectations  # noqa: F401  (import cost measured on its own)

    gx_import_s = time.perf_counter() - started

    from pipelines.data.features import feature_matrix
    from pipelines.data.ingest import SynthSource, run_ingest
    from pipelines.data.synth import generate_sessions
    from pipelines.settings import Settings

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp) / "data",
                            state_dir=Path(tmp) / "state")
        marks: list[tuple[str, float]] = []
        t0 = time.perf_counter()
        report = run_ingest(settings, SynthSource(args.sessions, args.seed, args.anomaly_rate),
                            progress=lambda step, done, total: marks.append(
                                (step, time.perf_counter())))
        total = time.perf_counter() - t0
        previous = t0
        for step, at in marks:
            rows.append((f"ingest step: {step}", at - previous))
            previous = at
        rows.append((f"**ingest {args.sessions:,} sessions, end to end**", total))
        t1 = time.perf_counter()
        again = run_ingest(settings, SynthSource(args.sessions, args.seed, args.anomaly_rate))
        rows.append(("re-run on the same input (adds nothing)", time.perf_counter() - t1))
        assert again.added == 0

    batch = generate_sessions(500, seed=2)[0]
    feature_matrix(batch)
    timings = []
    for _ in range(50):
        t = time.perf_counter()
        feature_matrix(batch)
        timings.append(time.perf_counter() - t)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"sessions {args.sessions:,}, anomaly rate {args.anomaly_rate}: added {report.added:,}, "
          f"quarantined {report.quarantined:,}\n")
    print("| measurement | seconds |\n|---|---:|")
    print(f"| Great Expectations import (once per process) | {gx_import_s:.2f} |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| feature_matrix, micro-batch of 500 (median of 50) | "
          f"{statistics.median(timings) * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
