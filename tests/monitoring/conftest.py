"""Fixtures of the monitoring and alerting tests: uuid-named queues on the real RabbitMQ."""

from __future__ import annotations

import pytest

from pipelines.settings import Settings
from tests.support.queues import consumer_queues


@pytest.fixture
def mon_settings(rabbit_settings: Settings, tmp_path) -> Settings:
    """Private exchange, queues, state dir and sqlite store; all deleted afterwards."""
    settings = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state",
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "alert_retry_base_s": 0.1,
        "alert_retry_max_s": 0.5,
    })
    with consumer_queues(settings) as settings:
        yield settings
