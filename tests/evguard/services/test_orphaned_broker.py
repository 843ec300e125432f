"""The stack tracks what it really started (issue 15): noida-db's launcher is a Python script
whose child is the broker. When the launcher dies, `up` adopts the orphaned broker and
`down` stops it; a program on the port that is not the stack's own is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from evguard.services.process import ServiceError, free_port, pid_alive, port_open, wait_until
from evguard.services.stack import LocalStack
from pipelines.settings import Settings


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def round_trip(settings: Settings) -> bytes | None:
    """Produce one marker to the sessions topic and read it back; the value read."""
    marker = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all"})
    producer.produce(settings.topic_sessions, value=marker, key=b"k")
    assert producer.flush(20) == 0
    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"orphan-{marker.decode()}", "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.topic_sessions])
    try:
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() == marker:
                return msg.value()
    finally:
        consumer.close()
    return None


@pytest.fixture
def stack(tmp_path):
    settings = Settings(_env_file=None, state_dir=tmp_path / "state", kafka_port=free_port())
    stack = LocalStack(settings)
    yield stack
    stack.down()


def test_up_adopts_and_down_stops_the_broker_whose_launcher_was_killed(stack):
    settings = stack.settings
    assert stack.up(only=("kafka",)) == ["kafka"]
    launcher = int(stack.kafka_process().pid_file.read_text())
    (broker,) = children(launcher)  # the noida-db binary, which holds the port

    os.kill(launcher, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(launcher), 10)
    assert pid_alive(broker) and port_open("127.0.0.1", settings.kafka_port)

    said: list[str] = []
    stack.up(only=("kafka",), log=said.append)  # before: "port ... already in use by another"
    assert any(f"adopted pid {broker}" in line for line in said), said
    (row,) = [r for r in stack.status() if r.name == "kafka"]
    assert row.state == "running" and row.pid == broker
    assert round_trip(settings) is not None

    assert stack.down() == ["kafka"]
    assert wait_until(lambda: not pid_alive(broker), 10)
    assert not port_open("127.0.0.1", settings.kafka_port)
    (row,) = [r for r in stack.status() if r.name == "kafka"]
    assert row.state == "stopped"


def test_a_program_on_the_port_that_is_not_the_stacks_own_is_left_alone(stack):
    port = stack.settings.kafka_port
    squatter = subprocess.Popen([sys.executable, "-c", (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)")])
    try:
        assert wait_until(lambda: port_open("127.0.0.1", port), 10)
        with pytest.raises(ServiceError, match="already in use"):
            stack.up(only=("kafka",))
        assert stack.down() == []
        assert squatter.poll() is None and port_open("127.0.0.1", port)
    finally:
        squatter.kill()
        squatter.wait(10)


def test_status_states_the_embedded_brokers_loss_window_and_where_production_belongs(
        tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from evguard.cli import app

    monkeypatch.setenv("EVGUARD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("EVGUARD_KAFKA_PORT", str(free_port()))
    embedded = CliRunner().invoke(app, ["services", "status"])
    assert embedded.exit_code == 0, embedded.output
    text = " ".join(embedded.output.split())
    assert "not crash-durable" in text and "in the last 1 s can be lost" in text
    assert "Production belongs on Kafka: `docker compose up`" in text

    monkeypatch.setenv("EVGUARD_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # a real cluster: no note
    external = CliRunner().invoke(app, ["services", "status"])
    assert external.exit_code == 0 and "not crash-durable" not in external.output


def test_down_leaves_alone_a_program_that_reuses_the_recorded_pid(stack):
    """The broker died and its PID now belongs to another program: not the stack's to stop."""
    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)  # a group leader
    try:
        kafka = stack.kafka_process()
        kafka.run_dir.mkdir(parents=True, exist_ok=True)
        kafka.pid_file.write_text(str(stranger.pid))
        assert not kafka.running()
        assert stack.down() == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(10)
