"""`python -m serving`: run the scoring worker with the settings from the environment."""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.settings import load_settings
from serving.run import configure_logging, run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Scoring worker: Kafka -> champion model -> RabbitMQ (same as `evguard serve`). "
                    "Configured by EVGUARD_* variables; see docs/serving.md.")
    parser.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                        help="stop after this long without messages (default: run until SIGTERM)")
    parser.add_argument("--quiet-batches", action="store_true",
                        help="no per-batch log lines")
    args = parser.parse_args(argv)
    configure_logging(batches=not args.quiet_batches)
    outcome = run_worker(load_settings(), idle_exit_s=args.idle_exit)
    if outcome.code:
        logging.getLogger("evguard.serving").error("%s", outcome.message)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
