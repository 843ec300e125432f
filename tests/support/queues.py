"""RabbitMQ queues of the tests: the consumers' queues on a private exchange, a queue that
collects every result, and reading a queue back."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson
import pika

from monitoring.alerter import BINDINGS as ALERT_BINDINGS
from monitoring.monitor import BINDINGS as MONITOR_BINDINGS
from monitoring.rabbit import declare_queue
from pipelines.contracts.dead_letters import dlq_name
from pipelines.settings import Settings
from tests.support.score_messages import result_objects


@dataclass
class Results:
    """Results received from the exchange, by sessionID: one version-1 object per result (a
    batch of results is read as its results, `result_objects`), with its routing key."""

    bodies: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def sessions(self) -> set[str]:
        return {b["sessionID"] for b in self.bodies}

    def duplicates(self) -> int:
        return len(self.bodies) - len(self.sessions())

    def versions(self) -> Counter:
        return Counter(b["model"]["version"] for b in self.bodies)


class ResultQueue:
    """A durable queue bound to `binding` (`score.#`: every score result), drained on a thread
    that reconnects after a restart.

    Messages are acknowledged after they are recorded, so a redelivery shows as a duplicate.
    """

    def __init__(self, url: str, exchange: str, binding: str = "score.#") -> None:
        self.results = Results()
        self.binding = binding
        self.url, self.exchange = url, exchange
        self.queue = f"serving-test-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._declare()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _declare(self) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
            channel = conn.channel()
            channel.exchange_declare(self.exchange, "topic", durable=True)
            channel.queue_declare(self.queue, durable=True)
            channel.queue_bind(self.queue, self.exchange, self.binding)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
                    channel = conn.channel()
                    channel.basic_qos(prefetch_count=500)
                    for method, _props, body in channel.consume(self.queue,
                                                                inactivity_timeout=0.1):
                        if self._stop.is_set():
                            break
                        if method is not None:
                            objects = result_objects(orjson.loads(body))
                            with self._lock:
                                self.results.bodies += objects
                                self.results.keys += [method.routing_key] * len(objects)
                            channel.basic_ack(method.delivery_tag)
            except pika.exceptions.AMQPError:
                time.sleep(0.3)  # the broker is restarting

    def wait_for(self, predicate, timeout: float = 30.0) -> Results:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.results):
                    break
            time.sleep(0.05)
        with self._lock:
            return Results(list(self.results.bodies), list(self.results.keys))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
                conn.channel().queue_delete(self.queue)
        except pika.exceptions.AMQPError:
            pass


@contextmanager
def consumer_queues(settings: Settings, tag: str | None = None) -> Iterator[Settings]:
    """A private exchange with the monitoring and alerts queues bound to it (and their
    dead-letter queues), as the consumers declare them; all deleted afterwards. Yields the
    settings that name them."""
    tag = tag or uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={"rabbitmq_exchange": f"ev.scores.test-{tag}",
                                           "monitoring_queue": f"monitoring-test-{tag}",
                                           "alerts_queue": f"alerts-test-{tag}"})
    queues = {settings.monitoring_queue: MONITOR_BINDINGS, settings.alerts_queue: ALERT_BINDINGS}
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        channel = conn.channel()
        for queue, binding in queues.items():
            declare_queue(channel, settings.rabbitmq_exchange, queue, binding)
    try:
        yield settings
    finally:
        with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
            channel = conn.channel()
            for queue in queues:
                channel.queue_delete(queue)
                channel.queue_delete(dlq_name(queue))
            channel.exchange_delete(settings.rabbitmq_exchange)


def queue_messages(settings: Settings, queue: str) -> list[tuple[dict, bytes]]:
    """Take (headers, body) of every message in a queue (acked: the queue is emptied)."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props.headers or {}, body))
    finally:
        conn.close()
