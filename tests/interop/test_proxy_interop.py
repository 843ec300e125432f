"""Proxy mode between two independent implementations: npm `ocpp-rpc`'s server side plays the
operator's CSMS (strict mode: it validates every call it receives), evguard's gateway in
proxy mode sits in front of it, and `ocpp-rpc`'s client side is the charge point (strict
mode: it validates every answer). Both report every frame they sent and received. After
each boot the CSMS also calls the charge point (GetConfiguration / GetVariables,
TriggerMessage), so frames flow both ways in both directions.

What could fail: a frame changed on the way (re-serialised, reordered keys, other
whitespace), an answer that is not the CSMS's, credentials not forwarded, a CSMS-assigned
transaction id that the mirror does not attach, events missing from Kafka.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway.registry import add_charger
from pipelines.contracts.telemetry import parse_telemetry
from tests.gateway.gateway_kit import gateway_settings, new_topic
from tests.interop.interop_kit import PASSWORD, SITE, assert_every_call_accepted, proxy_gateway
from tests.interop.node_peer import independent_csms, run_charge_point_async
from tests.interop.plans import steps_16, steps_201
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic

CSMS_TRANSACTION_ID = 4242  # what the independent CSMS assigns (tests/interop/ocpp_rpc_peer.js)
CSMS_INTERVAL = 300
CSMS_TIME = "2026-01-02T03:04:05.000Z"
HEARTBEAT_KEY = {"key": "HeartbeatInterval", "readonly": False, "value": "300"}
HEARTBEAT_VARIABLE = {"component": {"name": "OCPPCommCtrlr"},
                      "variable": {"name": "HeartbeatInterval"}}
# what the CSMS asks the charger after its boot, and what the charger answers
CSMS_CALLS = {
    "ocpp1.6": [["GetConfiguration", {"key": ["HeartbeatInterval"]}],
                ["TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}]],
    "ocpp2.0.1": [["GetVariables", {"getVariableData": [HEARTBEAT_VARIABLE]}],
                  ["TriggerMessage", {"requestedMessage": "Heartbeat"}]],
}
CHARGER_ANSWERS = {
    "1.6": {"GetConfiguration": {"configurationKey": [HEARTBEAT_KEY]},
            "TriggerMessage": {"status": "Accepted"}},
    "2.0.1": {"GetVariables": {"getVariableResult": [
                  {"attributeStatus": "Accepted", "attributeValue": "300", **HEARTBEAT_VARIABLE}]},
              "TriggerMessage": {"status": "Accepted"}},
}


def test_the_proxy_relays_an_independent_charge_point_to_an_independent_csms_unchanged(
        node, kafka_settings, tmp_path):
    topic = new_topic(kafka_settings, "test-interop-proxy")
    identities = {"1.6": f"NODE16-{uuid.uuid4().hex[:6]}|@x",
                  "2.0.1": f"NODE201-{uuid.uuid4().hex[:6]}|@x"}
    transaction_201 = f"tx-{uuid.uuid4().hex[:10]}"
    # after its transaction each charger waits until it has answered the CSMS's two calls
    plans = {"1.6": [*steps_16(), {"awaitHandled": 2}],
             "2.0.1": [*steps_201(transaction_201), {"awaitHandled": 2}]}

    async def scenario():
        async with independent_csms(node, password=PASSWORD,
                                    calls_after_boot=CSMS_CALLS) as csms:
            settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic,
                                        ocpp_upstream_url=csms.url,
                                        ocpp_upstream_forward_auth=True)
            for identity in identities.values():
                add_charger(settings.ocpp_charge_points, identity, SITE, PASSWORD)
            async with proxy_gateway(settings) as (url, proxy):
                reports = await asyncio.gather(*(
                    run_charge_point_async(node, url, identities[v], v, plans[v],
                                           password=PASSWORD, handlers=CHARGER_ANSWERS[v])
                    for v in plans))
        # leaving the blocks stopped the proxy and the CSMS: the reports are complete
        return dict(zip(plans, reports, strict=True)), proxy.stats, csms.report()

    try:
        reports, stats, csms_report = asyncio.run(asyncio.wait_for(scenario(), 120))
        messages = read_topic(kafka_settings, topic, stats.events, quiet_s=0.5)
    finally:
        delete_topics(kafka_settings, [topic])

    for version, identity in identities.items():
        charger = reports[version]
        # the CSMS saw exactly the charge point's frames, and the charge point the CSMS's
        assert csms_report.frames("in", identity) == charger.frames("out"), "changed going up"
        assert charger.frames("in") == csms_report.frames("out", identity), "changed going down"
        calls = [step for step in plans[version] if "call" in step]
        assert len(charger.frames("out")) == len(calls) + 2  # + its answers to the CSMS
        # the CSMS's own calls went down and the charger's answers came back up
        csms_calls = [c for c in csms_report.events("csms_call") if c["identity"] == identity]
        assert [(c["method"], c["ok"], c["result"]) for c in csms_calls] == [
            (method, True, CHARGER_ANSWERS[version][method])
            for method, _ in CSMS_CALLS[f"ocpp{version}"]], csms_report
        assert charger.steps()[-1]["handled"] == 2
        # the CSMS got the charger's credentials, and validated every call it received
        handshakes = [h for h in csms_report.events("handshake") if h["identity"] == identity]
        assert [h["password"] for h in handshakes] == [PASSWORD]
        assert [c["protocol"] for c in csms_report.events("client")
                if c["identity"] == identity] == [f"ocpp{version}"]
    assert csms_report.events("strictValidationFailure") == [], csms_report

    results_16 = assert_every_call_accepted(reports["1.6"], plans["1.6"])
    boot, _, _, start, _, _, beat = results_16
    assert boot == {"status": "Accepted", "currentTime": CSMS_TIME, "interval": CSMS_INTERVAL}
    assert start["transactionId"] == CSMS_TRANSACTION_ID and beat["currentTime"] == CSMS_TIME
    results_201 = assert_every_call_accepted(reports["2.0.1"], plans["2.0.1"])
    assert results_201[0]["interval"] == CSMS_INTERVAL
    assert results_201[2] == {"idTokenInfo": {"status": "Accepted"}}

    assert stats.upstream_failures == {} and stats.unmirrored == 0
    events = [parse_telemetry(m.value()) for m in messages]
    e16 = [e for e in events if e.charge_point_id == identities["1.6"]]
    assert [e.kind for e in e16] == ["connected", "boot", "status", "transaction_started",
                                     "meter", "meter", "transaction_ended", "heartbeat",
                                     "disconnected"]
    # the mirror took the transaction id from the CSMS's answer and attached it onwards
    assert {e.transaction_id for e in e16[3:7]} == {str(CSMS_TRANSACTION_ID)}
    assert e16[4].measurands["current_a"] == pytest.approx(10.3)
    e201 = [e for e in events if e.charge_point_id == identities["2.0.1"]]
    assert [e.kind for e in e201 if e.kind not in ("status",)] == [
        "connected", "boot", "transaction_started", "meter", "meter", "meter",
        "transaction_ended", "heartbeat", "disconnected"]
    assert {e.transaction_id for e in e201 if e.kind.startswith("transaction")} == {
        transaction_201}
    assert {e.gateway for e in events} == {"gw-interop"} and {e.site_id for e in events} == {SITE}
