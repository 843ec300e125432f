"""Evaluation on the real ACN exports: runs `evguard evaluate` and prints the markdown for the docs.

    .venv/bin/python benchmarks/evaluate_acn.py [--acn ../shared/acn] [--out docs/evaluation.json]

The benchmark is the CLI command itself, run as a user would (so the command
printed is exactly what reproduces the figures). It writes the JSON report
and the PR-curve PNG, then prints the tables for docs/evaluation.md and the
"Evaluation on real ACN data" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the default grid plus larger samples per tree: with 256/512 rows per tree no candidate
# flags 90% of the impossible-power probes when caltech alone trains (docs/evaluation.md)
GRID = ["--max-samples", "256,512,1024,2048"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acn", default=str(ROOT.parent / "shared" / "acn"))
    parser.add_argument("--out", default="docs/evaluation.json")
    parser.add_argument("--rate", default="0.03")
    parser.add_argument("--seed", default="1")
    args = parser.parse_args()

    files = sorted(os.path.relpath(p, ROOT) for p in Path(args.acn).resolve().glob("*.json"))
    if not files:
        sys.exit(f"no ACN export files in {args.acn}")
    evguard = str(Path(sys.executable).with_name("evguard"))
    argv = [evguard, "evaluate", "--acn", *files, "--rate", args.rate, "--seed", args.seed,
            "--train-site", "caltech", "--score-site", "jpl", *GRID, "--out", args.out]
    started = time.perf_counter()
    code = subprocess.call(argv, cwd=ROOT)
    wall = time.perf_counter() - started
    if code not in (0, 1):
        sys.exit(code)
    from evaluation.report import markdown_tables

    report = json.loads((ROOT / args.out).read_text())
    print("\n" + "-" * 72)
    print(f"command: `.venv/bin/{report['command']}`\n")
    print(f"wall time {wall:.0f} s on {os.cpu_count()} cores ({platform.processor() or '?'}), "
          f"{report['sessions']:,} sessions, {report['injected']} injected "
          f"({report['rate']:.0%}, seed {report['seed']})\n")
    print(markdown_tables(report))
    for scenario in report["scenarios"].values():
        model = scenario["model"]
        print(f"- {scenario['title']}: trained on {scenario['train']['training_rows']:,} "
              f"validated sessions ({scenario['train']['quarantined_by_ingest']} quarantined), "
              f"model {model['candidate']} ({model['decision']}), tuning "
              f"{model['tuning_seconds']:.0f} s; baseline {scenario['baseline']['params']}")
    for reason in report["failed"].values():
        print(f"- FAILED {reason}")
    sys.exit(code)


if __name__ == "__main__":
    main()
