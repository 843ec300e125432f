"""Simulated charge points: the `ocpp` package's charge-point side, one class per version.

Both speak one small vocabulary the station loop uses (`boot`, `status`,
`start_transaction`, `meter`, `charging_state`, `report_fault`, `stop_transaction`,
`heartbeat`) and turn it into the frames of their version:

| station event | OCPP 1.6 | OCPP 2.0.1 |
|---|---|---|
| car plugged in | StatusNotification Preparing, Authorize, StartTransaction | StatusNotification Occupied, TransactionEvent Started |
| meter sample | MeterValues | TransactionEvent Updated (MeterValuePeriodic) |
| Charging / SuspendedEV(SE) | StatusNotification | TransactionEvent Updated (ChargingStateChanged) |
| Faulted + error code | StatusNotification Faulted, errorCode | StatusNotification Faulted, NotifyEvent (techCode) |
| car leaves | StopTransaction, StatusNotification Finishing | TransactionEvent Ended |

2.0.1 has no Temperature measurand, so a 2.0.1 charger reports none.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201

from pipelines.telemetry.charging import Sample

VENDOR, MODEL = "evguard", "fleet-simulator"
_UNITS = {"Energy.Active.Import.Register": "Wh", "Power.Active.Import": "W",
          "Current.Import": "A", "Current.Offered": "A", "Voltage": "V", "Temperature": "Celsius",
          "SoC": "Percent"}
_LOCATION = {"Temperature": "Body", "SoC": "EV"}


def charger_time(epoch: float) -> str:
    """The charger's clock as OCPP writes it: ISO 8601 UTC with milliseconds and `Z`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _readings(sample: Sample, register_wh: float, temperature: bool) -> list[tuple[str, float]]:
    values = [("Energy.Active.Import.Register", round(register_wh, 1)),
              ("Power.Active.Import", round(sample.power_w, 1)),
              ("Current.Import", round(sample.current_a, 2)),
              ("Current.Offered", round(sample.current_offered_a, 2)),
              ("Voltage", round(sample.voltage_v, 1))]
    if temperature:
        values.append(("Temperature", round(sample.temperature_c, 1)))
    if sample.soc_pct is not None:
        values.append(("SoC", round(sample.soc_pct, 1)))
    return values


class _Stamped:
    """Records the wall-clock time a chosen frame left, for the labels' `sent_ts`."""

    _watch: str | None = None
    watched_sent_ts: float | None = None
    on_send: Callable[[], None] | None = None

    async def _send(self, message: str) -> None:
        if self._watch is not None and f'"{self._watch}"' in message[:80]:
            self.watched_sent_ts = time.time()
        await self._connection.send(message)
        if self.on_send is not None:
            self.on_send()

    async def send(self, payload: Any, *, watch: bool = False, validate: bool = True) -> Any:
        """One CALL; raises the CSMS's CALLERROR as an `OCPPError`. With `watch`, the
        frame's send time lands in `watched_sent_ts`."""
        unique_id = str(uuid.uuid4())
        if watch:
            self._watch, self.watched_sent_ts = unique_id, None
        try:
            return await self.call(payload, suppress=False, unique_id=unique_id,
                                   skip_schema_validation=not validate)
        finally:
            if watch:
                self._watch = None


class SimulatedChargePoint16(_Stamped, ChargePoint16):
    """An OCPP 1.6J charge point with one connector."""

    version = "1.6"

    def __init__(self, cp_id: str, connection: Any, *, validate: bool = True,
                 response_timeout: float = 30.0):
        super().__init__(cp_id, connection, response_timeout=response_timeout)
        self.validate = validate
        self.transaction_id: int | None = None

    async def boot(self) -> tuple[str, int]:
        r = await self.send(call16.BootNotification(charge_point_model=MODEL,
                                                    charge_point_vendor=VENDOR),
                            validate=self.validate)
        return r.status, int(r.interval)

    async def heartbeat(self) -> None:
        await self.send(call16.Heartbeat(), validate=self.validate)

    async def status(self, status: str, at: float, error_code: str = "NoError",
                     watch: bool = False) -> None:
        await self.send(call16.StatusNotification(
            connector_id=1, error_code=error_code or "NoError", status=status,
            timestamp=charger_time(at)), watch=watch, validate=self.validate)

    async def start_transaction(self, id_tag: str, register_wh: float, at: float,
                                transaction_hint: str) -> str:
        await self.status("Preparing", at)
        await self.send(call16.Authorize(id_tag=id_tag), validate=self.validate)
        r = await self.send(call16.StartTransaction(
            connector_id=1, id_tag=id_tag, meter_start=int(register_wh),
            timestamp=charger_time(at)), validate=self.validate)
        self.transaction_id = int(r.transaction_id)
        return str(self.transaction_id)

    async def meter(self, sample: Sample, register_wh: float, at: float,
                    watch: bool = False) -> None:
        sampled = [{"value": format(value, ".12g"), "measurand": name, "unit": _UNITS[name],
                    "context": "Sample.Periodic", "location": _LOCATION.get(name, "Outlet")}
                   for name, value in _readings(sample, register_wh, temperature=True)]
        await self.send(call16.MeterValues(
            connector_id=1, transaction_id=self.transaction_id,
            meter_value=[{"timestamp": charger_time(at), "sampledValue": sampled}]),
            watch=watch, validate=self.validate)

    async def charging_state(self, status: str, at: float, watch: bool = False) -> None:
        await self.status(status, at, watch=watch)

    async def report_fault(self, error_code: str, at: float, watch: bool = False) -> None:
        await self.status("Faulted", at, error_code=error_code, watch=watch)

    async def stop_transaction(self, register_wh: float, at: float, reason: str,
                               id_tag: str, offline: bool = False) -> None:
        await self.send(call16.StopTransaction(
            meter_stop=int(register_wh), timestamp=charger_time(at),
            transaction_id=self.transaction_id, reason=reason, id_tag=id_tag),
            validate=self.validate)
        self.transaction_id = None
        await self.status("Finishing", at)


