"""An independent charge point (npm `ocpp-rpc`, strict mode: it validates every call it
makes and every answer it gets against the official OCPP JSON schemas) against the gateway
in standalone mode, over HTTP Basic (security profile 1), as OCPP 1.6J and as 2.0.1, and
over TLS with Basic (profile 2).

What could fail: an answer their schemas reject (the call then fails on their side with
the validation error), a wrong status, a transaction id that does not travel, a unit or
phase rule that normalises their meter values wrongly, an event missing from Kafka.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import datetime

import pytest

from gateway.registry import add_charger
from tests.gateway.gateway_kit import gateway_settings, new_topic, running_gateway
from tests.interop.interop_kit import (
    PASSWORD,
    SITE,
    assert_every_call_accepted,
    run_against_standalone,
)
from tests.interop.node_peer import run_charge_point
from tests.interop.plans import iso, steps_16, steps_201
from tests.support.brokers import delete_topics


def test_an_independent_16_charge_point_completes_a_transaction(node, kafka_settings, tmp_path):
    steps = steps_16()
    run = run_against_standalone(node, kafka_settings, tmp_path, "1.6", steps, 9)
    report, events = run.report, run.events
    assert run.refused_wrong_password.events("connect_failed")[0]["status"] == 401
    assert run.call_errors == {}

    assert report.events("connected")[0]["protocol"] == "ocpp1.6"
    boot, status, auth, start, meter, stop, beat = assert_every_call_accepted(report, steps)
    assert boot["status"] == "Accepted" and boot["interval"] == 90
    assert status == {} and meter == {}
    assert auth["idTagInfo"]["status"] == "Accepted"
    assert start["idTagInfo"]["status"] == "Accepted" and start["transactionId"] > 0
    assert stop["idTagInfo"]["status"] == "Accepted"
    assert datetime.fromisoformat(beat["currentTime"]).tzinfo is not None

    tid = str(start["transactionId"])
    assert [e.kind for e in events] == ["connected", "boot", "status", "transaction_started",
                                        "meter", "meter", "transaction_ended", "heartbeat",
                                        "disconnected"]
    by_kind = {e.kind: e for e in events}
    assert by_kind["boot"].details["vendor"] == "IndependentVendor"
    assert by_kind["status"].status == "Preparing" and by_kind["status"].error_code == ""
    started = by_kind["transaction_started"]
    assert started.transaction_id == tid and started.measurands == {"energy_wh": 12000.0}
    sample = events[4]
    assert sample.transaction_id == tid and sample.connector_id == 1
    assert sample.measurands == pytest.approx({
        "energy_wh": 12500.0, "power_w": 7400.0, "current_a": 10.3, "current_offered_a": 16.0,
        "voltage_v": 231.0, "temperature_c": 40.2, "soc_pct": 68.0})
    assert events[5].measurands == {"energy_wh": 13000.0} and events[5].transaction_id == tid
    ended = by_kind["transaction_ended"]
    assert ended.transaction_id == tid and ended.measurands == {"energy_wh": 13000.0}
    assert ended.details["stop_reason"] == "EVDisconnected"
    # the raw frame kept for audit is what their library put on the wire
    sent = {json.loads(text)[2]: text for text in report.frames("out")
            if json.loads(text)[0] == 2}
    assert by_kind["boot"].raw == sent["BootNotification"]
    assert {e.site_id for e in events} == {SITE}


def test_an_independent_201_charge_point_completes_a_transaction(node, kafka_settings,
                                                                  tmp_path):
    transaction_id = f"tx-{uuid.uuid4().hex[:10]}"
    steps = steps_201(transaction_id)
    run = run_against_standalone(node, kafka_settings, tmp_path, "2.0.1", steps, 13)
    report, events = run.report, run.events
    assert run.refused_wrong_password.events("connect_failed")[0]["status"] == 401
    assert run.call_errors == {}

    assert report.events("connected")[0]["protocol"] == "ocpp2.0.1"
    boot, status, started, updated, ended, beat = assert_every_call_accepted(report, steps)
    assert boot["status"] == "Accepted" and boot["interval"] == 90
    assert status == {} and updated == {} and ended == {}
    assert started["idTokenInfo"]["status"] == "Accepted"
    assert datetime.fromisoformat(beat["currentTime"]).tzinfo is not None

    assert [(e.kind, e.status) for e in events] == [
        ("connected", None), ("boot", None), ("status", "Occupied"),
        ("transaction_started", None), ("status", "Preparing"), ("meter", None),
        ("status", "Charging"), ("meter", None),
        ("status", "Available"), ("meter", None), ("transaction_ended", None),
        ("heartbeat", None), ("disconnected", None)]
    in_transaction = [e for e in events if e.kind in ("transaction_started", "meter",
                                                      "transaction_ended")]
    assert {e.transaction_id for e in in_transaction} == {transaction_id}
    assert events[7].measurands == pytest.approx({
        "energy_wh": 2750.0, "power_w": 11000.0, "current_a": 16.1, "current_offered_a": 16.0,
        "voltage_v": 229.0, "soc_pct": 55.0})
    assert events[10].measurands == {"energy_wh": 3100.0}
    assert events[10].details["stop_reason"] == "EVDisconnected"
    assert {e.ocpp_version for e in events} == {"2.0.1"}


# Other messages real chargers send besides a transaction. Each must get an answer their
# strict mode accepts, or a CALLERROR NotSupported where the answer needs a CSMS decision
# this gateway does not make (certificates).
OTHER_CALLS = {
    "1.6": [
        ("DataTransfer", {"vendorId": "com.example", "messageId": "x", "data": "1"}),
        ("DiagnosticsStatusNotification", {"status": "Uploaded"}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": iso()}),
        ("LogStatusNotification", {"status": "Idle"}),
        ("SignedFirmwareStatusNotification", {"status": "Installed"}),
        ("StatusNotification", {"connectorId": 0, "errorCode": "HighTemperature",
                                "status": "Faulted", "info": "relay 81 C",
                                "vendorErrorCode": "E-81"}),
    ],
    "2.0.1": [
        ("Authorize", {"idToken": {"idToken": "TOKEN-NODE-2", "type": "ISO14443"}}),
        ("MeterValues", {"evseId": 1, "meterValue": [{"timestamp": iso(), "sampledValue": [
            {"value": 230.5, "measurand": "Voltage", "unitOfMeasure": {"unit": "V"}}]}]}),
        ("DataTransfer", {"vendorId": "com.example", "messageId": "x", "data": {"a": 1}}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": iso()}),
        ("LogStatusNotification", {"status": "Idle"}),
        ("NotifyEvent", {"generatedAt": iso(), "seqNo": 0, "eventData": [{
            "eventId": 1, "timestamp": iso(), "trigger": "Delta", "actualValue": "true",
            "eventNotificationType": "HardWiredNotification",
            "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
            "variable": {"name": "Problem"}}]}),
        ("NotifyReport", {"requestId": 1, "generatedAt": iso(), "seqNo": 0, "tbc": False}),
        ("StatusNotification", {"timestamp": iso(), "connectorStatus": "Faulted",
                                "evseId": 1, "connectorId": 1}),
        ("SignCertificate", {"csr": "-----BEGIN CERTIFICATE REQUEST-----"}),
    ],
}
DATA_TRANSFER_ANSWER = {"status": "UnknownVendorId"}
# telemetry among them: the Faulted status (and 2.0.1's MeterValues and NotifyEvent Problem)
OTHER_EVENTS = {"1.6": ["connected", "status", "disconnected"],
                "2.0.1": ["connected", "meter", "status", "status", "disconnected"]}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_other_charger_messages_get_answers_their_schemas_accept(node, kafka_settings, tmp_path,
                                                                  version):
    calls = OTHER_CALLS[version]
    steps = [{"call": action, "params": params} for action, params in calls]
    run = run_against_standalone(node, kafka_settings, tmp_path, version, steps,
                                 len(OTHER_EVENTS[version]))
    report, events = run.report, run.events

    assert report.returncode == 0, report
    assert report.events("strictValidationFailure") == [], report
    outcomes = {o["call"]: o for o in report.steps()}
    assert len(outcomes) == len(calls), report
    refused = {action for action, o in outcomes.items() if not o["ok"]}
    assert refused == ({"SignCertificate"} if version == "2.0.1" else set()), report
    for action in refused:
        assert outcomes[action]["error"]["code"] == "NotSupported"
    assert outcomes["DataTransfer"]["result"] == DATA_TRANSFER_ANSWER
    assert [e.kind for e in events] == OTHER_EVENTS[version]
    faulted = [(e.connector_id, e.error_code) for e in events
               if e.kind == "status" and e.status == "Faulted"]
    # 2.0.1: StatusNotification has no error code; NotifyEvent's connector Problem carries one
    assert faulted == ([(0, "HighTemperature")] if version == "1.6" else [(1, "Problem"), (1, "")])
    assert run.call_errors == ({"NotSupported": 1.0} if refused else {})


def test_security_profile_2_tls_with_basic_auth(node, kafka_settings, tmp_path):
    """wss:// with the gateway's certificate (TLS >= 1.2) and HTTP Basic: their client
    completes the TLS handshake and boots; plain ws:// to the TLS port gets nowhere."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    topic = new_topic(kafka_settings, "test-interop-tls")
    settings = gateway_settings(kafka_settings, tmp_path / "gw", topic_telemetry=topic,
                                ocpp_tls_cert=cert, ocpp_tls_key=key)
    identity = f"NODETLS-{uuid.uuid4().hex[:6]}"
    add_charger(settings.ocpp_charge_points, identity, SITE, PASSWORD)
    steps = steps_201(f"tx-{uuid.uuid4().hex[:8]}")[:2]  # boot, status
    try:
        with running_gateway(settings) as gateway:
            secure = gateway.url.replace("ws://", "wss://")
            report = run_charge_point(node, secure, identity, "2.0.1", steps,
                                      password=PASSWORD, ca_file=cert)
            plain = run_charge_point(node, gateway.url, identity, "2.0.1", steps,
                                     password=PASSWORD)
    finally:
        delete_topics(kafka_settings, [topic])
    boot, _ = assert_every_call_accepted(report, steps)
    assert boot["status"] == "Accepted"
    assert plain.events("connect_failed") and not plain.steps(), plain
