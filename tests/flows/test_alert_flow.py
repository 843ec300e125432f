"""Smoke test of `alert_flow` under the Prefect test harness: real RabbitMQ, the project's SMTP sink."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pika

from evguard.services.stack import LocalStack
from monitoring.rabbit import declare_queue
from pipelines.contracts.dead_letters import dlq_name

KIT = Path(__file__).resolve().parents[1] / "monitoring" / "score_messages.py"


def _kit():
    name = "evguard_tests_score_messages"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KIT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_alert_flow_emails_once_per_station_and_stops_when_idle(
        prefect_harness, rabbit_settings, tmp_path, monkeypatch):
    from flows.alert import AlertParams, alert_flow

    kit = _kit()
    tag = uuid.uuid4().hex[:8]
    settings = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state", "rabbitmq_exchange": f"ev.scores.alertflow-{tag}",
        "alerts_queue": f"alerts-flow-{tag}", "smtp_port": kit.free_port(),
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}"})
    for key in ("state_dir", "rabbitmq_url", "rabbitmq_exchange", "alerts_queue", "smtp_port",
                "monitoring_db_url"):
        monkeypatch.setenv(f"EVGUARD_{key.upper()}", str(getattr(settings, key)))
    stack = LocalStack(settings)
    stack.up(only=("smtp",))
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        declare_queue(conn.channel(), settings.rabbitmq_exchange, settings.alerts_queue,
                      "score.*.anomaly")
    try:
        kit.publish(settings, [kit.score_message(station="CA-5", score=0.9) for _ in range(3)])
        outcomes = alert_flow(AlertParams(stop_when_idle_seconds=1))
        assert outcomes == {"sent": 1, "suppressed": 2}
        assert len(list(settings.outbox_dir.glob("*.eml"))) == 1
    finally:
        stack.smtp_process().stop()
        with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
            ch = conn.channel()
            ch.queue_delete(settings.alerts_queue)
            ch.queue_delete(dlq_name(settings.alerts_queue))
            ch.exchange_delete(settings.rabbitmq_exchange)
