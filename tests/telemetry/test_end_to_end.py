"""The whole live chain: the fleet's OCPP 1.6 and 2.0.1 chargers over real WebSockets ->
the standalone gateway (HTTP Basic) -> Kafka -> the telemetry processor -> a live alert on
RabbitMQ for every planted fault kind, and every finished transaction handed off as a
session that the existing scoring worker scores with the registered champion.

tests/telemetry/test_processor.py feeds the processor hand-made events; here every hop is
the real one, so what is checked is that the parts fit together.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import replace

import orjson
import pytest

from evguard.services.process import free_port
from fleet import FleetConfig, run_fleet, schedule_sessions
from gateway.registry import add_charger
from pipelines.contracts.live_alert import parse_live_alert
from pipelines.telemetry.charging import FAULT_KINDS
from serving.kafka import ensure_topics as ensure_serving_topics
from tests.fleet.test_fleet import session
from tests.gateway.gateway_kit import running_gateway
from tests.support.brokers import delete_topics
from tests.support.champion import register_champion
from tests.support.queues import ResultQueue
from tests.support.workers import InProcessWorker
from tests.telemetry.conftest import FAST, running_processor

PASSWORD = "e2e-charger-pass"
SITE = "0002"
# never_unplugged fires `idle_hours` after the last draw: 24 simulated minutes here (the
# car stays an hour longer; every other car leaves within 20 min of plugging in) instead of
# 24 h, so it shows within seconds at 600x
POLICY = replace(FAST.policy, idle_hours=0.4)


@pytest.fixture
def chain_settings(telemetry_settings, tmp_path):
    """The telemetry test's topics and exchange, plus the scoring worker's and a champion."""
    tag = uuid.uuid4().hex[:8]
    s = telemetry_settings.model_copy(update={
        "topic_dlq": f"sessions-{tag}.dlq", "topic_station_state": f"sessions-{tag}.state",
        "consumer_group": f"scoring-{tag}", "metrics_port": free_port(),
        "serve_model_poll_s": 5.0, "serve_batch_timeout_ms": 20,
        "serve_session_timeout_ms": 6000, "state_dir": tmp_path / "state",
        "ocpp_charge_points": tmp_path / "state" / "charge_points.json",
        "mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    ensure_serving_topics(s)
    yield s
    delete_topics(s, [s.topic_dlq, s.topic_station_state])


def test_every_live_fault_is_alerted_and_handed_off_sessions_are_scored(
        chain_settings, live_queue):
    s = chain_settings
    tag = uuid.uuid4().hex[:6]
    # one station per fault kind, half of them on 2.0.1 (overtemperature needs 1.6), and a
    # clean charger of each version
    versions, faults = {}, {}
    for i, kind in enumerate(FAULT_KINDS):
        station = f"E2E-{kind}-{tag}"
        versions[station] = "1.6" if kind == "overtemperature" or i % 2 else "2.0.1"
        faults[f"s-{station}"] = kind
    versions[f"E2E-clean16-{tag}"], versions[f"E2E-clean201-{tag}"] = "1.6", "2.0.1"
    for station in versions:  # the site is an ACN site id: the worker refuses other sites
        add_charger(s.ocpp_charge_points, station, SITE, PASSWORD)
    scheduled = schedule_sessions([session(cp, i % 3) for i, cp in enumerate(versions)],
                                  versions, faults)
    version = register_champion(s, seed=3, sessions=600, n_estimators=20).version
    scores = ResultQueue(s.rabbitmq_url, s.rabbitmq_exchange, "score.#")
    worker = InProcessWorker(s)
    try:
        with running_gateway(s) as gateway, running_processor(
                s, replace(FAST, policy=POLICY)) as processor:
            # every charger connects (and its password is checked) before the first plug-in:
            # a charger clock that ran ahead during a slow connect would stamp its first
            # status after its session's, and the detectors drop older statuses as stale
            config = FleetConfig(url=gateway.url, speedup=600, meter_interval_s=60,
                                 password=PASSWORD, start_delay_s=2.0, unplug_delay_s=3600)
            labels_path = s.state_dir / "labels.jsonl"
            report = asyncio.run(asyncio.wait_for(
                run_fleet(scheduled, config, labels_path=labels_path), 60))
            alerts = live_queue.wait_for(lambda r: len(_opened(r)) >= len(FAULT_KINDS), 20)
            results = scores.wait_for(lambda r: len(r.bodies) >= len(versions), 30)
            assert gateway.metric("evguard_gateway_call_errors_total") == 0
            assert processor.report.dead_lettered == 0
        outcome = worker.finish()
    finally:
        worker.stop.set()
        scores.close()

    assert not report.errors and report.transactions_ended == len(versions)
    assert report.stations_by_version == dict(Counter(versions.values()))
    labels = [json.loads(line) for line in labels_path.read_text().splitlines()]
    assert sorted(label["kind"] for label in labels) == sorted(FAULT_KINDS)

    # every planted kind alerted, on the charger it was planted on, and nothing else
    opened = _opened(alerts)
    assert set(opened) == {(label["chargePointId"], label["kind"]) for label in labels}
    for label in labels:
        alert = parse_live_alert(orjson.dumps(opened[label["chargePointId"], label["kind"]]))
        assert alert.routing_key == f"live.{SITE}.{label['kind']}"
        assert alert.connector_id == label["connectorId"] == 1 and alert.evidence
        assert alert.transaction_id == label["transactionId"]

    # every transaction handed off and scored once by the worker with the champion
    assert outcome is not None and outcome.code == 0, outcome
    scored = {b["sessionID"]: b for b in results.bodies}
    assert len(results.bodies) == len(scored) == len(versions)
    assert {b["stationID"] for b in scored.values()} == set(versions)
    assert {b["siteID"] for b in scored.values()} == {SITE}
    assert set(results.versions()) == {version}
    for body in scored.values():
        assert body["sessionID"].startswith(f"{body['stationID']}_")
        assert body["is_anomaly"] == (body["score"] >= body["threshold"])
    # a clean transaction hands off the energy it delivered, on either OCPP version
    clean = [b for b in scored.values() if "-clean" in b["stationID"]]
    assert len(clean) == 2 and all(abs(b["kWhDelivered"] - 1.5) < 0.1 for b in clean), clean


def _opened(results) -> dict[tuple[str, str], dict]:
    return {(b["chargePointId"], b["kind"]): b for b in results.bodies if b["status"] == "open"}
