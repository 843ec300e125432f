"""The fleet against the real standalone gateway and broker: its 1.6 and 2.0.1 chargers
complete transactions, and the planted faults are in the normalised telemetry on Kafka."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fleet import FleetConfig, run_fleet, schedule_sessions
from gateway.registry import add_charger
from pipelines.contracts.telemetry import parse_telemetry
from tests.fleet.test_fleet import session
from tests.gateway.gateway_kit import gateway_settings, new_topic, running_gateway
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic

PASSWORD = "fleet-pass-1"


def test_fleet_chargers_complete_transactions_through_the_gateway(kafka_settings, tmp_path):
    tag = uuid.uuid4().hex[:6]
    stations = {f"FL16-{tag}": "1.6", f"FL201-{tag}": "2.0.1", f"FLSIL-{tag}": "1.6"}
    silent, clean16, clean201 = f"FLSIL-{tag}", f"FL16-{tag}", f"FL201-{tag}"
    records = [session(station, i) for i, station in enumerate(stations)]
    scheduled = schedule_sessions(records, stations, {f"s-{silent}": "silent"})
    topic = new_topic(kafka_settings)
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic)
    for station in stations:
        add_charger(settings.ocpp_charge_points, station, "caltech", PASSWORD)
    try:
        with running_gateway(settings) as gateway:
            config = FleetConfig(url=gateway.url, speedup=600, meter_interval_s=60,
                                 password=PASSWORD, start_delay_s=0.3)
            report = asyncio.run(asyncio.wait_for(run_fleet(scheduled, config,
                                                            labels_path=tmp_path / "l.jsonl"), 60))
            assert gateway.metric("evguard_gateway_call_errors_total") == 0
        events = [parse_telemetry(m.value()) for m in read_topic(
            kafka_settings, topic, report.frames_sent, timeout=30)]
    finally:
        delete_topics(kafka_settings, [topic])

    assert not report.errors and report.transactions_ended == 3
    by_cp: dict[str, list] = {}
    for event in events:
        by_cp.setdefault(event.charge_point_id, []).append(event)
    for station in (clean16, clean201):
        kinds = [e.kind for e in by_cp[station]]
        assert kinds.count("transaction_started") == kinds.count("transaction_ended") == 1
        meters = [e for e in by_cp[station] if e.kind == "meter" and "current_a" in e.measurands]
        assert len(meters) == 21  # every 60 s over 20 min, and one at the disconnection
        assert all(e.site_id == "caltech" and e.ocpp_version == stations[station] for e in meters)
        energy = [e.measurands["energy_wh"] for e in meters]
        assert energy == sorted(energy) and energy[-1] - energy[0] == pytest.approx(1500, abs=2)
        assert {e.transaction_id for e in meters} == {
            next(e.transaction_id for e in by_cp[station] if e.kind == "transaction_started")}
    silent_kinds = [e.kind for e in by_cp[silent]]
    drop = silent_kinds.index("disconnected")
    assert silent_kinds.index("transaction_started") < drop < silent_kinds.index(
        "transaction_ended")
