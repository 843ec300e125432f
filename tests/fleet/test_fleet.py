"""The fleet over real WebSockets: 1.6 and 2.0.1 chargers complete transactions against an
`ocpp` CSMS, planted faults reach it with their labels, a silent charger really drops."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from evguard.services.process import free_port
from fleet import FleetConfig, FleetReport, run_fleet, schedule_sessions
from pipelines.contracts.dates import format_rfc1123, iso_to_epoch
from tests.fleet.csms import TestCsms

START = datetime(2019, 5, 6, 16, 0, tzinfo=UTC)
PASSWORD = "s3cret-pass"
VERSIONS = {"CP-16-A": "1.6", "CP-16-B": "1.6", "CP-16-C": "1.6",
            "CP-201-A": "2.0.1", "CP-201-B": "2.0.1"}
FAULTS = {"s-CP-16-B": "silent", "s-CP-16-C": "overcurrent", "s-CP-201-B": "faulted"}


def session(station: str, minute: int, kwh: float = 1.5) -> dict:
    connect = START + timedelta(minutes=minute)
    return {"sessionID": f"s-{station}", "stationID": station, "siteID": "0002",
            "connectionTime": format_rfc1123(connect),
            "doneChargingTime": format_rfc1123(connect + timedelta(minutes=15)),
            "disconnectTime": format_rfc1123(connect + timedelta(minutes=20)),
            "kWhDelivered": kwh, "userID": "000000042", "userInputs": None}


def run(csms: TestCsms, scheduled, labels, **overrides) -> FleetReport:
    config = FleetConfig(url=csms.url, speedup=600, meter_interval_s=30, password=PASSWORD,
                         start_delay_s=0.3, connect_attempts=2, **overrides)
    return asyncio.run(_within(csms, run_fleet(scheduled, config, labels_path=labels)))


async def _within(csms: TestCsms, fleet_run):
    async with csms:
        return await fleet_run


def payloads(csms: TestCsms, cp_id: str, action: str) -> list[dict]:
    return [f.payload for f in csms.frames_of(cp_id) if f.action == action]


def readings(meter_value: dict) -> dict[str, float]:
    return {v["measurand"]: float(v["value"]) for v in meter_value["sampledValue"]}


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory):
    sessions = [session(station, i) for i, station in enumerate(VERSIONS)]
    scheduled = schedule_sessions(sessions, VERSIONS, FAULTS)
    csms = TestCsms(free_port(), {cp: PASSWORD for cp in VERSIONS})
    labels = tmp_path_factory.mktemp("fleet") / "labels.jsonl"
    report = run(csms, scheduled, labels)
    return csms, report, [json.loads(line) for line in labels.read_text().splitlines()]


def test_a_16_charger_completes_a_transaction_with_the_csms_transaction_id(fleet_run):
    csms, _, _ = fleet_run
    actions = [f.action for f in csms.frames_of("CP-16-A")]
    assert actions[:4] == ["BootNotification", "StatusNotification", "StatusNotification",
                           "Authorize"]
    assert actions[4] == "StartTransaction" and actions[-2:] == ["StatusNotification"] * 2
    statuses = [p["status"] for p in payloads(csms, "CP-16-A", "StatusNotification")]
    assert statuses == ["Available", "Preparing", "Charging", "SuspendedEV", "Finishing",
                        "Available"]
    (start,), (stop,) = (payloads(csms, "CP-16-A", "StartTransaction"),
                         payloads(csms, "CP-16-A", "StopTransaction"))
    meters = payloads(csms, "CP-16-A", "MeterValues")
    tx_ids = {m["transactionId"] for m in meters} | {stop["transactionId"]}
    assert len(tx_ids) == 1 and next(iter(tx_ids)) >= 1000  # the id the CSMS handed out
    assert stop["meterStop"] - start["meterStart"] == pytest.approx(1500, abs=2)
    assert stop["reason"] == "EVDisconnected"
    assert len(meters) == 41  # every 30 s over 20 min, and the last at the disconnection
    first, last = (readings(m["meterValue"][0]) for m in (meters[0], meters[-1]))
    assert first["Current.Import"] <= first["Current.Offered"] <= 32
    assert first["Energy.Active.Import.Register"] == pytest.approx(start["meterStart"], abs=1)
    assert last["Energy.Active.Import.Register"] == pytest.approx(stop["meterStop"], abs=1)
    assert {"Temperature", "Voltage", "Power.Active.Import"} <= set(first)
    stamp = iso_to_epoch(start["timestamp"].replace("Z", "+00:00"))
    assert stamp == pytest.approx(START.timestamp())  # the session's own clock


def test_a_201_station_completes_a_transaction_with_transaction_events(fleet_run):
    csms, _, _ = fleet_run
    events = payloads(csms, "CP-201-A", "TransactionEvent")
    assert [e["eventType"] for e in (events[0], events[-1])] == ["Started", "Ended"]
    assert {e["eventType"] for e in events[1:-1]} == {"Updated"}
    assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
    assert [e["seqNo"] for e in events] == list(range(len(events)))
    states = [e["transactionInfo"].get("chargingState") for e in events
              if e["triggerReason"] == "ChargingStateChanged"]
    assert states == ["Charging", "SuspendedEV"]

    def register(event):
        return next(v["value"] for v in event["meterValue"][0]["sampledValue"]
                    if v["measurand"] == "Energy.Active.Import.Register")
    assert register(events[-1]) - register(events[0]) == pytest.approx(1500, abs=2)
    periodic = [e for e in events if e["triggerReason"] == "MeterValuePeriodic"]
    measurands = {v["measurand"] for v in periodic[0]["meterValue"][0]["sampledValue"]}
    assert "Temperature" not in measurands and "Current.Offered" in measurands
    connector = [p["connectorStatus"] for p in payloads(csms, "CP-201-A", "StatusNotification")]
    assert connector == ["Available", "Occupied", "Available"]


def test_every_planted_fault_is_labelled_once_with_its_send_time(fleet_run):
    _, report, labels = fleet_run
    assert sorted(label["kind"] for label in labels) == sorted(FAULTS.values())
    assert report.faults_planned == report.faults_sent == {k: 1 for k in FAULTS.values()}
    assert report.transactions_started == report.transactions_ended == 5
    assert report.sessions_done == 5 and not report.errors
    for label in labels:
        assert label["chargePointId"] == label["sessionID"][2:]
        assert label["transactionId"] and label["connectorId"] == 1
        assert label["ocppVersion"] == VERSIONS[label["chargePointId"]]
        connected = START.timestamp() + 60 * list(VERSIONS).index(label["chargePointId"])
        assert label["fault_start_ts"] == pytest.approx(connected + label["fault_start_s"])


def test_a_sample_fault_reaches_the_csms_at_its_start_and_not_before(fleet_run):
    csms, _, labels = fleet_run
    label = next(x for x in labels if x["kind"] == "overcurrent")
    frames = [f for f in csms.frames_of("CP-16-C") if f.action == "MeterValues"]
    stamps = [iso_to_epoch(f.payload["meterValue"][0]["timestamp"].replace("Z", "+00:00"))
              for f in frames]
    first = stamps.index(pytest.approx(label["fault_start_ts"], abs=1e-3))
    over = [readings(f.payload["meterValue"][0]) for f in frames]
    assert over[first]["Current.Import"] > 1.15 * over[first]["Current.Offered"]
    assert all(r["Current.Import"] <= r["Current.Offered"] for r in over[:first])
    assert label["sent_ts"] <= frames[first].received_ts < label["sent_ts"] + 1.0
    assert frames[first - 1].received_ts < label["sent_ts"]


def test_a_faulted_connector_reports_its_error_code(fleet_run):
    csms, _, labels = fleet_run
    label = next(x for x in labels if x["kind"] == "faulted")
    faulted = [f for f in csms.frames_of("CP-201-B") if f.action == "StatusNotification"
               and f.payload["connectorStatus"] == "Faulted"]
    assert len(faulted) == 1 and label["sent_ts"] <= faulted[0].received_ts
    (notify,) = payloads(csms, "CP-201-B", "NotifyEvent")
    assert notify["eventData"][0]["techCode"] == label["errorCode"] != ""
    ended = payloads(csms, "CP-201-B", "TransactionEvent")[-1]
    assert ended["eventType"] == "Ended" and ended["transactionInfo"]["stoppedReason"] == "Other"


def test_a_silent_charger_drops_its_connection_mid_transaction(fleet_run):
    csms, _, labels = fleet_run
    label = next(x for x in labels if x["kind"] == "silent")
    first, second = csms.links_of("CP-16-B")
    assert first.closed_ts is not None and first.close_code == 1006  # dropped, no close frame
    assert abs(first.closed_ts - label["sent_ts"]) < 0.5
    assert "StartTransaction" in [f.action for f in first.frames]
    assert "StopTransaction" not in [f.action for f in first.frames]
    assert all(f.received_ts <= label["sent_ts"] for f in first.frames)
    last_meter = max(iso_to_epoch(f.payload["meterValue"][0]["timestamp"].replace("Z", "+00:00"))
                     for f in first.frames if f.action == "MeterValues")
    assert last_meter < label["fault_start_ts"]
    (stop,) = payloads(csms, "CP-16-B", "StopTransaction")
    assert stop["reason"] == "PowerLoss"
    assert second.frames[0].action == "BootNotification"
    assert second.frames[0].received_ts - first.closed_ts > 0.2  # silent until the car left


def test_a_charger_with_a_wrong_password_is_refused(tmp_path):
    csms = TestCsms(free_port(), {"CP-16-A": PASSWORD})
    scheduled = schedule_sessions([session("CP-16-A", 0)], {"CP-16-A": "1.6"}, {})
    report = run(csms, scheduled, tmp_path / "labels.jsonl", passwords={"CP-16-A": "wrong"})
    assert report.errors == {"station: FleetError": 1}
    assert report.transactions_started == 0 and csms.links == []


def test_a_charger_that_connects_late_never_stamps_an_event_before_an_earlier_one(tmp_path):
    # no start delay: at 600x the charger's clock runs ahead while it connects
    csms = TestCsms(free_port(), {"CP-LATE": PASSWORD})
    scheduled = schedule_sessions([session("CP-LATE", 0)], {"CP-LATE": "1.6"}, {})
    config = FleetConfig(url=csms.url, speedup=600, meter_interval_s=30, password=PASSWORD,
                         start_delay_s=0.0, connect_attempts=2)
    report = asyncio.run(_within(csms, run_fleet(scheduled, config)))
    assert not report.errors and report.transactions_ended == 1
    stamps = [iso_to_epoch(p.get("timestamp", "").replace("Z", "+00:00"))
              for f in csms.frames_of("CP-LATE") for p in [f.payload] if "timestamp" in p]
    assert len(stamps) >= 6 and stamps == sorted(stamps)
