"""The alerting consumer: one explained email per station per cooldown, none lost, with any
number of consumers on one queue.

Queue `settings.alerts_queue` (default `alerts`) is bound to `score.*.anomaly`
(anomalous sessions, contract §5), `station.*.*` (station alert events, §5a) and
`live.*.*` (live alert events, §5b). Anomalies come one micro-batch of a site per
message (`evguard.scores/2`), or one per message (version 1, still accepted during a
rolling upgrade); each is judged on its own, in order, and the message is acked only
when all of them are finished. For each anomaly:

1. a poison message goes to `alerts.dlq` (and the store), then is acked. In a batch,
   the bad elements send the batch there once, whole, with `bad_elements` listing
   `index: reason`, and the good ones are alerted;
2. an alert already recorded for (sessionID, model version) is a redelivery:
   finished ones are acked, unfinished ones are delivered again;
3. a station whose last delivered alert is younger than `alert_cooldown_s`, or whose
   cooldown another alert holds, gets a `suppressed` alert (shown on the dashboard, not
   emailed);
4. otherwise the email is sent, retried with exponential backoff while SMTP is
   down. The message is acked only after delivery; after `alert_max_attempts`
   failures it goes to `alerts.dlq` and the alert is `dead_lettered`.

For each station alert event (one notice per (alert_id, status) in the store):

- an open event is emailed once per episode: a redelivered or repeated open event
  finds its notice and sends nothing. A new episode of the same station and kind
  within `alert_cooldown_s` of the last emailed one (a flapping detector) is
  `suppressed`: stored and shown, not emailed;
- a closed event is emailed as a short "recovered" note when its opening was
  emailed, so whoever was told the station is broken is told it works again;
  otherwise (the opening was suppressed, dead-lettered or never seen) it is
  `recorded` without email: a recovery of something nobody was told about is noise.

For each live alert event (its episode is one row of `live_alerts`, which this
consumer writes too, so the email never waits for the monitoring consumer):

- an open event is emailed once per episode, with the delay since its first telltale
  sample arrived; the delivery time goes to `live_alerts.emailed_ts`. A new episode of
  the same connector and kind within `alert_cooldown_s` of the last emailed one is
  `suppressed`: stored and shown, not emailed;
- a closed event is not emailed (the dashboard shows it).

Delivery (SMTP retries, dead letter, webhook) is the same as for sessions.

Scaling out: nothing is kept in the process. Consumers share the store (SQLite locally,
PostgreSQL in docker-compose), and two things in it make them agree:

- a claim per alert (an anomaly; a station alert episode, so its recovery waits for its
  opening; a live alert episode), taken before the alert is judged and held while it is
  emailed. Taking it is one conditional upsert, so of two consumers holding copies of the
  same alert (a replaying worker publishes results twice) one works and the other waits,
  then finds it finished and acks its copy. The claim is a lease of `alert_claim_lease_s`,
  renewed before each SMTP retry and released when the alert is finished;
- a cooldown per station (anomalies), station and kind (station alerts) or connector and
  kind (live alerts), held by the alert that started it and taken with one conditional
  upsert, so two alerts judged at the same moment by two consumers cannot both be emailed.

A crash (SIGKILL, power loss) between claiming and sending loses nothing, because a message
is acked only after its alert is finished. RabbitMQ redelivers the unacked messages of a
dead consumer to a live one, which waits for the dead one's lease to run out, takes the
claim over and finds one of these:

- no alert, or one still `pending`/`retrying`: it judges (the cooldown it may have taken
  is taken again by the same alert) and sends. Nothing lost, nothing twice;
- a finished alert (`sent`, `suppressed`...): the crash came after the store was updated
  and before the ack. It acks, and sends nothing;
- the one window that cannot be closed: the SMTP server accepted the email, and the
  consumer died before it stored `sent` (a few milliseconds per email). That email is
  sent again, once, with the same `Message-ID` (derived from the alert), so mail clients
  that de-duplicate by Message-ID show it once.

A consumer whose lease ran out while it was still working (stalled longer than the lease)
puts its message back on the queue instead of acking it. Leases compare wall clocks of the
consumers' hosts, so the lease must be much longer than their clock skew and than one SMTP
attempt (`smtp_timeout_s`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

from sqlalchemy.exc import OperationalError

from monitoring.rabbit import TRANSIENT_ERRORS, ConsumerHealth, QueueConsumer
from pipelines.contracts.dead_letters import bad_element_headers
from pipelines.contracts.live_alert import InvalidLiveAlert, LiveAlertMessage, parse_live_alert
from pipelines.contracts.score_result import InvalidScoreResult, ScoreResult, parse_score_results
from pipelines.contracts.station_alert import (
    InvalidStationAlert,
    StationAlertMessage,
    parse_station_alert,
)
from pipelines.retry import BROKER_RECONNECT, RetryPolicy
from pipelines.scores.alerting import (
    SeverityPolicy,
    alert_subject,
    compose_email,
    compose_live_email,
    compose_station_email,
    in_cooldown,
    live_alert_subject,
    live_cooldown_key,
    live_webhook_payload,
    severity,
    station_alert_subject,
    station_webhook_payload,
    webhook_payload,
)
from pipelines.scores.notify import DeliveryError, SmtpConfig, post_webhook, send_email
from pipelines.scores.store import MonitoringStore
from pipelines.settings import Settings

log = logging.getLogger(__name__)

FINISHED = ("sent", "suppressed", "dead_lettered")
NOTICE_FINISHED = (*FINISHED, "recorded")
BINDINGS = ("score.*.anomaly", "station.*.*", "live.*.*")
STATION_PREFIX = "station."
LIVE_PREFIX = "live."
REQUEUE = "requeued"  # the outcome of a message whose alert another consumer took over
CLAIM_POLL_S = 0.25  # how often a claim held by another consumer is tried again


def smtp_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(host=settings.smtp_host, port=settings.smtp_port,
                      starttls=settings.smtp_starttls, user=settings.smtp_user,
                      password=settings.smtp_password.get_secret_value(),
                      timeout_s=settings.smtp_timeout_s)


def dashboard_url(settings: Settings) -> str:
    return f"http://{settings.dashboard_host}:{settings.dashboard_port}/"


def stations_url(settings: Settings) -> str:
    return f"{dashboard_url(settings)}stations"


def live_url(settings: Settings) -> str:
    return f"{dashboard_url(settings)}live"


def consumer_name() -> str:
    """This consumer's name in the claims it holds: host, PID and a random part (a restarted
    process must not inherit a lease of its previous life)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def stable_message_id(email_key: str) -> str:
    """The Message-ID of an alert's email: the same every time that email is sent, so a copy
    re-sent after a crash is recognisably the same message (pure)."""
    return f"<alert-{hashlib.sha256(email_key.encode()).hexdigest()[:32]}@evguard>"


