"""The monitoring deployment: store every score, judge each window, retrain on drift,
re-calibrate the champion's threshold.

Long-running by design: the dashboard reads the store, so results must be
stored as they arrive, not every few minutes. Each window publishes its health
as a Prefect artifact (key `monitoring-health`, versioned per window) and may
start the training deployment. After each window the champion's threshold is
re-calibrated from its newest stored scores (`pipelines.scores.calibration`);
a new one is recorded on the model version in MLflow, which the worker's
champion watcher picks up, and each decision is a Prefect artifact (key
`threshold-calibration`). `once=True` drains what is queued, judges one window
and stops, for a scheduled-drain set-up or a quick check.
"""

from __future__ import annotations

import threading
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from monitoring.monitor import MonitoringConsumer
from monitoring.triggers import ChampionReference, prefect_launcher
from pipelines.models import registry
from pipelines.scores.calibration import (
    CalibrationPolicy,
    calibration_markdown,
    recalibrate,
    version_scores,
)
from pipelines.scores.store import MonitoringStore
from pipelines.scores.window_report import drift_rows, report_markdown
from pipelines.settings import Settings, load_settings


class MonitorParams(BaseModel):
    once: bool = Field(False, description="Drain what is queued, judge one window, then stop")
    max_runtime_minutes: float | None = Field(
        None, gt=0, description="Stop after this long; empty = run until cancelled")
    window_seconds: int | None = Field(
        None, ge=10, description="Window length; empty = EVGUARD_MONITOR_WINDOW_S")
    trigger_retraining: bool = Field(True, description="Start training when thresholds are crossed")
    recalibrate_threshold: bool | None = Field(
        None, description="Re-calibrate the champion's threshold after each window; "
                          "empty = EVGUARD_THRESHOLD_RECALIBRATION")


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


class LoadedChampion:
    """The champion loaded once per stamp (a load takes seconds; the stamp is a cheap poll)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stamp: str | None = None
        self.model: registry.ChampionModel | None = None

    def current(self) -> registry.ChampionModel | None:
        """The champion now, None when there is none.

        Raises:
            RegistryUnavailable: the registry cannot be read.
        """
        stamp = registry.champion_stamp(self.settings)
        if stamp is None:
            return None
        if stamp != self.stamp:
            self.model, self.stamp = registry.load_champion(self.settings), stamp
        return self.model


@task(name="recalibrate-threshold", cache_policy=NO_CACHE)
def recalibrate_threshold(settings: Settings, store: MonitoringStore,
                          loaded: LoadedChampion) -> dict:
    """Re-calibrate the champion's threshold from its newest stored scores; record a new one.

    Never raises: no champion or an unreachable registry is reported as `skipped`.
    """
    logger = get_run_logger()
    try:
        champion = loaded.current()
    except (registry.RegistryUnavailable, registry.NoChampionError) as exc:
        logger.warning("no threshold re-calibration this window: %s", exc)
        return {"decision": "skipped", "reason": str(exc)}
    if champion is None:
        return {"decision": "skipped", "reason": "no champion"}
    policy = CalibrationPolicy(alert_budget=champion.model.alert_budget,
                               min_tail=settings.recalibration_min_tail,
                               tolerance=settings.recalibration_tolerance,
                               max_factor=settings.recalibration_max_factor)
    rows = store.scores_between(0.0, time.time() + 1.0, limit=settings.recalibration_window)
    calibration = recalibrate(version_scores(rows, champion.version), champion.threshold, policy,
                              champion.reference.get("score"))
    out = {**calibration.as_dict(), "version": champion.version,
           "original_threshold": champion.original_threshold}
    if calibration.recalibrated:
        try:
            out["stamp"] = registry.record_calibration(settings, champion.version,
                                                       calibration.threshold,
                                                       calibration.evidence())
        except registry.RegistryUnavailable as exc:
            logger.warning("could not record the re-calibrated threshold: %s", exc)
            out.update(decision="kept", reason=f"not recorded: {exc}")
            return out
        logger.info("champion v%s threshold re-calibrated: %s", champion.version,
                    calibration.reason)
    create_markdown_artifact(calibration_markdown(calibration, champion.name, champion.version),
                             key="threshold-calibration",
                             description="The champion's threshold against its recent scores")
    return out


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
    calibrating = (settings.threshold_recalibration if params.recalibrate_threshold is None
                   else params.recalibrate_threshold)
    loaded = LoadedChampion(settings)
    last: dict = {}
    calibration: dict = {}
    try:
        if params.once:
            stats = drain(consumer)
            last = evaluate(consumer)
            publish_health(last)
            if calibrating:
                calibration = recalibrate_threshold(settings, store, loaded)
        else:
            def on_report(report: dict) -> None:
                last.clear()
                last.update(report)
                publish_health(report)
                if calibrating:
                    calibration.clear()
                    calibration.update(recalibrate_threshold(settings, store, loaded))

            runtime = params.max_runtime_minutes * 60 if params.max_runtime_minutes else None
            stats = consumer.run(threading.Event(), max_runtime_s=runtime,
                                 on_report=on_report).__dict__
    finally:
        consumer.close()
        store.close()
    logger.info("monitoring: %s; last window: %s sessions, retraining %s", stats,
                last.get("volume"), (last.get("retrain") or {}).get("state"))
    return {"stats": stats, "report": last, "calibration": calibration}
