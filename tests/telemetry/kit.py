"""Telemetry events for the tests, built with the contract's own dataclass (and encoder when
they go to Kafka): one charger's transaction as a list of `TelemetryEvent`s."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace

from confluent_kafka import Producer

from pipelines.contracts.telemetry import TelemetryEvent, encode_telemetry
from pipelines.settings import Settings

T0 = 1_556_272_800.0  # 2019-04-26 10:00 UTC
_ids = itertools.count()


def event(kind: str, cp: str = "CP-1", connector: int = 1, tx: str | None = "T1",
          ts: float = T0, rx: float | None = None, site: str = "caltech", version: str = "1.6",
          **fields) -> TelemetryEvent:
    """One event; `rx` defaults to the charger's time plus 0.2 s."""
    return TelemetryEvent(event_id=f"{cp}:{next(_ids)}:0", kind=kind, charge_point_id=cp,
                          connector_id=connector, transaction_id=tx, charger_ts=ts,
                          received_ts=ts + 0.2 if rx is None else rx, ocpp_version=version,
                          site_id=site, **fields)


def meter(ts: float, energy_wh: float, current_a: float | None, offered_a: float | None = 32.0,
          voltage_v: float = 208.0, temperature_c: float | None = 30.0, **kw) -> TelemetryEvent:
    measurands = {"energy_wh": energy_wh, "voltage_v": voltage_v}
    if current_a is not None:
        measurands["current_a"] = current_a
        measurands["power_w"] = current_a * voltage_v
    if offered_a is not None:
        measurands["current_offered_a"] = offered_a
    if temperature_c is not None:
        measurands["temperature_c"] = temperature_c
    return event("meter", ts=ts, measurands=measurands, **kw)


def status(ts: float, value: str, error_code: str = "", **kw) -> TelemetryEvent:
    return event("status", ts=ts, status=value, error_code=error_code, **kw)


Profile = Callable[[int], tuple[float, float | None, str]]  # sample i -> (A, offered A, status)


def level2(taper_from: int = 40, samples: int = 60) -> Profile:
    """32 A offered; 30 A until `taper_from`, then a taper to 0, then SuspendedEV."""
    def profile(i: int) -> tuple[float, float | None, str]:
        if i < taper_from:
            return 30.0, 32.0, "Charging"
        left = 30.0 * (0.7 ** (i - taper_from + 1))
        return (left, 32.0, "Charging") if left >= 0.5 else (0.0, 32.0, "SuspendedEV")
    return profile


def transaction(profile: Profile, samples: int = 60, interval: float = 10.0, t0: float = T0,
                cp: str = "CP-1", connector: int = 1, tx: str = "T1", start_wh: float = 1000.0,
                end: bool = True, mutate: Callable[[int, dict], None] | None = None,
                details: dict | None = None, rx0: float | None = None,
                speedup: float = 1.0) -> list[TelemetryEvent]:
    """Start, a status whenever it changes, a meter sample every `interval` s, the end.

    `mutate(i, measurands)` may change sample i's measurands (plant a fault). With `rx0`,
    the gateway received the events from `rx0` on, replayed `speedup` times faster than the
    charger's clock (as the fleet simulator does)."""
    common = {"cp": cp, "connector": connector, "tx": tx}
    events = [event("transaction_started", ts=t0, measurands={"energy_wh": start_wh},
                    details=details or {}, **common)]
    energy = start_wh
    last_status = None
    ts = t0
    for i in range(samples):
        ts = t0 + (i + 1) * interval
        current, offered, state = profile(i)
        if state != last_status:
            events.append(status(ts - 0.5, state, **common))
            last_status = state
        energy += current * 208.0 * interval / 3600.0
        measurands = {"energy_wh": round(energy, 1), "current_a": current,
                      "power_w": current * 208.0, "voltage_v": 208.0, "temperature_c": 30.0}
        if offered is not None:
            measurands["current_offered_a"] = offered
        if mutate is not None:
            mutate(i, measurands)
        events.append(event("meter", ts=ts, measurands=measurands, **common))
    if end:
        events.append(event("transaction_ended", ts=ts + interval,
                            measurands={"energy_wh": events[-1].measurands["energy_wh"]},
                            details={"stop_reason": "EVDisconnected"}, **common))
    if rx0 is not None:
        events = [replace(e, received_ts=rx0 + (e.charger_ts - t0) / speedup) for e in events]
    return events


def produce_events(settings: Settings, events: Iterable[TelemetryEvent],
                   topic: str | None = None) -> int:
    """Produce events (the contract's encoder, keyed by charge point) and wait for acks."""
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 2})
    failed = []
    count = 0
    for e in events:
        producer.produce(topic or settings.topic_telemetry, value=encode_telemetry(e),
                         key=e.key, on_delivery=lambda err, _m: err and failed.append(err))
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0 and not failed, failed
    return count
