"""The one settings object of evguard.

Every entry point (CLI, flow, worker) builds a `Settings` once and passes it
down. Nothing else in the project reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All configuration, read from `EVGUARD_*` variables and an optional `.env`."""

    model_config = SettingsConfigDict(
        env_prefix="EVGUARD_", env_file=".env", extra="ignore", frozen=True
    )

    # where local state lives: service data, PIDs, logs, stores, outbox
    state_dir: Path = Field(Path(".evguard"), description="Local state: services, logs, stores")
    data_dir: Path = Field(Path("data"), description="Datasets: raw pages, quarantine, Parquet")

    # Kafka
    kafka_bootstrap: str = Field("", description="Existing Kafka cluster; empty = embedded broker")
    kafka_port: int = Field(19092, description="Port of the embedded Kafka-compatible broker")
    topic_sessions: str = "ev-station-data"
    topic_dlq: str = "ev-station-data.dlq"
    topic_partitions: int = 3
    consumer_group: str = "evguard-scoring"

    # RabbitMQ
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    rabbitmq_exchange: str = "ev.scores"

    # MLflow
    mlflow_tracking_uri: str = Field("", description="Empty = sqlite under the state dir")
    mlflow_ui_port: int = 5000
    model_name: str = "ev-session-anomaly"

    # Prefect
    prefect_api_url: str = Field("", description="Empty = local server on prefect_port")
    prefect_port: int = 4200
    prefect_work_pool: str = "evguard-process"

    # ACN-Data
    acn_api_url: str = "https://ev.caltech.edu/api/v1"
    acn_token: SecretStr = SecretStr("")

    # monitoring store and alerting
    monitoring_db_url: str = Field("", description="SQLAlchemy URL; empty = sqlite in state dir")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password: SecretStr = SecretStr("")
    alert_sender: str = "evguard@localhost"
    alert_recipients: list[str] = ["ops@localhost"]
    alert_cooldown_s: int = 900
    alert_webhook_url: str = ""

    # dashboard and worker metrics
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8050
    metrics_port: int = 9108

    @property
    def state_path(self) -> Path:
        return self.state_dir.resolve()

    @property
    def kafka_embedded(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def kafka_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.state_path / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.state_path / "mlflow" / "artifacts"

    @property
    def prefect_api(self) -> str:
        return self.prefect_api_url or f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def monitoring_db(self) -> str:
        return self.monitoring_db_url or f"sqlite:///{self.state_path / 'monitoring.db'}"

    @property
    def outbox_dir(self) -> Path:
        return self.state_path / "outbox"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)
