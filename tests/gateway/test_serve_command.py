"""`evguard ocpp serve` as a process: /healthz and /metrics answer, a charger is served, and
SIGTERM closes the chargers' sockets, flushes Kafka and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from evguard.services.process import free_port, port_open
from pipelines.contracts.telemetry import parse_telemetry
from pipelines.settings import settings_env
from tests.gateway.gateway_kit import gateway_settings, new_topic
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic

EVGUARD = Path(sys.executable).with_name("evguard")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serve_answers_health_and_metrics_and_stops_cleanly_on_sigterm(kafka_settings,
                                                                      tmp_path):
    topic = new_topic(kafka_settings, "test-gateway-serve")
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic,
                                ocpp_port=free_port(), ocpp_metrics_port=free_port(),
                                ocpp_allow_unknown=True)
    env = {**os.environ, **settings_env(settings), "EVGUARD_OCPP_TLS_CERT": "",
           "EVGUARD_OCPP_TLS_KEY": ""}
    gateway = subprocess.Popen([str(EVGUARD), "ocpp", "serve"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cp_id = f"CP-{uuid.uuid4().hex[:6]}"
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", settings.ocpp_port) and time.monotonic() < deadline:
            assert gateway.poll() is None, gateway.stdout.read()
            time.sleep(0.1)
        health_status, health = get(f"http://127.0.0.1:{settings.ocpp_metrics_port}/healthz")

        async def charger():
            async with connect(f"ws://127.0.0.1:{settings.ocpp_port}/{cp_id}",
                               subprotocols=["ocpp2.0.1"]) as ws:
                await ws.send('[2,"hb","Heartbeat",{}]')
                answer = orjson.loads(await ws.recv())
                metrics = get(f"http://127.0.0.1:{settings.ocpp_metrics_port}/metrics")[1]
                gateway.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(ws.recv(), 20)
                except ConnectionClosed as closed:
                    return answer, metrics, closed.rcvd.code
                return answer, metrics, None

        answer, metrics, close_code = asyncio.run(charger())
        output, _ = gateway.communicate(timeout=30)
        events = [parse_telemetry(m.value()) for m in read_topic(kafka_settings, topic, 3,
                                                                   timeout=20)]
    finally:
        if gateway.poll() is None:
            gateway.kill()
        delete_topics(kafka_settings, [topic])
    assert health_status == 200 and orjson.loads(health)["kafka"] == "ok"
    assert answer[:2] == [3, "hb"]
    text = metrics.decode()
    assert 'evguard_gateway_frames_total{action="Heartbeat",direction="charger"} 1.0' in text
    assert "evguard_gateway_ack_seconds_bucket" in text
    assert close_code == 1001  # going away: the charger reconnects elsewhere
    assert gateway.returncode == 0 and "gateway stopped" in output
    assert [e.kind for e in events] == ["connected", "heartbeat", "disconnected"]