_CHARGING_STATES = {"Charging": "Charging", "SuspendedEV": "SuspendedEV",
                    "SuspendedEVSE": "SuspendedEVSE", "Preparing": "EVConnected"}


class SimulatedChargePoint201(_Stamped, ChargePoint201):
    """An OCPP 2.0.1 charging station with one EVSE of one connector."""

    version = "2.0.1"

    def __init__(self, cp_id: str, connection: Any, *, validate: bool = True,
                 response_timeout: float = 30.0):
        super().__init__(cp_id, connection, response_timeout=response_timeout)
        self.validate = validate
        self.transaction_id: str | None = None
        self.seq_no = 0
        self.event_seq = 0

    async def boot(self) -> tuple[str, int]:
        r = await self.send(call201.BootNotification(
            charging_station={"model": MODEL, "vendor_name": VENDOR}, reason="PowerUp"),
            validate=self.validate)
        return r.status, int(r.interval)

    async def heartbeat(self) -> None:
        await self.send(call201.Heartbeat(), validate=self.validate)

    async def status(self, status: str, at: float, error_code: str = "", watch: bool = False
                     ) -> None:
        connector = {"Available": "Available", "Faulted": "Faulted",
                     "Unavailable": "Unavailable"}.get(status, "Occupied")
        await self.send(call201.StatusNotification(
            timestamp=charger_time(at), connector_status=connector, evse_id=1, connector_id=1),
            watch=watch, validate=self.validate)

    async def _event(self, event_type: str, trigger: str, at: float, *,
                     state: str | None = None, readings: list[tuple[str, float]] | None = None,
                     watch: bool = False, **extra: Any) -> None:
        info: dict[str, Any] = {"transaction_id": self.transaction_id}
        if state:
            info["charging_state"] = state
        if "stopped_reason" in extra:
            info["stopped_reason"] = extra.pop("stopped_reason")
        meter = None
        if readings:
            context = {"Started": "Transaction.Begin", "Ended": "Transaction.End"}.get(
                event_type, "Sample.Periodic")
            meter = [{"timestamp": charger_time(at), "sampled_value": [
                {"value": value, "measurand": name, "context": context,
                 "location": _LOCATION.get(name, "Outlet"),
                 "unit_of_measure": {"unit": _UNITS[name]}} for name, value in readings]}]
        payload = call201.TransactionEvent(
            event_type=event_type, timestamp=charger_time(at), trigger_reason=trigger,
            seq_no=self.seq_no, transaction_info=info, meter_value=meter,
            evse={"id": 1, "connector_id": 1}, **extra)
        self.seq_no += 1
        await self.send(payload, watch=watch, validate=self.validate)

    async def start_transaction(self, id_tag: str, register_wh: float, at: float,
                                transaction_hint: str) -> str:
        """The station names the transaction: `transaction_hint` (<= 36 characters)."""
        await self.status("Occupied", at)
        self.transaction_id, self.seq_no = transaction_hint[:36], 0
        await self._event("Started", "CablePluggedIn", at, state="EVConnected",
                          readings=[("Energy.Active.Import.Register", round(register_wh, 1))],
                          id_token={"id_token": id_tag, "type": "ISO14443"})
        return self.transaction_id

    async def meter(self, sample: Sample, register_wh: float, at: float,
                    watch: bool = False) -> None:
        await self._event("Updated", "MeterValuePeriodic", at,
                          readings=_readings(sample, register_wh, temperature=False), watch=watch)

    async def charging_state(self, status: str, at: float, watch: bool = False) -> None:
        await self._event("Updated", "ChargingStateChanged", at,
                          state=_CHARGING_STATES.get(status, "EVConnected"), watch=watch)

    async def report_fault(self, error_code: str, at: float, watch: bool = False) -> None:
        # the error code first (its NotifyEvent), so the Faulted alert can name it
        self.event_seq += 1
        await self.send(call201.NotifyEvent(generated_at=charger_time(at), seq_no=self.event_seq,
                                            event_data=[{
                                                "event_id": self.event_seq,
                                                "timestamp": charger_time(at),
                                                "trigger": "Alerting", "actual_value": "true",
                                                "tech_code": error_code, "cleared": False,
                                                "transaction_id": self.transaction_id,
                                                "event_notification_type":
                                                    "HardWiredNotification",
                                                "component": {"name": "Connector", "evse": {
                                                    "id": 1, "connector_id": 1}},
                                                "variable": {"name": "Problem"}}]),
                        watch=watch, validate=self.validate)
        await self.status("Faulted", at)

    async def stop_transaction(self, register_wh: float, at: float, reason: str,
                               id_tag: str, offline: bool = False) -> None:
        await self._event("Ended", "EVDeparted", at, state="Idle",
                          readings=[("Energy.Active.Import.Register", round(register_wh, 1))],
                          stopped_reason=reason, offline=True if offline else None)
        self.transaction_id = None


ChargePointClass = type[SimulatedChargePoint16] | type[SimulatedChargePoint201]
CHARGE_POINTS: dict[str, ChargePointClass] = {"1.6": SimulatedChargePoint16,
                                              "2.0.1": SimulatedChargePoint201}
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
