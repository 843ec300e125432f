"""The telemetry processor against the embedded Kafka broker and RabbitMQ: every live fault
kind alerted, silence found on the timer, redeliveries and restarts counting nothing twice,
and finished transactions handed to the sessions topic in the ACN format."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson
from confluent_kafka import Consumer

from pipelines.contracts.connector_status import connector_routing_key, parse_connector_statuses
from pipelines.contracts.live_alert import parse_live_alert
from pipelines.contracts.sessions import session_key
from pipelines.settings import settings_env
from pipelines.telemetry.detectors import LivePolicy
from tests.telemetry.conftest import FAST, read_sessions, running_processor, wait_until
from tests.telemetry.kit import T0, event, produce_events, status, transaction

ROOT = Path(__file__).resolve().parents[2]


def charging(i):
    return 30.0, 32.0, "Charging"


def planted(kind: str, rx0: float) -> list:
    """One transaction of charger `CP-<kind>` with `kind` planted from sample 20 on."""
    cp = f"CP-{kind}"
    common = {"cp": cp, "rx0": rx0, "speedup": 100.0}
    if kind == "no_current":
        return transaction(lambda i: (30.0 if i < 20 else 0.0, 32.0, "Charging"), samples=30,
                           **common)
    if kind == "overcurrent":
        return transaction(lambda i: (30.0 if i < 20 else 42.0, 32.0, "Charging"), samples=30,
                           **common)
    if kind in ("meter_frozen", "meter_backwards", "overtemperature"):
        def mutate(i, m):
            if i >= 20 and kind == "meter_frozen":
                m["energy_wh"] = 1000 + 30 * 208 * 200 / 3600
            elif i >= 20 and kind == "meter_backwards":
                m["energy_wh"] -= 400
            elif i >= 20:
                m["temperature_c"] = 80.0
        return transaction(charging, samples=30, mutate=mutate, **common)
    if kind == "faulted":
        events = transaction(charging, samples=20, end=False, **common)
        events.append(status(T0 + 205, "Faulted", "GroundFailure", cp=cp, rx=rx0 + 2.05))
        events.append(event("transaction_ended", cp=cp, ts=T0 + 300, rx=rx0 + 3.0,
                            measurands={"energy_wh": events[-2].measurands["energy_wh"]}))
        return events
    if kind == "never_unplugged":  # a sample an hour: idle from hour 3, for 30 hours
        return transaction(lambda i: (30.0, 32.0, "Charging") if i < 3 else
                           (0.0, 32.0, "SuspendedEV"), samples=30, interval=3600.0, cp=cp,
                           rx0=rx0, speedup=36000.0)
    if kind == "silent":  # samples, then nothing: the transaction never ends
        return transaction(charging, samples=20, end=False, **common)
    raise ValueError(kind)


def opened(results) -> dict[tuple[str, str], dict]:
    return {(b["chargePointId"], b["kind"]): b for b in results.bodies if b["status"] == "open"}


def test_every_live_fault_kind_is_alerted_and_finished_sessions_are_handed_off(
        telemetry_settings, live_queue, status_queue):
    s = telemetry_settings
    kinds = ("no_current", "overcurrent", "meter_frozen", "meter_backwards", "overtemperature",
             "faulted", "never_unplugged", "silent")
    with running_processor(s) as processor:
        rx0 = time.time()
        events = [e for kind in kinds for e in planted(kind, rx0)]
        events += transaction(charging, samples=30, cp="CP-healthy", rx0=rx0, speedup=100.0)
        events.sort(key=lambda e: e.received_ts)  # as the gateway received them
        produce_events(s, events)
        results = live_queue.wait_for(lambda r: len(opened(r)) >= len(kinds), 30)
        sessions = read_sessions(s, expected=len(kinds))
        everyone = {f"CP-{k}" for k in kinds} | {"CP-healthy"}
        statuses = status_queue.wait_for(lambda r: everyone <= {
            c["chargePointId"] for b in r.bodies for c in b["connectors"]}, 10)
        report = processor.report
    alerts = opened(results)
    assert set(alerts) == {(f"CP-{kind}", kind) for kind in kinds}  # nothing on healthy ones
    for (_cp, kind), body in alerts.items():
        message = parse_live_alert(orjson.dumps(body))
        assert message.routing_key == f"live.caltech.{kind}"
        assert message.evidence and message.first_sample_ts <= message.at_ts
    assert "GroundFailure" in alerts[("CP-faulted", "faulted")]["evidence"]
    assert alerts[("CP-no_current", "no_current")]["evidence"].startswith("current 0.0 A")
    # a transaction's end closes its episodes; the silent one is still open
    closed = {b["alert_id"] for b in results.bodies if b["status"] == "closed"}
    assert alerts[("CP-no_current", "no_current")]["alert_id"] in closed
    assert alerts[("CP-silent", "silent")]["alert_id"] not in closed
    # every ended transaction reached the sessions topic in the ACN format, keyed by station
    handed = {record["stationID"]: (key, record) for key, record in sessions}
    assert set(handed) == {f"CP-{k}" for k in kinds if k != "silent"} | {"CP-healthy"}
    key, healthy = handed["CP-healthy"]
    assert key.decode() == session_key(healthy) and healthy["sessionID"] == "CP-healthy_T1"
    assert abs(healthy["kWhDelivered"] - 30 * 208 * 300 / 3600 / 1000) < 0.01
    assert healthy["timezone"] == s.telemetry_timezone
    # snapshots travel in batches: one message per site and processor batch, each connector
    # at most once in it, so there are fewer messages than snapshots
    batches = [parse_connector_statuses(orjson.dumps(b)) for b in statuses.bodies]
    for key, batch in zip(statuses.keys, batches, strict=True):
        assert key == connector_routing_key("caltech") and {s.site_id for s in batch} == {"caltech"}
        connectors = [(s.charge_point_id, s.connector_id) for s in batch]
        assert len(connectors) == len(set(connectors))
    assert {s.charge_point_id for batch in batches for s in batch} == everyone
    assert max(len(batch) for batch in batches) > 1
    assert report.status_messages < report.snapshots
    assert processor.report.dead_lettered == 0


def test_a_silent_charger_is_alerted_by_the_timer_with_no_message_arriving(
        telemetry_settings, live_queue):
    s = telemetry_settings
    with running_processor(s):
        events = transaction(charging, samples=20, end=False, cp="CP-quiet", rx0=time.time(),
                             speedup=20.0)  # a sample every 0.5 s of the gateway's time
        produce_events(s, events)
        sent_at = time.time()
        results = live_queue.wait_for(lambda r: opened(r), 20)
    [alert] = opened(results).values()
    assert alert["kind"] == "silent" and "no message for" in alert["evidence"]
    detected = parse_live_alert(orjson.dumps(alert)).detected_ts
    assert detected - sent_at >= 2.0  # nothing arrived after the last sample: the timer did it


def test_bad_messages_go_to_the_dead_letter_topic_with_the_reason(telemetry_settings):
    from confluent_kafka import Producer

    s = telemetry_settings
    with running_processor(s) as processor:
        producer = Producer({"bootstrap.servers": s.kafka_servers})
        producer.produce(s.topic_telemetry, value=b"{not json", key=b"CP-x")
        producer.flush(10)
        produce_events(s, transaction(charging, samples=3, cp="CP-ok"))
        wait_until(lambda: processor.report.dead_lettered == 1 and
                   processor.report.applied >= 5, 20, "not processed")
        base = f"http://127.0.0.1:{processor.metrics_port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
            assert answer.status == 200 and orjson.loads(answer.read())["partitions"]

        def metrics() -> str:
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
                return answer.read().decode()
        wait_until(lambda: 'evguard_telemetry_applied_total{kind="meter"} 3.0' in metrics(), 10,
                   "the applied meter samples are not counted")
        assert "evguard_telemetry_dead_lettered_total 1.0" in metrics()
    consumer = Consumer({"bootstrap.servers": s.kafka_servers, "group.id": "dlq-reader",
                         "auto.offset.reset": "earliest", "log_level": 2})
    consumer.subscribe([s.topic_telemetry_dlq])
    found = []
    deadline = time.monotonic() + 15
    while not found and time.monotonic() < deadline:
        found = [m for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    [letter] = found
    headers = dict(letter.headers())
    assert letter.value() == b"{not json" and b"not JSON" in headers["error"]


def test_redelivered_events_count_nothing_twice_and_open_no_duplicate_alert(
        telemetry_settings, live_queue):
    s = telemetry_settings
    events = transaction(lambda i: (30.0 if i < 10 else 0.0, 32.0, "Charging"), samples=20,
                         cp="CP-again", rx0=time.time(), speedup=100.0)
    with running_processor(s) as first:
        produce_events(s, events)
        live_queue.wait_for(lambda r: len(r.bodies) >= 2, 20)  # open, then closed at the end
        wait_until(lambda: first.report.applied == len(events), 10, "not all applied")
        produce_events(s, events)  # a gateway spooling the same frames again
        wait_until(lambda: first.report.redelivered == len(events), 20, "not all skipped")
        assert first.report.applied == len(events)
    # a second group reads the topic from the start on the same state: a restart that lost
    # its commits; the changelog's applied offsets skip everything
    again = s.model_copy(update={"telemetry_group": s.telemetry_group + "-b"})
    with running_processor(again) as second:
        wait_until(lambda: second.report.consumed == 2 * len(events), 20, "not all consumed")
        assert second.report.applied == 0 and second.report.redelivered == 2 * len(events)
    time.sleep(0.5)
    results = live_queue.wait_for(lambda r: False, 0.1)
    assert [(b["kind"], b["status"]) for b in results.bodies] == [("no_current", "open"),
                                                                 ("no_current", "closed")]
    assert len(read_sessions(s, expected=1, timeout=5)) == 1


def _start_process(settings, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "telemetry", "--tick", "0.2",
                                 "--samples", "2"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def test_after_a_kill_the_state_is_restored_and_the_stream_goes_on_as_if_uninterrupted(
        telemetry_settings, live_queue, status_queue, tmp_path):
    s = telemetry_settings.model_copy(update={"telemetry_instance_id": "kill-test"})
    rx0 = time.time()
    # two telltale samples (--samples 2), and the first zero-current sample is the last one
    # before the kill: the alert needs the streak that only the restored state knows
    events = transaction(lambda i: (30.0 if i < 10 else 0.0, 32.0, "Charging"), samples=20,
                         cp="CP-kill", rx0=rx0, speedup=100.0)
    split = next(i for i, e in enumerate(events)
                 if e.kind == "meter" and e.measurands["current_a"] == 0) + 1
    process = _start_process(s, tmp_path / "processor.log")
    try:
        produce_events(s, events[:split])
        status_queue.wait_for(lambda r: any(c["chargePointId"] == "CP-kill" and
                                            c["last_sample_at"] for b in r.bodies
                                            for c in b["connectors"]), 40)
        time.sleep(1.0)  # its changelog writes are acknowledged within a batch or two
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert live_queue.wait_for(lambda r: False, 0.1).bodies == []
    with running_processor(s, replace(FAST, policy=LivePolicy(samples=2))) as restarted:
        produce_events(s, events[split:])
        results = live_queue.wait_for(lambda r: len(r.bodies) >= 2, 20)
        sessions = read_sessions(s, expected=1)
    opens = [b for b in results.bodies if b["status"] == "open"]
    assert len(opens) == 1 and opens[0]["kind"] == "no_current"
    first_zero = events[split - 1]
    assert parse_live_alert(orjson.dumps(opens[0])).first_sample_ts == first_zero.charger_ts
    assert restarted.report.applied <= len(events) - split + 2  # little or nothing re-applied
    [(_key, record)] = sessions
    assert abs(record["kWhDelivered"] - 30 * 208 * 100 / 3600 / 1000) < 0.01

