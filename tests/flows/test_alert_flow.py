"""Smoke test of `alert_flow` under the Prefect test harness: real RabbitMQ, the project's SMTP sink."""

from __future__ import annotations

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from tests.support.queues import consumer_queues


def test_alert_flow_emails_once_per_station_and_stops_when_idle(
        prefect_harness, rabbit_settings, tmp_path, monkeypatch, kit):
    from flows.alert import AlertParams, alert_flow

    base = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state", "smtp_port": free_port(),
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}"})
    with consumer_queues(base) as settings:
        for key in ("state_dir", "rabbitmq_url", "rabbitmq_exchange", "alerts_queue",
                    "smtp_port", "monitoring_db_url"):
            monkeypatch.setenv(f"EVGUARD_{key.upper()}", str(getattr(settings, key)))
        stack = LocalStack(settings)
        stack.up(only=("smtp",))
        try:
            kit.publish(settings, [kit.score_message(station="CA-5", score=0.9)
                                   for _ in range(3)])
            outcomes = alert_flow(AlertParams(stop_when_idle_seconds=1))
            assert outcomes == {"sent": 1, "suppressed": 2}
            assert len(list(settings.outbox_dir.glob("*.eml"))) == 1
        finally:
            stack.smtp_process().stop()
