"""The monitoring consumer: store every score and station alert, then judge each window.

Queue `settings.monitoring_queue` (default `monitoring`) is bound to `score.#`
(score results, contract §5), `station.#` (station alert events, §5a), `live.#`
(live alert events, §5b) and `connector.#` (batches of connector snapshots, §5c).
Messages are stored in micro-batches, one transaction per table, and acked (all
at once) only after the commits; a redelivery stores nothing twice because the
store ignores a second (sessionID, model version) and a second (alert_id,
status), and keeps a connector's snapshot only when it is newer than the stored
one. A micro-batch is bounded by results, not messages: a batch of score results
(`evguard.scores/2`) counts as its results. Poison messages go to `monitoring.dlq`
with their error, and a readable copy to the store; a batch of score results with
some bad elements has its good results stored and goes there too, whole, its
header `bad_elements` listing `index: reason` of the others. Version-1 results
(one per message) are still accepted.

Every window (`settings.monitor_window_s`) the consumer aggregates the stored
results, measures drift against the champion's reference, records the report
and starts the retraining deployment when a threshold is crossed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from sqlalchemy.exc import OperationalError

from monitoring.rabbit import TRANSIENT_ERRORS, ConsumerHealth, QueueConsumer
from pipelines.contracts.connector_status import (
    ConnectorStatusMessage,
    InvalidConnectorStatus,
    parse_connector_statuses,
)
from pipelines.contracts.dead_letters import bad_element_headers
from pipelines.contracts.live_alert import InvalidLiveAlert, LiveAlertMessage, parse_live_alert
from pipelines.contracts.score_result import InvalidScoreResult, ScoreResult, parse_score_results
from pipelines.contracts.station_alert import (
    InvalidStationAlert,
    StationAlertMessage,
    parse_station_alert,
)
from pipelines.retry import BROKER_RECONNECT
from pipelines.scores.drift import drift_report, window_samples
from pipelines.scores.retraining import RetrainPolicy, cooldown_remaining, retrain_reason
from pipelines.scores.store import MonitoringStore
from pipelines.scores.window_report import summarize_window
from pipelines.settings import Settings

log = logging.getLogger(__name__)

ReferenceSource = Callable[[], "dict[str, list[float]] | None"]
RetrainLauncher = Callable[[str], "str | None"]  # reason -> flow run id

BINDINGS = ("score.#", "station.#", "live.#", "connector.#")
STATION_PREFIX = "station."
LIVE_PREFIX = "live."
CONNECTOR_PREFIX = "connector."
POISON = (InvalidScoreResult, InvalidStationAlert, InvalidLiveAlert, InvalidConnectorStatus)


MAX_PREFETCH_MESSAGES = 64  # unacked messages held at once (~32 MB of result batches)


@dataclass
class DrainStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0  # messages sent to the DLQ, wholly bad or with some bad results
    invalid_results: int = 0  # bad elements of result batches (their good ones are stored)
    batches: int = 0
    station_alerts: int = 0
    station_duplicates: int = 0
    live_alerts: int = 0
    live_duplicates: int = 0
    connector_messages: int = 0  # batches of snapshots received (each holds many)
    connector_snapshots: int = 0  # applied
    connector_stale: int = 0  # redelivered, older than the stored one, or a newer one in
    # the same batch: not applied


@dataclass
class _Pending:
    tags: list[int] = field(default_factory=list)
    results: list[ScoreResult] = field(default_factory=list)
    station_alerts: list[StationAlertMessage] = field(default_factory=list)
    live_alerts: list[LiveAlertMessage] = field(default_factory=list)
    snapshots: list[ConnectorStatusMessage] = field(default_factory=list)
    # error, body, routing key, extra dead-letter headers
    poison: list[tuple[str, bytes, str, dict]] = field(default_factory=list)
    since: float = 0.0
    size: int = 0  # messages, with a batch of results or snapshots counted as what it holds


def retrain_policy(settings: Settings) -> RetrainPolicy:
    return RetrainPolicy(psi_threshold=settings.drift_psi_threshold,
                         anomaly_rate=settings.retrain_anomaly_rate,
                         min_volume=settings.monitor_min_volume,
                         cooldown_s=settings.retrain_cooldown_s)


class MonitoringConsumer:
    """Drains the monitoring queue into the store and evaluates windows.

    Args:
        settings: queue, exchange, window and threshold settings.
        store: where results, reports and retraining triggers are written.
        reference: returns the champion's reference sample (or None: no drift check).
        launcher: starts the retraining deployment with a reason; None disables it.
        batch_size: most messages per transaction, a batch of results or of connector
            snapshots counted as what it holds (one such message may overshoot it).
        max_wait_s: longest a received message waits for its batch to fill.
    """

    def __init__(self, settings: Settings, store: MonitoringStore,
                 reference: ReferenceSource = lambda: None,
                 launcher: RetrainLauncher | None = None,
                 batch_size: int = 500, max_wait_s: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.reference = reference
        self.launcher = launcher
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.policy = retrain_policy(settings)
        # prefetch counts messages, and one message may carry a micro-batch of results
        # (hundreds of KB): a bound in messages keeps a backlog from filling this process
        self.rabbit = QueueConsumer(settings, settings.monitoring_queue, BINDINGS,
                                    prefetch=min(batch_size * 2, MAX_PREFETCH_MESSAGES))
        self.stats = DrainStats()
        self.health = ConsumerHealth(self.rabbit, "monitor", lambda: asdict(self.stats))
        self.metrics_port: int | None = None  # of /metrics and /healthz, once run() serves them

    def close(self) -> None:
        self.rabbit.close()

    # ---- store -----------------------------------------------------------
    def drain(self, until: Callable[[], bool] = lambda: False,
              idle_s: float | None = 1.0) -> DrainStats:
        """Store what arrives until `until()` is true or nothing came for `idle_s` seconds.

        Raises the broker's or database's error after closing the channel, so every
        unacked message is redelivered.
        """
        pending, idle, tick = _Pending(), 0.0, min(0.05, self.max_wait_s)  # idle = flush now
        try:
            for method, _props, body in self.rabbit.messages(tick):
                if method is None:
                    self._flush(pending)
                    pending, idle = _Pending(), idle + tick
                    if until() or (idle_s is not None and idle >= idle_s):
                        break
                    continue
                idle = 0.0
                if not pending.tags:
                    pending.since = time.monotonic()
                self._add(pending, method.delivery_tag, body, method.routing_key)
                if (pending.size >= self.batch_size
                        or time.monotonic() - pending.since >= self.max_wait_s):
                    self._flush(pending)
                    pending = _Pending()
                    if until():
                        break
            self._flush(pending)
            self.rabbit.stop_consuming()
        except Exception:
            self.rabbit.close()
            raise
        return self.stats

    def _add(self, pending: _Pending, tag: int, body: bytes, key: str) -> None:
        pending.tags.append(tag)
        pending.size += 1
        self.stats.received += 1
        try:
            if key.startswith(STATION_PREFIX):
                pending.station_alerts.append(parse_station_alert(body))
            elif key.startswith(LIVE_PREFIX):
                pending.live_alerts.append(parse_live_alert(body))
            elif key.startswith(CONNECTOR_PREFIX):
                self.stats.connector_messages += 1
                snapshots = parse_connector_statuses(body)  # a bad element: all is poison
                pending.snapshots.extend(snapshots)
                pending.size += len(snapshots) - 1
            else:
                found = parse_score_results(body)
                pending.results.extend(found.results)
                pending.size += max(len(found.results), 1) - 1
                if found.errors:
                    error, headers = bad_element_headers(
                        found.errors, len(found.results) + len(found.errors))
                    pending.poison.append((error, body, key, headers))
                    self.stats.invalid_results += len(found.errors)
        except POISON as exc:
            pending.poison.append((str(exc), body, key, {}))

    def _flush(self, pending: _Pending) -> None:
        if not pending.tags:
            return
        new = self.store.save_scores(pending.results, now=self.clock())  # commit first
        new_station = self.store.save_station_alerts(pending.station_alerts, now=self.clock())
        new_live = self.store.save_live_alerts(pending.live_alerts, now=self.clock())
        applied = self.store.save_connector_statuses(pending.snapshots, now=self.clock())
        for error, body, key, headers in pending.poison:
            self.rabbit.dead_letter(body, error, key, **headers)
        self.store.record_dead_letters(self.settings.monitoring_queue,
                                       [(e, b) for e, b, _, _ in pending.poison])
        self.rabbit.channel.basic_ack(max(pending.tags), multiple=True)
        self.stats.stored += new
        self.stats.duplicates += len(pending.results) - new
        self.stats.station_alerts += new_station
        self.stats.station_duplicates += len(pending.station_alerts) - new_station
        self.stats.live_alerts += new_live
        self.stats.live_duplicates += len(pending.live_alerts) - new_live
        self.stats.connector_snapshots += applied
        self.stats.connector_stale += len(pending.snapshots) - applied
        self.stats.dead_lettered += len(pending.poison)
        self.stats.batches += 1
        if pending.poison:
            log.warning("dead-lettered %d poison message(s), first: %s",
                        len(pending.poison), pending.poison[0][0])

    # ---- judge a window ----------------------------------------------------
    def evaluate_window(self, now: float | None = None) -> dict:
        """Health, drift and the retraining decision of the window ending `now`; stored."""
        end = self.clock() if now is None else now
        start = end - self.settings.monitor_window_s
        rows = self.store.scores_between(start, end)
        summary = summarize_window(rows, start, end)
        reference = self._reference()
        drift = None
        if reference:
            drift = drift_report(reference, window_samples(rows), self.policy.psi_threshold,
                                 min_current=self.policy.min_volume,
                                 ignore=self.settings.drift_ignore_columns)
        report = summary.as_dict()
        report["drift"] = drift.as_dict() if drift else None
        report["retrain"] = self._maybe_retrain(retrain_reason(summary, drift, self.policy), end)
        self.store.save_window_report(report)
        log.info("window %d sessions, anomaly rate %s, drifted %s, retrain %s", summary.volume,
                 report["anomaly_rate"], [c.name for c in drift.drifted] if drift else "n/a",
                 report["retrain"]["state"])
        return report

    def _reference(self) -> dict | None:
        try:
            return self.reference()
        except Exception as exc:  # noqa: BLE001 (the registry being away must not stop monitoring)
            log.warning("no drift reference this window: %s", exc)
            return None

    def _maybe_retrain(self, reason: str | None, now: float) -> dict:
        if reason is None:
            return {"state": "not_needed", "reason": None}
        wait = cooldown_remaining(self.store.last_retrain_ts(), now, self.policy)
        if wait > 0:
            return {"state": "cooldown", "reason": reason, "retry_in_s": round(wait)}
        if self.launcher is None:
            return {"state": "disabled", "reason": reason}
        try:
            run_id = self.launcher(reason)
        except Exception as exc:  # noqa: BLE001 (Prefect down: record, retry next window)
            log.error("could not start retraining (%s): %s", reason, exc)
            self.store.record_retrain(reason, "failed", error=str(exc), now=now)
            return {"state": "failed", "reason": reason, "error": str(exc)}
        self.store.record_retrain(reason, "triggered", flow_run_id=run_id, now=now)
        log.info("retraining started, flow run %s: %s", run_id, reason)
        return {"state": "triggered", "reason": reason, "flow_run_id": run_id}

    # ---- long-running ---------------------------------------------------------
    def run(self, stop: threading.Event, max_runtime_s: float | None = None,
            on_report: Callable[[dict], None] = lambda report: None) -> DrainStats:
        """Store continuously and evaluate every window until `stop` or the runtime ends.

        A broker or database failure closes the channel (its messages are redelivered)
        and is retried with backoff. `/metrics` and `/healthz` are served meanwhile.
        """
        server = self.health.serve(self.settings.metrics_host, self.settings.monitor_metrics_port)
        self.metrics_port = server.port
        try:
            return self._run(stop, max_runtime_s, on_report)
        finally:
            server.stop()

    def _run(self, stop: threading.Event, max_runtime_s: float | None,
             on_report: Callable[[dict], None]) -> DrainStats:
        started = time.monotonic()
        window = self.settings.monitor_window_s
        next_window = started + window
        failures = 0

        def finished() -> bool:
            return stop.is_set() or (max_runtime_s is not None
                                     and time.monotonic() - started >= max_runtime_s)

        def window_due() -> bool:
            return finished() or time.monotonic() >= next_window

        while not finished():
            try:
                self.drain(until=window_due, idle_s=None)
                failures = 0
            except (*TRANSIENT_ERRORS, OperationalError) as exc:
                delay = BROKER_RECONNECT.delay(failures)
                failures += 1
                log.warning("monitoring consumer: %s; retrying in %.0fs", exc, delay)
                self.rabbit.sleep(delay, stop)
                continue
            if time.monotonic() >= next_window:
                next_window += window
                try:
                    on_report(self.evaluate_window())
                except Exception:  # a bad window must not stop storing
                    log.exception("window evaluation failed")
        self.close()
        return self.stats
