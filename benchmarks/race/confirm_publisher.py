"""A small synchronous RabbitMQ publisher for the race: one batch out, wait for its confirms.

The Quix Streams sink and the bare consume -> publish loop both publish through it, so
the two differ from the worker only in what they do around the publish. It is what a
careful user writes with pika when `BlockingConnection`'s one-confirm-at-a-time publishing
(about 200 persistent messages/s here) is too slow: a `SelectConnection` whose I/O loop
runs on the caller's thread, a whole batch written in one go, then the loop turned until
RabbitMQ has confirmed every message of it (usually a few `multiple=True` acks). A nack
or a lost connection raises: the caller then does not commit, and the batch is read
again. Messages are mandatory; the ones no queue is bound for are counted (`returned`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pika
from pika.spec import Basic, BasicProperties

PERSISTENT = BasicProperties(delivery_mode=2, content_type="application/json")


class PublishError(RuntimeError):
    """RabbitMQ refused or lost a message of the batch (nack, closed connection, timeout)."""


class BatchConfirmPublisher:
    def __init__(self, url: str, exchange: str, timeout_s: float = 30.0) -> None:
        self.exchange = exchange
        self.timeout_s = timeout_s
        self.published = 0  # messages confirmed so far
        self.returned = 0  # of those, unroutable (no queue bound to their routing key)
        self._error: str | None = None
        self._channel = None
        self._ready = False
        self._next_tag = 1
        self._low = 1  # every tag below is confirmed
        self._unconfirmed: set[int] = set()
        self._conn = pika.SelectConnection(
            pika.URLParameters(url), on_open_callback=self._opened,
            on_open_error_callback=lambda _c, exc: self._fail(f"cannot connect: {exc}"),
            on_close_callback=lambda _c, exc: self._fail(f"connection closed: {exc}"))
        self._conn.ioloop.activate_poller()  # what IOLoop.start() does before its loop
        self._turn_until(lambda: self._ready)

    # ---- pika callbacks (on this thread, inside _turn_until) -----------------
    def _opened(self, conn) -> None:
        conn.channel(on_open_callback=self._channel_opened)

    def _channel_opened(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(lambda _ch, exc: self._fail(f"channel closed: {exc}"))
        channel.add_on_return_callback(lambda *_: setattr(self, "returned", self.returned + 1))
        channel.confirm_delivery(self._on_confirm,
                                 callback=lambda _frame: setattr(self, "_ready", True))

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if isinstance(method, Basic.Nack):
            self._fail(f"nack of delivery tag {method.delivery_tag}")
        if method.multiple:
            for tag in range(self._low, method.delivery_tag + 1):
                self._unconfirmed.discard(tag)
            self._low = max(self._low, method.delivery_tag + 1)
        else:
            self._unconfirmed.discard(method.delivery_tag)

    def _fail(self, reason: str) -> None:
        self._error = self._error or reason

    def _turn_until(self, done) -> None:
        deadline = time.monotonic() + self.timeout_s
        loop = self._conn.ioloop
        while not done():
            if self._error:
                raise PublishError(self._error)
            if time.monotonic() > deadline:
                raise PublishError(f"no confirm within {self.timeout_s} s")
            loop.poll()
            loop.process_timeouts()
        if self._error:
            raise PublishError(self._error)

    # ---- the API ---------------------------------------------------------------
    def publish(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Publish `(routing key, body)` messages, persistent and mandatory, and return once
        RabbitMQ confirmed all of them. Returns how many there were."""
        publish, exchange = self._channel.basic_publish, self.exchange
        first = self._next_tag
        for routing_key, body in messages:
            publish(exchange, routing_key, body, PERSISTENT, mandatory=True)
            self._next_tag += 1
        self._unconfirmed.update(range(first, self._next_tag))
        self._turn_until(lambda: not self._unconfirmed)
        count = self._next_tag - first
        self.published += count
        return count

    def close(self) -> None:
        if self._conn.is_open:
            self._conn.close()
            try:
                self._turn_until(lambda: self._conn.is_closed)
            except PublishError:
                pass
