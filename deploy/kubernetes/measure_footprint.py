"""Idle footprint of the process kinds whose CPU and memory docs/benchmarks.md does not give.

    .venv/bin/python deploy/kubernetes/measure_footprint.py [--seconds 60]

The Kubernetes manifests need a request and a limit for every container. The serving
worker, the OCPP gateway and the telemetry processor's CPU per event are measured under
load in docs/benchmarks.md; the monitoring and alert consumers, the dashboard, the
telemetry processor's resident memory, the MLflow and Prefect servers and the Prefect
worker are not. This starts each of them as the cluster runs them (same command, private
state dir, ports and RabbitMQ names, an embedded Kafka-compatible broker), lets it idle,
and reads from /proc: resident memory after start-up (VmRSS), its peak (VmHWM, start-up
included) and the CPU it used while idle. Processes are stopped by their PID; RabbitMQ
queues and exchanges it made and its state dir are deleted. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pika

from evguard.services.process import free_port
from evguard.services.stack import LocalStack, prefect_env
from pipelines.settings import Settings, settings_env

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """The process and its descendants (uvicorn and gunicorn fork workers)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True,
                         check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def sample(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds), summed over the process tree."""
    rss = peak = cpu = 0.0
    for p in tree_pids(pid):
        try:
            rss += status_kb(p, "VmRSS") / 1024
            peak += status_kb(p, "VmHWM") / 1024
            cpu += cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return rss, peak, cpu


def measure(name: str, command: list[str], env: dict[str, str], ready, idle_s: float,
            log_dir: Path) -> dict:
    log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: see {log_dir / f'{name}.log'}")
            if time.monotonic() - started > 120:
                raise RuntimeError(f"{name} not ready in 120 s: see {log_dir / f'{name}.log'}")
            time.sleep(0.5)
        startup_s = time.monotonic() - started
        time.sleep(5)  # imports done lazily on the first loop turn
        _, _, cpu_before = sample(proc.pid)
        time.sleep(idle_s)
        rss, peak, cpu_after = sample(proc.pid)
        return {"name": name, "startup_s": startup_s, "rss_mb": rss, "peak_mb": peak,
                "processes": len(tree_pids(proc.pid)),
                "idle_cpu": (cpu_after - cpu_before) / idle_s}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def http_ok(url: str):
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    return ready


def log_says(path: Path, text: str):
    return lambda: path.exists() and text in path.read_text(errors="replace")


def delete_rabbit_names(settings: Settings) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    channel = connection.channel()
    for queue in (settings.monitoring_queue, settings.alerts_queue,
                  settings.monitoring_queue + ".dlq", settings.alerts_queue + ".dlq"):
        channel.queue_delete(queue)
    channel.exchange_delete(settings.rabbitmq_exchange)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="measure only processes whose name contains one of these words")
    args = parser.parse_args()

    def wanted(name: str) -> bool:
        return args.only is None or any(word in name for word in args.only)

    tag = uuid.uuid4().hex[:8]
    state = Path(tempfile.mkdtemp(prefix="evguard-footprint-"))
    settings = Settings(_env_file=None, state_dir=state, kafka_port=free_port(),
                        mlflow_ui_port=free_port(), prefect_port=free_port(),
                        rabbitmq_exchange=f"fp-{tag}", monitoring_queue=f"fp-mon-{tag}",
                        alerts_queue=f"fp-alerts-{tag}", dashboard_port=free_port(),
                        metrics_port=free_port(), telemetry_metrics_port=free_port(),
                        topic_telemetry=f"fp-telemetry-{tag}",
                        topic_telemetry_state=f"fp-telemetry-state-{tag}",
                        topic_telemetry_dlq=f"fp-telemetry-dlq-{tag}",
                        telemetry_group=f"fp-{tag}")
    settings = settings.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{settings.mlflow_ui_port}"})
    stack = LocalStack(settings)
    # as base/mlflow.yaml: MLflow's job runner (GenAI jobs, huey consumers) is not used
    env = {**settings_env(settings), **prefect_env(settings),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    rows = []
    try:
        stack.up(only=("kafka",))
        runs = [
            ("mlflow server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                               str(settings.mlflow_ui_port), "--workers", "2",
                               "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
                               "--artifacts-destination", str(state / "mlartifacts"),
                               "--serve-artifacts"],
             http_ok(f"http://127.0.0.1:{settings.mlflow_ui_port}/health")),
            ("prefect server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                "--port", str(settings.prefect_port), "--analytics-off"],
             http_ok(f"http://127.0.0.1:{settings.prefect_port}/api/health")),
        ]
        for name, command, ready in runs:
            if wanted(name):
                rows.append(measure(name, command, env, ready, args.seconds, state))
        # the consumers, dashboard and workers, each with the MLflow and Prefect servers up
        stack.up(only=("mlflow", "prefect"))
        runs = [
            ("evguard monitor", [str(BIN / "evguard"), "monitor"],
             log_says(state / "evguard monitor.log", "monitoring queue")),
            ("evguard alert", [str(BIN / "evguard"), "alert"],
             log_says(state / "evguard alert.log", "alerting on queue")),
            ("evguard dashboard", [str(BIN / "evguard"), "dashboard"],
             http_ok(f"http://127.0.0.1:{settings.dashboard_port}/healthz")),
            ("evguard telemetry", [str(BIN / "evguard"), "telemetry"],
             http_ok(f"http://127.0.0.1:{settings.telemetry_metrics_port}/healthz")),
            ("prefect worker (process pool)",
             [str(BIN / "prefect"), "worker", "start", "--pool", f"fp-{tag}", "--type",
              "process"], log_says(state / "prefect worker (process pool).log", "started")),
        ]
        for name, command, ready in runs:
            if wanted(name):
                rows.append(measure(name, command, env, ready, args.seconds, state))
    finally:
        stack.down()
        delete_rabbit_names(settings)
        shutil.rmtree(state, ignore_errors=True)
    print(f"\nidle {args.seconds:.0f} s after start-up, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
    print("| process | OS processes | start-up s | RSS MB (idle) | peak RSS MB | "
          "CPU idle (cores) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['name']} | {row['processes']} | {row['startup_s']:.1f} | "
              f"{row['rss_mb']:.0f} | {row['peak_mb']:.0f} | {row['idle_cpu']:.3f} |")


if __name__ == "__main__":
    main()
