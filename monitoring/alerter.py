"""The alerting consumer: one explained email per station per cooldown, none lost.

Queue `settings.alerts_queue` (default `alerts`) is bound to `score.*.anomaly`.
For each anomaly:

1. a poison message goes to `alerts.dlq` (and the store), then is acked;
2. an alert already recorded for (sessionID, model version) is a redelivery:
   finished ones are acked, unfinished ones are delivered again;
3. a station whose last delivered alert is younger than `alert_cooldown_s` gets
   a `suppressed` alert (shown on the dashboard, not emailed);
4. otherwise the email is sent, retried with exponential backoff while SMTP is
   down. The message is acked only after delivery; after `alert_max_attempts`
   failures it goes to `alerts.dlq` and the alert is `dead_lettered`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from monitoring.rabbit import TRANSIENT_ERRORS, QueueConsumer
from pipelines.contracts.score_result import InvalidScoreResult, parse_score_result
from pipelines.retry import BROKER_RECONNECT, RetryPolicy
from pipelines.scores.alerting import (
    SeverityPolicy,
    alert_subject,
    compose_email,
    in_cooldown,
    severity,
    webhook_payload,
)
from pipelines.scores.notify import DeliveryError, SmtpConfig, post_webhook, send_email
from pipelines.scores.store import MonitoringStore
from pipelines.settings import Settings

log = logging.getLogger(__name__)

FINISHED = ("sent", "suppressed", "dead_lettered")


def smtp_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(host=settings.smtp_host, port=settings.smtp_port,
                      starttls=settings.smtp_starttls, user=settings.smtp_user,
                      password=settings.smtp_password.get_secret_value(),
                      timeout_s=settings.smtp_timeout_s)


def dashboard_url(settings: Settings) -> str:
    return f"http://{settings.dashboard_host}:{settings.dashboard_port}/"


class AlertConsumer:
    """Consumes anomalies and turns them into de-duplicated, delivered alerts."""

    def __init__(self, settings: Settings, store: MonitoringStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.smtp = smtp_config(settings)
        self.severity_policy = SeverityPolicy(settings.alert_major_margin,
                                              settings.alert_critical_margin)
        self.delivery_retry = RetryPolicy(initial_s=settings.alert_retry_base_s,
                                          max_s=settings.alert_retry_max_s)
        self.rabbit = QueueConsumer(settings, settings.alerts_queue, "score.*.anomaly",
                                    prefetch=20)
        self.outcomes: Counter[str] = Counter()

    def handle(self, body: bytes, routing_key: str, stop: threading.Event) -> str | None:
        """Process one message. Returns its outcome, or None if `stop` interrupted a retry
        (the message must then stay unacked)."""
        try:
            result = parse_score_result(body)
        except InvalidScoreResult as exc:
            self.rabbit.dead_letter(body, str(exc), routing_key)
            self.store.record_dead_letters(self.settings.alerts_queue, [(str(exc), body)])
            return "poison"
        if not result.is_anomaly:
            return "not_anomalous"
        alert = self.store.get_alert(result.session_id, result.model_version)
        if alert is not None and alert["state"] in FINISHED:
            return "redelivered"
        now = self.clock()
        level = severity(result.score, result.threshold, self.severity_policy)
        if alert is None:
            quiet = in_cooldown(self.store.last_sent_ts(result.station_id), now,
                                self.settings.alert_cooldown_s)
            alert = self.store.create_alert(result, level, "suppressed" if quiet else "pending",
                                            alert_subject(result, level), now=now)
            if quiet:
                return "suppressed"
        message = compose_email(result, level, self.settings.alert_sender,
                                self.settings.alert_recipients, dashboard_url(self.settings))
        attempts = alert["attempts"]
        while True:
            attempts += 1
            try:
                send_email(self.smtp, message)
            except DeliveryError as exc:
                self.store.update_alert(alert["id"], state="retrying", attempts=attempts,
                                        last_error=str(exc))
                if attempts >= self.settings.alert_max_attempts:
                    self.rabbit.dead_letter(body, str(exc), routing_key, attempts=attempts)
                    self.store.update_alert(alert["id"], state="dead_lettered")
                    log.error("alert for %s dead-lettered after %d attempts: %s",
                              result.station_id, attempts, exc)
                    return "dead_lettered"
                delay = self.delivery_retry.delay(attempts - 1)
                log.warning("alert for %s not delivered (attempt %d), retry in %.1fs: %s",
                            result.station_id, attempts, delay, exc)
                if not self.rabbit.sleep(delay, stop):
                    return None
                continue
            break
        self.store.update_alert(alert["id"], state="sent", attempts=attempts,
                                delivered_ts=self.clock(), last_error=None,
                                webhook_state=self._webhook(result, level))
        log.info("alert emailed: %s", alert_subject(result, level))
        return "sent"

    def _webhook(self, result, level) -> str | None:
        url = self.settings.alert_webhook_url
        if not url:
            return None
        try:
            post_webhook(url, webhook_payload(result, level, dashboard_url(self.settings)))
        except DeliveryError as exc:  # optional channel: recorded, never blocks the email
            log.warning("webhook failed: %s", exc)
            return "failed"
        return "sent"

    def run(self, stop: threading.Event, max_runtime_s: float | None = None,
            idle_exit_s: float | None = None) -> Counter[str]:
        """Consume until `stop`, the runtime ends, or (if given) the queue is idle that long."""
        started = time.monotonic()
        failures = 0

        def finished() -> bool:
            return stop.is_set() or (max_runtime_s is not None
                                     and time.monotonic() - started >= max_runtime_s)

        while not finished():
            idle = 0.0
            try:
                for method, _props, body in self.rabbit.messages(0.2):
                    if method is None:
                        idle += 0.2
                        if finished() or (idle_exit_s is not None and idle >= idle_exit_s):
                            break
                        continue
                    idle = 0.0
                    outcome = self.handle(body, method.routing_key, stop)
                    if outcome is None:
                        break
                    self.rabbit.channel.basic_ack(method.delivery_tag)
                    self.outcomes[outcome] += 1
                    if finished():
                        break
                self.rabbit.stop_consuming()
                failures = 0
                if idle_exit_s is not None and idle >= idle_exit_s:
                    break
            except (*TRANSIENT_ERRORS, OperationalError) as exc:
                delay = BROKER_RECONNECT.delay(failures)
                failures += 1
                log.warning("alerting consumer: %s; retrying in %.0fs", exc, delay)
                self.rabbit.close()
                self.rabbit.sleep(delay, stop)
        self.rabbit.close()
        return self.outcomes
