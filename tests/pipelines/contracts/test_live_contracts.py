"""The contracts of live telemetry: the telemetry event (§1a) the gateway produces, and the
live alert (§5b) and connector status (§5c) the telemetry processor publishes. Each round-
trips through its own encoder and parser, and each broken field is refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.contracts.connector_status import (
    EXAMPLE_CONNECTOR_STATUS,
    MAX_REASONS,
    MAX_SNAPSHOTS,
    STATES,
    ConnectorStatusMessage,
    InvalidConnectorStatus,
    connector_routing_key,
    connector_status_body,
    encode_connector_statuses,
    parse_connector_statuses,
)
from pipelines.contracts.live_alert import (
    EXAMPLE_LIVE_ALERT,
    KINDS,
    InvalidLiveAlert,
    LiveAlertMessage,
    encode_live_alert,
    live_alert_body,
    live_alert_id,
    live_routing_key,
    parse_live_alert,
)
from pipelines.contracts.telemetry import (
    EXAMPLE_TELEMETRY,
    MEASURANDS,
    RAW_CAP,
    InvalidTelemetry,
    TelemetryEvent,
    cap_raw,
    encode_telemetry,
    parse_telemetry,
    telemetry_body,
)

T0 = 1_556_273_700.0  # 2019-04-26 10:15:00 UTC
sites = st.text(alphabet="abc.*#-_0", max_size=12)
times = st.integers(1_500_000_000_000, 1_700_000_000_000).map(lambda ms: ms / 1000)
numbers = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))


def with_changes(example: dict, **changes) -> bytes:
    return json.dumps({**example, **changes}).encode()


# ---- telemetry event (§1a) ----------------------------------------------------------------
def meter_event(**changes) -> TelemetryEvent:
    values = {"event_id": "CP-0042:19223201:0", "kind": "meter", "charge_point_id": "CP-0042",
              "connector_id": 1, "transaction_id": "1187", "charger_ts": T0,
              "received_ts": T0 + 0.312, "ocpp_version": "2.0.1", "site_id": "caltech",
              "measurands": {"energy_wh": 5321.0, "power_w": 6480.0, "current_a": 27.0,
                             "current_offered_a": 32.0, "voltage_v": 240.0,
                             "temperature_c": 31.5, "soc_pct": 48.0, "power_offered_w": 7680.0},
              "details": {"reason": "Local", "meterStop": 5321}, "raw": '[2,"1","MeterValues",{}]',
              "gateway": "gateway-1"}
    return TelemetryEvent(**{**values, **changes})


def test_a_telemetry_event_round_trips_and_its_example_parses():
    event = meter_event()
    back = parse_telemetry(encode_telemetry(event))
    assert back == event
    assert back.key == b"CP-0042" and back.event_ts == T0
    status = meter_event(kind="status", status="Faulted", error_code="GroundFailure",
                         measurands={}, charger_ts=None, transaction_id=None, ocpp_version="1.6")
    back = parse_telemetry(encode_telemetry(status))
    assert back == status and back.event_ts == T0 + 0.312  # no charger time: the arrival
    example = parse_telemetry(json.dumps(EXAMPLE_TELEMETRY))
    assert (example.kind, example.connector_id, example.measurands["current_a"]) == (
        "meter", 1, 27.0)
    assert telemetry_body(example)["measurands"] == EXAMPLE_TELEMETRY["measurands"]


def test_telemetry_keeps_only_finite_known_measurands():
    odd = {"power_w": math.nan, "current_a": math.inf, "energy_wh": 12.0, "frequency": 50.0,
           "soc_pct": True, "voltage_v": 230}
    event = meter_event(measurands=odd)
    assert telemetry_body(event)["measurands"] == {"energy_wh": 12.0, "voltage_v": 230.0}
    value = with_changes(EXAMPLE_TELEMETRY, measurands={"power_w": "7 kW", "current_a": None,
                                                         "temperature_c": 40, "rpm": 3})
    assert parse_telemetry(value).measurands == {"temperature_c": 40.0}
    assert set(MEASURANDS) >= set(meter_event().measurands)


def test_the_raw_frame_is_capped_without_cutting_a_character():
    short, cut = cap_raw('[2,"1","Heartbeat",{}]')
    assert (short, cut) == ('[2,"1","Heartbeat",{}]', False)
    frame = "a" * (RAW_CAP - 1) + "€" * 10  # the euro sign is 3 bytes: it straddles the cap
    text, cut = cap_raw(frame)
    assert cut and text == "a" * (RAW_CAP - 1) and len(text.encode()) <= RAW_CAP
    text, cut = cap_raw(("é" * RAW_CAP).encode())
    assert cut and len(text.encode()) == RAW_CAP and set(text) == {"é"}
    capped = meter_event(raw=text, raw_truncated=True)
    assert parse_telemetry(encode_telemetry(capped)).raw_truncated is True


@pytest.mark.parametrize(("name", "value", "words"), [
    ("schema", "evguard.telemetry/2", "schema must be"),
    ("kind", "meter_value", "kind must be one of"),
    ("ocppVersion", "1.5", "ocppVersion must be one of"),
    ("connectorId", -1, "connectorId"), ("connectorId", "1", "connectorId"),
    ("connectorId", True, "connectorId"),
    ("transactionId", "", "transactionId"), ("transactionId", 1187, "transactionId"),
    ("transactionId", "x" * 65, "transactionId"),
    ("measurands", [1, 2], "measurands and details"), ("details", "x", "measurands and details"),
    ("status", "Broken", "status must be"), ("chargerTimestamp", "10:15", "chargerTimestamp"),
    ("receivedAt", None, "receivedAt"), ("raw", 7, "raw must be"),
    ("event_id", "", "event_id"), ("chargePointId", "c" * 129, "longer than 128"),
    ("siteID", 3, "siteID"), ("errorCode", "e" * 65, "longer than 64"),
])
def test_each_broken_telemetry_field_is_named(name, value, words):
    with pytest.raises(InvalidTelemetry, match=words):
        parse_telemetry(with_changes(EXAMPLE_TELEMETRY, **{name: value}))


def test_telemetry_refuses_what_is_not_an_event():
    with pytest.raises(InvalidTelemetry, match="tombstone"):
        parse_telemetry(None)
    with pytest.raises(InvalidTelemetry, match="not JSON"):
        parse_telemetry(b"\xff[")
    with pytest.raises(InvalidTelemetry, match="JSON object"):
        parse_telemetry(b'"meter"')
    with pytest.raises(InvalidTelemetry, match="needs a status"):
        parse_telemetry(with_changes(EXAMPLE_TELEMETRY, kind="status", status=None))
    missing = dict(EXAMPLE_TELEMETRY)
    del missing["chargePointId"]
    with pytest.raises(InvalidTelemetry, match="chargePointId"):
        parse_telemetry(json.dumps(missing))
    assert issubclass(InvalidTelemetry, ValueError)


# ---- live alert (§5b) ----------------------------------------------------------------------
def live_alert(**changes) -> LiveAlertMessage:
    values = {"alert_id": live_alert_id("CP-0042", 1, "overcurrent", T0),
              "charge_point_id": "CP-0042", "connector_id": 1, "transaction_id": "1187",
              "site_id": "caltech", "kind": "overcurrent", "status": "open",
              "first_sample_ts": T0, "first_received_ts": T0 + 0.25, "at_ts": T0 + 20,
              "evidence": "current 41.0 A for 20 s, offered 32 A", "detected_ts": T0 + 20.5,
              "metrics": {"current_a": 41.0, "current_offered_a": 32.0}, "processor": "t-1"}
    return LiveAlertMessage(**{**values, **changes})


def test_a_live_alert_round_trips_with_its_routing_and_episode_id():
    alert = live_alert()
    assert parse_live_alert(encode_live_alert(alert)) == alert
    assert alert.alert_id == "CP-0042:1:overcurrent:1556273700"
    assert (alert.routing_key, alert.connector, alert.is_open) == (
        "live.caltech.overcurrent", "CP-0042/1", True)
    closed = live_alert(status="closed", at_ts=T0 + 300, transaction_id=None, metrics={})
    back = parse_live_alert(encode_live_alert(closed))
    assert back == closed and not back.is_open and back.alert_id == alert.alert_id
    example = parse_live_alert(json.dumps(EXAMPLE_LIVE_ALERT))
    assert (example.kind, example.first_received_ts - example.first_sample_ts) == (
        "no_current", pytest.approx(0.312))


def test_live_alert_metrics_keep_finite_numbers_and_routing_keys_carry_no_wildcards():
    body = live_alert_body(live_alert(metrics={"a": math.nan, "b": math.inf, "c": 2, "d": True}))
    assert body["metrics"] == {"c": 2.0}
    assert live_routing_key("a.b*c#", "silent") == "live.a_b_c_.silent"
    assert live_routing_key("", "faulted") == "live._.faulted"
    assert parse_live_alert(encode_live_alert(live_alert(site_id="a.b"))).site_id == "a.b"
    with pytest.raises(ValueError, match="kind must be one of"):
        live_routing_key("caltech", "smoke")


@pytest.mark.parametrize(("name", "value", "words"), [
    ("schema", "evguard.station_alert/1", "schema must be"), ("alert_id", "", "alert_id"),
    ("alert_id", "a" * 301, "longer than 300"), ("chargePointId", None, "chargePointId"),
    ("connectorId", -2, "connectorId"), ("connectorId", 1.0, "connectorId"),
    ("connectorId", False, "connectorId"), ("transactionId", "", "transactionId"),
    ("transactionId", 1187, "transactionId"), ("siteID", "s" * 33, "longer than 32"),
    ("kind", "smoke", "kind must be one of"), ("status", "resolved", "status must be one of"),
    ("first_sample_at", "soon", "first_sample_at"), ("first_received_at", 5, "first_received_at"),
    ("at", "2019-04-26T10:14:59+00:00", "before first_sample_at"), ("evidence", "  ", "evidence"),
    ("evidence", "e" * 1001, "longer than 1000"), ("detected_at", None, "detected_at"),
    ("metrics", [1], "metrics"), ("processor", 3, "processor"),
])
def test_each_broken_live_alert_field_is_named(name, value, words):
    with pytest.raises(InvalidLiveAlert, match=words):
        parse_live_alert(with_changes(EXAMPLE_LIVE_ALERT, **{name: value}))


def test_a_live_alert_that_is_not_an_object_is_refused():
    for raw, words in [(b"\xff{", "not JSON"), (b"[1]", "JSON object"), (b"null", "JSON object")]:
        with pytest.raises(InvalidLiveAlert, match=words):
            parse_live_alert(raw)
    lenient = dict(EXAMPLE_LIVE_ALERT)
    del lenient["processor"], lenient["metrics"], lenient["siteID"]
    parsed = parse_live_alert(json.dumps(lenient))
    assert (parsed.processor, parsed.metrics, parsed.site_id) == ("", {}, "")
    assert issubclass(InvalidLiveAlert, ValueError)


@given(kind=st.sampled_from(KINDS), status=st.sampled_from(("open", "closed")), site=sites,
       first=times, wait=st.floats(0, 1e5), connector=st.integers(0, 99),
       metrics=st.dictionaries(st.text(min_size=1, max_size=8),
                               st.floats(allow_nan=False, allow_infinity=False), max_size=4))
def test_any_live_alert_round_trips(kind, status, site, first, wait, connector, metrics):
    alert = live_alert(kind=kind, status=status, site_id=site, connector_id=connector,
                       alert_id=live_alert_id("CP-9", connector, kind, first),
                       first_sample_ts=first, first_received_ts=first + 0.5,
                       at_ts=first + wait, detected_ts=first + wait, metrics=metrics)
    back = parse_live_alert(encode_live_alert(alert))
    assert back.routing_key == live_routing_key(site, kind)
    assert (back.kind, back.status, back.site_id, back.metrics) == (kind, status, site, metrics)
    assert back.first_sample_ts == pytest.approx(first, abs=1e-6)
    assert back.at_ts == pytest.approx(first + wait, abs=1e-5)


@given(st.binary(max_size=200))
def test_live_alert_parse_never_raises_anything_else(raw):
    try:
        parse_live_alert(raw)
    except InvalidLiveAlert:
        pass


# ---- connector status (§5c) ----------------------------------------------------------------
def snapshot(**changes) -> ConnectorStatusMessage:
    values = {"charge_point_id": "CP-0042", "connector_id": 1, "site_id": "caltech",
              "state": "Charging", "transaction_id": "1187", "power_w": 6480.0,
              "energy_wh": 5321.0, "current_a": 27.0, "current_offered_a": 32.0,
              "temperature_c": None, "error_code": "", "last_sample_ts": T0 + 0.312,
              "updated_ts": T0 + 0.402, "open_alerts": ("no_current",), "processor": "t-1"}
    return ConnectorStatusMessage(**{**values, **changes})


def only_message(snapshots: list[ConnectorStatusMessage]) -> tuple[str, bytes]:
    messages = encode_connector_statuses(snapshots)
    assert len(messages) == 1
    return messages[0]


def test_a_connector_status_batch_round_trips_with_its_routing():
    status = snapshot()
    offline = snapshot(connector_id=2, state="Offline", transaction_id=None, power_w=None,
                       open_alerts=())
    key, body = only_message([status, offline])
    assert key == status.routing_key == "connector.caltech.status"
    assert parse_connector_statuses(body) == [status, offline]
    assert "Offline" in STATES and "Occupied" in STATES
    assert connector_routing_key("x.y#") == "connector.x_y_.status"
    assert connector_routing_key("") == "connector._.status"
    element = connector_status_body("caltech", "t-1", [snapshot(
        power_w=math.nan, current_a=math.inf, energy_wh=True)])["connectors"][0]
    assert (element["power_w"], element["current_a"], element["energy_wh"]) == (None, None, None)
    data = orjson.loads(body)
    data["connectors"][0]["temperature_c"] = "hot"  # not a number: null, not an error
    assert parse_connector_statuses(json.dumps(data))[0].temperature_c is None


def test_the_documented_example_is_the_modules_example_and_parses():
    text = (Path(__file__).resolve().parents[3] / "docs" / "contracts.md").read_text()
    section = text.split("## 5c. Connector status", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(section) == EXAMPLE_CONNECTOR_STATUS
    parsed = parse_connector_statuses(json.dumps(EXAMPLE_CONNECTOR_STATUS))
    assert [(s.charge_point_id, s.site_id, s.processor, s.state) for s in parsed] == [
        ("CP-0042", "caltech", "telemetry-1", "Charging"),
        ("CP-0043", "caltech", "telemetry-1", "Offline")]
    # the encoder writes what the example shows
    assert [orjson.loads(b) for _k, b in encode_connector_statuses(parsed)] == [
        EXAMPLE_CONNECTOR_STATUS]


def test_snapshots_go_one_message_per_site_split_at_the_cap():
    batch = ([snapshot(charge_point_id=f"CP-{i}") for i in range(MAX_SNAPSHOTS + 3)]
             + [snapshot(charge_point_id="CP-jpl", site_id="jpl")]
             + [snapshot(charge_point_id="CP-other", processor="t-2")])
    messages = encode_connector_statuses(batch)
    assert [k for k, _b in messages] == ["connector.caltech.status"] * 2 + [
        "connector.jpl.status", "connector.caltech.status"]
    parsed = [parse_connector_statuses(b) for _k, b in messages]
    assert [len(p) for p in parsed] == [MAX_SNAPSHOTS, 3, 1, 1]
    assert [s for p in parsed for s in p] == batch[:MAX_SNAPSHOTS + 3] + batch[-2:]
    assert parsed[3][0].processor == "t-2"
    assert [len(parse_connector_statuses(b)) for _k, b in encode_connector_statuses(
        batch[:7], max_snapshots=3)] == [3, 3, 1]
    assert encode_connector_statuses([]) == []


@pytest.mark.parametrize(("name", "value", "words"), [
    ("chargePointId", "", "chargePointId"),
    ("connectorId", None, "connectorId"), ("connectorId", -1, "connectorId"),
    ("state", "Broken", "state must be one of"), ("state", None, "state must be one of"),
    ("transactionId", "", "transactionId"), ("transactionId", 7, "transactionId"),
    ("open_alerts", "no_current", "open_alerts"), ("open_alerts", [1], "open_alerts"),
    ("last_sample_at", "now", "last_sample_at"), ("updated_at", None, "updated_at"),
    ("errorCode", "e" * 65, "longer than 64"),
])
def test_each_broken_snapshot_field_is_named_with_its_index(name, value, words):
    data = orjson.loads(only_message([snapshot(connector_id=c) for c in range(3)])[1])
    data["connectors"][1][name] = value
    with pytest.raises(InvalidConnectorStatus,
                       match=rf"^1 of 3 snapshots are invalid: connectors\[1\]: .*{words}"):
        parse_connector_statuses(json.dumps(data))


@pytest.mark.parametrize(("name", "value", "words"), [
    ("schema", "evguard.live_alert/1", "schema must be"), ("siteID", "s" * 33, "longer than 32"),
    ("processor", 1, "processor"), ("connectors", [], "non-empty list"),
    ("connectors", {"chargePointId": "CP-1"}, "non-empty list"),
    ("connectors", [{}] * (MAX_SNAPSHOTS + 1), f"at most {MAX_SNAPSHOTS}"),
])
def test_each_broken_batch_field_is_named(name, value, words):
    body = orjson.loads(only_message([snapshot()])[1])
    with pytest.raises(InvalidConnectorStatus, match=words):
        parse_connector_statuses(with_changes(body, **{name: value}))


def test_a_poison_batch_names_every_bad_element_up_to_the_limit():
    data = orjson.loads(only_message([snapshot(connector_id=c) for c in range(40)])[1])
    data["connectors"][3]["state"] = "Broken"
    data["connectors"][17]["updated_at"] = "now"
    data["connectors"][20] = "CP-1"
    with pytest.raises(InvalidConnectorStatus) as caught:
        parse_connector_statuses(json.dumps(data))
    reason = str(caught.value)
    assert reason.startswith("3 of 40 snapshots are invalid: connectors[3]: state must be")
    assert "; connectors[17]: updated_at is not ISO-8601: 'now'" in reason
    assert reason.endswith("; connectors[20]: expected a JSON object, got str")
    for element in data["connectors"]:
        if isinstance(element, dict):
            element["connectorId"] = -1
    with pytest.raises(InvalidConnectorStatus) as caught:
        parse_connector_statuses(json.dumps(data))
    reason = str(caught.value)
    assert reason.startswith("40 of 40 snapshots are invalid: connectors[0]: connectorId")
    assert f"connectors[{MAX_REASONS - 1}]:" in reason and f"connectors[{MAX_REASONS}]:" not in reason
    assert reason.endswith(f"; and {40 - MAX_REASONS} more")


@given(state=st.sampled_from(STATES), site=sites, power=numbers, energy=numbers, updated=times,
       alerts=st.lists(st.sampled_from(KINDS), max_size=3), size=st.integers(1, 5))
def test_any_connector_status_batch_round_trips(state, site, power, energy, updated, alerts,
                                                size):
    batch = [snapshot(connector_id=c, state=state, site_id=site, power_w=power,
                      energy_wh=energy, updated_ts=updated + c, last_sample_ts=updated - 1,
                      open_alerts=tuple(alerts)) for c in range(size)]
    key, body = only_message(batch)
    back = parse_connector_statuses(body)
    assert [(b.connector_id, b.state, b.site_id, b.power_w, b.energy_wh, b.open_alerts)
            for b in back] == [(c, state, site, power, energy, tuple(alerts))
                               for c in range(size)]
    assert [b.updated_ts for b in back] == pytest.approx([updated + c for c in range(size)],
                                                         abs=1e-6)
    assert key == connector_routing_key(site)


@given(st.binary(max_size=200))
def test_connector_status_and_telemetry_parse_never_raise_anything_else(raw):
    try:
        parse_connector_statuses(raw)
    except InvalidConnectorStatus:
        pass
    try:
        parse_telemetry(raw)
    except InvalidTelemetry:
        pass


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                          st.dictionaries(st.sampled_from(["chargePointId", "connectorId",
                                                           "state", "updated_at"]),
                                          st.one_of(st.none(), st.integers(), st.text())),
                          st.just(EXAMPLE_CONNECTOR_STATUS["connectors"][0])),
                max_size=6))
def test_a_batch_of_any_elements_parses_whole_or_raises_only_its_error(elements):
    try:
        parsed = parse_connector_statuses(json.dumps({**EXAMPLE_CONNECTOR_STATUS,
                                                      "connectors": elements}))
    except InvalidConnectorStatus as exc:
        assert "connectors" in str(exc)
    else:
        assert len(parsed) == len(elements) > 0
