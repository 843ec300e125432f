"""The alerting deployment: a long-running consumer of anomalies that emails, de-duplicated.

It runs until cancelled (or `max_runtime_minutes`). Cancelling is safe at any
moment: a message is acked only after its email was delivered, so an alert in
flight is delivered by the next run.
"""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from monitoring.alerter import AlertConsumer
from pipelines.scores.store import MonitoringStore
from pipelines.settings import load_settings


class AlertParams(BaseModel):
    max_runtime_minutes: float | None = Field(
        None, gt=0, description="Stop after this long; empty = run until cancelled")
    stop_when_idle_seconds: float | None = Field(
        None, gt=0, description="Stop once the queue has been empty this long")


@flow(name="alert_flow", description="Email de-duplicated, explained alerts per station")
def alert_flow(params: AlertParams = AlertParams()) -> dict[str, int]:  # noqa: B008
    """Consume the alerts queue; returns how many messages ended in each outcome."""
    settings = load_settings()
    logger = get_run_logger()
    store = MonitoringStore(settings.monitoring_db)
    consumer = AlertConsumer(settings, store)
    logger.info("alerting on %s -> %s via smtp %s:%s (cooldown %ss)", settings.alerts_queue,
                settings.alert_recipients, settings.smtp_host, settings.smtp_port,
                settings.alert_cooldown_s)
    runtime = params.max_runtime_minutes * 60 if params.max_runtime_minutes else None
    try:
        outcomes = consumer.run(threading.Event(), max_runtime_s=runtime,
                                idle_exit_s=params.stop_when_idle_seconds)
    finally:
        store.close()
    logger.info("alerting finished: %s", dict(outcomes))
    return dict(outcomes)
