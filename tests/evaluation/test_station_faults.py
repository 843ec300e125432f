"""Planted station faults: planting is seeded and faithful, and the replay finds them."""

from __future__ import annotations

import pytest

from evaluation.station_faults import (
    PlantingPlan,
    evaluate_station_faults,
    plant_station_faults,
    replay_health,
    score_station_faults,
    summarise,
)
from pipelines.data.exports import load_exports
from pipelines.data.synth import generate_sessions
from pipelines.stations.health import HealthPolicy, epoch_seconds


@pytest.fixture(scope="module")
def synthetic() -> list[dict]:
    records, _ = generate_sessions(4500, seed=5, sites=("jpl",))
    return records


def _at(fault, records):
    return [r for r in records if r["stationID"] == fault.station_id
            and fault.start_s <= epoch_seconds(r["connectionTime"]) < fault.end_s]


def test_planting_is_seeded_and_changes_only_the_fault_windows(synthetic):
    planted, faults = plant_station_faults(synthetic, seed=3)
    again, same = plant_station_faults(synthetic, seed=3)
    assert faults == same and planted == again
    assert {f.kind for f in faults} == {"outage", "degraded", "failing"}
    assert len({f.station_id for f in faults}) == len(faults)
    for fault in faults:
        before, after = _at(fault, synthetic), _at(fault, planted)
        if fault.kind == "outage":
            assert after == [] and len(before) == fault.sessions
        elif fault.kind == "degraded":
            assert [r["kWhDelivered"] for r in after] == pytest.approx(
                [r["kWhDelivered"] * fault.factor for r in before], abs=1e-3)
        else:
            assert all(r["kWhDelivered"] < 0.1 for r in after)
    untouched = {r["sessionID"] for r in synthetic} - {r["sessionID"] for f in faults
                                                        for r in _at(f, synthetic)}
    kept = {r["sessionID"]: r for r in planted}
    assert all(kept[s] == r for r in synthetic if (s := r["sessionID"]) in untouched)


def test_the_replay_finds_the_planted_faults_on_synthetic_sessions(synthetic):
    planted, faults = plant_station_faults(synthetic, seed=1, plan=PlantingPlan(min_sessions=15))
    replay = replay_health(planted)
    summary = summarise(score_station_faults(synthetic, planted, faults, replay.alerts))
    kinds = summary["kinds"]
    assert kinds["failing"]["detected"] >= 0.8
    assert kinds["degraded"]["detected"] >= 0.6
    long_outages = [f for f in faults if f.kind == "outage" and f.end_s - f.start_s > 7 * 86400]
    assert long_outages
    assert kinds["outage"]["detected"] >= 0.5
    assert summary["false_per_100_station_weeks"] < 10  # synthetic stations share arrivals at random


def test_the_real_exports_report_every_kind(shared_acn):
    report = evaluate_station_faults(load_exports([shared_acn]), seeds=(1,))
    summary = report["seeds"][1]
    assert set(summary["kinds"]) == {"outage", "degraded", "failing"}
    assert summary["kinds"]["outage"]["target_planted"] > 0
    assert summary["kinds"]["outage"]["target_detected"] >= 0.6
    assert summary["station_weeks"] > 1000


def test_the_evaluate_command_replays_station_faults_with_changed_thresholds(tmp_path,
                                                                              synthetic):
    import json

    from typer.testing import CliRunner

    from evguard.cli import app

    exports = tmp_path / "acn.json"
    exports.write_text(json.dumps({"_meta": {}, "_items": synthetic}))

    def run(*policy: str) -> tuple[int, str, dict | None]:
        out = tmp_path / f"stations-{len(policy)}.json"
        result = CliRunner().invoke(app, ["evaluate", "--station-faults-only", "--acn",
                                          str(exports), "--station-seeds", "1", *policy,
                                          "--out", str(out)])
        report = json.loads(out.read_text())["station_faults"] if out.exists() else None
        return result.exit_code, " ".join(result.output.split()), report

    code, _, default = run()
    assert code == 0 and default["policy"]["cusum_h"] == HealthPolicy().cusum_h
    code, _, never = run("--station-policy", "cusum_h=1e9,degraded_warmup=5")
    assert code == 0
    assert (never["policy"]["cusum_h"], never["policy"]["degraded_warmup"]) == (1e9, 5)
    # the thresholds reach the detectors: a CUSUM that can never reach h opens no degraded alert
    assert default["mean"]["kinds"]["degraded"]["detected"] > 0
    assert never["mean"]["kinds"]["degraded"]["detected"] == 0
    assert never["mean"]["false_alerts"]["degraded"] == 0
    code, output, _ = run("--station-policy", "cusum=2")
    assert code == 1 and "--station-policy" in output and "not name=value" in output
