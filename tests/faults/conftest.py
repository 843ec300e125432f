"""Fixtures of the fault suite (issue 7): a champion, private topics and brokers, an MLflow
server, and the writer of each case's figures to `test-artifacts/fault-suite.jsonl`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pika
import pytest

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from pipelines.settings import Settings
from serving.kafka import ensure_topics
from tests.support.brokers import delete_topics, private_kafka_broker
from tests.support.champion import register_champion
from tests.support.faultkit import Zygote
from tests.support.queues import ResultQueue

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "test-artifacts" / "fault-suite.jsonl"


@pytest.fixture
def fault_figures(request):
    """`write(case, messages, lost, duplicates, **more)`: one JSON line per case, with the
    seconds since the test started. Call it before asserting, so failures are recorded too."""
    started = time.monotonic()

    def write(case: str, messages: int, lost: int, duplicates: int, **more) -> dict:
        line = {"case": case, "messages": messages, "lost": lost, "duplicates": duplicates,
                "seconds": round(time.monotonic() - started, 1), **more,
                "test": request.node.name,
                "at": datetime.now(UTC).isoformat(timespec="seconds")}
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        with FIGURES.open("a") as out:
            out.write(json.dumps(line) + "\n")
        print(json.dumps(line))
        return line

    return write


@pytest.fixture(scope="session")
def fault_store(tmp_path_factory) -> dict:
    """A sqlite MLflow store with a champion, shared by the cases (they only read it)."""
    root = tmp_path_factory.mktemp("faults-mlflow")
    updates = {"mlflow_tracking_uri": f"sqlite:///{root}/mlflow.db", "state_dir": root / "state"}
    version = register_champion(Settings(_env_file=None, **updates), seed=0).version
    return {**updates, "version": version}


@pytest.fixture
def fault_settings(kafka_settings, rabbit_settings, fault_store) -> Settings:
    """Uuid-named topics, group and exchange on the session broker and RabbitMQ."""
    tag = uuid.uuid4().hex[:8]
    settings = kafka_settings.model_copy(update={
        "topic_sessions": f"faults-{tag}", "topic_dlq": f"faults-{tag}.dlq",
        "topic_station_state": f"faults-{tag}.station-state",
        "consumer_group": f"faults-{tag}", "rabbitmq_exchange": f"ev.scores.faults-{tag}",
        "rabbitmq_url": rabbit_settings.rabbitmq_url, "metrics_port": free_port(),
        "serve_model_poll_s": 1.0, "serve_batch_timeout_ms": 20,
        "serve_session_timeout_ms": 6000,
        **{k: v for k, v in fault_store.items() if k != "version"}})
    ensure_topics(settings)
    yield settings
    delete_topics(settings, [settings.topic_sessions, settings.topic_dlq,
                              settings.topic_station_state])
    delete_exchange(settings)


def delete_exchange(settings: Settings) -> None:
    try:
        with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
            conn.channel().exchange_delete(settings.rabbitmq_exchange)
    except pika.exceptions.AMQPError:
        pass


@pytest.fixture
def result_queue(fault_settings):
    queue = ResultQueue(fault_settings.rabbitmq_url, fault_settings.rabbitmq_exchange)
    yield queue
    queue.close()


@pytest.fixture
def private_kafka(fault_settings, tmp_path):
    """A Kafka-compatible broker of this test alone (own port and data dir), which it may
    restart; the settings of `fault_settings` pointed at it. Yields (settings, stack)."""
    with private_kafka_broker(fault_settings, tmp_path / "kafka-state") as broker:
        yield broker


# ---- slow starters, begun at collection so that they overlap the first cases ----------
class _BackgroundMlflow:
    """`mlflow server` (the stack's `mlflow_ui_process`) on a fresh sqlite store. It takes
    40-60 s to start on a loaded 2-core machine."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="evguard-faults-mlflow-"))
        self.settings = Settings(_env_file=None, state_dir=self.root / "state",
                                 mlflow_tracking_uri=f"sqlite:///{self.root}/mlflow.db",
                                 mlflow_ui_port=free_port())
        self.stack = LocalStack(self.settings)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="mlflow-server", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
            self.stack.mlflow_ui_process().start()
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            self.error = exc

    def close(self) -> None:
        self.thread.join(120)
        self.stack.mlflow_ui_process().stop()
        shutil.rmtree(self.root, ignore_errors=True)


class _BackgroundZygote:
    """The warm parent the cases fork worker processes from (10-20 s of imports)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="evguard-faults-zygote-"))
        self.zygote = Zygote(self.root / "zygote.log")

    def close(self) -> None:
        self.zygote.close()
        shutil.rmtree(self.root, ignore_errors=True)


_STARTERS = {"mlflow_server": _BackgroundMlflow, "worker_zygote": _BackgroundZygote}
_started: dict[str, object] = {}


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items) -> None:
    wanted = {name for item in items for name in getattr(item, "fixturenames", ())}
    for name, starter in _STARTERS.items():
        if name in wanted and name not in _started:
            _started[name] = starter()


def pytest_sessionfinish(session, exitstatus) -> None:
    while _started:
        _started.popitem()[1].close()


def _background(name: str):
    if name not in _started:
        _started[name] = _STARTERS[name]()
    return _started[name]


@pytest.fixture(scope="session")
def mlflow_server():
    """A running MLflow tracking server: (settings of its store and port, stack). A case may
    stop it; it is stopped at the end of the session in any case."""
    server = _background("mlflow_server")
    server.thread.join(180)
    if server.error is not None:
        raise server.error
    return server.settings, server.stack


@pytest.fixture(scope="session")
def worker_zygote() -> Zygote:
    """The warm parent of worker processes, shared by the cases."""
    zygote = _background("worker_zygote").zygote
    zygote.wait_ready()
    return zygote
