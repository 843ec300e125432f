"""The worker's publisher (`messaging` underneath), on the real RabbitMQ: batches confirmed in
order, unroutable results counted, an unreachable or refusing broker retried."""

from __future__ import annotations

import time
import uuid

import pika
import pytest

from messaging import publisher_parameters
from pipelines.retry import RetryPolicy
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch, MessageRejected
from serving.steps.publish import PublishStep, RabbitPublisher
from tests.serving.stand_ins import RecordingStep


@pytest.fixture
def exchange(rabbit_settings):
    name = f"ev.scores.publisher-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_settings.rabbitmq_url))
    channel = conn.channel()
    channel.exchange_declare(name, "topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, name, "score.*.anomaly")
    yield name, channel, queue
    channel.exchange_delete(name)
    conn.close()


def batch_of(keys_bodies) -> Batch:
    return Batch(offsets={}, results=list(keys_bodies))


def test_batches_are_confirmed_in_order_and_arrive_persistent(rabbit_settings, exchange):
    name, channel, queue = exchange
    metrics = WorkerMetrics()
    publisher = RabbitPublisher(publisher_parameters(rabbit_settings), name, metrics).start()
    try:
        assert publisher.wait_ready(10)
        batches = [batch_of([(f"score.0002.{'anomaly' if i % 3 == 0 else 'normal'}",
                              f'{{"n": {b * 100 + i}}}'.encode()) for i in range(100)])
                   for b in range(5)] + [batch_of([])]
        for batch in batches:
            publisher.publish(batch)
        done = []
        deadline = time.monotonic() + 10
        while len(done) < len(batches) and time.monotonic() < deadline:
            done += publisher.take_completed()
            time.sleep(0.01)
        assert done == batches
        time.sleep(0.2)
        assert metrics.unroutable._value.get() == 5 * 66  # normal keys: no queue is bound
        got = []
        for method, props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=1):
            if method is None:
                break
            got.append((method.routing_key, props.delivery_mode, props.content_type, body))
        assert len(got) == 5 * 34
        assert {(k, mode, ctype) for k, mode, ctype, _ in got} == \
            {("score.0002.anomaly", 2, "application/json")}
        assert [b for *_, b in got][:2] == [b'{"n": 0}', b'{"n": 3}']
    finally:
        publisher.close()


def test_unreachable_rabbitmq_means_not_ready_and_the_step_pushes_back(rabbit_settings):
    from evguard.services.process import free_port

    metrics = WorkerMetrics()
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    params = publisher_parameters(rabbit_settings.model_copy(update={"rabbitmq_url": url}))
    publisher = RabbitPublisher(params, "nowhere", metrics, RetryPolicy(initial_s=0.05, max_s=0.1))
    publisher.start()
    try:
        time.sleep(0.5)
        assert not publisher.ready and metrics.publish_retries._value.get() >= 2
        step = PublishStep(RecordingStep(), publisher, metrics)
        with pytest.raises(MessageRejected):
            step.submit(batch_of([("score.1.normal", b"{}")]))
    finally:
        publisher.close()


def test_wrong_credentials_are_retried_not_fatal(rabbit_settings):
    url = rabbit_settings.rabbitmq_url.replace("guest:guest", "guest:wrong")
    metrics = WorkerMetrics()
    params = publisher_parameters(rabbit_settings.model_copy(update={"rabbitmq_url": url}))
    publisher = RabbitPublisher(params, "x", metrics, RetryPolicy(initial_s=0.05, max_s=0.1)).start()
    try:
        time.sleep(0.6)
        assert not publisher.ready and metrics.publish_retries._value.get() >= 1
    finally:
        publisher.close()
