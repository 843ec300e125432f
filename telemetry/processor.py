"""The telemetry processor: Kafka telemetry -> live detectors -> RabbitMQ, Kafka sessions.

One member of the consumer group `settings.telemetry_group`, reading
`settings.topic_telemetry` in micro-batches. For each batch, in order:

1. **decode** each message with the contract's `parse_telemetry`; a bad one goes to
   `settings.topic_telemetry_dlq` with the reason;
2. **detect**: apply the event to its connector's keyed state (`pipelines.telemetry.detectors`),
   unless the state already applied that offset (a redelivery after a crash); the timer
   (`on_tick`, on a stream clock carried by the wall clock) finds silent connectors;
3. **publish** the live alerts (persistent) and the connector snapshots that changed or are
   due (every `telemetry_status_interval_s` per charging connector), one message per site
   holding the batch's snapshots of that site, with confirms;
4. **hand off** each finished transaction as an ACN session to `settings.topic_sessions`;
5. **write the state** changes to the compacted changelog;
6. **commit** the batch's offsets once all of 3-5 are acknowledged, batches in order.

Batches overlap: the next one is consumed while the last one's confirms are on their way,
up to `max_inflight`. Partitions' state is restored from the changelog on assignment and
dropped on revoke, after what is in flight has been committed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from keyed_state import KeyedStateStore, PartitionState
from messaging import ConfirmedPublisher, consume_micro_batch
from pipelines.contracts.connector_status import encode_connector_statuses
from pipelines.contracts.dead_letters import session_dead_letter_headers
from pipelines.contracts.live_alert import encode_live_alert, live_routing_key
from pipelines.contracts.sessions import Source, encode_session, session_key
from pipelines.contracts.telemetry import InvalidTelemetry, parse_telemetry
from pipelines.metrics_http import Heartbeat, MetricsServer
from pipelines.settings import Settings
from pipelines.telemetry.detectors import (
    CONNECTOR_STATE_CODEC,
    DEFAULT_POLICY,
    ConnectorState,
    LiveAlert,
    LivePolicy,
    connector_key,
    connector_status,
    on_event,
    on_tick,
)
from pipelines.telemetry.handoff import assemble_session
from telemetry.kafka import consumer_config, producer_config
from telemetry.metrics import ProcessorMetrics
from telemetry.publish import Ticket, live_publisher

log = logging.getLogger("evguard.telemetry.processor")

STUCK_AFTER_S = 60.0


class ProcessorError(RuntimeError):
    """A session, dead letter or state write was not acknowledged: nothing of it is
    committed, and the processor stops (its supervisor restarts it)."""


@dataclass(frozen=True)
class ProcessorOptions:
    """How the loop runs (the thresholds are in `policy`).

    Args:
        batch_size: most messages per micro-batch.
        batch_timeout_s: longest wait for the first message of a batch.
        max_inflight: batches awaiting acknowledgements before consumption pauses.
        commit_interval_s: least time between two asynchronous offset commits.
        tick_s: how often (wall clock) connectors are checked for silence.
        shutdown_timeout_s: on stop or revoke, wait this long for what is in flight.
        session_timeout_ms: the Kafka group session timeout.
        policy: the live detectors' thresholds.
    """

    batch_size: int = 2000
    batch_timeout_s: float = 0.05
    max_inflight: int = 16
    commit_interval_s: float = 0.2
    tick_s: float = 1.0
    shutdown_timeout_s: float = 30.0
    session_timeout_ms: int = 10000
    policy: LivePolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_inflight < 1 or self.tick_s <= 0:
            raise ValueError("batch_size and max_inflight must be >= 1 and tick_s > 0")


DEFAULT_OPTIONS = ProcessorOptions()


@dataclass
class ProcessorReport:
    consumed: int = 0
    applied: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    live_alerts: int = 0
    sessions: int = 0
    snapshots: int = 0
    status_messages: int = 0
    batches: int = 0
    seconds: float = 0.0


class StreamClock:
    """Received time per partition, carried forward by the wall clock while nothing arrives.

    A partition's time is the newest `receivedAt` seen on it plus the wall time since; so a
    replay runs on its own time, a live stream on the gateway's, and a quiet partition's
    time still moves, so that a silent charger on it is found.
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._seen: dict[int, tuple[float, float]] = {}

    def observe(self, partition: int, event_s: float) -> None:
        seen = self._seen.get(partition)
        if seen is None or event_s > seen[0] + (self._wall() - seen[1]):
            self._seen[partition] = (event_s, self._wall())

    def known(self, partition: int) -> bool:
        return partition in self._seen

    def now(self, partition: int) -> float:
        event_s, wall_then = self._seen[partition]
        return event_s + max(0.0, self._wall() - wall_then)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._seen.pop(p, None)


