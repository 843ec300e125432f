"""RabbitMQ plumbing shared by the monitoring and alerting consumers.

Each consumer owns one durable queue bound to the results exchange, and a
durable `<queue>.dlq` for poison messages. Dead letters are published by the
consumer itself (with publisher confirms) so they carry the error as a header;
the original is acked only after that publish is confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPConnectionError, AMQPError

from pipelines.contracts.dead_letters import dlq_name, result_dead_letter_headers
from pipelines.settings import Settings

log = logging.getLogger(__name__)

# connection-level trouble: reconnect with backoff, unacked messages come back
TRANSIENT_ERRORS = (AMQPError, OSError)


class BrokerUnavailable(AMQPConnectionError):
    """RabbitMQ cannot be reached; the message says where and what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "RabbitMQ is not reachable"


def connect(settings: Settings) -> pika.BlockingConnection:
    params = pika.URLParameters(settings.rabbitmq_url)
    params.heartbeat = 60
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    try:
        return pika.BlockingConnection(params)
    except AMQPConnectionError as exc:
        cause = repr(exc.args[-1]) if exc.args else type(exc).__name__
        raise BrokerUnavailable(
            f"RabbitMQ is not reachable at {params.host}:{params.port} ({cause}). Start it with "
            "`evguard services up`, or point EVGUARD_RABBITMQ_URL at a running broker.") from exc


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
        """(method, properties, body) as they arrive; (None, None, None) every idle tick."""
        return self.channel.consume(self.queue, inactivity_timeout=tick_s)

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
