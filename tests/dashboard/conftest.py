"""Fixtures of the dashboard tests: a private store, queues, SMTP sink and a served app."""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from pathlib import Path
from types import ModuleType

import pika
import pytest
import uvicorn

from evguard.services.process import wait_until
from monitoring.rabbit import declare_queue
from pipelines.contracts.dead_letters import dlq_name
from pipelines.settings import Settings

KIT = Path(__file__).resolve().parents[1] / "monitoring" / "score_messages.py"


@pytest.fixture
def kit() -> ModuleType:
    """tests/monitoring/score_messages.py (tests run in importlib mode: no sibling imports)."""
    name = "evguard_tests_score_messages"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KIT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="session")
def dash_mlflow_uri(tmp_path_factory) -> str:
    """One sqlite MLflow store for the dashboard tests (creating one costs seconds);
    each test registers its own uuid-named model in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('dash-mlflow')}/mlflow.db"


@pytest.fixture
def dash_settings(rabbit_settings: Settings, tmp_path, kit, dash_mlflow_uri) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state",
        "rabbitmq_exchange": f"ev.scores.dash-{tag}",
        "monitoring_queue": f"monitoring-dash-{tag}",
        "alerts_queue": f"alerts-dash-{tag}",
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "mlflow_tracking_uri": dash_mlflow_uri,
        "model_name": f"ev-session-anomaly-{tag}",
        "dashboard_port": kit.free_port(),
        "smtp_port": kit.free_port(),
        "metrics_port": kit.free_port(),
        "monitor_window_s": 3600,
        "monitor_min_volume": 20,
    })
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        declare_queue(ch, settings.rabbitmq_exchange, settings.monitoring_queue, "score.#")
        declare_queue(ch, settings.rabbitmq_exchange, settings.alerts_queue, "score.*.anomaly")
    yield settings
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        for queue in (settings.monitoring_queue, settings.alerts_queue):
            ch.queue_delete(queue)
            ch.queue_delete(dlq_name(queue))
        ch.exchange_delete(settings.rabbitmq_exchange)


@pytest.fixture
def served(dash_settings):
    """The dashboard app on a real uvicorn server; yields its base URL."""
    from dashboard.app import create_app

    config = uvicorn.Config(create_app(dash_settings, champion_refresh_s=2.0), host="127.0.0.1",
                            port=dash_settings.dashboard_port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 15)
    yield f"http://127.0.0.1:{dash_settings.dashboard_port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def register_champion(dash_settings, tmp_path):
    """Registers a model version with the `champion` alias, as the training flow leaves it."""

    def register() -> None:
        from pipelines.models.registry import CHAMPION, mlflow_client

        client = mlflow_client(dash_settings)
        experiment = client.create_experiment(f"dashboard-{dash_settings.model_name}",
                                              artifact_location=(tmp_path / "art").as_uri())
        run = client.create_run(experiment)
        for name, value in {"pr_auc": 0.81, "recall_at_budget": 0.74, "roc_auc": 0.93}.items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id)
        client.create_registered_model(dash_settings.model_name)
        (tmp_path / "model").mkdir()
        version = client.create_model_version(dash_settings.model_name,
                                              source=str(tmp_path / "model"),
                                              run_id=run.info.run_id)
        client.set_registered_model_alias(dash_settings.model_name, CHAMPION, version.version)
        client.set_model_version_tag(dash_settings.model_name, version.version, "decision_reason",
                                     "first valid model: no champion yet")

    return register
