"""The one settings object of evguard.

Every entry point (CLI, flow, worker) builds a `Settings` once and passes it
down. Nothing else in the project reads the environment.
"""

from __future__ import annotations

import json
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
    topic_sessions: str = Field("ev-station-data", description="Topic of incoming sessions")
    topic_dlq: str = Field("ev-station-data.dlq", description="Dead-letter topic for bad messages")
    topic_partitions: int = Field(3, description="Partitions of the sessions topic")
    consumer_group: str = Field("evguard-scoring", description="Kafka consumer group of workers")

    # RabbitMQ
    rabbitmq_url: str = Field("amqp://guest:guest@127.0.0.1:5672/%2F", description="AMQP URL")
    rabbitmq_exchange: str = Field("ev.scores", description="Topic exchange of score results")
    rabbitmq_ca_file: str = Field(
        "", description="amqps:// only: PEM file of the CA that signed RabbitMQ's certificate; "
                        "empty = the system's CAs")
    rabbitmq_client_cert: str = Field(
        "", description="amqps:// only: PEM client certificate, for brokers that verify peers")
    rabbitmq_client_key: str = Field(
        "", description="amqps:// only: PEM key of the client certificate (if not in the cert file)")
    rabbitmq_tls_verify_hostname: bool = Field(
        True, description="amqps:// only: check that RabbitMQ's certificate names the URL's host")

    # MLflow
    mlflow_tracking_uri: str = Field("", description="Empty = sqlite under the state dir")
    mlflow_ui_port: int = Field(5000, description="Port of the optional MLflow UI server")
    model_name: str = Field("ev-session-anomaly", description="Registered model name")

    # Prefect
    prefect_api_url: str = Field("", description="Empty = local server on prefect_port")
    prefect_port: int = Field(4200, description="Port of the local Prefect server")
    prefect_work_pool: str = Field("evguard-process", description="Process work pool")

    # ACN-Data
    acn_api_url: str = Field("https://ev.caltech.edu/api/v1", description="ACN-Data API base")
    acn_token: SecretStr = Field(SecretStr(""), description="ACN-Data API token (secret)")
    acn_timeout_s: float = Field(30.0, description="ACN-Data request timeout, seconds")
    acn_max_retries: int = Field(5, description="ACN-Data retries on timeouts, 429 and 5xx")
    acn_page_size: int = Field(1000, description="ACN-Data sessions per page (max_results)")
    ingest_max_failure_rate: float = Field(
        0.05, description="Ingest fails when more than this fraction of rows fails validation")

    # monitoring store and alerting
    monitoring_db_url: str = Field("", description="SQLAlchemy URL; empty = sqlite in state dir")
    smtp_host: str = Field("127.0.0.1", description="SMTP server for alert emails")
    smtp_port: int = Field(8025, description="SMTP port (8025 = local sink)")
    smtp_starttls: bool = Field(False, description="Use STARTTLS")
    smtp_user: str = Field("", description="SMTP user; empty = no auth")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password (secret)")
    alert_sender: str = Field("evguard@localhost", description="From address of alerts")
    alert_recipients: list[str] = Field(["ops@localhost"], description='JSON list, e.g. ["a@b.c"]')
    alert_cooldown_s: int = Field(900, description="Per-station alert de-duplication window")
    alert_webhook_url: str = Field("", description="Optional Slack-compatible webhook")
    alert_max_attempts: int = Field(8, description="SMTP attempts before an alert is dead-lettered")
    alert_retry_base_s: float = Field(2.0, description="First SMTP retry delay, then doubling")
    alert_retry_max_s: float = Field(60.0, description="Longest delay between SMTP attempts")
    alert_claim_lease_s: float = Field(
        60.0, gt=0, description="How long an alert consumer's claim on an alert lasts unrenewed: "
                                "a crashed consumer's alert is taken over after this")
    alert_major_margin: float = Field(0.05, description="Score over threshold by this fraction = major")
    alert_critical_margin: float = Field(0.15, description="Score over threshold by this fraction = critical")
    smtp_timeout_s: float = Field(10.0, description="SMTP connect/send timeout")
    alerts_queue: str = Field(
        "alerts", description="Durable queue of anomalies and station alerts "
                              "(score.*.anomaly, station.*.*)")

    # monitoring consumer, drift and the retraining trigger
    monitoring_queue: str = Field(
        "monitoring", description="Durable queue of all scores and station alerts "
                                  "(score.#, station.#)")
    monitor_window_s: int = Field(300, description="Monitoring window for health, drift and retraining")
    monitor_min_volume: int = Field(50, description="Fewest sessions in a window to judge drift/rate")
    drift_psi_threshold: float = Field(0.25, description="PSI of a feature or the score that means drift")
    drift_ignore_columns: list[str] = Field(
        ["weekday", "arrival_hour_sin", "arrival_hour_cos"],
        description="Calendar features: a short window always looks drifted on them")
    retrain_anomaly_rate: float = Field(0.2, description="Window anomaly rate that triggers retraining")
    retrain_cooldown_s: int = Field(21600, description="Least time between two triggered retrainings")
    retrain_deployment: str = Field("train_flow/train-weekly", description="Deployment run on drift")

    # dashboard and worker metrics
    dashboard_host: str = Field("127.0.0.1", description="Dashboard bind address")
    dashboard_port: int = Field(8050, description="Dashboard port")
    dashboard_token: SecretStr = Field(
        SecretStr(""), description="Bearer token for dashboard actions (acknowledging alerts); "
                                   "all dashboard credentials empty = only loopback may act")
    dashboard_basic_user: str = Field("", description="HTTP Basic user for dashboard actions")
    dashboard_basic_password_hash: SecretStr = Field(
        SecretStr(""), description="Its password, hashed by `python -m dashboard.auth`")
    dashboard_trusted_header: str = Field(
        "", description="Identity header set by a trusted reverse proxy, e.g. X-Forwarded-User; "
                        "empty = not honoured")
    metrics_port: int = Field(9108, description="Worker Prometheus/health port; 0 = any free port")
    metrics_host: str = Field("127.0.0.1", description="Interface the worker's metrics bind to")
    prefect_ui_url: str = Field("", description="Prefect UI link shown to users; empty = local")
    mlflow_ui_url: str = Field("", description="MLflow UI link shown to users; empty = local")
    worker_metrics_url: str = Field(
        "", description="Worker /metrics the dashboard scrapes; empty = metrics_host:metrics_port")

    # serving worker (serving/, docs/serving.md)
    serve_batch_size: int = Field(1000, description="Max messages per consume() micro-batch")
    serve_batch_timeout_ms: int = Field(
        20, description="Longest wait for a micro-batch's first message (the loop's idle tick)")
    serve_batch_linger_ms: float = Field(
        5.0, ge=0, description="After a micro-batch's first message, wait up to this long for "
        "more: fewer, larger batches at low rates (less CPU per session) for at most this much "
        "added latency")
    serve_max_inflight_batches: int = Field(
        8, description="Batches awaiting RabbitMQ confirms before the chain pushes back")
    serve_commit_interval_ms: int = Field(200, description="Least time between offset commits")
    serve_model_poll_s: float = Field(30.0, description="How often to poll the champion alias")
    serve_max_invalid_ratio: float = Field(
        0.5, description="Stop when more than this share of recent messages is invalid; 1 = never")
    serve_invalid_window: int = Field(1000, description="Messages the invalid ratio spans")
    serve_site_ids: list[str] = Field(["0001", "0002", "0019"],
                                      description="Accepted siteIDs; [] accepts any")
    serve_explain_top_k: int = Field(3, description="Features in each anomaly's explanation")
    serve_publish_retry_max_s: float = Field(10.0, description="Longest RabbitMQ reconnect backoff")
    serve_confirm_timeout_s: float = Field(30.0, description="Re-publish when a confirm takes longer")
    serve_shutdown_timeout_s: float = Field(30.0, description="On stop, wait this long for confirms")
    stream_resume_limit: int = Field(
        5, ge=0, description="Times the serving worker rebuilds its consumer and producers in "
                             "place after a producer failed for good (e.g. a restarted broker "
                             "lost its idempotence state) before it exits; 0 = exit at once")
    serve_session_timeout_ms: int = Field(
        10000, description="Kafka group session timeout: how soon a dead worker's partitions move")
    serve_instance_id: str = Field(
        "", description="Static group membership id, unique per worker: a restarted worker takes "
                        "its partitions back at once; empty = dynamic membership")

    # station context and health (pipelines/stations/, keyed_state/; docs/stations.md)
    topic_station_state: str = Field(
        "ev-station-data.station-state",
        description="Compacted changelog of the worker's per-station state, one partition per "
                    "sessions partition")
    station_tick_s: float = Field(
        60.0, description="How often the worker checks its stations for silence (wall clock)")
    threshold_recalibration: bool = Field(
        True, description="Monitoring re-calibrates the champion's threshold from its recent "
                          "scores (pipelines/scores/calibration.py, docs/models.md)")
    recalibration_window: int = Field(
        5000, description="Newest scores of the champion's version a re-calibration reads")
    recalibration_min_tail: int = Field(
        10, description="Fewest window scores above the new threshold (window >= this / budget)")
    recalibration_tolerance: float = Field(
        1.25, description="Keep the threshold while the window's alert rate is within budget "
                          "x/÷ this")
    recalibration_max_factor: float = Field(
        4.0, description="The new threshold alerts on budget x/÷ at most this of the training "
                         "reference scores")

    # live charger telemetry over OCPP (gateway/, telemetry/, fleet/; docs/telemetry.md)
    topic_telemetry: str = Field(
        "ev-charger-telemetry", description="Topic of normalised OCPP telemetry events, keyed "
                                            "by charge point id")
    topic_telemetry_dlq: str = Field(
        "ev-charger-telemetry.dlq", description="Dead-letter topic for bad telemetry events")
    topic_telemetry_state: str = Field(
        "ev-charger-telemetry.connector-state",
        description="Compacted changelog of the telemetry processor's per-connector state")
    telemetry_group: str = Field("evguard-telemetry",
                                 description="Kafka consumer group of telemetry processors")
    telemetry_instance_id: str = Field(
        "", description="Static group membership id of a telemetry processor; empty = dynamic")
    telemetry_status_interval_s: float = Field(
        5.0, description="Least time between two status snapshots of one charging connector")
    live_offline_after_s: float = Field(
        120.0, description="The live view marks a connector in a transaction Offline when its "
                           "last sample is older than this")
    telemetry_timezone: str = Field(
        "America/Los_Angeles", description="timezone written into sessions handed to scoring")
    ocpp_host: str = Field("127.0.0.1", description="Address the OCPP gateway listens on")
    ocpp_port: int = Field(9000, description="WebSocket port of the OCPP gateway")
    ocpp_mode: str = Field("standalone", description="standalone: be the CSMS; proxy: forward "
                                                     "to ocpp_upstream_url and mirror to Kafka")
    ocpp_upstream_url: str = Field(
        "", description="The operator's CSMS (ws:// or wss://) in proxy mode; the charge "
                        "point id is appended to it")
    ocpp_upstream_forward_auth: bool = Field(
        False, description="Proxy mode: pass each charger's HTTP Basic credentials on to the "
                           "upstream CSMS (its own security profile 1)")
    ocpp_charge_points: Path = Field(
        Path(""), description="JSON registry of known charge points (site, hashed password); "
                              "empty = <state_dir>/charge_points.json")
    ocpp_allow_unknown: bool = Field(
        False, description="Accept charge points missing from the registry (no password)")
    ocpp_tls_cert: Path = Field(Path(""), description="PEM certificate: serve wss:// "
                                                      "(security profile 2); empty = ws://")
    ocpp_tls_key: Path = Field(Path(""), description="PEM private key of ocpp_tls_cert")
    ocpp_max_frame_bytes: int = Field(65536, description="Largest OCPP frame accepted")
    ocpp_max_messages_per_s: float = Field(
        50.0, description="Per-connection message rate above which frames are refused")
    ocpp_heartbeat_s: int = Field(300, description="Heartbeat interval the gateway asks for")
    ocpp_spool_max_bytes: int = Field(
        256 * 1024 * 1024, description="Proxy mode: disk spool for Kafka outages, at most this")
    ocpp_metrics_port: int = Field(9102, description="Port of the gateway's /metrics and "
                                                     "/healthz")
    telemetry_metrics_port: int = Field(9103, description="Port of the telemetry processor's "
                                                          "/metrics and /healthz")
    monitor_metrics_port: int = Field(9104, description="Port of the monitoring consumer's "
                                                        "/metrics and /healthz")
    alert_metrics_port: int = Field(9105, description="Port of the alert consumer's /metrics "
                                                      "and /healthz")

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
    def prefect_ui(self) -> str:
        return self.prefect_ui_url or self.prefect_api.removesuffix("/api")

    @property
    def mlflow_ui(self) -> str:
        return self.mlflow_ui_url or f"http://127.0.0.1:{self.mlflow_ui_port}"

    @property
    def monitoring_db(self) -> str:
        return self.monitoring_db_url or f"sqlite:///{self.state_path / 'monitoring.db'}"

    @property
    def outbox_dir(self) -> Path:
        return self.state_path / "outbox"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    """`EVGUARD_*` variables that rebuild these settings in a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = json.dumps(value)
        elif isinstance(value, Path):
            unset = value == Path("") and Settings.model_fields[name].default == Path("")
            value = "" if unset else str(value.resolve())  # "" keeps "empty = the default"
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"EVGUARD_{name.upper()}"] = str(value)
    return env


def env_example() -> str:
    """The text of `.env.example`: every setting with its default and meaning."""
    lines = ["# evguard settings: copy to .env and edit. Every variable is optional."]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = ""
        elif isinstance(default, list):
            default = json.dumps(default)
        elif isinstance(default, Path):
            default = str(default)
        lines.append(f"# {field.description or ''}".rstrip())
        lines.append(f"EVGUARD_{name.upper()}={default}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(env_example(), end="")
