"""OCPP version negotiation with a charge point that offers both versions, in its order of
preference (OCPP-J: `Sec-WebSocket-Protocol: ocpp2.0.1, ocpp1.6`).

- Standalone: the gateway speaks both, so it takes the charger's first choice.
- Proxy: the version must be one the upstream CSMS speaks too; the proxy offers the
  upstream what the charger offered and gives the charger the upstream's choice, so a
  charger that offers both reaches a CSMS that speaks only one of them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from evguard.services.process import free_port, port_open
from gateway.registry import add_charger
from pipelines.contracts.telemetry import parse_telemetry
from pipelines.settings import settings_env
from tests.gateway.gateway_kit import gateway_settings, new_topic, running_gateway
from tests.interop.interop_kit import PASSWORD, SITE, proxy_gateway
from tests.interop.node_peer import independent_csms, run_charge_point, run_charge_point_async
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic

EVGUARD = Path(sys.executable).with_name("evguard")
HEARTBEAT = [{"call": "Heartbeat", "params": {}}]  # the same in both versions
CSMS_TIME = "2026-01-02T03:04:05.000Z"  # the independent CSMS's clock


@pytest.mark.parametrize("offered", [["ocpp2.0.1", "ocpp1.6"], ["ocpp1.6", "ocpp2.0.1"]])
def test_the_standalone_gateway_takes_the_chargers_first_choice(node, kafka_settings, tmp_path,
                                                                  offered):
    topic = new_topic(kafka_settings, "test-interop-version")
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic)
    identity = f"NODEBOTH-{uuid.uuid4().hex[:6]}"
    add_charger(settings.ocpp_charge_points, identity, SITE, PASSWORD)
    try:
        with running_gateway(settings) as gateway:
            report = run_charge_point(node, gateway.url, identity, "2.0.1", HEARTBEAT,
                                      password=PASSWORD, protocols=offered)
    finally:
        delete_topics(kafka_settings, [topic])
    assert [c["protocol"] for c in report.events("connected")] == [offered[0]], report
    assert [o["ok"] for o in report.steps()] == [True], report
    assert report.events("strictValidationFailure") == [], report


@pytest.mark.parametrize(("offered", "upstream_speaks"), [
    (["ocpp2.0.1", "ocpp1.6"], ["ocpp1.6"]),
    (["ocpp1.6", "ocpp2.0.1"], ["ocpp2.0.1"]),
    (["ocpp2.0.1", "ocpp1.6"], ["ocpp2.0.1", "ocpp1.6"]),
])
def test_the_proxy_settles_on_a_version_the_upstream_speaks(node, kafka_settings, tmp_path,
                                                             offered, upstream_speaks):
    topic = new_topic(kafka_settings, "test-interop-version")
    identity = f"NODEBOTH-{uuid.uuid4().hex[:6]}"

    async def scenario():
        async with independent_csms(node, protocols=upstream_speaks) as csms:
            settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic,
                                        ocpp_upstream_url=csms.url)
            add_charger(settings.ocpp_charge_points, identity, SITE, PASSWORD)
            async with proxy_gateway(settings) as (url, proxy):
                report = await run_charge_point_async(node, url, identity, "2.0.1", HEARTBEAT,
                                                      password=PASSWORD, protocols=offered)
        return report, proxy.stats, csms.report()

    try:
        report, stats, csms_report = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        delete_topics(kafka_settings, [topic])
    # the charger's first choice among those the upstream speaks
    expected = next(p for p in offered if p in upstream_speaks)
    assert [c["protocol"] for c in report.events("connected")] == [expected], report
    assert [c["protocol"] for c in csms_report.events("client")] == [expected], csms_report
    assert [(o["ok"], o.get("result")) for o in report.steps()] == [
        (True, {"currentTime": CSMS_TIME})], report
    assert stats.upstream_failures == {}


def test_evguard_ocpp_serve_in_proxy_mode_negotiates_with_the_upstream(node, kafka_settings,
                                                                       tmp_path):
    """The same through the command operators run, `evguard ocpp serve --mode proxy`."""
    topic = new_topic(kafka_settings, "test-interop-version")
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic,
                                ocpp_port=free_port(), ocpp_metrics_port=free_port(),
                                ocpp_allow_unknown=True)
    identity = f"NODEBOTH-{uuid.uuid4().hex[:6]}"

    async def scenario():
        async with independent_csms(node, protocols=["ocpp2.0.1"]) as csms:
            env = {**os.environ, **settings_env(settings), "EVGUARD_OCPP_TLS_CERT": "",
                   "EVGUARD_OCPP_TLS_KEY": ""}
            gateway = await asyncio.create_subprocess_exec(
                str(EVGUARD), "ocpp", "serve", "--mode", "proxy", "--upstream", csms.url,
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while not port_open("127.0.0.1", settings.ocpp_port):
                    assert gateway.returncode is None and time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                report = await run_charge_point_async(
                    node, f"ws://127.0.0.1:{settings.ocpp_port}", identity, "2.0.1", HEARTBEAT,
                    protocols=["ocpp1.6", "ocpp2.0.1"])
                gateway.send_signal(signal.SIGTERM)
                output, _ = await asyncio.wait_for(gateway.communicate(), 30)
            finally:
                if gateway.returncode is None:
                    gateway.kill()
                    await gateway.wait()
        return report, gateway.returncode, output.decode()

    try:
        report, returncode, output = asyncio.run(asyncio.wait_for(scenario(), 120))
        events = [parse_telemetry(m.value())
                  for m in read_topic(kafka_settings, topic, 3, timeout=20, quiet_s=0.5)]
    finally:
        delete_topics(kafka_settings, [topic])
    assert [c["protocol"] for c in report.events("connected")] == ["ocpp2.0.1"], report
    assert [(o["ok"], o.get("result")) for o in report.steps()] == [
        (True, {"currentTime": CSMS_TIME})], report
    assert returncode == 0, output
    assert [(e.kind, e.ocpp_version) for e in events if e.charge_point_id == identity] == [
        ("connected", "2.0.1"), ("heartbeat", "2.0.1"), ("disconnected", "2.0.1")]
