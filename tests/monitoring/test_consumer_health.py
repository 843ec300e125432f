"""`/healthz` and `/metrics` of the monitoring and alert consumers, served for real while
they consume from the real RabbitMQ: 200 while the loop turns and the connection is open,
503 while RabbitMQ is away or the loop is stuck."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from evguard.services.process import free_port, wait_until
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from pipelines.scores.store import MonitoringStore


@pytest.fixture
def health_settings(mon_settings):
    return mon_settings.model_copy(update={"monitor_metrics_port": free_port(),
                                           "alert_metrics_port": free_port()})


@pytest.fixture
def store(health_settings):
    store = MonitoringStore(health_settings.monitoring_db)
    yield store
    store.close()


def make_consumer(kind: str, settings, store, **kwargs) -> MonitoringConsumer | AlertConsumer:
    return (MonitoringConsumer if kind == "monitor" else AlertConsumer)(settings, store, **kwargs)


@contextmanager
def running(consumer: MonitoringConsumer | AlertConsumer) -> Iterator[str]:
    """Run the consumer's long-running loop on a thread; yields the base URL it serves."""
    stop, failures = threading.Event(), []

    def run() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # noqa: BLE001 (reported to the test below)
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: consumer.metrics_port is not None or failures, 10)
        assert not failures, failures
        yield f"http://127.0.0.1:{consumer.metrics_port}"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and not failures, failures


def health(base: str) -> tuple[int, dict]:
    answer = httpx.get(f"{base}/healthz", timeout=5)
    return answer.status_code, answer.json()


def metric_line(base: str, name: str, **labels: str) -> float | None:
    """The value of one sample of `/metrics`, or None when there is no such sample."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_monitor_is_healthy_while_it_consumes_and_counts_what_it_stored(health_settings, store,
                                                                        kit):
    s = health_settings
    kit.publish(s, [kit.score_message() for _ in range(5)] + [b"not json"])
    consumer = make_consumer("monitor", s, store)
    with running(consumer) as base:
        assert consumer.metrics_port == s.monitor_metrics_port
        assert wait_until(lambda: consumer.stats.received == 6, 15)
        status, body = health(base)
        assert status == 200, body
        assert (body["status"], body["rabbitmq"], body["consumer"], body["queue"]) == (
            "ok", "connected", "monitor", s.monitoring_queue)
        assert body["counts"]["stored"] == 5 and body["counts"]["dead_lettered"] == 1
        labels = {"consumer": "monitor", "queue": s.monitoring_queue}
        assert metric_line(base, "evguard_consumer_up", **labels) == 1.0
        assert metric_line(base, "evguard_consumer_rabbitmq_connected", **labels) == 1.0
        assert metric_line(base, "evguard_consumer_events_total", event="stored", **labels) == 5
        assert metric_line(base, "evguard_consumer_events_total", event="dead_lettered",
                           **labels) == 1
    with pytest.raises(httpx.ConnectError):  # stopped with its consumer
        httpx.get(f"{base}/healthz", timeout=5)


def test_alert_consumer_is_healthy_while_it_consumes_and_counts_its_outcomes(health_settings,
                                                                             store, kit):
    s = health_settings
    # routed as anomalies, found not to be: handled without an email
    kit.publish(s, [json.dumps(kit.score_message(score=0.1)).encode() for _ in range(3)]
                + [b"{}"], key="score.0002.anomaly")
    consumer = make_consumer("alert", s, store)
    with running(consumer) as base:
        assert consumer.metrics_port == s.alert_metrics_port
        assert wait_until(lambda: sum(consumer.outcomes.values()) == 4, 15)
        status, body = health(base)
        assert status == 200, body
        assert (body["status"], body["consumer"], body["queue"]) == ("ok", "alert", s.alerts_queue)
        assert body["counts"] == {"not_anomalous": 3, "poison": 1}
        labels = {"consumer": "alert", "queue": s.alerts_queue}
        assert metric_line(base, "evguard_consumer_events_total", event="poison", **labels) == 1


@pytest.mark.parametrize("kind", ["monitor", "alert"])
def test_healthz_is_503_while_rabbitmq_refuses_and_the_consumer_retries(kind, health_settings,
                                                                       store):
    refused = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # nothing listens there
    consumer = make_consumer(kind, health_settings.model_copy(update={"rabbitmq_url": refused}),
                             store)
    with running(consumer) as base:
        assert wait_until(lambda: health(base)[1]["status"] == "disconnected", 10)
        status, body = health(base)
        assert status == 503, body
        assert body["rabbitmq"] == "unavailable"
        assert body["loop_age_s"] < consumer.health.stuck_after_s  # retrying, not stuck
        labels = {"consumer": kind, "queue": consumer.rabbit.queue}
        assert metric_line(base, "evguard_consumer_up", **labels) == 0.0
        assert metric_line(base, "evguard_consumer_rabbitmq_connected", **labels) == 0.0


def test_healthz_is_503_while_the_broker_is_down_and_200_once_it_is_back(health_settings, store,
                                                                        private_rabbitmq):
    node_settings, stack = private_rabbitmq
    s = health_settings.model_copy(update={"rabbitmq_url": node_settings.rabbitmq_url})
    consumer = make_consumer("alert", s, store)
    with running(consumer) as base:
        assert wait_until(lambda: health(base)[0] == 200, 15)
        stack.rabbitmq_process().stop()
        assert wait_until(lambda: health(base)[0] == 503, 15)
        assert health(base)[1]["rabbitmq"] == "unavailable"
        stack.up(only=("rabbitmq",))
        assert wait_until(lambda: health(base)[0] == 200, 60), health(base)


def test_healthz_is_503_while_the_loop_is_stuck_and_200_once_it_turns(health_settings, store):
    # the drift reference is fetched on the consumer's loop: one that hangs (a registry that
    # never answers) stalls the loop
    released = threading.Event()

    def hanging_reference() -> None:
        released.wait(30)

    s = health_settings.model_copy(update={"monitor_window_s": 1})
    consumer = make_consumer("monitor", s, store, reference=hanging_reference)
    consumer.health.stuck_after_s = 1.0
    with running(consumer) as base:
        assert wait_until(lambda: health(base)[0] == 200, 10)
        assert wait_until(lambda: health(base)[0] == 503, 10)
        body = health(base)[1]
        assert body["status"] == "stuck" and body["loop_age_s"] >= 1.0
        assert body["rabbitmq"] == "connected"
        released.set()
        assert wait_until(lambda: health(base)[0] == 200, 10), health(base)
