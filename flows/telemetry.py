"""The telemetry deployment: the telemetry processor as a long-running Prefect flow.

The flow runs the processor in its own main thread until the run is cancelled (Prefect's
SIGTERM makes it finish the batches in flight, publish, commit and close), until
`max_runtime_minutes`, or until it has been idle for `idle_exit_seconds`. More runs of this
deployment (or `evguard telemetry` processes) share the partitions of the consumer group;
each restores its connectors' state from the changelog.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, replace

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State
from pydantic import BaseModel, Field

from pipelines.settings import load_settings
from pipelines.telemetry.detectors import DEFAULT_POLICY
from telemetry.processor import DEFAULT_OPTIONS
from telemetry.run import run_processor


class TelemetryParams(BaseModel):
    batch_size: int | None = Field(None, ge=1, le=100_000,
                                   description="Max events per micro-batch; empty = 2000")
    status_interval_seconds: float | None = Field(
        None, ge=0, description="Least seconds between two snapshots of a charging connector; "
                                "empty = EVGUARD_TELEMETRY_STATUS_INTERVAL_S")
    tick_seconds: float = Field(1.0, ge=0.05,
                                description="Seconds between two checks for silent chargers")
    max_temperature_c: float | None = Field(
        None, description="overtemperature above this, °C; empty = the policy's (65)")
    idle_hours: float | None = Field(
        None, gt=0, description="never_unplugged this long after a connector last drew power; "
                                "empty = the policy's (18)")
    idle_exit_seconds: float = Field(
        0.0, ge=0, description="Stop after this long without messages; 0 = run until cancelled")
    max_runtime_minutes: float | None = Field(
        None, gt=0, description="Stop after this long; empty = run until cancelled")


@task(name="publish-telemetry-summary", cache_policy=NO_CACHE)
def publish_summary(report: dict, message: str) -> None:
    rows = "\n".join(f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in report.items())
    create_markdown_artifact(
        f"## Telemetry processor run\n\n{message}\n\n| counter | value |\n|---|---|\n{rows}\n",
        key="telemetry-summary", description="Counts of one telemetry processor run")


@flow(name="telemetry_flow",
      description="Telemetry processor: OCPP telemetry -> live alerts, connector status, sessions")
def telemetry_flow(params: TelemetryParams = TelemetryParams()) -> dict | State:  # noqa: B008
    """Run the processor until cancelled; returns its counts, as the data of a Cancelled
    state when a signal (a cancelled run) stopped it, so the run ends Cancelled rather than
    staying Cancelling."""
    overrides = {"telemetry_status_interval_s": params.status_interval_seconds}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    policy_changes = {"max_temperature_c": params.max_temperature_c,
                      "idle_hours": params.idle_hours}
    policy = replace(DEFAULT_POLICY, **{k: v for k, v in policy_changes.items() if v is not None})
    options = replace(DEFAULT_OPTIONS, tick_s=params.tick_seconds, policy=policy,
                      batch_size=params.batch_size or DEFAULT_OPTIONS.batch_size)
    logger = get_run_logger()
    logger.info("telemetry processor: %s -> live alerts on exchange %s, sessions to %s "
                "(group %s)", settings.topic_telemetry, settings.rabbitmq_exchange,
                settings.topic_sessions, settings.telemetry_group)
    stop, expired = threading.Event(), threading.Event()  # SIGTERM sets only `stop`

    def expire() -> None:
        expired.set()
        stop.set()

    timer = None
    if params.max_runtime_minutes:
        timer = threading.Timer(params.max_runtime_minutes * 60, expire)
        timer.daemon = True
        timer.start()
    try:
        outcome = run_processor(settings, options, stop, idle_exit_s=params.idle_exit_seconds)
    finally:
        if timer is not None:
            timer.cancel()
    report = asdict(outcome.report)
    publish_summary(report, outcome.message)
    if outcome.code:
        raise RuntimeError(outcome.message)
    logger.info("processor stopped: %s", report)
    if stop.is_set() and not expired.is_set():
        return Cancelled(message=f"processor {outcome.message} on a signal", data=report)
    return report
