"""The OCPP gateway and telemetry processor flows under the Prefect test harness.

The real broker, RabbitMQ and the fleet's OCPP chargers over real WebSockets: a 1.6 and a
2.0.1 charger complete transactions through `ocpp_gateway_flow`, which stops cleanly on
SIGTERM (what cancelling its deployment's run sends) and ends Cancelled; `telemetry_flow`
then turns that telemetry into a live alert and two handed-off sessions and stops once idle.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid

import orjson
import pika
import pytest

from evguard.services.process import free_port, port_open
from fleet import FleetConfig, run_fleet, schedule_sessions
from gateway.registry import add_charger
from telemetry.kafka import ensure_topics
from tests.fleet.test_fleet import session
from tests.support.brokers import delete_topics
from tests.support.queues import ResultQueue
from tests.telemetry.conftest import read_sessions


@pytest.fixture
def live_env(kafka_settings, rabbit_settings, tmp_path, monkeypatch):
    """The flows build their settings from the environment: point it at private resources."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "STATE_DIR": str(tmp_path / "state"),
        "KAFKA_PORT": str(kafka_settings.kafka_port),
        "TOPIC_TELEMETRY": f"flow-telemetry-{tag}",
        "TOPIC_TELEMETRY_DLQ": f"flow-telemetry-{tag}.dlq",
        "TOPIC_TELEMETRY_STATE": f"flow-telemetry-{tag}.state",
        "TOPIC_SESSIONS": f"flow-tel-sessions-{tag}",
        "TELEMETRY_GROUP": f"flow-telemetry-{tag}",
        "RABBITMQ_URL": rabbit_settings.rabbitmq_url,
        "RABBITMQ_EXCHANGE": f"ev.scores.flow-tel-{tag}",
        "OCPP_PORT": str(free_port()),
        "OCPP_METRICS_PORT": str(free_port()),
        "TELEMETRY_METRICS_PORT": str(free_port()),
    }
    for key, value in env.items():
        monkeypatch.setenv(f"EVGUARD_{key}", value)
    settings = kafka_settings.model_copy(update={
        "topic_telemetry": env["TOPIC_TELEMETRY"], "topic_telemetry_dlq": env["TOPIC_TELEMETRY_DLQ"],
        "topic_telemetry_state": env["TOPIC_TELEMETRY_STATE"],
        "topic_sessions": env["TOPIC_SESSIONS"], "rabbitmq_url": rabbit_settings.rabbitmq_url,
        "rabbitmq_exchange": env["RABBITMQ_EXCHANGE"], "ocpp_port": int(env["OCPP_PORT"]),
        "state_dir": tmp_path / "state"})
    ensure_topics(settings)
    live = ResultQueue(settings.rabbitmq_url, settings.rabbitmq_exchange, "live.#")
    yield settings, live
    live.close()
    delete_topics(settings, [settings.topic_telemetry, settings.topic_telemetry_dlq,
                              settings.topic_telemetry_state, settings.topic_sessions])
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        conn.channel().exchange_delete(settings.rabbitmq_exchange)


def test_the_gateway_and_processor_flows_carry_chargers_to_alerts_and_sessions(
        prefect_harness, live_env):
    from flows.ocpp_gateway import GatewayParams, ocpp_gateway_flow
    from flows.telemetry import TelemetryParams, telemetry_flow

    settings, live = live_env
    tag = uuid.uuid4().hex[:6]
    versions = {f"FLOW16-{tag}": "1.6", f"FLOW201-{tag}": "2.0.1"}
    faulty = f"FLOW201-{tag}"
    for station in versions:
        add_charger(settings.state_dir / "charge_points.json", station, "caltech", None)
    scheduled = schedule_sessions([session(cp, i) for i, cp in enumerate(versions)], versions,
                                  {f"s-{faulty}": "faulted"})
    fleet: dict = {}

    def chargers_then_sigterm() -> None:
        try:
            deadline = time.monotonic() + 30
            while not port_open("127.0.0.1", settings.ocpp_port):
                assert time.monotonic() < deadline, "the gateway flow did not listen"
                time.sleep(0.1)
            # both connect before the first plug-in (see tests/telemetry/test_end_to_end.py)
            config = FleetConfig(url=f"ws://127.0.0.1:{settings.ocpp_port}", speedup=600,
                                 meter_interval_s=60, start_delay_s=1.5, connect_attempts=2)
            fleet["report"] = asyncio.run(asyncio.wait_for(run_fleet(scheduled, config), 60))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            fleet["error"] = exc
        finally:  # what a cancelled deployment run gets; also ends the flow on a failure
            os.kill(os.getpid(), signal.SIGTERM)

    prefect_handler = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=chargers_then_sigterm, daemon=True)
    thread.start()
    state = ocpp_gateway_flow(GatewayParams(ack_timeout_seconds=5), return_state=True)
    thread.join(10)
    assert "error" not in fleet, fleet.get("error")
    report = fleet["report"]
    assert not report.errors and report.transactions_ended == 2
    assert signal.getsignal(signal.SIGTERM) == prefect_handler
    assert state.is_cancelled()  # a cancelled deployment run ends Cancelled, with its counts
    gateway = state.result(raise_on_failure=False)
    assert gateway["connects"] == 2 and gateway["refused"] == gateway["call_errors"] == 0
    assert gateway["frames"] == report.frames_sent
    assert not port_open("127.0.0.1", settings.ocpp_port)  # stopped, not abandoned

    processed = telemetry_flow(TelemetryParams(idle_exit_seconds=2.0, tick_seconds=0.2))
    assert isinstance(processed, dict)  # stopped on idle: Completed
    # the connected/disconnected events are stored without holding up a CALL, uncounted
    assert processed["consumed"] == gateway["events"] + 2 * gateway["connects"]
    assert processed["dead_lettered"] == 0
    assert processed["sessions"] == 2
    alerts = live.wait_for(lambda r: any(b["status"] == "open" for b in r.bodies), 10)
    opened = [b for b in alerts.bodies if b["status"] == "open"]
    assert [(b["chargePointId"], b["kind"]) for b in opened] == [(faulty, "faulted")]
    assert orjson.dumps(opened[0]) and "Faulted" in opened[0]["evidence"]
    handed = {record["stationID"]: record for _key, record in read_sessions(settings, 2)}
    assert set(handed) == set(versions)
    assert handed[f"FLOW16-{tag}"]["kWhDelivered"] == pytest.approx(1.5, abs=0.01)
