"""The confirmed publisher on the real RabbitMQ: tickets complete on confirms, returned
messages are counted, and lost connections, nacks and blocked connections neither lose
messages nor re-send dropped ones."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest

from messaging import ConfirmedPublisher, PublisherListener, Ticket, publisher_parameters
from pipelines.retry import RetryPolicy
from pipelines.settings import Settings

FAST = RetryPolicy(initial_s=0.05, max_s=0.2)


class Recorder(PublisherListener):
    def __init__(self) -> None:
        self.states: list[bool] = []
        self.retries = 0
        self.republished = 0
        self.returned_keys: list[str] = []

    def connected(self, usable: bool) -> None:
        self.states.append(usable)

    def retrying(self) -> None:
        self.retries += 1

    def republishing(self, tickets: int) -> None:
        self.republished += tickets

    def returned(self, routing_key: str) -> None:
        self.returned_keys.append(routing_key)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {predicate}")
        time.sleep(0.02)


class Queue:
    """A uuid-named exchange and durable queue bound to `score.#`, read back directly."""

    def __init__(self, url: str, arguments: dict | None = None) -> None:
        self.exchange = f"ev.test-{uuid.uuid4().hex[:8]}"
        self.name = f"q.test-{uuid.uuid4().hex[:8]}"
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(self.exchange, "topic", durable=True)
        self.channel.queue_declare(self.name, durable=True, arguments=arguments)
        self.channel.queue_bind(self.name, self.exchange, "score.#")

    def depth(self) -> int:
        return self.channel.queue_declare(self.name, passive=True).method.message_count

    def read(self, timeout: float = 1.0) -> list[tuple[str, int, str, bytes]]:
        got = []
        for method, props, body in self.channel.consume(self.name, auto_ack=True,
                                                         inactivity_timeout=timeout):
            if method is None:
                break
            got.append((method.routing_key, props.delivery_mode, props.app_id, body))
        self.channel.cancel()
        return got

    def close(self) -> None:
        self.channel.queue_delete(self.name)
        self.channel.exchange_delete(self.exchange)
        self.conn.close()


@pytest.fixture
def queue(rabbit_settings: Settings) -> Iterator[Queue]:
    q = Queue(rabbit_settings.rabbitmq_url)
    yield q
    q.close()


def via(settings: Settings, port: int) -> Settings:
    return settings.model_copy(update={"rabbitmq_url": f"amqp://guest:guest@127.0.0.1:{port}/%2F"})


def test_a_ticket_is_done_when_all_its_messages_are_confirmed(rabbit_settings, queue):
    recorder = Recorder()
    publisher = ConfirmedPublisher(publisher_parameters(rabbit_settings), queue.exchange,
                                   app_id="evguard-test", listener=recorder).start(wait_s=10)
    try:
        assert publisher.ready and recorder.states == [True]
        first, second, empty = Ticket(), Ticket(), Ticket()
        publisher.publish([("score.1.normal", f"a{i}".encode()) for i in range(50)], first)
        publisher.publish([("score.2.anomaly", b"b0", False), ("nowhere.key", b"lost")], second)
        publisher.publish([], empty)
        assert empty.done and empty.confirmed_at is not None
        wait_for(lambda: first.done and second.done)
        assert first.confirmed_at is not None and second.confirmed_at is not None
        assert publisher.confirmed == 52 and publisher.backlog == 0
        wait_for(lambda: recorder.returned_keys == ["nowhere.key"])  # mandatory, no queue
        got = queue.read()
    finally:
        assert publisher.close() == 0
    assert [body for *_, body in got] == [f"a{i}".encode() for i in range(50)] + [b"b0"]
    assert {(key, mode, app) for key, mode, app, _ in got} == {
        ("score.1.normal", 2, "evguard-test"), ("score.2.anomaly", 1, "evguard-test")}
    assert recorder.states[-1] is False  # closed


def test_a_lost_connection_republishes_what_was_not_confirmed(rabbit_settings, queue, proxy):
    recorder = Recorder()
    publisher = ConfirmedPublisher(publisher_parameters(via(rabbit_settings, proxy.port)),
                                   queue.exchange, retry=FAST, listener=recorder)
    publisher.start(wait_s=10)
    try:
        proxy.pause(upstream=False)  # messages reach RabbitMQ, its confirms do not come back
        ticket = Ticket()
        publisher.publish([("score.1.normal", f"m{i}".encode()) for i in range(20)], ticket)
        wait_for(lambda: queue.depth() == 20)
        time.sleep(0.2)
        assert not ticket.done and ticket.amqp_left == 20
        proxy.cut()
        proxy.resume()
        wait_for(lambda: ticket.done)
        assert recorder.republished == 1 and recorder.retries >= 1
        assert publisher.reconnects >= 1 and recorder.states.count(True) >= 2
        bodies = [body for *_, body in queue.read()]
    finally:
        publisher.close()
    # at least once: every message twice (the first copies were never confirmed)
    assert sorted(bodies) == sorted([f"m{i}".encode() for i in range(20)] * 2)


def test_a_confirm_that_never_comes_means_reconnect_and_publish_again(rabbit_settings, queue,
                                                                     proxy):
    publisher = ConfirmedPublisher(publisher_parameters(via(rabbit_settings, proxy.port)),
                                   queue.exchange, retry=FAST, confirm_timeout_s=0.5)
    publisher.close_wait_s = 1.0
    publisher.start(wait_s=10)
    try:
        proxy.pause(upstream=False)  # RabbitMQ takes the messages, its answers stay stuck
        ticket = Ticket()
        publisher.publish([("score.1.normal", b"t0"), ("score.1.normal", b"t1")], ticket)
        wait_for(lambda: publisher.reconnects >= 1)  # not even the close was answered
        proxy.resume()
        wait_for(lambda: ticket.done)
        assert publisher.ready
        bodies = sorted(body for *_, body in queue.read())
    finally:
        publisher.close()
    assert bodies == [b"t0", b"t0", b"t1", b"t1"]


def test_dropped_tickets_are_not_sent_again_after_a_reconnect(rabbit_settings, queue, proxy):
    publisher = ConfirmedPublisher(publisher_parameters(via(rabbit_settings, proxy.port)),
                                   queue.exchange, retry=FAST).start(wait_s=10)
    try:
        proxy.pause()  # nothing gets through either way: sent bytes are lost with the cut
        revoked, kept = Ticket(), Ticket()
        publisher.publish([("score.1.normal", b"revoked")], revoked)
        publisher.publish([("score.1.normal", b"kept")], kept)
        wait_for(lambda: publisher.backlog == 2 and not publisher._pending)  # both in flight
        publisher.drop([revoked])
        proxy.cut()
        proxy.resume()
        wait_for(lambda: kept.done)
        time.sleep(0.3)
        bodies = [body for *_, body in queue.read()]
    finally:
        publisher.close()
    assert bodies == [b"kept"] and not revoked.done


def test_a_nack_means_reconnect_and_publish_again_until_confirmed(rabbit_settings):
    # a queue that refuses what it cannot hold: RabbitMQ nacks the overflow
    q = Queue(rabbit_settings.rabbitmq_url, {"x-max-length": 2, "x-overflow": "reject-publish"})
    publisher = ConfirmedPublisher(publisher_parameters(rabbit_settings), q.exchange,
                                   retry=FAST).start(wait_s=10)
    try:
        ticket = Ticket()
        sent = [f"n{i}".encode() for i in range(6)]
        publisher.publish([("score.1.normal", body) for body in sent], ticket)
        wait_for(lambda: publisher.reconnects >= 1)
        assert not ticket.done
        received: set[bytes] = set()
        deadline = time.monotonic() + 30
        while not ticket.done and time.monotonic() < deadline:  # make room, slowly
            received |= {body for *_, body in q.read(timeout=0.2)}
        received |= {body for *_, body in q.read(timeout=0.5)}
    finally:
        publisher.close()
        q.close()
    assert ticket.done and received == set(sent)


def test_unreachable_rabbitmq_is_retried_and_messages_wait(rabbit_settings):
    from evguard.services.process import free_port

    recorder = Recorder()
    publisher = ConfirmedPublisher(publisher_parameters(via(rabbit_settings, free_port())),
                                   "nowhere", retry=FAST, listener=recorder).start()
    try:
        ticket = Ticket()
        publisher.publish([("score.1.normal", b"{}")], ticket)
        wait_for(lambda: recorder.retries >= 2)
        assert not publisher.ready and publisher.backlog == 1 and not ticket.done
        assert "not reachable" in publisher.last_error
    finally:
        assert publisher.close(timeout=0) == 1
