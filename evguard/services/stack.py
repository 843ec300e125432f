"""The embedded local stack: Kafka-compatible broker, RabbitMQ, MLflow, Prefect, SMTP sink.

`up` is idempotent (a service already running is left alone), `down` stops
only what `up` started, by the PIDs recorded under `<state_dir>/run/`. The broker
is also recognised by its data dir when its launcher died (see `process.py`): `up`
adopts it and `down` stops it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pika

from evguard.services.process import ManagedProcess, ServiceError, port_open
from pipelines.settings import Settings, settings_env
from serving.kafka import KafkaUnavailable, ensure_topics

ALL_SERVICES = ("kafka", "rabbitmq", "mlflow", "prefect", "smtp")
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"

RABBITMQ_MISSING = (
    "RabbitMQ is not listening on {where} and is not installed on this machine. "
    "Install it with `sudo apt-get install -y rabbitmq-server` (evguard then starts a "
    "private node for you), point EVGUARD_RABBITMQ_URL at a running broker, or run the "
    "whole system with `docker compose up`, which includes RabbitMQ."
)


# Measured by benchmarks/broker_durability.py (docs/faults.md): writes acknowledged up to
# 0.7 s before a SIGKILL of noida-db were lost (a new topic with them), none 0.8 s or more.
EMBEDDED_KAFKA_LOSS_WINDOW_S = 1.0
EMBEDDED_KAFKA_NOTE = (
    "kafka here is the embedded noida-db broker, which is not crash-durable: if its process "
    f"dies (SIGKILL, out of memory, power loss), writes it acknowledged in the last "
    f"{EMBEDDED_KAFKA_LOSS_WINDOW_S:.0f} s can be lost, a topic created in that second "
    "with them (measured, docs/faults.md). `evguard services down` saves first and loses "
    "nothing. Production belongs on Kafka: `docker compose up` (docker-compose.yml)."
)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    state: str  # running | external | stopped | embedded | disabled
    pid: int | None = None
    note: str = ""  # what a user should know before relying on it


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _amqp_ok(url: str) -> bool:
    """True once the broker completes an AMQP handshake (an open port is not enough)."""
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    params = pika.URLParameters(url)
    params.socket_timeout = 1
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
        return True
    except Exception:  # noqa: BLE001 - any handshake failure means "not ready yet"
        return False


@dataclass
class EmbeddedKafka(ManagedProcess):
    """The noida-db broker: a Python launcher whose child, the broker binary, holds the port
    (`data_dir` lets `up` and `down` find that child if the launcher died). Its own `stop
    kafka` command saves what it acknowledged; a signal alone can lose the last acknowledged
    writes (EMBEDDED_KAFKA_NOTE), so `stop` asks it first."""

    def before_stop(self, timeout: float) -> None:
        try:
            subprocess.run([self.command[0], "stop", "kafka", "--data-dir", str(self.data_dir)],
                           capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass  # the signal that follows still stops it


class LocalStack:
    """Starts, stops and reports the local services for one state dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = settings.state_path / "run"

    # ---- process specs -------------------------------------------------
    def kafka_process(self) -> ManagedProcess:
        s = self.settings
        noida = shutil.which("noida-db") or str(Path(sys.executable).parent / "noida-db")
        port = s.kafka_port
        return EmbeddedKafka(
            name="kafka",
            command=[noida, "start", "--only", "kafka", "--kafka-port", str(port),
                     "--host", "127.0.0.1", "--data-dir", str(s.state_path / "kafka")],
            run_dir=self.run_dir,
            port=port,
            ready=lambda: port_open("127.0.0.1", port),
            start_timeout=30,
            data_dir=s.state_path / "kafka",
        )

    def rabbitmq_process(self) -> ManagedProcess:
        _, port = self._rabbit_address()
        base = self.settings.state_path / "rabbitmq"
        env = {
            "HOME": str(base),
            "RABBITMQ_NODENAME": f"evguard{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            # kept below the ephemeral range too (see process.free_port)
            "RABBITMQ_DIST_PORT": str(port + 10000 if port + 10000 < 32768 else port - 10000),
            "RABBITMQ_BASE": str(base),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(base / "beam.pid"),
        }
        return ManagedProcess(
            name="rabbitmq", command=[RABBITMQ_SERVER], run_dir=self.run_dir, port=port,
            ready=lambda: _amqp_ok(self.settings.rabbitmq_url), env=env, start_timeout=45,
        )

    def mlflow_ui_process(self) -> ManagedProcess:
        s = self.settings
        port = s.mlflow_ui_port
        mlflow = str(Path(sys.executable).parent / "mlflow")
        return ManagedProcess(
            name="mlflow-ui",
            command=[mlflow, "server", "--backend-store-uri", s.mlflow_uri,
                     "--default-artifact-root", s.mlflow_artifact_root.as_uri(),
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            run_dir=self.run_dir, port=port,
            ready=lambda: _http_ok(f"http://127.0.0.1:{port}/health"),
            # MLflow 3's job runner (GenAI jobs, unused here) idles at ~1.4 GB and most of a
            # core (deploy/kubernetes/measure_footprint.py)
            env={"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            start_timeout=90,
        )

    def prefect_process(self) -> ManagedProcess:
        s = self.settings
        port = s.prefect_port
        prefect = str(Path(sys.executable).parent / "prefect")
        return ManagedProcess(
            name="prefect",
            command=[prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                     "--analytics-off"],
            run_dir=self.run_dir, port=port,
            ready=lambda: _http_ok(f"http://127.0.0.1:{port}/api/health"),
            env=prefect_env(s), start_timeout=90,
        )

    def prefect_worker_process(self) -> ManagedProcess:
        """A Prefect process worker on the stack's pool (started by the demo, not by `up`)."""
        s = self.settings
        prefect = str(Path(sys.executable).parent / "prefect")
        log = self.run_dir / "prefect-worker.log"
        return ManagedProcess(
            name="prefect-worker",
            command=[prefect, "worker", "start", "--pool", s.prefect_work_pool,
                     "--type", "process", "--name", f"evguard-{s.prefect_port}"],
            run_dir=self.run_dir, port=0,
            # the worker logs this line once it polls its pool
            ready=lambda: log.exists() and "started!" in log.read_text(errors="replace"),
            env={**prefect_env(s), "PREFECT_WORKER_QUERY_SECONDS": "2",
                 "PREFECT_WORKER_PREFETCH_SECONDS": "5"},
            start_timeout=60,
        )

    def dashboard_process(self) -> ManagedProcess:
        """The live dashboard (started by the demo, not by `up`; stopped by `down`)."""
        s = self.settings
        evguard = str(Path(sys.executable).parent / "evguard")
        return ManagedProcess(
            name="dashboard", command=[evguard, "dashboard"], run_dir=self.run_dir,
            port=s.dashboard_port, env={**settings_env(s), **prefect_env(s)}, start_timeout=60,
            ready=lambda: _http_ok(f"http://127.0.0.1:{s.dashboard_port}/"))

    def smtp_process(self) -> ManagedProcess:
        s = self.settings
        return ManagedProcess(
            name="smtp",
            command=[sys.executable, "-m", "evguard.services.smtp_sink", "--host", "127.0.0.1",
                     "--port", str(s.smtp_port), "--outbox", str(s.outbox_dir)],
            run_dir=self.run_dir, port=s.smtp_port,
            ready=lambda: port_open("127.0.0.1", s.smtp_port), start_timeout=20,
        )

    # ---- up / down / status ---------------------------------------------
    def up(self, only: tuple[str, ...] = ALL_SERVICES, ui: bool = False,
           log=lambda msg: None) -> list[str]:
        """Bring up the chosen services; returns the names of those it started."""
        unknown = set(only) - set(ALL_SERVICES)
        if unknown:
            raise ServiceError(f"unknown services {sorted(unknown)}; choose from {ALL_SERVICES}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started: list[str] = []
        for name in ALL_SERVICES:
            if name not in only:
                continue
            t0 = time.monotonic()
            embedded_kafka = name == "kafka" and self.settings.kafka_embedded
            orphan = self.kafka_process().orphan() if embedded_kafka else None
            did_start = getattr(self, f"_up_{name}")()
            if did_start:
                started.append(name)
            state = "started" if did_start else "already up"
            if orphan is not None and not did_start:
                state = f"already up (adopted pid {orphan}: its launcher had died)"
            log(f"{name}: {state} ({time.monotonic() - t0:.1f}s)")
        if ui and "mlflow" in only and self.mlflow_ui_process().start():
            started.append("mlflow-ui")
        return started

    def _up_kafka(self) -> bool:
        if not self.settings.kafka_embedded:
            return False
        started = self.kafka_process().start()
        try:
            ensure_topics(self.settings)
        except KafkaUnavailable as exc:
            raise ServiceError(str(exc)) from exc
        return started

    def _up_rabbitmq(self) -> bool:
        host, port = self._rabbit_address()
        proc = self.rabbitmq_process()
        if proc.running() or port_open(host, port):
            return False
        if host not in ("127.0.0.1", "localhost") or not Path(RABBITMQ_SERVER).exists():
            raise ServiceError(RABBITMQ_MISSING.format(where=f"{host}:{port}"))
        base = self.settings.state_path / "rabbitmq"
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        return proc.start()

    def _up_mlflow(self) -> bool:
        if self.settings.mlflow_tracking_uri:
            return False
        (self.settings.state_path / "mlflow").mkdir(parents=True, exist_ok=True)
        self.settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        return False  # sqlite needs no process; the store is created on first use

    def _up_prefect(self) -> bool:
        if self.settings.prefect_api_url:
            return False
        started = self.prefect_process().start()
        ensure_work_pool(self.settings)
        return started

    def _up_smtp(self) -> bool:
        if self.settings.smtp_host not in ("127.0.0.1", "localhost"):
            return False
        if port_open("127.0.0.1", self.settings.smtp_port) and not self.smtp_process().running():
            return False  # someone else's SMTP server is there; use it
        return self.smtp_process().start()

    def down(self, log=lambda msg: None) -> list[str]:
        stopped = []
        for proc in self._processes():
            if proc.stop():
                stopped.append(proc.name)
                log(f"{proc.name}: stopped")
        return stopped

    def _processes(self) -> list[ManagedProcess]:
        return [self.dashboard_process(), self.prefect_worker_process(),
                self.mlflow_ui_process(), self.smtp_process(),
                self.prefect_process(), self.kafka_process(), self.rabbitmq_process()]

    def status(self) -> list[ServiceStatus]:
        s = self.settings
        rows = []
        kafka = self.kafka_process()
        row = _status("kafka", f"kafka://{s.kafka_servers}", kafka, s.kafka_embedded,
                      lambda: port_open(*_split(s.kafka_servers)))
        rows.append(replace(row, note=EMBEDDED_KAFKA_NOTE) if s.kafka_embedded else row)
        host, port = self._rabbit_address()
        rows.append(_status("rabbitmq", f"amqp://{host}:{port}", self.rabbitmq_process(), True,
                            lambda: port_open(host, port)))
        ui = self.mlflow_ui_process()
        if ui.running():
            rows.append(_status("mlflow", f"http://127.0.0.1:{s.mlflow_ui_port}", ui, True,
                                lambda: True))
        else:
            rows.append(ServiceStatus("mlflow", s.mlflow_uri, "embedded"))
        rows.append(_status("prefect", s.prefect_api.removesuffix("/api"), self.prefect_process(),
                            not s.prefect_api_url, lambda: _http_ok(f"{s.prefect_api}/health")))
        rows.append(_status("smtp", f"smtp://{s.smtp_host}:{s.smtp_port}", self.smtp_process(),
                            True, lambda: port_open(s.smtp_host, s.smtp_port)))
        return rows

    def _rabbit_address(self) -> tuple[str, int]:
        url = urlparse(self.settings.rabbitmq_url)
        return url.hostname or "127.0.0.1", url.port or 5672


def _split(servers: str) -> tuple[str, int]:
    host, _, port = servers.split(",")[0].rpartition(":")
    return host, int(port)


def _status(name: str, url: str, proc: ManagedProcess, managed: bool, reachable) -> ServiceStatus:
    pid = proc.pid()
    if pid is not None:
        return ServiceStatus(name, url, "running", pid)
    if reachable():
        return ServiceStatus(name, url, "external")
    return ServiceStatus(name, url, "stopped" if managed else "unreachable")


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for Prefect processes (server, worker, CLI) of this stack."""
    home = settings.state_path / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": settings.prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def ensure_work_pool(settings: Settings) -> None:
    """Create the `process` work pool on the Prefect server if it does not exist."""
    api = settings.prefect_api
    name = settings.prefect_work_pool
    resp = httpx.get(f"{api}/work_pools/{name}", timeout=10)
    if resp.status_code == 200:
        return
    from prefect.workers.process import ProcessWorker

    base = ProcessWorker.get_default_base_job_template()
    resp = httpx.post(f"{api}/work_pools/", json={"name": name, "type": "process",
                                                  "base_job_template": base}, timeout=10)
    if resp.status_code not in (200, 201, 409):
        raise ServiceError(f"prefect: cannot create work pool {name}: {resp.text}")
