"""Fixtures of the monitoring and alerting tests: uuid-named queues on the real RabbitMQ."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pika
import pytest

from monitoring.rabbit import declare_queue
from pipelines.contracts.dead_letters import dlq_name
from pipelines.settings import Settings


def load_score_messages() -> ModuleType:
    """tests/monitoring/score_messages.py (tests run in importlib mode: no sibling imports)."""
    name = "evguard_tests_score_messages"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("score_messages.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def kit() -> ModuleType:
    """The builder and publisher of contract-shaped score results."""
    return load_score_messages()


@pytest.fixture
def mon_settings(rabbit_settings: Settings, tmp_path) -> Settings:
    """Private exchange, queues, state dir and sqlite store; all deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    settings = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state",
        "rabbitmq_exchange": f"ev.scores.test-{tag}",
        "monitoring_queue": f"monitoring-test-{tag}",
        "alerts_queue": f"alerts-test-{tag}",
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "alert_retry_base_s": 0.1,
        "alert_retry_max_s": 0.5,
    })
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        declare_queue(ch, settings.rabbitmq_exchange, settings.monitoring_queue, "score.#")
        declare_queue(ch, settings.rabbitmq_exchange, settings.alerts_queue, "score.*.anomaly")
    yield settings
    conn = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    ch = conn.channel()
    for queue in (settings.monitoring_queue, settings.alerts_queue):
        ch.queue_delete(queue)
        ch.queue_delete(dlq_name(queue))
    ch.exchange_delete(settings.rabbitmq_exchange)
    conn.close()
