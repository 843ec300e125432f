"""Smoke test with a second independent implementation, npm `ocpp-ts` (OCPP 1.6J only):
its charge point completes a transaction against the standalone gateway over HTTP Basic,
and each answer is valid against ocpp-ts's own copy of the 1.6 response schemas."""

from __future__ import annotations

import uuid

from gateway.registry import add_charger
from pipelines.contracts.telemetry import parse_telemetry
from tests.gateway.gateway_kit import gateway_settings, new_topic, running_gateway
from tests.interop.interop_kit import PASSWORD, SITE
from tests.interop.node_peer import run_ocpp_ts_charge_point
from tests.interop.plans import steps_16
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic


def test_an_ocpp_ts_charge_point_completes_a_transaction(node, kafka_settings, tmp_path):
    topic = new_topic(kafka_settings, "test-interop-ocpp-ts")
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic)
    identity = f"OCPPTS-{uuid.uuid4().hex[:6]}"
    add_charger(settings.ocpp_charge_points, identity, SITE, PASSWORD)
    steps = steps_16()
    try:
        with running_gateway(settings) as gateway:
            report = run_ocpp_ts_charge_point(node, gateway.url, identity, steps, PASSWORD)
        messages = read_topic(kafka_settings, topic, 9, quiet_s=0.5)
    finally:
        delete_topics(kafka_settings, [topic])

    assert report.returncode == 0 and report.events("connected"), report
    outcomes = report.steps()
    assert [o["call"] for o in outcomes] == [s["call"] for s in steps], report
    assert all(o["ok"] and o["schemaErrors"] == [] for o in outcomes), report
    start = outcomes[3]["result"]
    assert start["idTagInfo"]["status"] == "Accepted"
    events = [parse_telemetry(m.value()) for m in messages]
    assert [e.kind for e in events] == ["connected", "boot", "status", "transaction_started",
                                        "meter", "meter", "transaction_ended", "heartbeat",
                                        "disconnected"]
    assert {e.transaction_id for e in events[3:7]} == {str(start["transactionId"])}
