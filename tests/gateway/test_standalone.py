"""Standalone mode over real WebSockets and the real broker: a 1.6 and a 2.0.1 charge point
(the `ocpp` package's charge-point side, which checks every answer against the schemas)
complete a transaction, and every event is read back from Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson
from ocpp import v16, v201

from gateway.registry import add_charger
from gateway.transaction_ids import TransactionIds
from pipelines.contracts.telemetry import parse_telemetry
from tests.gateway.gateway_kit import (
    gateway_settings,
    new_topic,
    ocpp_charger,
    raw_client,
    running_gateway,
)
from tests.support.brokers import delete_topics, private_kafka_broker
from tests.support.faultkit import read_topic


def now() -> str:
    return datetime.now(UTC).isoformat()


def sample(value: float, measurand: str, unit: str, **extra) -> dict:
    return {"value": str(value), "measurand": measurand, "unit": unit, **extra}


async def transaction_16(url: str, cp_id: str, password: str) -> dict:
    async with ocpp_charger(url, cp_id, "1.6", password) as cp:
        boot = await cp.call(v16.call.BootNotification("L2-32", "Acme"), suppress=False)
        await cp.call(v16.call.StatusNotification(1, "NoError", "Preparing", timestamp=now()),
                      suppress=False)
        auth = await cp.call(v16.call.Authorize("RFID-1"), suppress=False)
        start = await cp.call(v16.call.StartTransaction(1, "RFID-1", 1000, now()),
                              suppress=False)
        await cp.call(v16.call.MeterValues(1, [{"timestamp": now(), "sampledValue": [
            sample(2.5, "Energy.Active.Import.Register", "kWh"),
            sample(7.2, "Power.Active.Import", "kW"),
            sample(30, "Current.Import", "A"), sample(32, "Current.Offered", "A"),
            sample(35, "Temperature", "Celsius")]}], start.transaction_id), suppress=False)
        await cp.call(v16.call.StopTransaction(9000, now(), start.transaction_id,
                                               reason="EVDisconnected"), suppress=False)
        await cp.call(v16.call.Heartbeat(), suppress=False)
    return {"boot": boot, "auth": auth, "transaction_id": start.transaction_id}


async def transaction_201(url: str, cp_id: str) -> dict:
    async with ocpp_charger(url, cp_id, "2.0.1") as cp:
        boot = await cp.call(v201.call.BootNotification(
            {"vendor_name": "Acme", "model": "DC-50"}, "PowerUp"), suppress=False)
        await cp.call(v201.call.StatusNotification(now(), "Occupied", 1, 1), suppress=False)
        token = {"id_token": "TOKEN-1", "type": "ISO14443"}
        await cp.call(v201.call.Authorize(token), suppress=False)
        tx = {"transaction_id": "tx-201", "charging_state": "EVConnected"}
        started = await cp.call(v201.call.TransactionEvent(
            "Started", now(), "Authorized", 0, tx, evse={"id": 1, "connector_id": 1},
            id_token=token), suppress=False)
        await cp.call(v201.call.TransactionEvent(
            "Updated", now(), "MeterValuePeriodic", 1, {**tx, "charging_state": "Charging"},
            meter_value=[{"timestamp": now(), "sampled_value": [
                {"value": 3.0, "measurand": "Energy.Active.Import.Register",
                 "unit_of_measure": {"unit": "kWh"}},
                {"value": 48, "measurand": "Power.Active.Import",
                 "unit_of_measure": {"unit": "W", "multiplier": 3}}]}]), suppress=False)
        await cp.call(v201.call.MeterValues(1, [{"timestamp": now(), "sampled_value": [
            {"value": 3500.0}]}]), suppress=False)
        await cp.call(v201.call.TransactionEvent(
            "Ended", now(), "EVDeparted", 2, {**tx, "charging_state": "Idle",
                                               "stopped_reason": "EVDisconnected"}),
            suppress=False)
    return {"boot": boot, "started": started}


def events_by_charger(settings, topic: str, count: int) -> dict[str, list]:
    events: dict[str, list] = {}
    for message in read_topic(settings, topic, count, timeout=30):
        event = parse_telemetry(message.value())
        assert message.key() == event.charge_point_id.encode()
        events.setdefault(event.charge_point_id, []).append(event)
    return events


def test_a_16_and_a_201_charger_complete_transactions_and_every_event_is_on_kafka(
        kafka_settings, tmp_path):
    topic = new_topic(kafka_settings)
    settings = gateway_settings(kafka_settings, tmp_path, topic_telemetry=topic,
                                ocpp_heartbeat_s=120)
    cp16, cp201 = f"CP16-{uuid.uuid4().hex[:6]}", f"CP201-{uuid.uuid4().hex[:6]}"
    add_charger(settings.ocpp_charge_points, cp16, "caltech", "s3cret-16")
    add_charger(settings.ocpp_charge_points, cp201, "jpl", None)
    try:
        with running_gateway(settings) as gateway:
            async def both():
                return await asyncio.gather(transaction_16(gateway.url, cp16, "s3cret-16"),
                                            transaction_201(gateway.url, cp201))
            first, second = asyncio.run(asyncio.wait_for(both(), 60))
            assert gateway.metric("evguard_gateway_call_errors_total") == 0
            deadline = time.monotonic() + 10
            while gateway.server.active and time.monotonic() < deadline:
                time.sleep(0.05)
            ack_count = gateway.metric("evguard_gateway_ack_seconds_count")
        events = events_by_charger(kafka_settings, topic, 19)
    finally:
        delete_topics(kafka_settings, [topic])

    assert first["boot"].status == "Accepted" and first["boot"].interval == 120
    assert first["auth"].id_tag_info["status"] == "Accepted"
    assert second["boot"].status == "Accepted"
    assert second["started"].id_token_info["status"] == "Accepted"
    assert ack_count == 14  # every CALL was acknowledged, each after its events were stored

    e16 = events[cp16]
    assert [e.kind for e in e16] == ["connected", "boot", "status", "transaction_started",
                                     "meter", "transaction_ended", "heartbeat", "disconnected"]
    assert {e.site_id for e in e16} == {"caltech"} and {e.ocpp_version for e in e16} == {"1.6"}
    tid = str(first["transaction_id"])
    assert [e.transaction_id for e in e16 if e.kind.startswith("transaction")] == [tid, tid]
    meter = e16[4]
    assert meter.measurands == {"energy_wh": 2500.0, "power_w": 7200.0, "current_a": 30.0,
                                "current_offered_a": 32.0, "temperature_c": 35.0}
    assert e16[5].measurands == {"energy_wh": 9000.0} and e16[5].connector_id == 1
    assert e16[5].details["stop_reason"] == "EVDisconnected"
    assert orjson.loads(e16[1].raw)[2] == "BootNotification"
    assert len({e.event_id for e in e16}) == len(e16)

    e201 = events[cp201]
    assert [(e.kind, e.status) for e in e201] == [
        ("connected", None), ("boot", None), ("status", "Occupied"),
        ("transaction_started", None), ("status", "Preparing"),
        ("status", "Charging"), ("meter", None), ("meter", None),
        ("status", "Available"), ("transaction_ended", None), ("disconnected", None)]
    assert e201[6].measurands == {"energy_wh": 3000.0, "power_w": 48000.0}
    assert e201[6].transaction_id == "tx-201" and e201[7].transaction_id is None
    assert e201[9].details["stop_reason"] == "EVDisconnected"
    assert {e.site_id for e in e201} == {"jpl"} and {e.gateway for e in e201} == {"gw-test"}


def test_a_call_is_answered_only_once_kafka_has_its_events(kafka_settings, tmp_path):
    """While the broker is down a MeterValues and a StartTransaction CALL get InternalError
    (never a result); the same frames sent again after the broker is back are acknowledged
    and on the topic, and the StartTransaction keeps its transaction id."""
    with private_kafka_broker(kafka_settings, tmp_path / "kafka") as (private, stack):
        topic = new_topic(private)
        settings = gateway_settings(private, tmp_path / "gw", topic_telemetry=topic,
                                    ocpp_allow_unknown=True)
        cp_id = f"CP-{uuid.uuid4().hex[:6]}"
        meter = orjson.dumps([2, "mv-1", "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": now(), "sampledValue": [{"value": "1234"}]}]}]).decode()
        start = orjson.dumps([2, "st-1", "StartTransaction", {
            "connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": now()}]).decode()
        kafka = stack.kafka_process()

        async def scenario() -> tuple[list, list]:
            async with raw_client(gateway.url, cp_id) as ws:
                await ws.send('[2,"hb-1","Heartbeat",{}]')
                assert orjson.loads(await ws.recv())[0] == 3
                assert await asyncio.to_thread(kafka.stop)
                during = []
                for frame in (meter, meter, start):
                    await ws.send(frame)
                    during.append(orjson.loads(await asyncio.wait_for(ws.recv(), 20)))
                assert await asyncio.to_thread(kafka.start)
                after = []
                for frame in (meter, start):
                    deadline = time.monotonic() + 45
                    while time.monotonic() < deadline:
                        await ws.send(frame)  # the charger retries the same CALL
                        answer = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
                        after.append(answer)
                        if answer[0] == 3:
                            break
                return during, after

        with running_gateway(settings, ack_timeout_s=1.5) as gateway:
            during, after = asyncio.run(scenario())
            failures = gateway.metric("evguard_gateway_kafka_produce_failures_total")
        stored = [parse_telemetry(m.value()) for m in read_topic(private, topic, 4,
                                                                   timeout=20)]
    assert [d[:3] for d in during] == [[4, "mv-1", "InternalError"]] * 2 + [
        [4, "st-1", "InternalError"]]
    assert failures >= 3
    results = [a for a in after if a[0] == 3]
    assert [r[:2] for r in results] == [[3, "mv-1"], [3, "st-1"]] and results[0][2] == {}
    assert all(a[0] == 4 for a in after if a not in results)
    transaction_id = str(results[1][2]["transactionId"])
    # the fresh state dir's first id: each retry got the id of the unstored first answer
    assert transaction_id == "1"
    started = [e for e in stored if e.kind == "transaction_started"]
    assert started and {e.transaction_id for e in started} == {transaction_id}
    meters = {e.event_id for e in stored if e.kind == "meter"}
    assert meters == {f"{cp_id}:mv-1:0"}  # retries repeat the id: one event after dedup
    assert next(e.measurands for e in stored if e.kind == "meter") == {"energy_wh": 1234.0}


def test_transaction_ids_never_repeat_across_restarts(tmp_path):
    path = tmp_path / "ids"
    first = TransactionIds(path, block=5)
    seen = [first.next() for _ in range(7)]
    restarted = TransactionIds(path, block=5)  # the first gateway's block 2 is never reused
    seen += [restarted.next() for _ in range(7)]
    assert len(set(seen)) == len(seen) and all(0 < i < 2 ** 31 for i in seen)
    assert min(seen[7:]) > max(seen[:7])
