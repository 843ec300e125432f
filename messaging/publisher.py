"""One confirmed publisher to a RabbitMQ topic exchange, on its own I/O thread.

pika's `BlockingConnection` waits for each confirm in turn; here a `SelectConnection`
runs on an I/O thread, so a batch of messages is published in one go and its confirms
(usually `multiple=True` acks) arrive while the caller goes on. Each message belongs to a
`Ticket` (one unit of work: a scored micro-batch, a telemetry batch); the I/O thread
counts its confirmed messages down, and the caller commits the work's offsets only once
its ticket is done.

A nack, a closed channel, a lost connection or a confirm that does not come within
`confirm_timeout_s` puts every unconfirmed message back in front of the queue, and the
publisher reconnects with backoff: duplicates are possible, loss is not. Messages are
published `mandatory`, so a routing key that reaches no queue is counted (the broker
returns it, then confirms it). While RabbitMQ blocks publishers (memory or disk alarm),
`ready` is false so the caller pauses. The messages of a ticket can be dropped (its
partitions were revoked): they are neither sent nor re-sent any more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pika
from pika.adapters.select_connection import IOLoop

from messaging.connection import describe_failure
from pipelines.retry import RetryPolicy

log = logging.getLogger("evguard.messaging.publisher")

RECONNECT = RetryPolicy(initial_s=0.2, max_s=10.0)


@dataclass(eq=False)
class Ticket:
    """What one unit of work waits for: all of its messages confirmed.

    `amqp_left` is raised by `ConfirmedPublisher.publish` (the caller's thread) before its
    messages are queued, and counted down by the I/O thread only; `confirmed_at` (wall
    clock) is set when it reaches zero. Subclasses add what else the work waits for.
    """

    amqp_left: int = 0
    confirmed_at: float | None = None
    dropped: bool = False

    @property
    def done(self) -> bool:
        return self.amqp_left <= 0


class PublisherListener:
    """What a publisher reports as it happens (on its I/O thread); the defaults do nothing."""

    def connected(self, usable: bool) -> None:
        """The channel became usable (confirm mode on) or stopped being usable."""

    def retrying(self) -> None:
        """A connection attempt failed or a connection was lost; a retry is scheduled."""

    def republishing(self, tickets: int) -> None:
        """This many tickets had unconfirmed messages that will be published again."""

    def returned(self, routing_key: str) -> None:
        """The broker returned a message: its routing key reaches no queue."""


@dataclass(slots=True)
class _Outgoing:
    routing_key: str
    body: bytes
    persistent: bool
    ticket: Ticket


class ConfirmedPublisher:
    """Publishes (routing key, body) to one topic exchange with confirms, on an I/O thread.

    `publish`, `drop` and `close` are called from one caller thread; everything else runs
    on the publisher's own thread.

    Args:
        params: where and how to connect (`messaging.connection_parameters`).
        exchange: the topic exchange (declared durable, as the consumers declare it).
        app_id: the `app_id` property of every message.
        retry: the backoff between reconnects.
        confirm_timeout_s: reconnect and re-publish when the oldest unconfirmed message
            waits longer than this.
        listener: told of connection changes, retries and returned messages.
        name: the I/O thread's name.
    """

    def __init__(self, params: pika.ConnectionParameters, exchange: str, *,
                 app_id: str = "evguard", retry: RetryPolicy = RECONNECT,
                 confirm_timeout_s: float = 30.0, listener: PublisherListener | None = None,
                 name: str = "amqp-publisher") -> None:
        self.params = params
        self.exchange = exchange
        self.retry = retry
        self.confirm_timeout_s = confirm_timeout_s
        self.close_wait_s = 5.0
        self.listener = listener or PublisherListener()
        self.confirmed = 0
        self.returned = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._props = {
            persistent: pika.BasicProperties(content_type="application/json",
                                             delivery_mode=2 if persistent else 1, app_id=app_id)
            for persistent in (True, False)}
        self._ioloop = IOLoop()
        self._pending: deque[_Outgoing] = deque()  # caller thread -> I/O thread
        self._unconfirmed: deque[tuple[int, _Outgoing, float]] = deque()  # I/O thread only
        self._tag = 0
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._usable = False
        self._blocked = False
        self._stopping = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ---- the caller's side -----------------------------------------------------------
    def start(self, wait_s: float = 0.0) -> ConfirmedPublisher:
        """Start the I/O thread and wait up to `wait_s` for a first connection (never fails:
        while RabbitMQ is down, messages wait and `ready` stays false)."""
        self._ioloop.add_callback_threadsafe(self._connect)
        self._ioloop.call_later(1.0, self._check_confirm_timeout)
        self._thread.start()
        if wait_s > 0 and not self.wait_ready(wait_s):
            log.warning("RabbitMQ not ready yet at %s:%s (%s); messages wait for it",
                        self.params.host, self.params.port, self.last_error or "connecting")
        return self

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ready

    @property
    def ready(self) -> bool:
        """True when a publish now would be sent at once (connected, confirming, not
        blocked by a resource alarm)."""
        return self._usable and not self._blocked

    @property
    def backlog(self) -> int:
        """Messages not yet confirmed (queued or in flight; dropped ones until skipped)."""
        return len(self._pending) + len(self._unconfirmed)

    def publish(self, messages: Sequence[tuple], ticket: Ticket) -> None:
        """Queue the messages of `ticket`: (routing key, body) pairs, persistent, or
        (routing key, body, persistent) triples. Returns at once."""
        if not messages:
            if ticket.confirmed_at is None and ticket.amqp_left <= 0:
                ticket.confirmed_at = time.time()
            return
        ticket.amqp_left += len(messages)
        self._pending.extend(_Outgoing(m[0], m[1], m[2] if len(m) > 2 else True, ticket)
                             for m in messages)
        self._ioloop.add_callback_threadsafe(self._drain)

    def drop(self, tickets: Iterable[Ticket]) -> None:
        """Neither send nor re-send the messages of these tickets any more."""
        # the I/O thread skips them when it sends or re-sends (the queue is not rebuilt here:
        # the caller's thread may be appending to it at the same time)
        for ticket in tickets:
            ticket.dropped = True

    def close(self, timeout: float = 10.0, join_s: float = 5.0) -> int:
        """Wait up to `timeout` for the messages not yet confirmed, then disconnect; how
        many were left unconfirmed."""
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        left = self.backlog
        self._stopping = True
        if self._thread.is_alive():
            self._ioloop.add_callback_threadsafe(self._stop_io)
            self._thread.join(timeout=join_s)
        return left

    # ---- the I/O thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._ioloop.start()
        finally:
            self._set_usable(False)
            self._ioloop.close()

    def _set_usable(self, usable: bool) -> None:
        if usable != self._usable:
            self._usable = usable
            self.listener.connected(usable)

    def _connect(self) -> None:
        if self._stopping:
            return
        self._connection = pika.SelectConnection(
            self.params, on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error, on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop)

    def _on_open(self, connection) -> None:
        self._blocked = False
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.exchange_declare(self.exchange, exchange_type="topic", durable=True,
                                 callback=lambda _frame: channel.confirm_delivery(
                                     ack_nack_callback=self._on_confirm,
                                     callback=self._on_confirming))

    def _on_confirming(self, _frame) -> None:
        self._tag = 0
        if self._failures:
            log.info("RabbitMQ connection restored; publishing %d waiting messages",
                     len(self._pending))
        else:
            log.info("RabbitMQ connected; publishing to exchange %s", self.exchange)
        self._failures = 0
        self.last_error = None
        self._set_usable(True)
        self._drain()

    def _drain(self) -> None:
        channel = self._channel
        if not self._usable or channel is None:
            return
        pending, unconfirmed = self._pending, self._unconfirmed
        publish, exchange, props = channel.basic_publish, self.exchange, self._props
        now = time.monotonic()
        while pending:
            item = pending.popleft()
            if item.ticket.dropped:
                continue
            try:
                publish(exchange, item.routing_key, item.body, props[item.persistent],
                        mandatory=True)
            except (pika.exceptions.AMQPError, OSError):  # closed under us: keep it for later
                pending.appendleft(item)
                log.warning("publish failed; waiting for the connection to come back")
                return
            self._tag += 1
            unconfirmed.append((self._tag, item, now))

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            # the broker could not take them (e.g. a queue's reject-publish overflow):
            # reconnect with backoff and publish everything unconfirmed again
            self._close_connection(f"RabbitMQ refused delivery {method.delivery_tag} (nack)")
            return
        tag = method.delivery_tag
        unconfirmed = self._unconfirmed
        settled = []
        if method.multiple:
            while unconfirmed and unconfirmed[0][0] <= tag:
                settled.append(unconfirmed.popleft()[1])
        elif unconfirmed and unconfirmed[0][0] == tag:
            settled.append(unconfirmed.popleft()[1])
        else:  # a single confirm out of order: rare, so a scan is fine
            for i, entry in enumerate(unconfirmed):
                if entry[0] == tag:
                    del unconfirmed[i]
                    settled.append(entry[1])
                    break
        now = None
        for item in settled:
            ticket = item.ticket
            ticket.amqp_left -= 1
            if ticket.amqp_left == 0:
                ticket.confirmed_at = now = now or time.time()
        self.confirmed += len(settled)

    def _on_return(self, _channel, method, _properties, _body) -> None:
        self.returned += 1
        self.listener.returned(method.routing_key)

    def _on_blocked(self, _connection, frame) -> None:
        self._blocked = True
        log.warning("RabbitMQ blocked publishing (%s); pausing",
                    getattr(frame.method, "reason", "resource alarm"))

    def _on_unblocked(self, _connection, _frame) -> None:
        self._blocked = False
        log.info("RabbitMQ unblocked publishing; resuming")

    def _check_confirm_timeout(self) -> None:
        if self._stopping:
            return
        unconfirmed = self._unconfirmed
        if (self._usable and unconfirmed
                and time.monotonic() - unconfirmed[0][2] > self.confirm_timeout_s):
            self._close_connection(f"no confirm for {self.confirm_timeout_s:.0f}s")
        self._ioloop.call_later(1.0, self._check_confirm_timeout)

    def _close_connection(self, why: str) -> None:
        log.warning("%s; reconnecting to publish %d unconfirmed messages again", why,
                    len(self._unconfirmed))
        self.last_error = why
        self._set_usable(False)
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close(reply_text=why[:200])
            self._ioloop.call_later(self.close_wait_s, lambda: self._abort_if_stuck(connection))

    def _abort_if_stuck(self, connection) -> None:
        """A broker that stopped answering never confirms the close either: drop the TCP
        connection as pika's own heartbeat checker does on a missed heartbeat."""
        if connection is self._connection and connection.is_closing:
            log.warning("RabbitMQ did not answer the close in %.0fs; dropping the connection",
                        self.close_wait_s)
            # a private method, but the one pika's heartbeat checker calls for the same case
            connection._terminate_stream(
                pika.exceptions.AMQPConnectionError("no answer to connection.close"))

    def _requeue_unconfirmed(self) -> None:
        items = [item for _tag, item, _at in self._unconfirmed if not item.ticket.dropped]
        self._unconfirmed.clear()
        if items:
            self.listener.republishing(len({id(item.ticket) for item in items}))
            self._pending.extendleft(reversed(items))

    def _on_channel_closed(self, _channel, reason) -> None:
        self._set_usable(False)
        self._channel = None
        self._requeue_unconfirmed()
        if not self._stopping:
            log.warning("RabbitMQ channel closed (%s); reconnecting", reason)
            connection = self._connection
            if connection is not None and connection.is_open:
                connection.close()

    def _on_open_error(self, _connection, error) -> None:
        self._retry_later(describe_failure(self.params, error))

    def _on_closed(self, _connection, reason) -> None:
        self._set_usable(False)
        self._channel = None
        self._requeue_unconfirmed()
        if self._stopping:
            self._ioloop.stop()
            return
        self._retry_later(f"connection to RabbitMQ lost: {reason}")

    def _retry_later(self, why: str) -> None:
        if self._stopping:
            self._ioloop.stop()
            return
        self.last_error = why
        delay = self.retry.delay(self._failures)
        if self._failures == 0 or self._failures % 10 == 0:
            log.warning("%s; retrying in %.1fs (attempt %d)", why, delay, self._failures + 1)
        self._failures += 1
        self.reconnects += 1
        self.listener.retrying()
        self._ioloop.call_later(delay, self._connect)

    def _stop_io(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()  # _on_closed stops the loop
        else:
            self._ioloop.stop()
