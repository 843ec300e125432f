"""Bad input from the independent charge point gets the CALLERROR the OCPP-J specification
names, in a frame their library parses: unknown and CSMS-only actions, schema violations
(sent with their strict mode off for that call, so the payload leaves unvalidated) and raw
frames their library would never send (not JSON, an unknown message type, a CALLRESULT
nobody asked for). The connection stays usable afterwards.

The codes are the gateway's documented oracle (docs/telemetry/gateway.md, "Error codes");
ocpp-rpc itself maps some violations differently (docs/telemetry/interop.md).
"""

from __future__ import annotations

import json

import pytest

from tests.interop.interop_kit import run_against_standalone
from tests.interop.plans import iso


def unchecked(action: str, params: dict) -> dict:
    return {"call": action, "params": params, "strict": False}


# (step, expected CALLERROR code or None for an accepted call / no answer)
CASES = {
    "1.6": [
        (unchecked("FlyToTheMoon", {}), "NotImplemented"),
        (unchecked("RemoteStartTransaction", {"idTag": "X"}), "NotSupported"),
        (unchecked("BootNotification", {"chargePointVendor": "V"}), "ProtocolError"),
        (unchecked("StatusNotification", {"connectorId": "one", "errorCode": "NoError",
                                          "status": "Available"}), "TypeConstraintViolation"),
        (unchecked("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                          "status": "Sleeping"}), "PropertyConstraintViolation"),
        (unchecked("Heartbeat", {"unexpected": 1}), "FormationViolation"),
        (unchecked("MeterValues", {"connectorId": 1, "meterValue": []}),
         "OccurenceConstraintViolation"),
        ({"raw": "this is not json", "replyId": None, "waitMs": 1000}, None),
        ({"raw": '[2,"raw-1","Heartbeat"]', "replyId": "raw-1"}, "FormationViolation"),
        ({"raw": '[3,"stray-1",{}]', "replyId": "stray-1", "waitMs": 500}, None),
        ({"call": "Heartbeat", "params": {}}, None),
    ],
    "2.0.1": [
        (unchecked("FlyToTheMoon", {}), "NotImplemented"),
        (unchecked("RequestStartTransaction", {"idToken": {"idToken": "X", "type": "Central"},
                                               "remoteStartId": 1}), "NotSupported"),
        (unchecked("BootNotification", {"reason": "PowerUp"}), "OccurrenceConstraintViolation"),
        (unchecked("StatusNotification", {"timestamp": iso(), "connectorStatus": "Available",
                                          "evseId": "one", "connectorId": 1}),
         "TypeConstraintViolation"),
        (unchecked("StatusNotification", {"timestamp": iso(), "connectorStatus": "Sleeping",
                                          "evseId": 1, "connectorId": 1}),
         "PropertyConstraintViolation"),
        (unchecked("Heartbeat", {"unexpected": 1}), "FormatViolation"),
        ({"raw": "this is not json", "replyId": "-1"}, "RpcFrameworkError"),
        ({"raw": '[7,"raw-2",{}]', "replyId": "raw-2"}, "MessageTypeNotSupported"),
        ({"raw": '[3,"stray-2",{}]', "replyId": "stray-2", "waitMs": 500}, None),
        ({"call": "Heartbeat", "params": {}}, None),
    ],
}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_bad_calls_get_the_right_callerror_and_the_connection_stays_usable(
        node, kafka_settings, tmp_path, version):
    steps = [step for step, _ in CASES[version]]
    run = run_against_standalone(node, kafka_settings, tmp_path, version, steps, 3)
    report = run.report
    assert report.returncode == 0, report
    outcomes = report.steps()
    assert len(outcomes) == len(steps), report

    for (step, code), outcome in zip(CASES[version], outcomes, strict=True):
        if "call" in step:  # their library parsed our CALLERROR into an RPCError
            if code is None:
                assert outcome["ok"], outcome
            else:
                assert not outcome["ok"] and outcome["error"]["code"] == code, outcome
            continue
        reply = outcome["reply"]
        if code is None:  # a frame without a readable id (1.6), a CALLRESULT: no answer
            assert reply is None and outcome["received"] == [], outcome
        else:
            assert reply[0] == 4 and reply[1] == step["replyId"] and reply[2] == code, outcome

    # every CALLERROR on the wire is [4, id, code, description, details-object]
    errors = [json.loads(text) for text in report.frames("in") if json.loads(text)[0] == 4]
    assert len(errors) == sum(code is not None for _, code in CASES[version])
    assert all(len(e) == 5 and isinstance(e[3], str) and isinstance(e[4], dict)
               for e in errors), errors
    # none of them was taken for a defect by their strict mode, and nothing bad reached Kafka
    assert report.events("strictValidationFailure") == [], report
    assert [e.kind for e in run.events] == ["connected", "heartbeat", "disconnected"]
    expected_codes: dict[str, float] = {}
    for _, code in CASES[version]:
        if code is not None:
            expected_codes[code] = expected_codes.get(code, 0) + 1
    assert run.call_errors == expected_codes