def with_message_id(message: EmailMessage, email_key: str) -> EmailMessage:
    del message["Message-ID"]
    message["Message-ID"] = stable_message_id(email_key)
    return message


@dataclass(frozen=True)
class Claim:
    """This consumer's lease on one alert in the store (see `MonitoringStore.claim_alert`)."""

    store: MonitoringStore
    alert_key: str
    holder: str
    lease_s: float

    def take(self) -> bool:
        return self.store.claim_alert(self.alert_key, self.holder, time.time(), self.lease_s)

    def renew(self, extra_s: float = 0.0) -> bool:
        """Extend the lease by `extra_s` more than usual (a retry delay); False = it was lost."""
        return self.store.claim_alert(self.alert_key, self.holder, time.time(),
                                      self.lease_s + extra_s)

    def release(self) -> None:
        self.store.release_alert(self.alert_key, self.holder)


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
        self.rabbit = QueueConsumer(settings, settings.alerts_queue, BINDINGS, prefetch=20)
        self.name = consumer_name()
        self.outcomes: Counter[str] = Counter()
        self.health = ConsumerHealth(self.rabbit, "alert", lambda: self.outcomes)
        self.metrics_port: int | None = None  # of /metrics and /healthz, once run() serves them

    def handle(self, body: bytes, routing_key: str,
               stop: threading.Event) -> list[str | None]:
        """Process one message. Returns the outcome of each alert it held (one, but for a
        batch of anomalies), in order; it stops early at `requeued` (another consumer took
        an alert over: the message goes back to the queue) or None (`stop` interrupted a
        retry or the wait for a claim: the message must then stay unacked)."""
        if routing_key.startswith(STATION_PREFIX):
            return [self.handle_station(body, routing_key, stop)]
        if routing_key.startswith(LIVE_PREFIX):
            return [self.handle_live(body, routing_key, stop)]
        return self.handle_sessions(body, routing_key, stop)

    def _poison(self, body: bytes, error: str, routing_key: str, **headers: object) -> str:
        self.rabbit.dead_letter(body, error, routing_key, **headers)
        self.store.record_dead_letters(self.settings.alerts_queue, [(error, body)])
        return "poison"

    def handle_sessions(self, body: bytes, routing_key: str,
                        stop: threading.Event) -> list[str | None]:
        """Anomalous sessions (a batch, or one): each alerted unless its station is in
        cooldown. Bad elements of a batch dead-letter it first (one outcome `poison` each)."""
        try:
            found = parse_score_results(body)
        except InvalidScoreResult as exc:
            return [self._poison(body, str(exc), routing_key)]
        outcomes: list[str | None] = []
        total = len(found.results) + len(found.errors)
        if found.errors:
            error, headers = bad_element_headers(found.errors, total)
            self._poison(body, error, routing_key, **headers)
            outcomes += ["poison"] * len(found.errors)
        for index, result in zip(found.indexes, found.results):
            # an alert dead-lettered after its retries names its element of a batch
            where = (index, total) if total > 1 else None
            outcome = self.handle_session(result, body, routing_key, stop, where)
            outcomes.append(outcome)
            if outcome is None or outcome == REQUEUE:
                break
        return outcomes

    def handle_session(self, result: ScoreResult, body: bytes, routing_key: str,
                       stop: threading.Event,
                       where: tuple[int, int] | None = None) -> str | None:
        """An anomalous session: alerted unless its station is in cooldown. `body` is the
        message it came in, dead-lettered if it cannot be delivered; `where` is
        `(index, results)` when that message is a batch."""
        if not result.is_anomaly:
            return "not_anomalous"
        alert_key = f"session:{result.session_id}:{result.model_version}"
        return self._holding(alert_key, stop, lambda claim: self._alert_session(
            result, alert_key, claim, body, routing_key, stop, where))

    def _alert_session(self, result: ScoreResult, alert_key: str, claim: Claim, body: bytes,
                       routing_key: str, stop: threading.Event,
                       where: tuple[int, int] | None) -> str | None:
        alert = self.store.get_alert(result.session_id, result.model_version)
        if alert is not None and alert["state"] in FINISHED:
            return "redelivered"
        now = self.clock()
        level = severity(result.score, result.threshold, self.severity_policy)
        cooldown = f"session:{result.station_id}"
        if alert is None:
            quiet = self._in_cooldown(cooldown, alert_key,
                                      self.store.last_sent_ts(result.station_id), now)
            alert = self.store.create_alert(result, level, "suppressed" if quiet else "pending",
                                            alert_subject(result, level), now=now)
            if quiet:
                return "suppressed"
        message = with_message_id(
            compose_email(result, level, self.settings.alert_sender,
                          self.settings.alert_recipients, dashboard_url(self.settings)),
            alert_key)
        outcome = self._deliver(message, alert["attempts"],
                                lambda **values: self.store.update_alert(alert["id"], **values),
                                body, routing_key, stop, claim, where)
        self._end_cooldown(cooldown, alert_key, outcome)
        if outcome == "sent":
            self.store.update_alert(alert["id"], webhook_state=self._webhook(
                webhook_payload(result, level, dashboard_url(self.settings))))
        return outcome

    def _holding(self, alert_key: str, stop: threading.Event,
                 work: Callable[[Claim], str | None]) -> str | None:
        """Run `work` while this consumer holds the alert's claim, waiting (heartbeats served)
        while another consumer holds it. None if `stop` was set while waiting."""
        claim = Claim(self.store, alert_key, self.name, self.settings.alert_claim_lease_s)
        while not claim.take():
            if not self.rabbit.sleep(CLAIM_POLL_S, stop):
                return None
        try:
            return work(claim)
        finally:
            claim.release()

    def _in_cooldown(self, cooldown_key: str, alert_key: str, last_delivered_ts: float | None,
                     now: float) -> bool:
        """True when the alert falls in a cooldown: the last delivered alert is recent, or
        another alert holds the cooldown (taken atomically, so one of two alerts judged at
        once wins it)."""
        cooldown_s = self.settings.alert_cooldown_s
        return in_cooldown(last_delivered_ts, now, cooldown_s) or not self.store.take_cooldown(
            cooldown_key, alert_key, now, cooldown_s)

    def _end_cooldown(self, cooldown_key: str, alert_key: str, outcome: str | None) -> None:
        """A delivered alert's cooldown counts from its delivery; a dead-lettered one frees it."""
        if outcome == "sent":
            self.store.restart_cooldown(cooldown_key, alert_key, self.clock())
        elif outcome == "dead_lettered":
            self.store.release_cooldown(cooldown_key, alert_key)

    def handle_station(self, body: bytes, routing_key: str, stop: threading.Event) -> str | None:
        """A station alert event: its opening emailed once, its recovery if the opening was."""
        try:
            event = parse_station_alert(body)
        except InvalidStationAlert as exc:
            return self._poison(body, str(exc), routing_key)
        # one claim per episode: its recovery is judged after its opening
        return self._holding(f"station:{event.alert_id}", stop, lambda claim: self._alert_station(
            event, claim, body, routing_key, stop))

    def _alert_station(self, event: StationAlertMessage, claim: Claim, body: bytes,
                       routing_key: str, stop: threading.Event) -> str | None:
        notice = self.store.get_station_notice(event.alert_id, event.status)
        if notice is not None and notice["state"] in NOTICE_FINISHED:
            return "station_redelivered"
        email_key = f"station:{event.alert_id}:{event.status}"
        cooldown = f"station:{event.station_id}:{event.kind}"
        if notice is None:
            now = self.clock()
            state = self._station_notice_state(event, email_key, cooldown, now)
            notice = self.store.create_station_notice(event, state, station_alert_subject(event),
                                                      now=now)
            if state != "pending":
                return f"station_{state}"
        message = with_message_id(
            compose_station_email(event, self.settings.alert_sender,
                                  self.settings.alert_recipients, stations_url(self.settings)),
            email_key)
        outcome = self._deliver(
            message, notice["attempts"],
            lambda **values: self.store.update_station_notice(notice["id"], **values),
            body, routing_key, stop, claim)
        if event.is_open:
            self._end_cooldown(cooldown, email_key, outcome)
        if outcome != "sent":
            return outcome
        self.store.update_station_notice(notice["id"], webhook_state=self._webhook(
            station_webhook_payload(event, stations_url(self.settings))))
        return "station_opened" if event.is_open else "station_recovered"

    def _station_notice_state(self, event: StationAlertMessage, email_key: str,
                              cooldown_key: str, now: float) -> str:
        """`pending` (to email), `suppressed` (a flapping station) or `recorded` (a closure
        whose opening nobody was emailed about)."""
        if event.is_open:
            last = self.store.last_station_email_ts(event.station_id, event.kind)
            return "suppressed" if self._in_cooldown(cooldown_key, email_key, last, now) \
                else "pending"
        opening = self.store.get_station_notice(event.alert_id, "open")
        return "pending" if opening is not None and opening["state"] == "sent" else "recorded"

    def handle_live(self, body: bytes, routing_key: str, stop: threading.Event) -> str | None:
        """A live alert event: an opening emailed once per episode, unless its connector
        had the same fault emailed within the cooldown; a closing is only stored."""
        try:
            event = parse_live_alert(body)
        except InvalidLiveAlert as exc:
            return self._poison(body, str(exc), routing_key)
        self.store.save_live_alerts([event], now=self.clock())  # idempotent: the row must exist
        if not event.is_open:
            return "live_closed"
        alert_key = f"live:{event.alert_id}"
        return self._holding(alert_key, stop, lambda claim: self._alert_live(
            event, alert_key, claim, body, routing_key, stop))

    def _alert_live(self, event: LiveAlertMessage, alert_key: str, claim: Claim, body: bytes,
                    routing_key: str, stop: threading.Event) -> str | None:
        episode = self.store.get_live_alert(event.alert_id)
        if episode["email_state"] in FINISHED:
            return "live_redelivered"
        cooldown = "live:" + ":".join(str(part) for part in live_cooldown_key(event))
        if episode["email_state"] is None:
            state = self._live_email_state(event, alert_key, cooldown)
            if not self.store.claim_live_email(event.alert_id, state, live_alert_subject(event)):
                return "live_redelivered"  # judged already (the claim makes this rare)
            if state == "suppressed":
                return "live_suppressed"
            episode = self.store.get_live_alert(event.alert_id)
        message = with_message_id(
            compose_live_email(event, self.settings.alert_sender, self.settings.alert_recipients,
                               live_url(self.settings), now=self.clock(),
                               closed_ts=episode["closed_ts"]),
            alert_key)
        outcome = self._deliver(
            message, episode["email_attempts"],
            lambda **values: self.store.update_live_email(event.alert_id, **values),
            body, routing_key, stop, claim)
        self._end_cooldown(cooldown, alert_key, outcome)
        if outcome != "sent":
            return outcome
        self.store.update_live_email(event.alert_id, webhook_state=self._webhook(
            live_webhook_payload(event, live_url(self.settings), self.clock())))
        return "live_emailed"

    def _live_email_state(self, event: LiveAlertMessage, alert_key: str,
                          cooldown_key: str) -> str:
        """`pending` (to email) or `suppressed` (its connector flaps with this fault)."""
        last = self.store.last_live_email_ts(*live_cooldown_key(event))
        return "suppressed" if self._in_cooldown(cooldown_key, alert_key, last, self.clock()) \
            else "pending"

    def _deliver(self, message: EmailMessage, attempts: int, record: Callable[..., None],
                 body: bytes, routing_key: str, stop: threading.Event,
                 claim: Claim, where: tuple[int, int] | None = None) -> str | None:
        """Send with backoff while SMTP fails; `record(**values)` keeps the state in the store,
        and the claim is renewed to cover each wait. When the message is a batch, `where` is
        `(index, results)` of the alert's element, named in the dead letter's headers.

        Returns `sent`, `dead_lettered` after `alert_max_attempts` (the message then went to
        the dead-letter queue), `requeued` when the claim was lost to another consumer, or
        None when `stop` interrupted a wait.
        """
        subject = message["Subject"]
        while True:
            attempts += 1
            try:
                send_email(self.smtp, message)
            except DeliveryError as exc:
                record(state="retrying", attempts=attempts, last_error=str(exc))
                if attempts >= self.settings.alert_max_attempts:
                    element = {} if where is None else bad_element_headers(
                        [(where[0], str(exc))], where[1])[1]
                    self.rabbit.dead_letter(body, str(exc), routing_key, attempts=attempts,
                                            **element)
                    record(state="dead_lettered")
                    log.error("%s: dead-lettered after %d attempts: %s", subject, attempts, exc)
                    return "dead_lettered"
                delay = self.delivery_retry.delay(attempts - 1)
                if not claim.renew(extra_s=delay):
                    log.warning("%s: taken over by another consumer; requeued", subject)
                    return REQUEUE
                log.warning("%s: not delivered (attempt %d), retry in %.1fs: %s",
                            subject, attempts, delay, exc)
                if not self.rabbit.sleep(delay, stop):
                    return None
                continue
            break
        record(state="sent", attempts=attempts, delivered_ts=self.clock(), last_error=None)
        log.info("alert emailed: %s", subject)
        return "sent"

    def _webhook(self, payload: dict) -> str | None:
        url = self.settings.alert_webhook_url
        if not url:
            return None
        try:
            post_webhook(url, payload)
        except DeliveryError as exc:  # optional channel: recorded, never blocks the email
            log.warning("webhook failed: %s", exc)
            return "failed"
        return "sent"

    def run(self, stop: threading.Event, max_runtime_s: float | None = None,
            idle_exit_s: float | None = None) -> Counter[str]:
        """Consume until `stop`, the runtime ends, or (if given) the queue is idle that long,
        serving `/metrics` and `/healthz` meanwhile."""
        server = self.health.serve(self.settings.metrics_host, self.settings.alert_metrics_port)
        self.metrics_port = server.port
        try:
            return self._run(stop, max_runtime_s, idle_exit_s)
        finally:
            server.stop()

    def _run(self, stop: threading.Event, max_runtime_s: float | None,
             idle_exit_s: float | None) -> Counter[str]:
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
                    outcomes = self.handle(body, method.routing_key, stop)
                    self.outcomes.update(o for o in outcomes if o is not None)
                    if None in outcomes:
                        break
                    if REQUEUE in outcomes:  # its finished alerts are acked on redelivery
                        self.rabbit.channel.basic_nack(method.delivery_tag, requeue=True)
                    else:
                        self.rabbit.channel.basic_ack(method.delivery_tag)
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
