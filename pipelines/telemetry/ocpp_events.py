"""One function per OCPP action that carries telemetry: its payload (and the CSMS's answer,
where the answer holds a fact, as 1.6 StartTransaction.conf holds the transaction id) to
`TelemetryEvent`s. Pure; `ocpp_frames.normalise` picks the function.

Each function gets the payload as the schema let it through and reads it defensively: a
missing or odd optional field leaves that fact out, never the event.

2.0.1 has no connector status inside a transaction; its `chargingState` is mapped onto the
1.6 statuses the processor knows: Charging, SuspendedEV and SuspendedEVSE as they are,
EVConnected -> Preparing (Finishing in the Ended event), Idle -> Available.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from pipelines.contracts.dates import iso_to_epoch
from pipelines.contracts.telemetry import STATUSES, TelemetryEvent
from pipelines.telemetry.ocpp_meter import sampled_measurands

MAX_TRANSACTIONS = 256  # transaction -> connector entries kept per connection
CHARGING_STATE_STATUS = {"Charging": "Charging", "SuspendedEV": "SuspendedEV",
                         "SuspendedEVSE": "SuspendedEVSE", "EVConnected": "Preparing",
                         "Idle": "Available"}


@dataclass(frozen=True, slots=True)
class EventContext:
    """The frame an event comes from, and the connection it arrived on."""

    charge_point_id: str
    version: str
    site_id: str
    gateway: str
    transaction_connectors: MutableMapping[str, int]
    message_id: str
    received_ts: float
    raw: str
    raw_truncated: bool
    action: str

    def event(self, index: int, kind: str, connector_id: Any = 0,
              transaction_id: Any = None, charger_ts: Any = None,
              **fields: Any) -> TelemetryEvent:
        connector = connector_id if type(connector_id) is int and connector_id >= 0 else 0
        return TelemetryEvent(
            event_id=f"{self.charge_point_id}:{self.message_id}:{index}", kind=kind,
            charge_point_id=self.charge_point_id, connector_id=connector,
            transaction_id=_transaction(transaction_id), charger_ts=_timestamp(charger_ts),
            received_ts=self.received_ts, ocpp_version=self.version, site_id=self.site_id,
            raw=self.raw, raw_truncated=self.raw_truncated, gateway=self.gateway,
            **fields)

    def remember_connector(self, transaction_id: Any, connector_id: Any) -> None:
        key = _transaction(transaction_id)
        if key is None or type(connector_id) is not int:
            return
        self.transaction_connectors[key] = connector_id
        while len(self.transaction_connectors) > MAX_TRANSACTIONS:
            del self.transaction_connectors[next(iter(self.transaction_connectors))]

    def connector_of(self, transaction_id: Any) -> int:
        return self.transaction_connectors.get(_transaction(transaction_id) or "", 0)


def _transaction(value: Any) -> str | None:
    if type(value) is int or (isinstance(value, str) and value):
        return str(value)[:64]
    return None


def _timestamp(value: Any) -> float | None:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _text(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _details(**values: Any) -> dict[str, Any]:
    """Facts worth keeping: text (capped) and numbers; missing ones are left out."""
    kept = {}
    for key, value in values.items():
        if isinstance(value, str):
            kept[key] = value[:200]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[key] = value
    return kept


def _token_hash(token: Any) -> str | None:
    """A short, stable hash of an id tag: enough to tell drivers apart, not to read it."""
    if isinstance(token, dict):  # 2.0.1 IdTokenType
        token = token.get("idToken")
    if not isinstance(token, str) or not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _meter_events(ctx: EventContext, meter_values: Any, connector_id: Any,
                  transaction_id: Any, first_index: int = 0) -> list[TelemetryEvent]:
    events = []
    for offset, meter_value in enumerate(_list(meter_values)):
        meter_value = _dict(meter_value)
        measurands = sampled_measurands(meter_value.get("sampledValue"), ctx.version)
        if measurands:
            contexts = {s.get("context") for s in _list(meter_value.get("sampledValue"))
                        if isinstance(s, dict) and isinstance(s.get("context"), str)}
            events.append(ctx.event(first_index + offset, "meter", connector_id,
                                    transaction_id, meter_value.get("timestamp"),
                                    measurands=measurands,
                                    details=_details(context=",".join(sorted(contexts)))))
    return events


def _status(value: Any) -> str | None:
    return value if isinstance(value, str) and value in STATUSES else None


# --- both versions -------------------------------------------------------------------------

def heartbeat(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    return [ctx.event(0, "heartbeat")]


# --- OCPP 1.6 ------------------------------------------------------------------------------

def boot_16(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    return [ctx.event(0, "boot", details=_details(
        vendor=payload.get("chargePointVendor"), model=payload.get("chargePointModel"),
        firmware=payload.get("firmwareVersion"),
        serial=payload.get("chargePointSerialNumber") or payload.get("chargeBoxSerialNumber"),
        meter_type=payload.get("meterType")))]


def status_16(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    status = _status(payload.get("status"))
    if status is None:
        return []
    error = payload.get("errorCode")
    return [ctx.event(0, "status", payload.get("connectorId"), None, payload.get("timestamp"),
                      status=status,
                      error_code=error[:64] if isinstance(error, str) and error != "NoError"
                      else "",
                      details=_details(info=payload.get("info"),
                                       vendor_error_code=payload.get("vendorErrorCode"),
                                       vendor_id=payload.get("vendorId")))]


def meter_values_16(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    connector, transaction = payload.get("connectorId"), payload.get("transactionId")
    ctx.remember_connector(transaction, connector)
    return _meter_events(ctx, payload.get("meterValue"), connector, transaction)


def start_transaction_16(ctx: EventContext, payload: dict,
                         result: dict) -> list[TelemetryEvent]:
    """From StartTransaction.conf: the CSMS assigns the transaction id."""
    transaction = result.get("transactionId")
    if _transaction(transaction) is None:
        return []
    connector = payload.get("connectorId")
    ctx.remember_connector(transaction, connector)
    meter_start = payload.get("meterStart")
    measurands = {"energy_wh": float(meter_start)} \
        if type(meter_start) is int else {}
    return [ctx.event(0, "transaction_started", connector, transaction,
                      payload.get("timestamp"), measurands=measurands, details=_details(
                          id_token_hash=_token_hash(payload.get("idTag")),
                          authorization=_dict(result.get("idTagInfo")).get("status"),
                          reservation_id=payload.get("reservationId")))]


def stop_transaction_16(ctx: EventContext, payload: dict,
                        result: Any) -> list[TelemetryEvent]:
    transaction = payload.get("transactionId")
    connector = ctx.connector_of(transaction)
    data = _list(payload.get("transactionData"))
    events = _meter_events(ctx, data, connector, transaction)
    meter_stop = payload.get("meterStop")
    measurands = {"energy_wh": float(meter_stop)} if type(meter_stop) is int else {}
    events.append(ctx.event(len(data), "transaction_ended", connector, transaction,
                            payload.get("timestamp"), measurands=measurands, details=_details(
                                stop_reason=payload.get("reason") or "Local",
                                id_token_hash=_token_hash(payload.get("idTag")))))
    return events


# --- OCPP 2.0.1 ----------------------------------------------------------------------------

def boot_201(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    station = _dict(payload.get("chargingStation"))
    return [ctx.event(0, "boot", details=_details(
        vendor=station.get("vendorName"), model=station.get("model"),
        firmware=station.get("firmwareVersion"), serial=station.get("serialNumber"),
        reason=payload.get("reason")))]


def status_201(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    status = _status(payload.get("connectorStatus"))
    if status is None:
        return []
    return [ctx.event(0, "status", payload.get("evseId"), None, payload.get("timestamp"),
                      status=status, details=_details(connector=payload.get("connectorId")))]


def meter_values_201(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    return _meter_events(ctx, payload.get("meterValue"), payload.get("evseId"), None)


def transaction_event_201(ctx: EventContext, payload: dict,
                          result: Any) -> list[TelemetryEvent]:
    """Started / Updated / Ended: the start or end, the connector status its chargingState
    implies, then its meter values."""
    info = _dict(payload.get("transactionInfo"))
    transaction = info.get("transactionId")
    evse = _dict(payload.get("evse")).get("id")
    if type(evse) is int:
        ctx.remember_connector(transaction, evse)
    connector = evse if type(evse) is int else ctx.connector_of(transaction)
    event_type, when = payload.get("eventType"), payload.get("timestamp")
    common = _details(trigger_reason=payload.get("triggerReason"), seq_no=payload.get("seqNo"),
                      id_token_hash=_token_hash(payload.get("idToken")))
    meter_values = _list(payload.get("meterValue"))
    events = []
    if event_type == "Started":
        events.append(ctx.event(len(events), "transaction_started", connector, transaction,
                                when, details={**common, **_details(
                                    remote_start_id=info.get("remoteStartId"))}))
    status = CHARGING_STATE_STATUS.get(info.get("chargingState"))  # type: ignore[arg-type]
    if status is not None:
        if event_type == "Ended" and status == "Preparing":
            status = "Finishing"
        events.append(ctx.event(len(events), "status", connector, transaction, when,
                                status=status, details={**common, **_details(
                                    charging_state=info.get("chargingState"))}))
    base = len(events)
    events.extend(_meter_events(ctx, meter_values, connector, transaction, base))
    if event_type == "Ended":
        energy = [e.measurands["energy_wh"] for e in events if "energy_wh" in e.measurands]
        events.append(ctx.event(base + len(meter_values), "transaction_ended", connector,
                                transaction, when,
                                measurands={"energy_wh": energy[-1]} if energy else {},
                                details={**common, **_details(
                                    stop_reason=info.get("stoppedReason") or "Local",
                                    time_spent_charging_s=info.get("timeSpentCharging"))}))
    return events


def notify_event_201(ctx: EventContext, payload: dict, result: Any) -> list[TelemetryEvent]:
    """A connector's device-model `Problem` variable raised (not cleared): 2.0.1 reports the
    error code of a fault here (`techCode`), since its StatusNotification carries none. It
    becomes a Faulted status with that code; other event data carry no telemetry."""
    events = []
    for item in _list(payload.get("eventData")):
        item = _dict(item)
        component, variable = _dict(item.get("component")), _dict(item.get("variable"))
        if (component.get("name") != "Connector" or variable.get("name") != "Problem"
                or str(item.get("actualValue")).lower() != "true" or item.get("cleared")):
            continue
        evse = _dict(component.get("evse")).get("id")
        events.append(ctx.event(
            len(events), "status", evse if type(evse) is int else 0, item.get("transactionId"),
            item.get("timestamp"), status="Faulted",
            error_code=(_text(item.get("techCode"), 64) or "Problem"),
            details=_details(info=_text(item.get("techInfo")), trigger=item.get("trigger"))))
    return events


EventMaker = Callable[[EventContext, dict, Any], list[TelemetryEvent]]
CALL_EVENTS: dict[str, dict[str, EventMaker]] = {
    "1.6": {"BootNotification": boot_16, "Heartbeat": heartbeat,
            "StatusNotification": status_16, "MeterValues": meter_values_16,
            "StopTransaction": stop_transaction_16},
    "2.0.1": {"BootNotification": boot_201, "Heartbeat": heartbeat,
              "StatusNotification": status_201, "MeterValues": meter_values_201,
              "TransactionEvent": transaction_event_201, "NotifyEvent": notify_event_201},
}
RESULT_EVENTS: dict[str, dict[str, EventMaker]] = {
    "1.6": {"StartTransaction": start_transaction_16},
    "2.0.1": {},
}
