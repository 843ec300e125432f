"""Fixtures of the dashboard tests: a private store, queues, SMTP sink and a served app."""

from __future__ import annotations

import threading
import uuid

import pytest
import uvicorn

from evguard.services.process import free_port, wait_until
from pipelines.settings import Settings
from tests.support.queues import consumer_queues


@pytest.fixture(scope="session")
def dash_mlflow_uri(tmp_path_factory) -> str:
    """One sqlite MLflow store for the dashboard tests (creating one costs seconds);
    each test registers its own uuid-named model in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('dash-mlflow')}/mlflow.db"


@pytest.fixture
def dash_settings(rabbit_settings: Settings, tmp_path, dash_mlflow_uri) -> Settings:
    settings = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state",
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "mlflow_tracking_uri": dash_mlflow_uri,
        "model_name": f"ev-session-anomaly-{uuid.uuid4().hex[:8]}",
        "dashboard_port": free_port(),
        "smtp_port": free_port(),
        "metrics_port": free_port(),
        "monitor_window_s": 3600,
        "monitor_min_volume": 20,
    })
    with consumer_queues(settings) as settings:
        yield settings


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
def alias_champion(dash_settings, tmp_path):
    """A registry entry (run metrics and tags, no model) aliased `champion`: what the dashboard
    reads of a champion."""

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
