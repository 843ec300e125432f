"""Live faults planted in replayed sessions, through the fleet's charge points, the gateway's
normaliser and the live detectors (evaluation.live_faults), on synthetic sessions."""

from __future__ import annotations

import json

import pytest
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from evaluation.live_faults import (
    Label,
    LiveEvalConfig,
    StationReplay,
    evaluate_live_faults,
    ocpp_payload,
    score_live_faults,
)
from pipelines.data.synth import generate_sessions
from pipelines.telemetry.charging import FAULT_KINDS
from pipelines.telemetry.detectors import LiveAlert, LivePolicy

# 60 s samples keep the replay short; the detectors learn the interval per connector
FAST = LiveEvalConfig(sessions=None, fault_rate=0.6, sample_interval_s=60.0)


@pytest.fixture(scope="module")
def sessions() -> list[dict]:
    return generate_sessions(70, seed=5)[0]


@pytest.fixture(scope="module")
def default_report(sessions) -> dict:
    return evaluate_live_faults(sessions, [3], FAST)


def test_every_planted_kind_is_alerted_and_clean_time_raises_nothing(default_report):
    run = default_report["seeds"][0]
    for kind in FAULT_KINDS:
        row = run["kinds"][kind]
        assert row["planted"] >= 1, kind
        assert row["recall"] == 1.0, (kind, row)
        assert row["median_s"] >= 0.0
    assert run["false_total"] - run["false_in_record"] == 0, run["false_examples"]
    assert 0 < run["clean_charger_hours"] < run["charger_hours"]
    assert run["frames"] > 1000 and run["events"] >= run["frames"]
    # events the charger's timestamp dates: a fault alerted on its first telltale sample has
    # no delay (every kind but never_unplugged, meter_frozen included since it needs one)
    assert run["kinds"]["faulted"]["max_s"] == 0.0
    assert run["kinds"]["overcurrent"]["median_s"] == 0.0
    assert run["kinds"]["meter_frozen"]["median_s"] == 0.0
    pooled = default_report["pooled"]
    assert pooled["kinds"]["faulted"]["planted"] == run["kinds"]["faulted"]["planted"]


def test_a_detector_disabled_by_policy_loses_its_kind_only(sessions, default_report):
    blind = LivePolicy(max_temperature_c=10_000.0)
    report = evaluate_live_faults(sessions, [3], LiveEvalConfig(
        sessions=None, fault_rate=0.6, sample_interval_s=60.0, policy=blind))
    run, before = report["seeds"][0], default_report["seeds"][0]
    assert run["kinds"]["overtemperature"]["planted"] >= 1
    assert run["kinds"]["overtemperature"]["recall"] == 0.0
    assert run["kinds"]["overcurrent"]["recall"] == before["kinds"]["overcurrent"]["recall"]
    assert report["config"]["policy"]["max_temperature_c"] == 10_000.0


def test_a_fleet_without_faults_has_no_labels(sessions):
    report = evaluate_live_faults(sessions[:15], [1], LiveEvalConfig(
        sessions=None, fault_rate=0.0, sample_interval_s=60.0))
    run = report["seeds"][0]
    assert all(row["planted"] == 0 and row["recall"] is None for row in run["kinds"].values())
    assert run["clean_charger_hours"] == pytest.approx(run["charger_hours"])


def _alert(kind: str, at: float, tx: str = "7") -> LiveAlert:
    return LiveAlert(kind, "open", "CP", 1, tx, "site", at, at, at, "evidence")


def test_alerts_are_matched_by_charger_transaction_kind_and_time():
    replay = StationReplay("CP", labels=[Label("overcurrent", "CP", "7", "s", "1.6", 100.0,
                                               100.2)])
    replay.alerts = [_alert("overcurrent", 90.0),  # before the fault: false
                     _alert("overcurrent", 110.0),  # found, 10 s late
                     _alert("no_current", 120.0),  # a consequence of the fault
                     _alert("faulted", 50.0, tx="8")]  # on a clean transaction: false
    replay.transactions = {"7": (0.0, 3600.0, 100.0, False), "8": (4000.0, 7600.0, None, False)}
    scored = score_live_faults([replay])
    assert scored["kinds"]["overcurrent"] == {"planted": 1, "detected": 1, "recall": 1.0,
                                              "median_s": 10.0, "p90_s": 10.0, "max_s": 10.0}
    assert scored["false_alerts"] == {"overcurrent": 1, "faulted": 1}
    assert scored["secondary_alerts"] == {"overcurrent->no_current": 1}
    assert scored["clean_charger_hours"] == pytest.approx((100.0 + 3600.0) / 3600.0)
    assert scored["false_per_1000_charger_hours"] == pytest.approx(
        2000.0 / scored["clean_charger_hours"])


@pytest.mark.parametrize("payload", [
    call16.MeterValues(connector_id=1, transaction_id=5, meter_value=[{
        "timestamp": "2019-01-01T00:00:00.000Z", "sampledValue": [
            {"value": "3.5", "measurand": "SoC", "unit": "Percent", "location": "EV"}]}]),
    call201.TransactionEvent(
        event_type="Updated", timestamp="2019-01-01T00:00:00.000Z",
        trigger_reason="MeterValuePeriodic", seq_no=3, transaction_info={
            "transaction_id": "t", "charging_state": "Charging"},
        meter_value=[{"timestamp": "2019-01-01T00:00:00.000Z", "sampled_value": [
            {"value": 1.5, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}}]}],
        evse={"id": 1, "connector_id": 1}, offline=None)])
def test_frames_are_what_the_ocpp_package_sends(payload):
    expected = remove_nones(snake_to_camel_case(serialize_as_dict(payload)))
    assert json.dumps(ocpp_payload(payload)) == json.dumps(expected)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        LiveEvalConfig(kinds=("stuck_relay",))
    with pytest.raises(ValueError, match="latency"):
        LiveEvalConfig(latency_s=(1.0, 0.5))
    with pytest.raises(ValueError, match="seed"):
        evaluate_live_faults([], [])


def test_evaluate_command_runs_the_live_faults(tmp_path, sessions):
    from typer.testing import CliRunner

    from evguard.cli import app

    exports = tmp_path / "acn.json"
    exports.write_text(json.dumps({"_meta": {}, "_items": sessions[:12]}))
    out = tmp_path / "live.json"
    result = CliRunner().invoke(app, [
        "evaluate", "--live-faults", "--acn", str(exports), "--live-seeds", "1",
        "--live-sessions", "12", "--live-interval", "60", "--live-policy", "samples=1",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert "--live-faults" in report["command"] and "--live-policy samples=1" in report["command"]
    assert report["live_faults"]["config"]["policy"]["samples"] == 1
    assert set(report["live_faults"]["pooled"]["kinds"]) == set(FAULT_KINDS)
    assert "Live faults" in result.output
    bad = CliRunner().invoke(app, ["evaluate", "--live-faults", "--acn", str(exports),
                                   "--live-policy", "sample=1", "--out", str(out)])
    assert bad.exit_code == 1 and "not name=value" in " ".join(bad.output.split())
