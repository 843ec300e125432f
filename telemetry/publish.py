"""Publishing live alerts and connector status batches to RabbitMQ, with publisher confirms.

pika's `BlockingConnection` waits for each confirm in turn; here a `SelectConnection` runs
on its own I/O thread, so a batch is published in one go and its confirms (usually
`multiple=True` acks) arrive while the processor goes on. Each message belongs to a
`Ticket` (one processor batch); the I/O thread counts its confirmed messages down, and the
processor commits a batch's offsets only once its ticket is done. A nack, a closed channel
or a lost connection puts every unconfirmed message back in front of the queue and the
publisher reconnects with backoff: duplicates are possible, loss is not (consumers
de-duplicate live alerts on `(alert_id, status)`; a snapshot only replaces an older one).
Each message costs a few microseconds of framing here and a confirm, so the processor
sends its connector snapshots as one message per site and batch (contract §5c).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import pika
from pika.adapters.select_connection import IOLoop

from pipelines.retry import RetryPolicy

log = logging.getLogger("evguard.telemetry.publish")

RECONNECT = RetryPolicy(initial_s=0.2, max_s=10.0)
_PERSISTENT = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                   app_id="evguard-telemetry")
_TRANSIENT = pika.BasicProperties(content_type="application/json", delivery_mode=1,
                                  app_id="evguard-telemetry")


@dataclass
class Ticket:
    """What one processor batch waits for before its offsets may be committed.

    `amqp_left` is counted down by the publisher's I/O thread only; `kafka_left` by the
    processor's delivery reports only (same thread as the processor).
    """

    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    amqp_left: int = 0
    kafka_left: int = 0
    error: str | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.amqp_left <= 0 and self.kafka_left <= 0


@dataclass(slots=True)
class _Outgoing:
    routing_key: str
    body: bytes
    persistent: bool
    ticket: Ticket


class LivePublisher:
    """Publishes (routing key, body) to one topic exchange with confirms, on an I/O thread.

    Args:
        url: the AMQP URL.
        exchange: the topic exchange (declared durable, as the consumers declare it).
        retry: the backoff between reconnects.
    """

    def __init__(self, url: str, exchange: str, retry: RetryPolicy = RECONNECT) -> None:
        self.url = url
        self.exchange = exchange
        self.retry = retry
        self.confirmed = 0
        self.reconnects = 0
        self._ioloop = IOLoop()
        self._pending: deque[_Outgoing] = deque()  # processor thread -> I/O thread
        self._unconfirmed: deque[tuple[int, _Outgoing]] = deque()  # I/O thread only
        self._tag = 0
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._ready = False
        self._stopping = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="telemetry-amqp", daemon=True)

    # ---- the processor's side --------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> LivePublisher:
        """Start the I/O thread and wait up to `wait_s` for a first connection (never fails:
        while RabbitMQ is down, messages wait and the processor stops committing)."""
        self._ioloop.add_callback_threadsafe(self._connect)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while not self._ready and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._ready:
            log.warning("RabbitMQ not reachable yet at %s; live alerts wait for it",
                        pika.URLParameters(self.url).host)
        return self

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def backlog(self) -> int:
        """Messages not yet confirmed (queued or in flight)."""
        return len(self._pending) + len(self._unconfirmed)

    def publish(self, messages: list[tuple[str, bytes, bool]], ticket: Ticket) -> None:
        """Queue (routing key, body, persistent) messages of `ticket`; returns at once."""
        if not messages:
            return
        ticket.amqp_left += len(messages)
        self._pending.extend(_Outgoing(key, body, persistent, ticket)
                             for key, body, persistent in messages)
        self._ioloop.add_callback_threadsafe(self._drain)

    def close(self, timeout: float = 10.0) -> int:
        """Wait up to `timeout` for the confirms in flight, then disconnect; how many messages
        were left unconfirmed."""
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        left = self.backlog
        self._stopping = True
        self._ioloop.add_callback_threadsafe(self._stop_io)
        self._thread.join(timeout=5)
        return left

    # ---- the I/O thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._ioloop.start()
        finally:
            self._ready = False
            self._ioloop.close()

    def _connect(self) -> None:
        if self._stopping:
            return
        params = pika.URLParameters(self.url)
        params.heartbeat = 30
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 60
        self._connection = pika.SelectConnection(
            params, on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed, custom_ioloop=self._ioloop)

    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.exchange_declare(self.exchange, exchange_type="topic", durable=True,
                                 callback=lambda _frame: channel.confirm_delivery(
                                     ack_nack_callback=self._on_confirm,
                                     callback=self._on_confirming))

    def _on_confirming(self, _frame) -> None:
        self._tag = 0
        self._ready = True
        if self._failures:
            log.info("RabbitMQ connection restored; re-publishing %d messages",
                     len(self._pending))
        self._failures = 0
        self._drain()

    def _drain(self) -> None:
        channel = self._channel
        if not self._ready or channel is None:
            return
        pending, unconfirmed = self._pending, self._unconfirmed
        publish, exchange = channel.basic_publish, self.exchange
        while pending:
            item = pending.popleft()
            try:
                publish(exchange, item.routing_key, item.body,
                        _PERSISTENT if item.persistent else _TRANSIENT)
            except (pika.exceptions.AMQPError, OSError):  # closed under us: keep it for later
                pending.appendleft(item)
                log.warning("publish failed; waiting for the connection to come back")
                return
            self._tag += 1
            unconfirmed.append((self._tag, item))

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tag = method.delivery_tag
        unconfirmed = self._unconfirmed
        settled = []
        if method.multiple:
            while unconfirmed and unconfirmed[0][0] <= tag:
                settled.append(unconfirmed.popleft()[1])
        elif unconfirmed and unconfirmed[0][0] == tag:
            settled.append(unconfirmed.popleft()[1])
        else:  # a single confirm out of order: rare, so a scan is fine
            for i, (sent, item) in enumerate(unconfirmed):
                if sent == tag:
                    del unconfirmed[i]
                    settled.append(item)
                    break
        if isinstance(method, pika.spec.Basic.Nack):
            log.warning("RabbitMQ refused %d messages (nack); publishing them again",
                        len(settled))
            self._pending.extendleft(reversed(settled))
            self._drain()
            return
        for item in settled:
            item.ticket.amqp_left -= 1
        self.confirmed += len(settled)

    def _requeue_unconfirmed(self) -> None:
        items = [item for _tag, item in self._unconfirmed]
        self._unconfirmed.clear()
        self._pending.extendleft(reversed(items))

    def _on_channel_closed(self, _channel, reason) -> None:
        self._ready = False
        self._channel = None
        self._requeue_unconfirmed()
        if not self._stopping:
            log.warning("RabbitMQ channel closed (%s); reconnecting", reason)
            connection = self._connection
            if connection is not None and connection.is_open:
                connection.close()

    def _on_open_error(self, _connection, error) -> None:
        self._retry_later(f"cannot connect: {error}")

    def _on_closed(self, _connection, reason) -> None:
        self._ready = False
        self._channel = None
        self._requeue_unconfirmed()
        if self._stopping:
            self._ioloop.stop()
            return
        self._retry_later(f"connection lost: {reason}")

    def _retry_later(self, why: str) -> None:
        if self._stopping:
            self._ioloop.stop()
            return
        delay = self.retry.delay(self._failures)
        if self._failures == 0 or self._failures % 10 == 0:
            log.warning("RabbitMQ %s; retrying in %.1fs", why, delay)
        self._failures += 1
        self.reconnects += 1
        self._ioloop.call_later(delay, self._connect)

    def _stop_io(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()  # _on_closed stops the loop
        else:
            self._ioloop.stop()
