"""The gateway side of the interoperability tests: a standalone gateway (tests/gateway's kit,
embedded broker, registry with an HTTP Basic password) that the independent charge point
talks to, and what came out of it: the peer's report, the telemetry, the CALLERRORs sent;
and the gateway in proxy mode in front of an independent CSMS."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from evguard.services.process import free_port
from gateway.metrics import GatewayMetrics
from gateway.proxy import OcppProxy
from gateway.registry import Registry, add_charger, registry_path
from gateway.server import GatewayServer
from pipelines.contracts.telemetry import TelemetryEvent, parse_telemetry
from pipelines.settings import Settings
from tests.gateway.gateway_kit import RunningGateway, gateway_settings, new_topic, running_gateway
from tests.interop.node_peer import PeerReport, run_charge_point
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic

PASSWORD = "interop-basic-secret"
SITE = "interop-site"


def call_errors_by_code(gateway: RunningGateway) -> dict[str, float]:
    """The gateway's CALLERRORs by code (its counter is labelled, so sum the samples)."""
    return {sample.labels["code"]: sample.value
            for metric in gateway.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "evguard_gateway_call_errors_total" and sample.value}


def assert_every_call_accepted(report: PeerReport, steps: list[dict]) -> list[dict]:
    """Every call got a result their strict mode accepted; returns the results in order."""
    assert report.returncode == 0, report
    assert report.events("strictValidationFailure") == [], report
    assert report.events("badMessage") == [], report
    outcomes = [o for o in report.steps() if "call" in o]
    assert [o["call"] for o in outcomes] == [s["call"] for s in steps if "call" in s], report
    assert [o for o in outcomes if not o["ok"]] == [], report
    return [o["result"] for o in outcomes]


@dataclass
class StandaloneRun:
    report: PeerReport               # what the independent charge point saw
    events: list[TelemetryEvent]     # its telemetry, read back from the topic
    call_errors: dict[str, float]    # CALLERRORs the gateway sent, by code
    refused_wrong_password: PeerReport


def run_against_standalone(node: str, kafka_settings: Settings, tmp_path: Path, version: str,
                           steps: list[dict], expected_events: int) -> StandaloneRun:
    """A standalone gateway with one registered charger (HTTP Basic password); the
    independent charge point first tries a wrong password, then runs `steps`."""
    topic = new_topic(kafka_settings, "test-interop")
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic,
                                ocpp_heartbeat_s=90)
    # characters OCPP allows in an identity that a URL must percent-encode ("|@+=")
    identity = f"NODE{version.replace('.', '')}-{uuid.uuid4().hex[:6]}|@+=*.x"
    add_charger(settings.ocpp_charge_points, identity, SITE, PASSWORD)
    try:
        with running_gateway(settings) as gateway:
            refused = run_charge_point(node, gateway.url, identity, version, steps[:1],
                                       password="not-the-password")
            report = run_charge_point(node, gateway.url, identity, version, steps,
                                      password=PASSWORD)
            deadline = time.monotonic() + 10
            while gateway.server.active and time.monotonic() < deadline:
                time.sleep(0.05)
            call_errors = call_errors_by_code(gateway)
        messages = read_topic(kafka_settings, topic, expected_events, quiet_s=0.5)
    finally:
        delete_topics(kafka_settings, [topic])
    events = [parse_telemetry(m.value()) for m in messages if m.key() == identity.encode()]
    return StandaloneRun(report, events, call_errors, refused)


@contextlib.asynccontextmanager
async def proxy_gateway(settings: Settings) -> AsyncIterator[tuple[str, OcppProxy]]:
    """evguard's gateway in proxy mode, wired as `evguard ocpp serve --mode proxy` wires it,
    on a free port; yields its URL and the proxy (stats). The mirror is closed at the end."""
    proxy = OcppProxy.from_settings(settings, gateway="gw-interop")
    registry = Registry(registry_path(settings), allow_unknown=settings.ocpp_allow_unknown)
    server = GatewayServer(settings, proxy.handle, registry, GatewayMetrics(),
                           prepare=proxy.prepare)
    port = free_port()
    try:
        async with server.serve("127.0.0.1", port):
            yield f"ws://127.0.0.1:{port}", proxy
            deadline = time.monotonic() + 10
            while proxy.stats.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(proxy.close, 10.0)
