"""amqps:// end to end, against a RabbitMQ TLS listener these tests start: the worker's
publisher publishes, the consumers' connection reads back; a wrong CA or a host name the
certificate does not name is refused with an error that says so. The same private node
shows that a blocked connection (memory alarm) pauses the publisher."""

from __future__ import annotations

import time
import uuid

import pytest

from messaging import BrokerUnavailable, ConfirmedPublisher, Ticket, publisher_parameters
from monitoring.rabbit import connect, declare_queue
from pipelines.retry import RetryPolicy
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch
from serving.steps.publish import RabbitPublisher

FAST = RetryPolicy(initial_s=0.05, max_s=0.2)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s")
        time.sleep(0.02)


def test_results_go_round_trip_over_amqps(tls_rabbitmq):
    settings = tls_rabbitmq.settings.model_copy(
        update={"rabbitmq_exchange": f"ev.scores.tls-{uuid.uuid4().hex[:8]}"})
    queue = f"tls-{uuid.uuid4().hex[:8]}"
    consumer = connect(settings)  # the consumers' connection, TLS with a client certificate
    channel = consumer.channel()
    declare_queue(channel, settings.rabbitmq_exchange, queue, "score.*.anomaly")
    metrics = WorkerMetrics()
    publisher = RabbitPublisher(publisher_parameters(settings), settings.rabbitmq_exchange,
                                metrics).start()
    try:
        assert publisher.wait_ready(20)
        assert metrics.rabbitmq_connected._value.get() == 1
        batch = Batch(offsets={}, results=[("score.0002.anomaly", b'{"n": 1}'),
                                           ("score.0002.normal", b'{"n": 2}')])
        publisher.publish(batch)
        wait_for(lambda: publisher.take_completed() == [batch])
        assert "confirmed_at" in batch.timings
        got = []
        for method, props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=1):
            if method is None:
                break
            got.append((method.routing_key, props.delivery_mode, body))
        assert got == [("score.0002.anomaly", 2, b'{"n": 1}')]
        assert metrics.unroutable._value.get() == 1  # the normal key reaches no queue
    finally:
        publisher.close()
        channel.queue_delete(queue)
        channel.queue_delete(f"{queue}.dlq")
        channel.exchange_delete(settings.rabbitmq_exchange)
        consumer.close()


def test_a_wrong_ca_is_refused_with_a_clear_error(tls_rabbitmq):
    wrong = tls_rabbitmq.settings.model_copy(
        update={"rabbitmq_ca_file": str(tls_rabbitmq.files.wrong_ca)})
    with pytest.raises(BrokerUnavailable) as refused:
        connect(wrong)
    message = str(refused.value)
    assert "TLS handshake" in message and "certificate verify failed" in message
    assert "EVGUARD_RABBITMQ_CA_FILE" in message

    publisher = ConfirmedPublisher(publisher_parameters(wrong), "nowhere", retry=FAST).start()
    try:
        wait_for(lambda: publisher.reconnects >= 2)
        assert not publisher.ready and "certificate verify failed" in publisher.last_error
    finally:
        publisher.close(timeout=0)


def test_a_host_name_the_certificate_does_not_name_is_refused_unless_allowed(tls_rabbitmq):
    settings = tls_rabbitmq.settings
    other_name = settings.rabbitmq_url.replace("@localhost:", "@127.0.0.2:")
    with pytest.raises(BrokerUnavailable, match="TLS handshake"):
        connect(settings.model_copy(update={"rabbitmq_url": other_name}))
    connection = connect(settings.model_copy(update={"rabbitmq_url": other_name,
                                                     "rabbitmq_tls_verify_hostname": False}))
    assert connection.is_open
    connection.close()


def test_a_blocked_connection_pauses_the_publisher_until_unblocked(tls_rabbitmq):
    settings = tls_rabbitmq.settings
    exchange = f"ev.scores.blocked-{uuid.uuid4().hex[:8]}"
    publisher = ConfirmedPublisher(publisher_parameters(settings), exchange).start(wait_s=20)
    try:
        assert publisher.ready
        tls_rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.00001")
        ticket = Ticket()
        publisher.publish([("score.1.normal", b"{}")], ticket)  # the broker blocks on a publish
        wait_for(lambda: not publisher.ready)
        assert not ticket.done
        tls_rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: publisher.ready and ticket.done)
    finally:
        tls_rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        publisher.close()
