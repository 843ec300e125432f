"""The proxy's Kafka mirror: telemetry events go to Kafka beside the forwarding, never in
its way, and through a disk spool while Kafka is down or slow.

`offer` (called on the proxy's event loop for every event) only appends to a bounded
in-memory queue and returns. One thread owns the rest:
- while the spool holds no unread event and Kafka keeps up (fewer than
  `in_flight_events` unacknowledged, none older than `stall_s`), an event is produced
  straight away;
- otherwise it is appended to the spool, and every later one too until the spool has
  been read to its end, so that events reach Kafka in the order they were offered
  (per charge point, which is what a Kafka partition keeps);
- spooled events are read back in order and produced as acknowledgements make room;
  a segment goes when Kafka acknowledged all of its events.

The producer never gives up on a message (`message.timeout.ms` 0: librdkafka retries
until the broker is back), with one request in flight per broker, so a retry cannot
reorder. It is not idempotent: the embedded broker loses the producer's sequence state
when it restarts, which fails an idempotent producer for good; a retry may duplicate
an event instead, and consumers de-duplicate on `event_id`.

What can be lost: events dropped when the spool is full (the newest, counted), when the
in-memory queue is full (the thread is stuck, counted), when the disk refuses a write or a
segment turns out corrupt (counted), and on a crash of the process
(not a clean stop) while Kafka is down, the at most `in_flight_events` direct sends not
yet acknowledged. `close` puts those into the spool, in front of the events spooled
after them.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.spool import Spool

log = logging.getLogger("evguard.gateway.mirror")

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def mirror_producer_config(bootstrap: str) -> dict:
    """The mirror's producer: acks=all, unbounded retries, one request in flight."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "evguard-ocpp-mirror",
        "acks": "all",
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 1,
        "message.timeout.ms": 0,  # never expire: the spool bounds what waits, not a clock
        "linger.ms": 5,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,  # notice a returned broker within a second
        "log_level": 2,  # a down broker is reported through the metrics, not stderr
    }


@dataclass
class MirrorStats:
    """What the mirror did; written by its thread (the queue drops by `offer`)."""

    offered: int = 0
    sent: int = 0  # acknowledged by Kafka, direct and replayed
    spooled: int = 0  # appended to the spool
    replayed: int = 0  # spooled events acknowledged by Kafka
    dropped: collections.Counter = field(default_factory=collections.Counter)
    queued: int = 0
    in_flight: int = 0
    spool_bytes: int = 0
    spool_events: int = 0


