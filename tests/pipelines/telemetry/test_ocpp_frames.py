"""OCPP-J frames: parsing with the version's CALLERROR codes, and normalisation of 1.6 and
2.0.1 traffic into telemetry events in SI units. Pure: no sockets, no Kafka."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contracts.telemetry import RAW_CAP, encode_telemetry, parse_telemetry
from pipelines.telemetry.ocpp_frames import (
    MAX_PENDING,
    Call,
    CallError,
    CallResult,
    ConnectionState,
    FrameError,
    connection_event,
    encode_call,
    encode_call_result,
    normalise,
    parse_frame,
)
from pipelines.telemetry.ocpp_meter import sampled_measurands
from pipelines.telemetry.ocpp_schemas import ERROR_CODES, known_actions

T0 = "2024-05-01T10:00:00Z"
EPOCH_T0 = 1714557600.0


def state(version: str = "1.6") -> ConnectionState:
    return ConnectionState("CP-7", version, site_id="caltech", gateway="gw-test",
                           connection_id="c1")


def feed(st_: ConnectionState, sender: str, text: str, ts: float = 1.0e9) -> list:
    return normalise(parse_frame(text, st_.version), text, sender, st_, ts)


def sv(value, **fields) -> dict:
    return {"value": value, **fields}


# ---- OCPP 1.6 -----------------------------------------------------------------------------

def test_a_16_transaction_becomes_boot_status_start_meter_and_end_events():
    s = state("1.6")
    boot = feed(s, "charger", encode_call("b1", "BootNotification", {
        "chargePointVendor": "Acme", "chargePointModel": "L2-32", "firmwareVersion": "1.2"}))
    status = feed(s, "charger", encode_call("s1", "StatusNotification", {
        "connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": T0}))
    start = feed(s, "charger", encode_call("t1", "StartTransaction", {
        "connectorId": 1, "idTag": "RFID-123", "meterStart": 1000, "timestamp": T0}))
    conf_text = encode_call_result("t1", {"transactionId": 4711,
                                          "idTagInfo": {"status": "Accepted"}})
    started = feed(s, "csms", conf_text)
    meter = feed(s, "charger", encode_call("m1", "MeterValues", {
        "connectorId": 1, "transactionId": 4711, "meterValue": [{
            "timestamp": "2024-05-01T10:01:00Z", "sampledValue": [
                sv("2.5", measurand="Energy.Active.Import.Register", unit="kWh"),
                sv("7.2", measurand="Power.Active.Import", unit="kW"),
                sv("31.5", measurand="Current.Import"),
                sv("32", measurand="Current.Offered"),
                sv("230", measurand="Voltage"),
                sv("104", measurand="Temperature", unit="Fahrenheit"),
                sv("55", measurand="SoC", unit="Percent", location="EV")]}]}))
    stop = feed(s, "charger", encode_call("e1", "StopTransaction", {
        "transactionId": 4711, "meterStop": 9000, "timestamp": "2024-05-01T11:00:00Z",
        "reason": "EVDisconnected", "transactionData": [
            {"timestamp": "2024-05-01T10:59:00Z",
             "sampledValue": [sv("8900", context="Transaction.End")]}]}))

    assert [e.kind for e in boot] == ["boot"]
    assert boot[0].details == {"vendor": "Acme", "model": "L2-32", "firmware": "1.2"}
    assert status[0].status == "Preparing" and status[0].error_code == ""
    assert status[0].charger_ts == EPOCH_T0 and status[0].connector_id == 1
    assert start == []  # the transaction id is the CSMS's: it comes with the .conf
    (ev,) = started
    assert (ev.kind, ev.transaction_id, ev.connector_id, ev.event_id) == (
        "transaction_started", "4711", 1, "CP-7:t1:0")
    assert ev.measurands == {"energy_wh": 1000.0}
    assert ev.details["authorization"] == "Accepted"
    assert "RFID-123" not in orjson.dumps(ev.details).decode()  # the tag is hashed
    assert ev.raw == conf_text
    (m,) = meter
    assert m.kind == "meter" and m.transaction_id == "4711"
    assert m.measurands == pytest.approx({
        "energy_wh": 2500.0, "power_w": 7200.0, "current_a": 31.5, "current_offered_a": 32.0,
        "voltage_v": 230.0, "temperature_c": 40.0, "soc_pct": 55.0})
    assert [e.kind for e in stop] == ["meter", "transaction_ended"]
    assert stop[0].measurands == {"energy_wh": 8900.0}
    ended = stop[1]
    assert ended.connector_id == 1  # remembered from StartTransaction
    assert ended.measurands == {"energy_wh": 9000.0}
    assert ended.details["stop_reason"] == "EVDisconnected"
    assert len({e.event_id for e in boot + status + started + meter + stop}) == 6
    for event in boot + status + started + meter + stop:
        again = parse_telemetry(encode_telemetry(event))
        assert again.event_id == event.event_id and again.site_id == "caltech"
        assert again.gateway == "gw-test"


def test_a_16_fault_status_keeps_its_error_code_and_vendor_text():
    (event,) = feed(state(), "charger", encode_call("f1", "StatusNotification", {
        "connectorId": 2, "errorCode": "HighTemperature", "status": "Faulted",
        "vendorErrorCode": "E42", "info": "inlet 85C"}))
    assert (event.status, event.error_code) == ("Faulted", "HighTemperature")
    assert event.details == {"info": "inlet 85C", "vendor_error_code": "E42"}
    assert event.charger_ts is None and event.event_ts == event.received_ts


def test_a_stop_without_reason_is_local_as_the_specification_says():
    (ended,) = feed(state(), "charger", encode_call("e2", "StopTransaction", {
        "transactionId": 99, "meterStop": 10, "timestamp": T0}))
    assert ended.details["stop_reason"] == "Local" and ended.connector_id == 0


# ---- OCPP 2.0.1 ---------------------------------------------------------------------------

def transaction_event(event_type: str, seq: int, charging_state: str | None = None,
                      **extra) -> dict:
    info = {"transactionId": "tx-abc"}
    if charging_state:
        info["chargingState"] = charging_state
    info.update(extra.pop("info", {}))
    return {"eventType": event_type, "timestamp": T0, "triggerReason": extra.pop(
        "trigger", "Authorized"), "seqNo": seq, "transactionInfo": info, **extra}


def test_a_201_transaction_event_sequence_maps_charging_states_and_meter_values():
    s = state("2.0.1")
    started = feed(s, "charger", encode_call("a", "TransactionEvent", transaction_event(
        "Started", 0, "EVConnected", evse={"id": 2, "connectorId": 1},
        idToken={"idToken": "TOKEN-9", "type": "ISO14443"})))
    updated = feed(s, "charger", encode_call("b", "TransactionEvent", transaction_event(
        "Updated", 1, "Charging", trigger="MeterValuePeriodic", meterValue=[{
            "timestamp": "2024-05-01T10:05:00Z", "sampledValue": [
                sv(1.5, measurand="Energy.Active.Import.Register",
                   unitOfMeasure={"unit": "kWh"}),
                sv(11, measurand="Power.Active.Import", unitOfMeasure={"unit": "W",
                                                                        "multiplier": 3}),
                sv(16, measurand="Current.Import", phase="L1"),
                sv(15, measurand="Current.Import", phase="L2"),
                sv(17, measurand="Current.Import", phase="L3"),
                sv(2, measurand="Current.Import", phase="N")]}])))
    ended = feed(s, "charger", encode_call("c", "TransactionEvent", transaction_event(
        "Ended", 2, "EVConnected", trigger="StopAuthorized",
        info={"stoppedReason": "Remote"}, meterValue=[{
            "timestamp": "2024-05-01T11:00:00Z", "sampledValue": [
                sv(12000, context="Transaction.End")]}])))

    assert [(e.kind, e.status) for e in started] == [("transaction_started", None),
                                                       ("status", "Preparing")]
    assert {e.connector_id for e in started + updated + ended} == {2}  # evse remembered
    assert started[0].details["trigger_reason"] == "Authorized"
    assert "TOKEN-9" not in orjson.dumps(started[0].details).decode()
    assert [(e.kind, e.status) for e in updated] == [("status", "Charging"), ("meter", None)]
    assert updated[1].measurands == pytest.approx({
        "energy_wh": 1500.0, "power_w": 11000.0, "current_a": 17.0})
    assert [(e.kind, e.status) for e in ended] == [
        ("status", "Finishing"), ("meter", None), ("transaction_ended", None)]
    assert ended[-1].measurands == {"energy_wh": 12000.0}
    assert ended[-1].details["stop_reason"] == "Remote"
    assert all(e.transaction_id == "tx-abc" for e in started + updated + ended)
    ids = [e.event_id for e in started + updated + ended]
    assert len(set(ids)) == len(ids)


def test_a_201_status_notification_and_meter_values():
    s = state("2.0.1")
    (status,) = feed(s, "charger", encode_call("s", "StatusNotification", {
        "timestamp": T0, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}))
    (meter,) = feed(s, "charger", encode_call("m", "MeterValues", {
        "evseId": 1, "meterValue": [{"timestamp": T0, "sampledValue": [sv(42.0)]}]}))
    assert status.status == "Occupied" and status.charger_ts == EPOCH_T0
    assert meter.measurands == {"energy_wh": 42.0} and meter.transaction_id is None
    (boot,) = feed(s, "charger", encode_call("b", "BootNotification", {
        "reason": "PowerUp", "chargingStation": {"model": "DC-50", "vendorName": "Acme"}}))
    assert boot.details == {"vendor": "Acme", "model": "DC-50", "reason": "PowerUp"}


# ---- units and phases ---------------------------------------------------------------------

@pytest.mark.parametrize("samples, version, expected", [
    ([sv("7", measurand="Power.Active.Import", unit="kW", phase=p) for p in ("L1", "L2", "L3")],
     "1.6", {"power_w": 21000.0}),
    ([sv("7000", measurand="Power.Active.Import"),
      sv("1", measurand="Power.Active.Import", phase="L1")], "1.6", {"power_w": 7000.0}),
    ([sv("230", measurand="Voltage", phase="L1-N"), sv("232", measurand="Voltage", phase="L2-N"),
      sv("400", measurand="Voltage", phase="L1-L2")], "1.6", {"voltage_v": 231.0}),
    ([sv("30", measurand="Temperature", location="Body"),
      sv("55", measurand="Temperature", location="Cable")], "1.6", {"temperature_c": 55.0}),
    ([sv("0", measurand="Temperature", unit="Fahrenheit")], "1.6",
     {"temperature_c": -160.0 / 9.0}),
    ([sv("300", measurand="Temperature", unit="Celcius")], "1.6", {"temperature_c": 300.0}),
    ([sv("313.15", measurand="Temperature", unit="K")], "1.6", {"temperature_c": 40.0}),
    ([sv("5", measurand="Power.Active.Import", unit="kWh")], "1.6", {}),  # wrong unit
    ([sv("ab12", format="SignedData")], "1.6", {}),
    ([sv("NaN")], "1.6", {}),
    ([sv("80", measurand="SoC", location="Outlet")], "1.6", {}),
    ([sv(32, measurand="Current.Offered", unitOfMeasure={"unit": "mA", "multiplier": 3})],
     "2.0.1", {"current_offered_a": 32.0}),
    ([sv(22, measurand="Power.Offered", unitOfMeasure={"unit": "kW"})], "2.0.1",
     {"power_offered_w": 22000.0}),
    ([sv(5, measurand="Frequency")], "2.0.1", {}),
])
def test_sampled_values_become_si_measurands(samples, version, expected):
    assert sampled_measurands(samples, version) == pytest.approx(expected)


# ---- parsing and CALLERROR codes ----------------------------------------------------------

@pytest.mark.parametrize("text, version, code, message_id", [
    ("not json", "1.6", "FormationViolation", None),
    ("not json", "2.0.1", "RpcFrameworkError", None),
    ('{"a": 1}', "1.6", "FormationViolation", None),
    ("[2, 17, \"Heartbeat\", {}]", "2.0.1", "RpcFrameworkError", None),
    ('[9, "x1", "Heartbeat", {}]', "2.0.1", "MessageTypeNotSupported", "x1"),
    ('[2, "x2", "Heartbeat"]', "1.6", "FormationViolation", "x2"),
    ('[2, "x2", "Heartbeat"]', "2.0.1", "RpcFrameworkError", "x2"),
    ('[2, "' + "i" * 37 + '", "Heartbeat", {}]', "1.6", "FormationViolation", "i" * 37),
    ('[2, "x3", "FlyToTheMoon", {}]', "1.6", "NotImplemented", "x3"),
    ('[2, "x3", "TransactionEvent", {}]', "1.6", "NotImplemented", "x3"),
    ('[2, "x3", "StartTransaction", {}]', "2.0.1", "NotImplemented", "x3"),
    ('[2, "x4", "Heartbeat", [1]]', "1.6", "FormationViolation", "x4"),
    ('[2, "x4", "Heartbeat", "{}"]', "2.0.1", "FormatViolation", "x4"),
    ('[2, "x5", "Heartbeat", {"extra": 1}]', "1.6", "FormationViolation", "x5"),
    ('[2, "x5", "Heartbeat", {"extra": 1}]', "2.0.1", "FormatViolation", "x5"),
    ('[2, "x6", "Authorize", {}]', "1.6", "ProtocolError", "x6"),
    ('[2, "x6", "Authorize", {}]', "2.0.1", "OccurrenceConstraintViolation", "x6"),
    ('[2, "x7", "Authorize", {"idTag": 5}]', "1.6", "TypeConstraintViolation", "x7"),
    ('[2, "x7", "Authorize", {"idTag": "' + "t" * 21 + '"}]', "1.6",
     "TypeConstraintViolation", "x7"),
    (('[2, "x8", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", '
     '"status": "Exploded"}]'), "1.6", "PropertyConstraintViolation", "x8"),
    (('[2, "x9", "StartTransaction", {"connectorId": 1, "idTag": "a", "meterStart": 0, '
     '"timestamp": "yesterday"}]'), "1.6", "PropertyConstraintViolation", "x9"),
    ('[2, "xa", "MeterValues", {"connectorId": 1, "meterValue": []}]', "1.6",
     "OccurenceConstraintViolation", "xa"),
    ('[2, "xa", "MeterValues", {"evseId": 1, "meterValue": []}]', "2.0.1",
     "OccurrenceConstraintViolation", "xa"),
    ('[3, "xb"]', "1.6", "FormationViolation", "xb"),
])
def test_bad_frames_get_the_version_s_error_code(text, version, code, message_id):
    with pytest.raises(FrameError) as caught:
        parse_frame(text, version)
    error = caught.value
    assert (error.code, error.message_id) == (code, message_id)
    assert error.code in ERROR_CODES[version]
    reply = error.call_error(version)
    if message_id is not None and error.is_call:
        assert orjson.loads(reply)[:3] == [4, message_id, code]
    elif message_id is None and version == "2.0.1":
        assert orjson.loads(reply)[:3] == [4, "-1", "RpcFrameworkError"]
    else:
        assert reply is None  # 1.6 answers no frame whose id it cannot read, nor results


def test_valid_frames_of_every_type_parse():
    assert parse_frame('[2,"a","Heartbeat",{}]', "1.6") == Call("a", "Heartbeat", {})
    assert parse_frame('[3,"a",{"currentTime":"x"}]', "1.6") == CallResult(
        "a", {"currentTime": "x"})
    assert parse_frame('[4,"a","InternalError","",{}]', "2.0.1") == CallError(
        "a", "InternalError", "", {})


def test_a_result_matches_only_a_call_of_the_other_side_and_pending_calls_are_bounded():
    s = state()
    feed(s, "charger", encode_call("t1", "StartTransaction", {
        "connectorId": 1, "idTag": "a", "meterStart": 0, "timestamp": T0}))
    result = encode_call_result("t1", {"transactionId": 1, "idTagInfo": {"status": "Accepted"}})
    assert feed(s, "charger", result) == []  # the charger does not answer its own call
    assert len(feed(s, "csms", result)) == 1
    assert feed(s, "csms", result) == []  # answered once
    for i in range(MAX_PENDING + 10):
        feed(s, "charger", encode_call(f"h{i}", "Heartbeat", {}))
    assert len(s.pending) == MAX_PENDING


def test_the_raw_frame_is_capped_and_connection_events_are_named_by_the_socket():
    s = state("2.0.1")
    big = encode_call("d", "DataTransfer", {"vendorId": "x", "data": "é" * 5000})
    heartbeat = encode_call("h", "Heartbeat", {})
    assert feed(s, "charger", big) == []
    (event,) = feed(s, "charger", heartbeat)
    assert event.raw == heartbeat and not event.raw_truncated
    long_status = encode_call("s", "StatusNotification", {
        "timestamp": T0, "connectorStatus": "Available", "evseId": 1, "connectorId": 1,
        "customData": {"vendorId": "v", "blob": "x" * (RAW_CAP + 100)}})
    (capped,) = feed(s, "charger", long_status)
    assert capped.raw_truncated and len(capped.raw.encode()) == RAW_CAP
    opened = connection_event(s, "connected", 5.0)
    closed = connection_event(s, "disconnected", 6.0, "1006 abnormal")
    assert opened.event_id != closed.event_id and closed.details == {"reason": "1006 abnormal"}


# ---- fuzz: nothing but FrameError, ever ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63 - 1) | st.floats(
        allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=25)
actions = st.sampled_from(sorted(known_actions("1.6") | known_actions("2.0.1"))) | st.text(
    max_size=20)
measurand_keys = st.sampled_from(["value", "measurand", "unit", "phase", "unitOfMeasure",
                                  "connectorId", "evseId", "transactionId", "meterValue",
                                  "sampledValue", "timestamp", "transactionInfo", "eventType",
                                  "status", "connectorStatus", "multiplier"])
payloads = st.recursive(
    json_values, lambda inner: st.dictionaries(measurand_keys | st.text(max_size=8), inner,
                                               max_size=6) | st.lists(inner, max_size=4),
    max_leaves=30)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    st.tuples(st.sampled_from([2, 3, 4, 5, -1]), st.text(max_size=40), actions, payloads).map(
        lambda t: orjson.dumps(list(t)).decode()),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=frames, version=st.sampled_from(["1.6", "2.0.1"]), validate=st.booleans())
def test_any_input_raises_nothing_but_frame_error_and_normalises_without_raising(
        text, version, validate):
    s = state(version)
    try:
        frame = parse_frame(text, version, validate=validate)
    except FrameError as error:
        assert error.code in ERROR_CODES[version]
        return
    for sender in ("charger", "csms"):
        for event in normalise(frame, text, sender, s, 1.0e9):
            parse_telemetry(encode_telemetry(event))  # every event is a valid contract value


def test_a_201_connector_problem_event_is_a_faulted_status_with_its_tech_code():
    s = state("2.0.1")

    def problem(message_id: str, **item) -> list:
        data = {"eventId": 1, "timestamp": T0, "trigger": "Alerting", "actualValue": "true",
                "techCode": "GroundFailure", "eventNotificationType": "HardWiredNotification",
                "transactionId": "tx-9", "component": {"name": "Connector",
                                                       "evse": {"id": 2, "connectorId": 1}},
                "variable": {"name": "Problem"}, **item}
        return feed(s, "charger", encode_call(message_id, "NotifyEvent", {
            "generatedAt": T0, "seqNo": 0, "eventData": [data]}))

    (event,) = problem("n1")
    assert (event.kind, event.status, event.error_code) == ("status", "Faulted", "GroundFailure")
    assert (event.connector_id, event.transaction_id, event.charger_ts) == (2, "tx-9", EPOCH_T0)
    assert problem("n2", cleared=True) == []
    assert problem("n3", actualValue="false") == []
    assert problem("n4", variable={"name": "AvailabilityState"}) == []
