"""The serving deployment: the scoring worker as a long-running Prefect flow.

The flow runs the worker in its own main thread until the run is cancelled
(Prefect's SIGTERM makes the worker finish its batches, publish, commit and
close), until `max_runtime_minutes`, or until it has been idle for
`idle_exit_seconds`. More runs of this deployment (or `evguard serve`
processes) share the partitions of the consumer group.
"""

from __future__ import annotations

import threading
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pipelines.models.registry import champion_version
from pipelines.settings import load_settings
from serving.run import run_worker


class ServeParams(BaseModel):
    batch_size: int | None = Field(None, ge=1, le=100_000,
                                   description="Max messages per micro-batch; empty = setting")
    model_poll_seconds: float | None = Field(
        None, gt=0, description="Seconds between polls of the champion alias; empty = setting")
    idle_exit_seconds: float = Field(
        0.0, ge=0, description="Stop after this long without messages; 0 = run until cancelled")
    max_runtime_minutes: float | None = Field(
        None, gt=0, description="Stop after this long; empty = run until cancelled")


check_champion = task(champion_version, name="check-champion", cache_policy=NO_CACHE)


@task(name="publish-serving-summary", cache_policy=NO_CACHE)
def publish_summary(report: dict, version: str | None, message: str) -> None:
    rows = "\n".join(f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in report.items())
    create_markdown_artifact(
        f"## Serving run\n\nchampion at start: v{version}; {message}\n\n| counter | value |\n"
        f"|---|---|\n{rows}\n", key="serving-summary", description="Counts of one worker run")


@flow(name="serve_flow", description="Scoring worker: Kafka -> champion -> RabbitMQ")
def serve_flow(params: ServeParams = ServeParams()) -> dict:  # noqa: B008
    """Run the worker until cancelled; returns its counts."""
    overrides = {"serve_batch_size": params.batch_size,
                 "serve_model_poll_s": params.model_poll_seconds}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    logger = get_run_logger()
    version = check_champion(settings)
    logger.info("serving champion v%s from %s to exchange %s", version, settings.topic_sessions,
                settings.rabbitmq_exchange)
    stop = threading.Event()
    timer = None
    if params.max_runtime_minutes:
        timer = threading.Timer(params.max_runtime_minutes * 60, stop.set)
        timer.daemon = True
        timer.start()
    try:
        outcome = run_worker(settings, stop, idle_exit_s=params.idle_exit_seconds)
    finally:
        if timer is not None:
            timer.cancel()
    report = asdict(outcome.report)
    publish_summary(report, version, outcome.message)
    if outcome.code:
        raise RuntimeError(outcome.message)
    logger.info("worker stopped: %s", report)
    return report
