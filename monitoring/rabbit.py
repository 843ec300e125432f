"""RabbitMQ plumbing shared by the monitoring and alerting consumers.

Each consumer owns one durable queue bound to the results exchange, and a
durable `<queue>.dlq` for poison messages. Dead letters are published by the
consumer itself (with publisher confirms) so they carry the error as a header;
the original is acked only after that publish is confirmed.

Each consumer also serves `/metrics` and `/healthz` (`ConsumerHealth`): live while its
loop turns and its connection to RabbitMQ is open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from messaging import BrokerUnavailable, connect_blocking
from pipelines.contracts.dead_letters import dlq_name, result_dead_letter_headers
from pipelines.metrics_http import Heartbeat, MetricsServer
from pipelines.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["BrokerUnavailable", "ConsumerHealth", "QueueConsumer", "connect", "declare_queue",
           "queue_depth"]

# connection-level trouble: reconnect with backoff, unacked messages come back
TRANSIENT_ERRORS = (AMQPError, OSError)
# the loops turn at least every second (idle ticks, backoff waits); this long means stuck
STUCK_AFTER_S = 60.0


def connect(settings: Settings) -> pika.BlockingConnection:
    """A blocking connection to `settings.rabbitmq_url` (amqp:// or amqps://, parameters
    from `messaging`); raises `BrokerUnavailable` saying where and what to do."""
    return connect_blocking(settings)


def declare_queue(channel: BlockingChannel, exchange: str, queue: str,
                  binding_keys: str | Sequence[str]) -> None:
    """The topic exchange, a durable queue bound to it (by one key or several), and the
    queue's dead-letter queue."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True)
    for key in (binding_keys,) if isinstance(binding_keys, str) else binding_keys:
        channel.queue_bind(queue, exchange, routing_key=key)
    channel.queue_declare(dlq_name(queue), durable=True)


def queue_depth(settings: Settings, queue: str) -> int | None:
    """Messages ready in a queue, or None when the queue or the broker is not there."""
    try:
        conn = connect(settings)
    except TRANSIENT_ERRORS:
        return None
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except TRANSIENT_ERRORS:
        return None
    finally:
        if conn.is_open:
            conn.close()


class QueueConsumer:
    """One connection and channel consuming one queue, reopened after a broker failure."""

    def __init__(self, settings: Settings, queue: str, binding_keys: Sequence[str],
                 prefetch: int) -> None:
        self.settings = settings
        self.queue = queue
        self.binding_keys = tuple(binding_keys)
        self.prefetch = prefetch
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self.heartbeat = Heartbeat()

    @property
    def connected(self) -> bool:
        """True while the connection and channel are open (closed after any broker error)."""
        return (self._connection is not None and self._connection.is_open
                and self._channel is not None and self._channel.is_open)

    @property
    def channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = connect(self.settings)
            channel = self._connection.channel()
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self.prefetch)
            declare_queue(channel, self.settings.rabbitmq_exchange, self.queue, self.binding_keys)
            self._channel = channel
        return self._channel

    def messages(self, tick_s: float) -> Iterator[tuple]:
        """(method, properties, body) as they arrive; (None, None, None) every idle tick.
        Each one is a heartbeat of the consumer's loop."""
        for message in self.channel.consume(self.queue, inactivity_timeout=tick_s):
            self.heartbeat.beat()
            yield message

    def stop_consuming(self) -> None:
        """Cancel the consumer; messages it had prefetched go back to the queue."""
        if self._channel is not None and self._channel.is_open:
            self._channel.cancel()

    def dead_letter(self, body: bytes, error: str, routing_key: str, **headers: object) -> None:
        """Publish to `<queue>.dlq` and wait for the broker's confirm."""
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
            headers=result_dead_letter_headers(error, self.queue, routing_key, **headers))
        self.channel.basic_publish("", dlq_name(self.queue), body, props, mandatory=True)

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        """Wait while serving heartbeats; returns False if `stop` was set meanwhile."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            self.heartbeat.beat()  # waiting on purpose (backoff, a claim) is not stuck
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self._connection is not None and self._connection.is_open:
                self._connection.sleep(min(left, 0.5))
            else:
                time.sleep(min(left, 0.5))
        return False

    def close(self) -> None:
        """Close the connection; unacked messages are redelivered to the next consumer."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except TRANSIENT_ERRORS as exc:
                log.debug("closing rabbitmq connection: %s", exc)


class ConsumerHealth:
    """`/healthz` and `/metrics` of one queue consumer.

    Live while its loop turns (`QueueConsumer.heartbeat`) and its connection is open: a
    consumer cut off from RabbitMQ does no work, however patiently it reconnects.

    Args:
        rabbit: the consumer's connection to its queue.
        name: the process (`monitor`, `alert`), a label of every metric.
        counts: what it has handled since it started (received, stored, poison, ...).
        stuck_after_s: a loop that has not turned for this long is stuck.
    """

    def __init__(self, rabbit: QueueConsumer, name: str,
                 counts: Callable[[], Mapping[str, int]],
                 stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.rabbit = rabbit
        self.name = name
        self.counts = counts
        self.stuck_after_s = stuck_after_s
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def liveness(self) -> tuple[bool, dict]:
        """The `/healthz` answer: (alive, detail)."""
        age = self.rabbit.heartbeat.age()
        connected = self.rabbit.connected
        status = ("stuck" if age >= self.stuck_after_s
                  else "ok" if connected else "disconnected")
        return status == "ok", {"status": status, "loop_age_s": round(age, 3),
                                "rabbitmq": "connected" if connected else "unavailable",
                                "consumer": self.name, "queue": self.rabbit.queue,
                                "counts": dict(self.counts())}

    def collect(self) -> Iterator:
        """The metrics, read at each scrape (a Prometheus custom collector)."""
        labels, values = ["consumer", "queue"], [self.name, self.rabbit.queue]
        ok, detail = self.liveness()
        for name, doc, value in (
                ("up", "1 while /healthz answers 200", ok),
                ("rabbitmq_connected", "1 while the connection to RabbitMQ is open",
                 self.rabbit.connected),
                ("loop_age_seconds", "Seconds since the consume loop last turned",
                 detail["loop_age_s"])):
            gauge = GaugeMetricFamily(f"evguard_consumer_{name}", doc, labels=labels)
            gauge.add_metric(values, float(value))
            yield gauge
        events = CounterMetricFamily(
            "evguard_consumer_events", "Messages handled since the start, by what became of "
            "them (dead_lettered and poison: sent to the DLQ)", labels=[*labels, "event"])
        for event, count in sorted(detail["counts"].items()):
            events.add_metric([*values, event], count)
        yield events

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> MetricsServer:
        """Start the HTTP server (on a free port if `port` is taken); stop it when done."""
        server = MetricsServer(self, self.liveness, host, port, f"{self.name}-metrics").start()
        log.info("%s consumer: /metrics and /healthz on http://%s:%d", self.name, host,
                 server.port)
        return server
