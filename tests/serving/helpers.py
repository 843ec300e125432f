"""Helpers of the serving tests: a real champion, a result queue, producing, running workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pika

from pipelines.settings import Settings, settings_env

ROOT = Path(__file__).resolve().parents[2]


def register_champion(settings: Settings, seed: int = 0, promote: bool = True) -> str:
    """Train a small Isolation Forest on synthetic sessions, log, register and (optionally)
    make it the champion. Returns its version."""
    import mlflow
    import numpy as np

    from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
    from pipelines.data.synth import generate_sessions
    from pipelines.models import registry, tracking
    from pipelines.models.anomaly_model import SessionAnomalyModel
    from pipelines.models.estimators import make_detector

    records, _ = generate_sessions(1500, seed=seed, anomaly_rate=0.0)
    X = feature_matrix(records).to_numpy()
    detector = make_detector("iforest", n_estimators=40, max_samples=256,
                             random_state=seed).fit(X)
    threshold = float(np.quantile(detector.score_samples(X), 0.97))
    model = SessionAnomalyModel(detector, threshold, FEATURE_COLUMNS, FEATURE_VERSION, X, 0.03,
                                f"test-iforest-{seed}")
    client = registry.mlflow_client(settings)
    name = f"serving-tests-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name, settings.mlflow_artifact_root.as_uri())
    with mlflow.start_run(experiment_id=experiment):
        logged = mlflow.pyfunc.log_model(name="model", python_model=model,
                                         pip_requirements=["scikit-learn", "numpy", "pandas"])
    version = tracking.register(settings, logged.model_uri, {"purpose": "serving-tests"})
    if promote:
        client.set_registered_model_alias(settings.model_name, registry.CHAMPION, version)
    return version


@contextlib.contextmanager
def private_kafka_broker(settings: Settings, state_dir: Path):
    """An embedded broker of the caller alone (own port and data dir, topics created), which
    it may restart; yields (settings pointed at it, its stack)."""
    from evguard.services.process import free_port
    from evguard.services.stack import LocalStack

    settings = settings.model_copy(update={"kafka_port": free_port(), "state_dir": state_dir})
    stack = LocalStack(settings)
    stack.up(only=("kafka",))
    try:
        yield settings, stack
    finally:
        stack.kafka_process().stop()


def delete_topics(settings: Settings, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    for future in AdminClient({"bootstrap.servers": settings.kafka_servers}).delete_topics(
            topics).values():
        with contextlib.suppress(Exception):  # cleanup is best effort
            future.result(timeout=10)


@dataclass
class Results:
    """Results received from the exchange, by sessionID."""

    bodies: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def sessions(self) -> set[str]:
        return {b["sessionID"] for b in self.bodies}

    def duplicates(self) -> int:
        return len(self.bodies) - len(self.sessions())

    def versions(self) -> Counter:
        return Counter(b["model"]["version"] for b in self.bodies)


class ResultQueue:
    """A durable queue bound to `score.#`, drained on a thread that reconnects after a restart.

    Messages are acknowledged after they are recorded, so a redelivery shows as a duplicate.
    """

    def __init__(self, url: str, exchange: str) -> None:
        self.results = Results()
        self.url, self.exchange = url, exchange
        self.queue = f"serving-test-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._declare()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _declare(self) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
            channel = conn.channel()
            channel.exchange_declare(self.exchange, "topic", durable=True)
            channel.queue_declare(self.queue, durable=True)
            channel.queue_bind(self.queue, self.exchange, "score.#")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
                    channel = conn.channel()
                    channel.basic_qos(prefetch_count=500)
                    for method, _props, body in channel.consume(self.queue,
                                                                inactivity_timeout=0.1):
                        if self._stop.is_set():
                            break
                        if method is not None:
                            with self._lock:
                                self.results.bodies.append(orjson.loads(body))
                                self.results.keys.append(method.routing_key)
                            channel.basic_ack(method.delivery_tag)
            except pika.exceptions.AMQPError:
                time.sleep(0.3)  # the broker is restarting

    def wait_for(self, predicate, timeout: float = 30.0) -> Results:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.results):
                    break
            time.sleep(0.05)
        with self._lock:
            return Results(list(self.results.bodies), list(self.results.keys))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with pika.BlockingConnection(pika.URLParameters(self.url)) as conn:
                conn.channel().queue_delete(self.queue)
        except pika.exceptions.AMQPError:
            pass


def produce(settings: Settings, values: list[bytes], keys: list[str | None] | None = None) -> None:
    """Produce raw values to the sessions topic and wait for every delivery."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 2})
    failed = []
    for i, value in enumerate(values):
        producer.produce(settings.topic_sessions, value=value,
                         key=None if keys is None else keys[i],
                         on_delivery=lambda err, _m: err and failed.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0 and not failed


class InProcessWorker:
    """`run_worker` on a thread of the test process (no signal handling)."""

    def __init__(self, settings: Settings, idle_exit_s: float = 0.0) -> None:
        from serving.run import run_worker

        self.stop = threading.Event()
        self.outcome = None

        def target() -> None:
            self.outcome = run_worker(settings, self.stop, idle_exit_s)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def finish(self, timeout: float = 30.0):
        """Stop and wait for the worker; its outcome (None if it did not stop in time)."""
        self.stop.set()
        self.thread.join(timeout)
        return self.outcome


def start_worker_process(settings: Settings, log: Path, *extra: str) -> subprocess.Popen:
    """`python -m serving` as a child process with these settings (in its own session)."""
    env = {**os.environ, **settings_env(settings), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "serving", "--quiet-batches", *extra],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
