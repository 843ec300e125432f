"""Shared fixtures: real services started through evguard's own services code.

Each test session gets its own state dir and ports, so a running demo is
never disturbed. Names of topics, queues and exchanges are uuid-based.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from evguard.services.process import free_port, port_open
from evguard.services.stack import LocalStack
from pipelines.settings import Settings
from tests.support import score_messages
from tests.support.brokers import private_rabbitmq as private_rabbitmq_node

SHARED_ACN = Path(__file__).resolve().parents[1].parent / "shared" / "acn"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evguard-state")


@pytest.fixture(scope="session")
def base_settings(state_dir: Path, tmp_path_factory) -> Settings:
    """Settings for this test session: private state dir, free ports, sqlite MLflow."""
    return Settings(
        _env_file=None,
        state_dir=state_dir,
        data_dir=tmp_path_factory.mktemp("evguard-data"),
        kafka_port=free_port(),
        smtp_port=free_port(),
        dashboard_port=free_port(),
        metrics_port=free_port(),
        prefect_port=free_port(),
        mlflow_ui_port=free_port(),
        rabbitmq_exchange=f"ev.scores.test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture(scope="session")
def kafka_settings(base_settings: Settings):
    """An embedded Kafka-compatible broker on its own port, with the topics created."""
    stack = LocalStack(base_settings)
    stack.up(only=("kafka",))
    yield base_settings
    stack.kafka_process().stop()


@pytest.fixture(scope="session")
def rabbit_settings(base_settings: Settings):
    """RabbitMQ: the one already listening on 5672, else a private node started by the stack."""
    stack = LocalStack(base_settings)
    if port_open("127.0.0.1", 5672):
        yield base_settings
        return
    stack.up(only=("rabbitmq",))
    yield base_settings
    stack.rabbitmq_process().stop()


@pytest.fixture
def private_rabbitmq(tmp_path: Path):
    """A RabbitMQ node of this test alone (own port and state), which the test may restart."""
    with private_rabbitmq_node(tmp_path / "state") as node:
        yield node


@pytest.fixture
def kit():
    """Score results built with the worker's encoder, and their publisher."""
    return score_messages


@pytest.fixture
def mlflow_settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose MLflow store is a fresh sqlite file for this test."""
    return base_settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                            "state_dir": tmp_path / "state"})


@pytest.fixture
def shared_acn() -> Path:
    if not SHARED_ACN.is_dir() or not list(SHARED_ACN.glob("*.json")):
        pytest.skip("real ACN exports not present at ../shared/acn")
    return SHARED_ACN