class KafkaMirror:
    """Produces (key, value) events to one topic without ever blocking the caller.

    Args:
        producer_config: confluent-kafka configuration (`mirror_producer_config`).
        topic: where the events go.
        spool: the disk spool for outages; the mirror owns and closes it.
        queue_events: bound of the in-memory queue between `offer` and the thread.
        in_flight_events: most events handed to Kafka and not yet acknowledged.
        stall_s: an unacknowledged send older than this means Kafka is down or slow:
            new events go to the spool.
        sync_interval_s: how often the spool's open segment is fsynced.
        make_producer: builds the producer (a test may wrap it).
    """

    def __init__(self, producer_config: dict, topic: str, spool: Spool, *,
                 queue_events: int = 50_000, in_flight_events: int = 2_000,
                 stall_s: float = 2.0, sync_interval_s: float = 1.0,
                 make_producer: Callable[[dict], Producer] = Producer) -> None:
        if queue_events <= 0 or in_flight_events <= 0:
            raise ValueError("queue_events and in_flight_events must be > 0")
        self.topic, self.spool = topic, spool
        self.queue_events, self.in_flight_events = queue_events, in_flight_events
        self.stall_s, self.sync_interval_s = stall_s, sync_interval_s
        self.stats = MirrorStats()
        self._producer = make_producer(producer_config)
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._direct: dict[int, tuple[bytes, bytes]] = {}  # unacknowledged direct sends
        self._sequence = 0
        self._spool_in_flight = 0
        self._direct_mode: bool | None = None  # None: nothing routed yet
        self._last_progress = time.monotonic()
        self._close_timeout = 5.0

    # ---- the caller's side ---------------------------------------------------------
    def offer(self, key: bytes, value: bytes) -> None:
        """Queue one event for Kafka; never blocks, never raises (a drop is counted)."""
        if self._closing:
            self.stats.dropped["closed"] += 1
            return
        if len(self._queue) >= self.queue_events:
            self.stats.dropped["queue_full"] += 1
            return
        self._queue.append((key, value))
        self._wake.set()

    def start(self) -> KafkaMirror:
        self._thread = threading.Thread(target=self._run, name="ocpp-mirror", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, wait up to `timeout` for Kafka, spool what it did not
        acknowledge, and close the spool."""
        self._close_timeout = timeout
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 30)

    @property
    def healthy(self) -> bool:
        """The thread runs and Kafka keeps up: nothing waits in the spool, no send stalls."""
        return (self._thread is not None and self._thread.is_alive()
                and self.stats.spool_events == 0 and not self._stalled(time.monotonic()))

    # ---- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        next_sync = time.monotonic() + self.sync_interval_s
        try:
            while not self._closing:
                self._wake.wait(0.005 if self._in_flight() else 0.1)
                self._wake.clear()
                self._route_queued()
                self._replay()
                self._producer.poll(0)
                if (now := time.monotonic()) >= next_sync:
                    self.spool.sync()
                    next_sync = now + self.sync_interval_s
                self._snapshot()
            self._shut_down()
        except Exception:  # the mirror must not die silently
            log.exception("the OCPP mirror thread failed; the spool is closed as it stands")
            self.spool.close()
            raise

    def _in_flight(self) -> int:
        return len(self._direct) + self._spool_in_flight

    def _stalled(self, now: float) -> bool:
        return self._in_flight() > 0 and now - self._last_progress > self.stall_s

    def _route_queued(self) -> None:
        while self._queue:
            key, value = self._queue.popleft()
            self.stats.offered += 1
            if (self.spool.unread == 0 and self._in_flight() < self.in_flight_events
                    and not self._stalled(time.monotonic()) and self._produce_direct(key, value)):
                if not self._direct_mode:
                    self.spool.end_run()
                    self._direct_mode = True
                continue
            if self._direct_mode is not False:
                self.spool.begin_run()  # sends in flight are older than what comes now
                self._direct_mode = False
            self._to_spool(key, value)

    def _to_spool(self, key: bytes, value: bytes) -> None:
        try:
            written = self.spool.append(key, value)
        except OSError as exc:
            self.stats.dropped["spool_error"] += 1
            if self.stats.dropped["spool_error"] in (1, 10, 100) or \
                    self.stats.dropped["spool_error"] % 1000 == 0:
                log.error("mirror: the spool cannot write (%s); %d events dropped so far", exc,
                          self.stats.dropped["spool_error"])
            return
        if written:
            self.stats.spooled += 1
        else:
            self.stats.dropped["spool_full"] += 1

    def _produce_direct(self, key: bytes, value: bytes) -> bool:
        sequence = self._sequence
        self._sequence += 1
        if not self._in_flight():
            self._last_progress = time.monotonic()
        try:
            self._producer.produce(self.topic, value=value, key=key,
                                   on_delivery=functools.partial(self._delivered_direct, sequence))
        except (BufferError, KafkaException) as exc:
            log.debug("mirror: produce refused (%s); to the spool", exc)
            return False
        self._direct[sequence] = (key, value)
        return True

    def _replay(self) -> None:
        room = self.in_flight_events - self._in_flight()
        if room <= 0 or self.spool.unread == 0:
            return
        for event in self.spool.read(room):
            if not self._in_flight():
                self._last_progress = time.monotonic()
            try:
                self._producer.produce(
                    self.topic, value=event.value, key=event.key,
                    on_delivery=functools.partial(self._delivered_spooled, event.segment))
            except (BufferError, KafkaException) as exc:
                # librdkafka's queue is far larger than in_flight_events; if it still
                # refuses, the event stays on disk and goes again after a restart
                log.warning("mirror: replay refused by the producer: %s", exc)
                continue
            self._spool_in_flight += 1

    def _delivered_direct(self, sequence: int, err: KafkaError | None, _msg) -> None:
        if err is None:
            self._direct.pop(sequence, None)
            self._progress()
            return
        if err.code() in _PURGED:
            return  # at shutdown: `_shut_down` rescues what is left in `_direct`
        key, value = self._direct.pop(sequence)
        log.warning("mirror: Kafka refused an event (%s); spooled to try once more", err)
        self._to_spool(key, value)

    def _delivered_spooled(self, segment: int, err: KafkaError | None, _msg) -> None:
        if err is not None and err.code() in _PURGED:
            return  # still on disk, sent again after a restart
        self._spool_in_flight -= 1
        if err is None:
            self.stats.replayed += 1
            self._progress()
        else:
            self.stats.dropped["rejected"] += 1
            log.error("mirror: Kafka refused a spooled event for good (%s); dropped", err)
        self.spool.ack(segment)

    def _progress(self) -> None:
        self.stats.sent += 1
        self._last_progress = time.monotonic()

    def _snapshot(self) -> None:
        stats = self.stats
        stats.queued, stats.in_flight = len(self._queue), self._in_flight()
        stats.spool_bytes, stats.spool_events = self.spool.bytes, self.spool.events
        if self.spool.lost:
            stats.dropped["spool_corrupt"] = self.spool.lost

    def _shut_down(self) -> None:
        self._route_queued()
        deadline = time.monotonic() + self._close_timeout
        while self._in_flight() and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if self._in_flight():
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(0)
        rescued = [self._direct[s] for s in sorted(self._direct)]
        try:
            written = self.spool.rescue(rescued)
        except OSError as exc:
            log.error("mirror: cannot spool the %d unacknowledged events at shutdown: %s",
                      len(rescued), exc)
            written = 0
        self.stats.spooled += written
        if len(rescued) > written:
            self.stats.dropped["spool_full"] += len(rescued) - written
        if rescued:
            log.info("mirror: %d events Kafka had not acknowledged were spooled at shutdown",
                     written)
        self._direct.clear()
        self._spool_in_flight = 0
        self.spool.close()
        self._snapshot()
        self._producer.close()  # nothing left in it: returns at once


class MirrorCollector:
    """Prometheus view of one mirror's stats (register it on a registry)."""

    def __init__(self, mirror: KafkaMirror) -> None:
        self.mirror = mirror

    def collect(self) -> Iterator:
        s = self.mirror.stats
        gauges = {
            "evguard_ocpp_spool_bytes": ("Bytes of the proxy mirror's disk spool", s.spool_bytes),
            "evguard_ocpp_spool_events": ("Events in the spool not yet acknowledged by Kafka",
                                          s.spool_events),
            "evguard_ocpp_mirror_queued_events": ("Events in the mirror's in-memory queue",
                                                  s.queued),
            "evguard_ocpp_mirror_in_flight_events": ("Events produced, not yet acknowledged",
                                                     s.in_flight),
        }
        for name, (text, value) in gauges.items():
            yield GaugeMetricFamily(name, text, value=value)
        counters = {
            "evguard_ocpp_mirror_sent_events": ("Mirrored events acknowledged by Kafka", s.sent),
            "evguard_ocpp_spooled_events": ("Events written to the disk spool", s.spooled),
            "evguard_ocpp_spool_replayed_events": ("Spooled events acknowledged by Kafka",
                                                   s.replayed),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)
        dropped = CounterMetricFamily("evguard_ocpp_mirror_dropped_events",
                                      "Mirrored events dropped, by reason", labels=["reason"])
        for reason in ("spool_full", "queue_full", "rejected", "closed", "spool_error",
                       "spool_corrupt"):
            dropped.add_metric([reason], s.dropped[reason])
        yield dropped
