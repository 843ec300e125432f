"""Publishing results to RabbitMQ with publisher confirms, through `messaging`.

`RabbitPublisher` adapts the one confirmed publisher of evguard
(`messaging.ConfirmedPublisher`, pika's `SelectConnection` on an I/O thread) to
the worker's batches: each batch is a `Ticket`, complete when all of its
messages are confirmed, and completed batches come out in publish order. On a
lost connection, a nack or a confirm timeout the publisher reconnects with
backoff and re-publishes what was unconfirmed (duplicates are possible, loss is
not); batches of revoked partitions can be dropped.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np
import pika

from messaging import RECONNECT, ConfirmedPublisher, PublisherListener, Ticket
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch, MessageRejected, ProcessingStep

log = logging.getLogger("evguard.serving.publish")

__all__ = ["RECONNECT", "PublishStep", "RabbitPublisher"]


class _MetricsListener(PublisherListener):
    """The publisher's events as the worker's metrics (called on the I/O thread)."""

    def __init__(self, metrics: WorkerMetrics, exchange: str) -> None:
        self._metrics = metrics
        self._exchange = exchange
        self._warned_unroutable = 0.0

    def connected(self, usable: bool) -> None:
        self._metrics.rabbitmq_connected.set(1 if usable else 0)

    def retrying(self) -> None:
        self._metrics.publish_retries.inc()

    def republishing(self, tickets: int) -> None:
        self._metrics.publish_retries.inc(tickets)

    def returned(self, routing_key: str) -> None:
        self._metrics.unroutable.inc()
        now = time.monotonic()
        if now - self._warned_unroutable > 60:
            self._warned_unroutable = now
            log.warning("results to %s with key %s reach no queue (start the monitoring and "
                        "alerting consumers to keep them)", self._exchange, routing_key)


class RabbitPublisher:
    """Publishes batches of (routing key, body) to a topic exchange; reports confirmed batches.

    `publish`, `take_completed` and `drop_pending` are called from the worker's
    thread; the connection lives on the publisher's own I/O thread.

    Args:
        params: `messaging.connection_parameters(settings)` (amqp:// or amqps://).
        exchange: the results exchange.
        metrics: the worker's metrics (`rabbitmq_connected`, `publish_retries`,
            `unroutable`).
        retry: the backoff between reconnects.
        confirm_timeout_s: reconnect when a confirm takes longer than this.
    """

    def __init__(self, params: pika.ConnectionParameters, exchange: str,
                 metrics: WorkerMetrics, retry=RECONNECT,
                 confirm_timeout_s: float = 30.0) -> None:
        self._publisher = ConfirmedPublisher(
            params, exchange, app_id="evguard-serving", retry=retry,
            confirm_timeout_s=confirm_timeout_s, listener=_MetricsListener(metrics, exchange),
            name="rabbitmq-publisher")
        self._inflight: deque[tuple[Batch, Ticket]] = deque()  # worker thread only

    @property
    def ready(self) -> bool:
        """True when a publish now would be sent at once (connected, not blocked)."""
        return self._publisher.ready

    def start(self) -> RabbitPublisher:
        self._publisher.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self._publisher.wait_ready(timeout)

    def publish(self, batch: Batch) -> None:
        """Queue a batch for publishing; returns at once."""
        ticket = Ticket()
        self._inflight.append((batch, ticket))
        self._publisher.publish(batch.results, ticket)

    def take_completed(self) -> list[Batch]:
        """Batches whose results are all confirmed, in publish order."""
        done = []
        inflight = self._inflight
        while inflight and inflight[0][1].done:
            batch, ticket = inflight.popleft()
            batch.timings["confirmed_at"] = ticket.confirmed_at or time.time()
            done.append(batch)
        return done

    def drop_pending(self, batches: list[Batch]) -> None:
        """Stop (re-)publishing these unconfirmed batches (their partitions were revoked)."""
        ids = {id(b) for b in batches}
        self._publisher.drop(t for b, t in self._inflight if id(b) in ids)
        self._inflight = deque(e for e in self._inflight if id(e[0]) not in ids)

    def close(self, timeout: float = 5.0) -> None:
        self._publisher.close(timeout=0.0, join_s=timeout)


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
        confirmed_ms = batch.timings.get("confirmed_at", now_ms / 1000) * 1000
        e2e = (confirmed_ms - stamps) / 1000
        self._metrics.end_to_end_seconds.observe_many(e2e)
        if len(e2e):
            batch.timings["e2e_max_ms"] = float(e2e.max() * 1000)
        self._metrics.published.inc(len(batch.records))  # a message holds many results
        self._metrics.published_messages.inc(len(batch.results))

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
