"""Resident memory of the scoring worker (`python -m serving`): after start-up and after scoring.

    .venv/bin/python benchmarks/worker_rss.py [--sessions 20000] [--model iforest]

Starts a private embedded Kafka broker, registers a champion as
`benchmarks/serving_throughput.py` does (100 trees on 5,000 synthetic sessions) in a
throw-away MLflow store, starts the worker as its own process (`tests.support.workers`),
and reads its `VmRSS` from /proc once it serves (its metrics answer) and again once it has
published a result for every session produced; `VmHWM` is the peak. It also lists the
heavy libraries the worker process has imported (from its /proc maps). RabbitMQ is the
machine's; the exchange and queue are uuid-named and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pika

from evguard.services.process import free_port
from pipelines.contracts.sessions import encode_session, session_key
from pipelines.data.synth import generate_sessions
from pipelines.settings import Settings
from serving.kafka import ensure_topics
from tests.support.brokers import private_kafka_broker, produce
from tests.support.champion import register_champion
from tests.support.workers import start_worker_process

LIBRARIES = ("pandas", "sklearn", "scipy", "shap", "mlflow", "numba", "llvmlite", "pyarrow",
             "isotree", "sqlalchemy", "matplotlib", "prefect")


def memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, and the RSS's heap (RssAnon) and mapped-file (RssFile: the libraries'
    code) parts of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def libraries(pid: int) -> list[str]:
    """Which of `LIBRARIES` have a shared object mapped in the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in LIBRARIES if f"/site-packages/{name}/" in maps]


def counter(metrics: str, name: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--model", choices=("iforest", "isotree", "eif"), default="iforest")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still tears everything down

    tmp = Path(tempfile.mkdtemp(prefix="evguard-rss-"))
    tag = uuid.uuid4().hex[:8]
    base = Settings()
    settings = Settings(
        _env_file=None, state_dir=tmp / "state", data_dir=tmp / "data",
        metrics_port=free_port(), rabbitmq_url=base.rabbitmq_url,
        rabbitmq_exchange=f"ev.scores.rss-{tag}", topic_sessions=f"rss-{tag}",
        topic_dlq=f"rss-{tag}.dlq", consumer_group=f"rss-{tag}",
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", serve_model_poll_s=3600)
    queue = f"rss-results-{tag}"
    figures: dict = {"sessions": args.sessions, "model": args.model}
    connection = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    channel = connection.channel()
    worker = None
    try:
        channel.exchange_declare(settings.rabbitmq_exchange, "topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, settings.rabbitmq_exchange, "score.#")
        with private_kafka_broker(settings, tmp / "kafka") as (settings, _stack):
            ensure_topics(settings)
            extra = {"extension_level": 1} if args.model == "eif" else {}
            register_champion(settings, seed=7, sessions=5000, n_estimators=100,
                              alert_share=0.01, kind=args.model, **extra)
            worker = start_worker_process(settings, tmp / "worker.log")
            metrics = f"http://127.0.0.1:{settings.metrics_port}/metrics"

            def serving() -> bool:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited: {(tmp / 'worker.log').read_text()}")
                try:
                    with urllib.request.urlopen(metrics, timeout=2):
                        return True
                except OSError:
                    return False

            wait_until(serving, 180, "the worker to serve")
            time.sleep(2)
            figures["after_start"] = memory(worker.pid)
            figures["libraries_after_start"] = libraries(worker.pid)

            records, _ = generate_sessions(args.sessions, seed=1, anomaly_rate=0.02)
            produce(settings, [encode_session(r) for r in records],
                    [session_key(r) for r in records])

            def scored() -> bool:
                with urllib.request.urlopen(metrics, timeout=5) as answer:
                    text = answer.read().decode()
                return counter(text, "evguard_serving_consumed_total") >= args.sessions \
                    and channel.queue_declare(queue, passive=True).method.message_count > 0

            wait_until(scored, 600, "every session scored")
            time.sleep(3)  # the last batches' confirms
            figures["after_scoring"] = memory(worker.pid)
            figures["libraries_after_scoring"] = libraries(worker.pid)
            worker.terminate()
            worker.wait(60)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        channel.queue_delete(queue)
        channel.exchange_delete(settings.rabbitmq_exchange)
        connection.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
