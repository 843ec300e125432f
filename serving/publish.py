"""Publishing results to RabbitMQ with pipelined publisher confirms.

pika's BlockingConnection waits for each confirm in turn (~1,000 messages/s
here). `RabbitPublisher` instead runs a pika SelectConnection on its own I/O
thread: a batch is published in one go, and confirms (usually `multiple=True`
acks) are matched to batches by delivery tag. A batch is complete when every
tag up to its last one is confirmed. On a lost connection, a nack or a confirm
timeout, it reconnects with backoff and re-publishes every unconfirmed batch
(duplicates are possible, loss is not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pika
from pika.adapters.select_connection import IOLoop

from serving.metrics import WorkerMetrics
from serving.strategy import Batch, MessageRejected, ProcessingStep

log = logging.getLogger("evguard.serving.publish")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between reconnect attempts."""

    initial_s: float = 0.2
    max_s: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.multiplier < 1:
            raise ValueError(f"bad retry policy {self}")

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.multiplier ** attempt)


class RabbitPublisher:
    """Publishes batches of (routing key, body) to a topic exchange; reports confirmed batches.

    `publish` and `take_completed` are called from the worker's thread; every
    pika call happens on the publisher's own I/O thread.
    """

    def __init__(self, url: str, exchange: str, metrics: WorkerMetrics,
                 retry: RetryPolicy = RetryPolicy(), confirm_timeout_s: float = 30.0) -> None:
        self._params = pika.URLParameters(url)
        self._params.blocked_connection_timeout = 120
        self._exchange = exchange
        self._metrics = metrics
        self._retry = retry
        self._confirm_timeout_s = confirm_timeout_s
        self._props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                           content_type="application/json",
                                           app_id="evguard-serving")
        self._ioloop = IOLoop()
        self._conn: pika.SelectConnection | None = None
        self._channel = None
        self._usable = False
        self._blocked = False
        self._stopping = False
        self._attempt = 0
        self._outbox: deque[Batch] = deque()  # worker thread -> I/O thread
        self._completed: deque[Batch] = deque()  # I/O thread -> worker thread
        self._inflight: deque[tuple[Batch, int, float]] = deque()  # (batch, last tag, sent at)
        self._next_tag = 1
        self._floor = 0  # every tag <= floor is confirmed
        self._acked: set[int] = set()  # single acks above the floor
        self._warned_unroutable = 0.0
        self._thread = threading.Thread(target=self._run, name="rabbitmq-publisher", daemon=True)

    # ---- worker thread --------------------------------------------------
    @property
    def ready(self) -> bool:
        """True when a publish now would be sent at once (connected, not blocked)."""
        return self._usable and not self._blocked

    def start(self) -> "RabbitPublisher":
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ready

    def publish(self, batch: Batch) -> None:
        """Queue a batch for publishing; returns at once."""
        self._outbox.append(batch)
        self._ioloop.add_callback_threadsafe(self._flush_outbox)

    def take_completed(self) -> list[Batch]:
        """Batches whose results are all confirmed, in publish order."""
        done = []
        while self._completed:
            done.append(self._completed.popleft())
        return done

    def drop_pending(self, batches: list[Batch]) -> None:
        """Stop (re-)publishing these unconfirmed batches (their partitions were revoked)."""
        ids = {id(b) for b in batches}
        self._ioloop.add_callback_threadsafe(lambda: self._drop_pending(ids))

    def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._thread.is_alive():
            self._ioloop.add_callback_threadsafe(self._shutdown)
            self._thread.join(timeout)

    # ---- I/O thread -------------------------------------------------------
    def _run(self) -> None:
        self._connect()
        self._ioloop.call_later(1.0, self._watchdog)
        self._ioloop.start()

    def _connect(self) -> None:
        if self._stopping:
            return
        self._conn = pika.SelectConnection(
            self._params, on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error, on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop)

    def _shutdown(self) -> None:
        if self._conn is not None and not (self._conn.is_closed or self._conn.is_closing):
            self._conn.close()
        else:
            self._ioloop.stop()

    def _set_usable(self, usable: bool) -> None:
        self._usable = usable
        self._metrics.rabbitmq_connected.set(1 if usable else 0)

    def _reconnect_later(self) -> None:
        delay = self._retry.delay(self._attempt)
        self._attempt += 1
        self._metrics.publish_retries.inc()
        log.warning("RabbitMQ unavailable; reconnect attempt %d in %.1fs", self._attempt, delay)
        self._ioloop.call_later(delay, self._connect)

    def _on_open_error(self, _conn, error) -> None:
        log.warning("cannot connect to RabbitMQ at %s:%s: %s", self._params.host,
                    self._params.port, error)
        if self._stopping:
            self._ioloop.stop()
        else:
            self._reconnect_later()

    def _on_closed(self, _conn, reason) -> None:
        self._set_usable(False)
        self._channel = None
        if self._stopping:
            self._ioloop.stop()
            return
        log.warning("RabbitMQ connection closed: %s; %d batches await confirms",
                    reason, len(self._inflight))
        self._reconnect_later()

    def _on_open(self, conn) -> None:
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)
        conn.channel(on_open_callback=self._on_channel)

    def _on_blocked(self, _conn, frame) -> None:
        self._blocked = True
        log.warning("RabbitMQ blocked publishing (%s); pausing consumption",
                    getattr(frame.method, "reason", "resource alarm"))

    def _on_unblocked(self, _conn, _frame) -> None:
        self._blocked = False
        log.info("RabbitMQ unblocked; resuming")

    def _on_channel(self, channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.exchange_declare(
            self._exchange, exchange_type="topic", durable=True,
            callback=lambda _f: channel.confirm_delivery(
                self._on_confirm, callback=lambda _f2: self._on_confirm_mode(channel)))

    def _on_channel_closed(self, _channel, reason) -> None:
        self._set_usable(False)
        self._channel = None
        conn = self._conn
        if conn is not None and conn.is_open and not self._stopping:
            log.warning("RabbitMQ channel closed (%s); reconnecting", reason)
            conn.close()

    def _on_confirm_mode(self, channel) -> None:
        self._channel = channel
        self._attempt = 0
        self._next_tag, self._floor = 1, 0
        self._acked.clear()
        unconfirmed = [batch for batch, _tag, _at in self._inflight]
        self._inflight.clear()
        if unconfirmed:
            log.info("RabbitMQ connected; re-publishing %d unconfirmed batches", len(unconfirmed))
            self._metrics.publish_retries.inc(len(unconfirmed))
        else:
            log.info("RabbitMQ connected; publishing to exchange %s", self._exchange)
        for batch in unconfirmed:
            self._send(batch)
        self._set_usable(True)
        self._flush_outbox()

    def _drop_pending(self, ids: set[int]) -> None:
        # the worker thread may append meanwhile: take from the front, put the rest back there
        taken = [self._outbox.popleft() for _ in range(len(self._outbox))]
        for batch in reversed(taken):
            if id(batch) not in ids:
                self._outbox.appendleft(batch)
        self._inflight = deque(e for e in self._inflight if id(e[0]) not in ids)

    def _flush_outbox(self) -> None:
        while self._channel is not None and self._outbox:
            self._send(self._outbox.popleft())

    def _send(self, batch: Batch) -> None:
        publish = self._channel.basic_publish
        exchange, props = self._exchange, self._props
        for key, body in batch.results:
            publish(exchange, key, body, props, mandatory=True)
        self._next_tag += len(batch.results)
        self._inflight.append((batch, self._next_tag - 1, time.monotonic()))
        self._complete_confirmed()

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            log.warning("RabbitMQ nacked delivery %d; reconnecting to re-publish",
                        method.delivery_tag)
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
            return
        if method.multiple:
            self._floor = max(self._floor, method.delivery_tag)
            if self._acked:
                self._acked = {t for t in self._acked if t > self._floor}
        else:
            self._acked.add(method.delivery_tag)
        while self._floor + 1 in self._acked:
            self._floor += 1
            self._acked.discard(self._floor)
        self._complete_confirmed()

    def _complete_confirmed(self) -> None:
        while self._inflight and self._inflight[0][1] <= self._floor:
            batch = self._inflight.popleft()[0]
            self._completed.append(batch)

    def _on_return(self, _channel, method, _props, _body) -> None:
        self._metrics.unroutable.inc()
        now = time.monotonic()
        if now - self._warned_unroutable > 60:
            self._warned_unroutable = now
            log.warning("results to %s with key %s reach no queue (start the monitoring and "
                        "alerting consumers to keep them)", self._exchange, method.routing_key)

    def _watchdog(self) -> None:
        if self._inflight and self._conn is not None and self._conn.is_open:
            waited = time.monotonic() - self._inflight[0][2]
            if waited > self._confirm_timeout_s:
                log.warning("no confirm for %.0fs; reconnecting to re-publish", waited)
                self._conn.close()
        if not self._stopping:
            self._ioloop.call_later(1.0, self._watchdog)


class PublishStep(ProcessingStep):
    """Hands scored batches to the publisher; passes them on once RabbitMQ confirmed them.

    Rejects (backpressure) while RabbitMQ is unusable or `max_inflight` batches
    await confirms. Never blocks except in `join`.
    """

    def __init__(self, next_step: ProcessingStep, publisher: RabbitPublisher,
                 metrics: WorkerMetrics, max_inflight: int = 8) -> None:
        self.next_step = next_step
        self._publisher = publisher
        self._metrics = metrics
        self._max_inflight = max_inflight
        self._inflight: deque[Batch] = deque()

    def submit(self, batch: Batch) -> None:
        if not self._publisher.ready or len(self._inflight) >= self._max_inflight:
            raise MessageRejected()
        batch.timings["published_at"] = time.monotonic()
        self._publisher.publish(batch)
        self._inflight.append(batch)
        self._metrics.inflight_batches.set(len(self._inflight))

    def poll(self) -> None:
        done = self._publisher.take_completed()
        if done:
            now_mono, now_ms = time.monotonic(), time.time() * 1000
            for batch in done:
                if not self._inflight or self._inflight[0] is not batch:
                    continue  # published before a rebalance, by a previous chain
                self._inflight.popleft()
                self._observe(batch, now_mono, now_ms)
                self.next_step.submit(batch)
            self._metrics.inflight_batches.set(len(self._inflight))
        self.next_step.poll()

    def _observe(self, batch: Batch, now_mono: float, now_ms: float) -> None:
        batch.timings["confirm_ms"] = (now_mono - batch.timings["published_at"]) * 1000
        batch.timings["batch_ms"] = (now_mono - batch.received_at) * 1000
        self._metrics.batch_seconds.observe_many(np.array([now_mono - batch.received_at]))
        stamps = np.fromiter((s.timestamp_ms for s in batch.sources), dtype=np.float64,
                             count=len(batch.sources))
        stamps = stamps[stamps > 0]
        e2e = (now_ms - stamps) / 1000
        self._metrics.end_to_end_seconds.observe_many(e2e)
        if len(e2e):
            batch.timings["e2e_max_ms"] = float(e2e.max() * 1000)
        self._metrics.published.inc(len(batch.results))

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def close(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight and (deadline is None or time.monotonic() < deadline):
            self.poll()
            time.sleep(0.002)
        if self._inflight:
            log.warning("%d batches were not confirmed in time; their offsets stay uncommitted",
                        len(self._inflight))
        self.next_step.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.next_step.join(remaining)

    def discard(self) -> None:
        """Forget unconfirmed batches (their partitions were revoked)."""
        if self._inflight:
            self._publisher.drop_pending(list(self._inflight))
            self._inflight.clear()
