"""`python -m telemetry`: run the telemetry processor with the settings from the environment."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from pipelines.settings import load_settings
from pipelines.telemetry.detectors import DEFAULT_POLICY
from telemetry.processor import ProcessorOptions
from telemetry.run import configure_logging, run_processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m telemetry",
        description="Telemetry processor: Kafka OCPP telemetry -> live detectors -> RabbitMQ "
                    "live alerts and connector status, finished sessions -> Kafka (same as "
                    "`evguard telemetry`). Configured by EVGUARD_* variables.")
    parser.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                        help="stop after this long without messages (default: until SIGTERM)")
    parser.add_argument("--batch-size", type=int, default=2000, help="max events per batch")
    parser.add_argument("--tick", type=float, default=1.0, metavar="SECONDS",
                        help="how often connectors are checked for silence")
    parser.add_argument("--samples", type=int, default=DEFAULT_POLICY.samples,
                        help="telltale samples before no_current, overcurrent and "
                             "overtemperature open")
    args = parser.parse_args(argv)
    configure_logging()
    options = ProcessorOptions(batch_size=args.batch_size, tick_s=args.tick,
                               policy=replace(DEFAULT_POLICY, samples=args.samples))
    outcome = run_processor(load_settings(), options, idle_exit_s=args.idle_exit)
    if outcome.code:
        logging.getLogger("evguard.telemetry").error("%s", outcome.message)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