def processor_name(settings: Settings) -> str:
    return settings.telemetry_instance_id or f"telemetry-{socket.gethostname()}-{os.getpid()}"


class TelemetryProcessor:
    """Kafka telemetry -> detectors -> RabbitMQ and Kafka, at-least-once, never counting twice."""

    def __init__(self, settings: Settings, options: ProcessorOptions = DEFAULT_OPTIONS,
                 metrics: ProcessorMetrics | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.options = options
        self.metrics = metrics or ProcessorMetrics()
        self.report = ProcessorReport()
        self.heartbeat = Heartbeat()
        self.name = processor_name(settings)
        self.metrics_port: int | None = None
        self._wall = wall
        self.clock = StreamClock(wall)
        self._inflight: deque[Ticket] = deque()
        self._to_commit: dict[tuple[str, int], int] = {}
        self._last_commit = 0.0
        self._last_tick = 0.0
        self._status_sent: dict[str, float] = {}
        self._assigned: set[int] = set()
        self._paused = False
        self._positions: dict[int, int] = {}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._publisher: ConfirmedPublisher | None = None
        self._state: KeyedStateStore | None = None
        self._last_error_log = 0.0

    # ---- lifecycle ------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, idle_exit_s: float = 0.0,
            partitions: int | None = None) -> ProcessorReport:
        """Process until `stop` is set, or nothing arrived for `idle_exit_s` (0 = never).

        Args:
            partitions: the telemetry topic's partition count (the changelog gets as many);
                default `settings.topic_partitions`.

        Raises:
            ProcessorError: a session, dead letter or state write failed (nothing of it
                was committed).
            KafkaException: a fatal Kafka error.
        """
        s = self.settings
        stop = stop or threading.Event()
        t0 = time.monotonic()
        server = MetricsServer(self.metrics, self.liveness, s.metrics_host,
                               s.telemetry_metrics_port, "telemetry-metrics").start()
        self.metrics_port = server.port
        self._publisher = live_publisher(s, wait_s=1.0)
        self._producer = Producer(producer_config(s.kafka_servers))
        self._state = KeyedStateStore(s.kafka_servers, s.topic_telemetry_state,
                                      CONNECTOR_STATE_CODEC, s.telemetry_group)
        self._state.ensure_changelog(partitions or s.topic_partitions)
        self._consumer = Consumer({**consumer_config(s, self.options.session_timeout_ms),
                                   "on_commit": self._on_commit, "error_cb": self._on_kafka_error})
        self._consumer.subscribe([s.topic_telemetry], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("telemetry processor %s started: group %s, %s -> exchange %s and %s; metrics "
                 "on http://%s:%d/metrics", self.name, s.telemetry_group, s.topic_telemetry,
                 s.rabbitmq_exchange, s.topic_sessions, s.metrics_host, server.port)
        clean = False
        try:
            self._loop(stop, idle_exit_s)
            clean = True
        finally:
            self._shutdown(clean)
            server.stop()
            self.report.seconds = time.monotonic() - t0
        return self.report

    def _shutdown(self, clean: bool) -> None:
        if clean:
            clean = self._drain(self.options.shutdown_timeout_s)
        else:
            self._inflight.clear()
            self._to_commit.clear()
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.flush(5.0)
        if self._state is not None:
            self._state.close(5.0)
        if self._publisher is not None:
            self._publisher.close(5.0 if clean else 0.0)
        r = self.report
        log.info("telemetry processor stopped: consumed %d, applied %d, redelivered %d, "
                 "dead-lettered %d, live alerts %d, sessions %d", r.consumed, r.applied,
                 r.redelivered, r.dead_lettered, r.live_alerts, r.sessions)

    # ---- the loop -----------------------------------------------------------------------
    def _loop(self, stop: threading.Event, idle_exit_s: float) -> None:
        o = self.options
        last_message = next_lag = time.monotonic()
        while not stop.is_set():
            self.heartbeat.beat()
            self._settle()
            if len(self._inflight) >= o.max_inflight:  # backpressure: wait for confirms
                self._pause(True)
                self._consumer.consume(1, 0.01)  # paused: nothing comes, the group is served
                continue
            self._pause(False)
            # what arrived while the last batch was processed, or the first message to come
            messages = consume_micro_batch(self._consumer, o.batch_size, o.batch_timeout_s, 0.0)
            now = time.monotonic()
            if messages:
                last_message = now
            if messages or (self._assigned and self._wall() - self._last_tick >= o.tick_s):
                self._process(messages)
            if now >= next_lag:
                self._update_gauges()
                next_lag = now + 5.0
            if idle_exit_s and now - last_message >= idle_exit_s and not self._inflight:
                log.info("no messages for %.0fs and nothing in flight: stopping", idle_exit_s)
                return

    def _pause(self, paused: bool) -> None:
        if paused == self._paused:
            return
        assignment = self._consumer.assignment()
        if paused:
            self._consumer.pause(assignment)
            log.info("backpressure: %d batches await confirms (RabbitMQ %s); consumption "
                     "paused", len(self._inflight), "ready" if self._publisher.ready
                     else "unavailable")
        else:
            self._consumer.resume(assignment)
            log.info("consumption resumed")
        self._paused = paused

    def _process(self, messages: list) -> None:
        """Decode, detect, then start every write of the batch; never waits for acks."""
        s, policy = self.settings, self.options.policy
        wall = self._wall()
        ticket = Ticket()
        amqp: list[tuple[str, bytes, bool]] = []
        summaries = []
        snapshots: dict[str, int] = {}
        sent, interval = self._status_sent, s.telemetry_status_interval_s
        report = self.report
        observe = self.clock.observe
        kinds: Counter[str] = Counter()
        redelivered = report.redelivered
        offsets, positions = ticket.offsets, self._positions
        states: dict[int, PartitionState] = {}  # no rebalance can happen within a batch
        for m in messages:
            err = m.error()
            if err is not None:
                self._on_kafka_error(err)
                continue
            p, offset = m.partition(), m.offset()
            offsets[(m.topic(), p)] = positions[p] = offset + 1
            report.consumed += 1
            try:
                event = parse_telemetry(m.value())
            except InvalidTelemetry as exc:
                self._dead_letter(m, str(exc), ticket)
                continue
            state = states.get(p)
            if state is None:
                state = states[p] = self._state.partition(p)
            key = connector_key(event.charge_point_id, event.connector_id)
            if state.already_applied(key, offset):
                report.redelivered += 1
                continue
            result = on_event(state.view(offset), event, policy)
            if not result.applied:
                report.redelivered += 1
                continue
            report.applied += 1
            kinds[event.kind] += 1
            observe(p, event.received_ts)
            for alert in result.alerts:
                amqp.append(self._alert_message(alert, wall))
            if result.summary is not None:
                summaries.append(result.summary)
            for changed in result.changed:
                snapshots[changed] = p
            conn = state.get(key)
            if conn.transaction_id and wall - sent.get(key, 0.0) >= interval:
                snapshots[key] = p
        if self._assigned and wall - self._last_tick >= self.options.tick_s:
            self._last_tick = wall
            self._tick(amqp, snapshots, wall)
        self._status_messages(snapshots, wall, amqp)
        self._publisher.publish(amqp, ticket)
        for summary in summaries:
            self._hand_off(summary, ticket)
        ticket.kafka_left += self._state.flush(lambda error: self._delivered(ticket, error))
        report.batches += 1
        self.metrics.consumed.inc(len(messages))
        for kind, count in kinds.items():
            self.metrics.applied.labels(kind).inc(count)
        if report.redelivered > redelivered:
            self.metrics.redelivered.inc(report.redelivered - redelivered)
        self._inflight.append(ticket)

    def _status_messages(self, snapshots: dict[str, int], wall: float, amqp: list) -> None:
        """The batch's snapshots (one per changed or due connector), as one transient message
        per site (split at the contract's cap), not one per connector: AMQP framing and
        confirms cost more per message than the detectors per sample."""
        sent, messages, before = self._status_sent, [], len(amqp)
        for key, p in snapshots.items():
            conn = self._state.partition(p).get(key) if p in self._assigned else None
            if conn is None:
                continue
            sent[key] = wall
            messages.append(connector_status(conn, wall, self.name))
        amqp.extend((routing_key, body, False)
                    for routing_key, body in encode_connector_statuses(messages))
        self.report.snapshots += len(messages)
        self.report.status_messages += len(amqp) - before
        self.metrics.snapshots.inc(len(messages))

    def _alert_message(self, alert: LiveAlert, wall: float) -> tuple[str, bytes, bool]:
        log.info("live %s %s on %s/%d (%s): %s", alert.kind, alert.status,
                 alert.charge_point_id, alert.connector_id, alert.site_id, alert.evidence)
        self.report.live_alerts += 1
        self.metrics.live_alerts.labels(alert.kind, alert.status).inc()
        return (live_routing_key(alert.site_id, alert.kind),
                encode_live_alert(alert.message(wall, self.name)), True)

    def _tick(self, amqp: list, snapshots: dict[str, int], wall: float) -> None:
        """The silence timer over the owned partitions; its writes keep each key's offset."""
        for p in sorted(self._assigned):
            if not self.clock.known(p):
                continue
            state = self._state.partition(p)
            for key, alerts in on_tick(state, self.clock.now(p), self.options.policy):
                state.put(key, state.get(key), state.applied_offset(key))
                snapshots[key] = p
                amqp.extend(self._alert_message(alert, wall) for alert in alerts)

    def _hand_off(self, summary, ticket: Ticket) -> None:
        try:
            record = assemble_session(summary, self.settings.telemetry_timezone)
        except ValueError as exc:
            log.warning("no session handed off for %s/%d transaction %s: %s",
                        summary.charge_point_id, summary.connector_id, summary.transaction_id,
                        exc)
            return
        ticket.kafka_left += 1
        self._produce(self.settings.topic_sessions, encode_session(record),
                      session_key(record), None, ticket)
        self.report.sessions += 1
        self.metrics.sessions.inc()

    def _dead_letter(self, message, reason: str, ticket: Ticket) -> None:
        source = Source(message.topic(), message.partition(), message.offset(),
                        message.timestamp()[1])
        ticket.kafka_left += 1
        self._produce(self.settings.topic_telemetry_dlq, message.value(), message.key(),
                      session_dead_letter_headers(reason, "decode", source), ticket)
        self.report.dead_lettered += 1
        self.metrics.dead_lettered.inc()
        log.warning("dead-lettered %s[%d]@%d: %s", source.topic, source.partition,
                    source.offset, reason)

    def _produce(self, topic: str, value, key, headers, ticket: Ticket) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=lambda err, _m: self._delivered(
                                           ticket, None if err is None else err.str()))
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.05)

    @staticmethod
    def _delivered(ticket: Ticket, error: str | None) -> None:
        ticket.kafka_left -= 1
        if error is not None and ticket.error is None:
            ticket.error = error

    # ---- completion and commits ---------------------------------------------------------
    def _settle(self) -> None:
        """Serve delivery reports; commit the batches that are fully acknowledged, in order."""
        self._producer.poll(0)
        self._state.poll(0)
        inflight = self._inflight
        for ticket in inflight:
            if ticket.error is not None:
                raise ProcessorError(f"a write of a telemetry batch failed: {ticket.error}; "
                                     "nothing of it was committed")
        now = time.monotonic()
        while inflight and inflight[0].done:
            ticket = inflight.popleft()
            self._to_commit.update(ticket.offsets)
            self.metrics.batch_seconds.observe(now - ticket.created)
            self.metrics.committed.inc()
        self.metrics.inflight.set(len(inflight))
        if self._to_commit and now - self._last_commit >= self.options.commit_interval_s:
            self._commit(asynchronous=True)

    def _commit(self, asynchronous: bool) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._to_commit.items()
                   if p in self._assigned]
        self._to_commit.clear()
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); those events will be seen again and "
                        "skipped by the state", exc)

    def _drain(self, timeout: float) -> bool:
        """Wait (up to `timeout`) for every batch in flight, then commit synchronously; False
        when some were still unacknowledged (and are not committed)."""
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            self._producer.poll(0.01)
            self._state.poll(0)
            self._settle_quietly()
        complete = not self._inflight
        if not complete:
            log.warning("%d batches still unacknowledged after %.0fs: not committed",
                        len(self._inflight), timeout)
            self._inflight.clear()
        if self._to_commit:
            self._commit(asynchronous=False)
        return complete

    def _settle_quietly(self) -> None:
        inflight = self._inflight
        while inflight and inflight[0].done and inflight[0].error is None:
            self._to_commit.update(inflight.popleft().offsets)
        if inflight and inflight[0].error is not None:
            log.error("a write failed while draining (%s): not committed", inflight[0].error)
            inflight.clear()

    # ---- rebalances ---------------------------------------------------------------------
    def _on_assign(self, _consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        restored = self._state.restore(numbers)
        for p in numbers:
            seen = [v.last_rx for _key, v in self._state.partition(p).items()
                    if type(v) is ConnectorState and not math.isnan(v.last_rx)]
            if seen:  # the clock goes on from where the state left off
                self.clock.observe(p, max(seen))
        self._assigned = set(numbers)
        self._paused = False
        log.info("assigned partitions %s; connector state restored: %s keys", numbers, restored)

    def _on_revoke(self, _consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        log.info("partitions %s revoked: finishing what is in flight", numbers)
        self._drain(self.options.shutdown_timeout_s)
        self._forget(numbers)

    def _on_lost(self, _consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        log.warning("partitions %s lost: dropping work in flight, committing nothing", numbers)
        self._inflight.clear()
        self._to_commit.clear()
        self._forget(numbers)

    def _forget(self, numbers: list[int]) -> None:
        self._state.drop(numbers)
        self.clock.forget(numbers)
        self._assigned -= set(numbers)
        self._status_sent.clear()

    # ---- callbacks and reporting ----------------------------------------------------------
    def _on_commit(self, err, _partitions) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed (%s)", err)

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._FENCED or "fenced" in err.str().lower():
            raise KafkaException(KafkaError(err.code(), "another telemetry processor uses "
                                 f"instance id {self.settings.telemetry_instance_id!r}; give "
                                 "each its own EVGUARD_TELEMETRY_INSTANCE_ID", fatal=True))
        if err.fatal():
            raise KafkaException(err)
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning("kafka: %s (retrying)", err.str())

    def _update_gauges(self) -> None:
        self.metrics.rabbitmq_connected.set(1 if self._publisher.ready else 0)
        self.metrics.connectors.set(sum(len(self._state.partition(p)) for p in self._assigned))
        for p in self._assigned:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.settings.topic_telemetry, p), cached=True)
            except KafkaException:
                continue
            position = self._positions.get(p)
            if high is not None and high >= 0 and position is not None:
                self.metrics.consumer_lag.labels(str(p)).set(max(0, high - position))

    def liveness(self) -> tuple[bool, dict]:
        """The `/healthz` answer: (alive, detail); not alive once the loop is stuck."""
        age = self.heartbeat.age()
        ready = self._publisher is not None and self._publisher.ready
        ok = age < STUCK_AFTER_S
        return ok, {"status": "stuck" if not ok else ("ok" if ready else "degraded"),
                    "loop_age_s": round(age, 3), "rabbitmq": "connected" if ready else
                    "unavailable", "inflight_batches": len(self._inflight),
                    "paused": self._paused, "partitions": sorted(self._assigned),
                    "processor": self.name}
