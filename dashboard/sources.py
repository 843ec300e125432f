"""What the dashboard shows besides the store: worker metrics and the champion model.

Both are fetched off the request path and cached, so a slow or absent worker
or MLflow never slows a page: the worker is scraped with a short timeout, the
champion is refreshed by a background thread (importing MLflow takes seconds).
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pipelines.contracts.dates import iso_to_epoch
from pipelines.models import registry
from pipelines.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "evguard_serving_"


def metrics_url(settings: Settings) -> str:
    return settings.worker_metrics_url or f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"


def parse_worker_metrics(text: str) -> dict:
    """The figures the dashboard shows, from the worker's Prometheus text (pure)."""
    totals: dict[str, float] = {}
    lag = 0.0
    model = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix(PREFIX)
            if name.endswith("_total"):
                key = name.removesuffix("_total")
                totals[key] = totals.get(key, 0.0) + sample.value
            elif name == "consumer_lag":
                lag += sample.value
            elif name == "model_info" and sample.value == 1:
                model = sample.labels.get("version")
            elif name in ("paused", "rabbitmq_connected", "inflight_batches"):
                totals[name] = sample.value
    return {"consumed": totals.get("consumed"), "scored": totals.get("scored"),
            "anomalies": totals.get("anomalies"), "dead_lettered": totals.get("dead_lettered"),
            "published": totals.get("published"), "publish_retries": totals.get("publish_retries"),
            "paused": totals.get("paused"), "rabbitmq_connected": totals.get("rabbitmq_connected"),
            "lag": lag, "model_version": model}


class WorkerStatus:
    """Scrapes the worker's /metrics at most every `min_interval_s`; throughput from two scrapes."""

    def __init__(self, settings: Settings, min_interval_s: float = 2.0) -> None:
        self.url = metrics_url(settings)
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last: dict = {"state": "unknown", "url": self.url}
        self._at = 0.0
        self._prev: tuple[float, float] | None = None  # (time, scored)

    def snapshot(self) -> dict:
        with self._lock:
            if time.monotonic() - self._at < self.min_interval_s:
                return self._last
            self._at = time.monotonic()
            self._last = self._scrape()
            return self._last

    def _scrape(self) -> dict:
        try:
            resp = httpx.get(self.url, timeout=1.0)
            resp.raise_for_status()
            figures = parse_worker_metrics(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            self._prev = None
            return {"state": "unreachable", "url": self.url, "error": str(exc)[:200]}
        now, scored = time.monotonic(), figures.get("scored")
        rate = None
        if scored is not None and self._prev is not None and now > self._prev[0]:
            rate = max(0.0, (scored - self._prev[1]) / (now - self._prev[0]))
        if scored is not None:
            self._prev = (now, scored)
        return {"state": "up", "url": self.url, "throughput": rate, **figures}


def champion_summary(settings: Settings) -> dict | None:
    """Version, metrics and promotion of `@champion` from MLflow, or None when there is none.

    Raises:
        RegistryUnavailable: MLflow cannot be read (the dashboard says so, not "no champion").
    """
    from mlflow.exceptions import MlflowException  # MLflow takes seconds: refreshed off-thread

    client = registry.mlflow_client(settings)
    version = registry.find_version(client, settings.model_name, registry.CHAMPION)
    if version is None:
        return None
    tags = dict(version.tags or {})
    metrics = {}
    if version.run_id:
        try:
            metrics = dict(client.get_run(version.run_id).data.metrics)
        except MlflowException as exc:
            log.warning("champion run %s unreadable: %s", version.run_id, exc)
    promoted = tags.get("promoted_at")
    return {
        "name": settings.model_name, "version": str(version.version),
        "registered_ts": version.creation_timestamp / 1000,
        "promoted_ts": (iso_to_epoch(promoted) if promoted
                        else version.last_updated_timestamp / 1000),
        "decision_reason": tags.get("decision_reason"), "criterion": tags.get("criterion"),
        "metrics": {k: metrics[k] for k in sorted(metrics)[:16]},
        "threshold": threshold_summary(tags, metrics.get("threshold")),
    }


def threshold_summary(tags: dict, trained: float | None) -> dict:
    """The threshold the workers serve: the trained one, or the one monitoring re-calibrated
    from recent scores (docs/models.md, "Threshold re-calibration"), with its evidence."""
    calibrated = registry.calibrated_threshold(tags)
    return {"trained": trained, "served": trained if calibrated is None else calibrated,
            "calibrated_at": tags.get(registry.CALIBRATED_AT) if calibrated is not None else None,
            "window": tags.get(f"{registry.CALIBRATION_PREFIX}window"),
            "reason": tags.get(f"{registry.CALIBRATION_PREFIX}reason")}


class ChampionCache:
    """The champion summary, refreshed every `every_s` by a daemon thread."""

    def __init__(self, settings: Settings, every_s: float = 30.0) -> None:
        self.settings = settings
        self.every_s = every_s
        self._state: dict = {"state": "loading"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="champion-refresh", daemon=True)

    def start(self) -> ChampionCache:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict:
        return self._state

    def refresh(self) -> dict:
        if not registry.store_exists(self.settings):
            self._state = {"state": "none", "detail": "no MLflow store yet: train a model first"}
            return self._state
        try:
            found = champion_summary(self.settings)
        except Exception as exc:  # noqa: BLE001 (registry missing or MLflow down: say so, retry)
            self._state = {"state": "unavailable", "detail": str(exc)[:300]}
        else:
            self._state = ({"state": "ok", **found} if found else
                           {"state": "none", "detail": "no @champion alias yet"})
        return self._state

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.every_s)
