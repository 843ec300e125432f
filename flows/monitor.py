"""The monitoring deployment: store every score, judge each window, retrain on drift.

Long-running by design: the dashboard reads the store, so results must be
stored as they arrive, not every few minutes. Each window publishes its health
as a Prefect artifact (key `monitoring-health`, versioned per window) and may
start the training deployment. `once=True` drains what is queued, judges one
window and stops, for a scheduled-drain set-up or a quick check.
"""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from monitoring.monitor import MonitoringConsumer
from monitoring.triggers import ChampionReference, prefect_launcher
from pipelines.scores.store import MonitoringStore
from pipelines.scores.window_report import drift_rows, report_markdown
from pipelines.settings import load_settings


class MonitorParams(BaseModel):
    once: bool = Field(False, description="Drain what is queued, judge one window, then stop")
    max_runtime_minutes: float | None = Field(
        None, gt=0, description="Stop after this long; empty = run until cancelled")
    window_seconds: int | None = Field(
        None, ge=10, description="Window length; empty = EVGUARD_MONITOR_WINDOW_S")
    trigger_retraining: bool = Field(True, description="Start training when thresholds are crossed")


@task(name="publish-window-health", cache_policy=NO_CACHE)
def publish_health(report: dict) -> None:
    create_markdown_artifact(report_markdown(report), key="monitoring-health",
                             description="Volume, anomaly rate, quantiles, drift, retraining")
    rows = drift_rows(report)
    if rows:
        create_table_artifact(rows, key="monitoring-drift",
                              description="PSI and KS per feature and score vs the champion")


@task(name="drain-monitoring-queue", cache_policy=NO_CACHE)
def drain(consumer: MonitoringConsumer) -> dict:
    return consumer.drain(idle_s=1.0).__dict__


@task(name="evaluate-window", cache_policy=NO_CACHE)
def evaluate(consumer: MonitoringConsumer) -> dict:
    return consumer.evaluate_window()


@flow(name="monitor_flow", description="Store scores, judge windows, trigger retraining")
def monitor_flow(params: MonitorParams = MonitorParams()) -> dict:  # noqa: B008
    """Consume the monitoring queue; returns the drain counts and the last window report."""
    overrides = {"monitor_window_s": params.window_seconds} if params.window_seconds else {}
    settings = load_settings(**overrides)
    logger = get_run_logger()
    launcher = prefect_launcher(settings.retrain_deployment) if params.trigger_retraining else None
    store = MonitoringStore(settings.monitoring_db)
    consumer = MonitoringConsumer(settings, store, reference=ChampionReference(settings),
                                  launcher=launcher)
    last: dict = {}
    try:
        if params.once:
            stats = drain(consumer)
            last = evaluate(consumer)
            publish_health(last)
        else:
            def on_report(report: dict) -> None:
                last.clear()
                last.update(report)
                publish_health(report)

            runtime = params.max_runtime_minutes * 60 if params.max_runtime_minutes else None
            stats = consumer.run(threading.Event(), max_runtime_s=runtime,
                                 on_report=on_report).__dict__
    finally:
        consumer.close()
        store.close()
    logger.info("monitoring: %s; last window: %s sessions, retraining %s", stats,
                last.get("volume"), (last.get("retrain") or {}).get("state"))
    return {"stats": stats, "report": last}
