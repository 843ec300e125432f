"""The telemetry event (contract §1a): one thing a charger said over OCPP, in one schema.

The OCPP gateway turns every frame a charge point sends (1.6J or 2.0.1) into zero or
more events on Kafka `ev-charger-telemetry`, keyed by the charge point's id, so that
one charger's events stay in order on one partition. Units are SI (the hour is
accepted for use with it): W, A, V, Wh, °C, %. Both clocks travel: `charger_ts` is
what the charger wrote (None when it wrote nothing readable), `received_ts` is the
gateway's clock when the frame arrived. `raw` keeps the frame's text for audit,
cut at `RAW_CAP` bytes.

`event_id` is unique per event and stable across a redelivery of the same frame
(`<chargePoint>:<OCPP message id>:<index>`), so a consumer de-duplicates on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.contracts.dates import epoch_to_iso, iso_to_epoch

SCHEMA = "evguard.telemetry/1"
TOPIC_DEFAULT = "ev-charger-telemetry"

# what happened; "meter" carries measurands, "status" a connector status
KINDS = ("meter", "status", "transaction_started", "transaction_ended", "heartbeat", "boot",
         "connected", "disconnected")
OCPP_VERSIONS = ("1.6", "2.0.1", "2.1")

# normalised measurand names -> their OCPP 1.6 / 2.0.1 measurand (the same string in both)
MEASURANDS = {
    "energy_wh": "Energy.Active.Import.Register",
    "power_w": "Power.Active.Import",
    "power_offered_w": "Power.Offered",
    "current_a": "Current.Import",
    "current_offered_a": "Current.Offered",
    "voltage_v": "Voltage",
    "temperature_c": "Temperature",
    "soc_pct": "SoC",
}

# connector states: OCPP 1.6 ChargePointStatus, plus 2.0.1's "Occupied" (its
# ConnectorStatusEnum is Available, Occupied, Reserved, Unavailable, Faulted)
STATUSES = ("Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing",
            "Reserved", "Unavailable", "Faulted", "Occupied")

RAW_CAP = 4096  # bytes of the OCPP frame kept for audit
MAX_LENGTH = {"event_id": 300, "charge_point_id": 128, "transaction_id": 64, "site_id": 32,
              "gateway": 128, "error_code": 64, "status": 16}


class InvalidTelemetry(ValueError):
    """A message value that is not a valid `evguard.telemetry/1` event."""


# not frozen: a frozen dataclass sets each of the 16 fields through object.__setattr__,
# which made building the event a quarter of `parse_telemetry`; nothing changes an event
@dataclass(slots=True)
class TelemetryEvent:
    """One normalised event. Times are epoch seconds (UTC); treat it as read-only.

    Attributes:
        event_id: `<chargePoint>:<OCPP message id>:<index>`; the dedup key.
        kind: one of `KINDS`.
        charge_point_id: the charger's OCPP identity (the Kafka key).
        connector_id: 1.6 connectorId, 2.0.1 EVSE id; 0 = the whole charger.
        transaction_id: the OCPP transaction id as text, or None outside one.
        charger_ts: the charger's timestamp, or None.
        received_ts: the gateway's clock on arrival.
        ocpp_version: "1.6", "2.0.1" or "2.1".
        site_id: the charger's site from the gateway's registry, or "".
        measurands: normalised name (`MEASURANDS`) -> value in SI units.
        status: the connector status (`STATUSES`) of a status event, else None.
        error_code: the charger's error code ("" = none).
        details: other facts of the event (stop reason, vendor, model, firmware,
            id-token hash, info text): text or numbers.
        raw: the OCPP frame's text, at most `RAW_CAP` bytes.
        raw_truncated: True when `raw` was cut.
        gateway: the gateway instance that received it.
    """

    event_id: str
    kind: str
    charge_point_id: str
    connector_id: int
    transaction_id: str | None
    charger_ts: float | None
    received_ts: float
    ocpp_version: str
    site_id: str = ""
    measurands: dict[str, float] = field(default_factory=dict)
    status: str | None = None
    error_code: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    raw_truncated: bool = False
    gateway: str = ""

    @property
    def key(self) -> bytes:
        return telemetry_key(self.charge_point_id)

    @property
    def event_ts(self) -> float:
        """The charger's time when it gave one, else the arrival time."""
        return self.charger_ts if self.charger_ts is not None else self.received_ts


def telemetry_key(charge_point_id: str) -> bytes:
    """The Kafka key: the charge point id, UTF-8."""
    return charge_point_id.encode()


def cap_raw(frame: str | bytes) -> tuple[str, bool]:
    """The frame's text cut to `RAW_CAP` UTF-8 bytes (never inside a character), and whether
    it was cut."""
    data = frame if isinstance(frame, bytes) else frame.encode("utf-8", "replace")
    if len(data) <= RAW_CAP:
        return data.decode("utf-8", "replace"), False
    return data[:RAW_CAP].decode("utf-8", "ignore"), True


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if k in MEASURANDS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def _finite_decoded(values: dict[str, Any]) -> dict[str, float]:
    """`_finite` of a freshly decoded object: the usual sample (known names, finite floats)
    is that object itself, not a copy built value by value."""
    for name, value in values.items():
        if type(value) is not float or name not in MEASURANDS or not math.isfinite(value):
            return _finite(values)
    return values


def telemetry_body(event: TelemetryEvent) -> dict:
    """The JSON object of one event (contract §1a)."""
    return {
        "schema": SCHEMA,
        "event_id": event.event_id,
        "kind": event.kind,
        "chargePointId": event.charge_point_id,
        "connectorId": event.connector_id,
        "transactionId": event.transaction_id,
        "chargerTimestamp": None if event.charger_ts is None else epoch_to_iso(event.charger_ts),
        "receivedAt": epoch_to_iso(event.received_ts),
        "ocppVersion": event.ocpp_version,
        "siteID": event.site_id,
        "measurands": _finite(event.measurands),
        "status": event.status,
        "errorCode": event.error_code,
        "details": event.details,
        "raw": event.raw,
        "rawTruncated": event.raw_truncated,
        "gateway": event.gateway,
    }


def encode_telemetry(event: TelemetryEvent) -> bytes:
    """The Kafka value (UTF-8 JSON). Produce it under `event.key`."""
    return orjson.dumps(telemetry_body(event))


EXAMPLE_TELEMETRY = {
    "schema": SCHEMA,
    "event_id": "CP-0042:19223201:0",
    "kind": "meter",
    "chargePointId": "CP-0042",
    "connectorId": 1,
    "transactionId": "1187",
    "chargerTimestamp": "2019-04-26T10:15:00+00:00",
    "receivedAt": "2019-04-26T10:15:00.312000+00:00",
    "ocppVersion": "1.6",
    "siteID": "caltech",
    "measurands": {"energy_wh": 5321.0, "power_w": 6480.0, "current_a": 27.0,
                   "current_offered_a": 32.0, "voltage_v": 240.0, "temperature_c": 31.5},
    "status": None,
    "errorCode": "",
    "details": {},
    "raw": '[2,"19223201","MeterValues",{"connectorId":1,"transactionId":1187,"meterValue":[]}]',
    "rawTruncated": False,
    "gateway": "gateway-1",
}


def _text(body: Mapping[str, Any], key: str, limit: str, required: bool = True) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise InvalidTelemetry(f"{key} must be a non-empty string, got {value!r:.80}"
                               if required else f"{key} must be a string, got {value!r:.80}")
    if len(value) > MAX_LENGTH[limit]:
        raise InvalidTelemetry(f"{key} is longer than {MAX_LENGTH[limit]} characters")
    return value


def _time(value: Any, key: str) -> float:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidTelemetry(f"{key} is not ISO-8601: {value!r:.80}") from exc


def parse_telemetry(value: bytes | str | None) -> TelemetryEvent:
    """Decode and check one Kafka value.

    Measurand values that are not finite numbers, and names outside `MEASURANDS`,
    are left out: the rest of the sample still counts.

    Raises:
        InvalidTelemetry: not JSON, another schema, or a field missing or of the wrong
            type. The message says which.
    """
    if value is None:
        raise InvalidTelemetry("empty message (tombstone)")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidTelemetry(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidTelemetry(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise InvalidTelemetry(f"schema must be {SCHEMA!r}, got {data.get('schema')!r:.80}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InvalidTelemetry(f"kind must be one of {KINDS}, got {kind!r:.80}")
    version = data.get("ocppVersion")
    if version not in OCPP_VERSIONS:
        raise InvalidTelemetry(f"ocppVersion must be one of {OCPP_VERSIONS}, got {version!r:.80}")
    connector = data.get("connectorId")
    if type(connector) is not int or connector < 0:
        raise InvalidTelemetry(f"connectorId must be an integer >= 0, got {connector!r:.80}")
    transaction = data.get("transactionId")
    if transaction is not None and (not isinstance(transaction, str) or not transaction
                                    or len(transaction) > MAX_LENGTH["transaction_id"]):
        raise InvalidTelemetry(f"transactionId must be null or a short string, "
                               f"got {transaction!r:.80}")
    measurands = data.get("measurands") or {}
    details = data.get("details") or {}
    if not isinstance(measurands, dict) or not isinstance(details, dict):
        raise InvalidTelemetry("measurands and details must be objects")
    status = data.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidTelemetry(f"status must be null or one of {STATUSES}, got {status!r:.80}")
    if kind == "status" and status is None:
        raise InvalidTelemetry("a status event needs a status")
    charger = data.get("chargerTimestamp")
    raw = data.get("raw", "")
    if not isinstance(raw, str):
        raise InvalidTelemetry("raw must be a string")
    # checked in this order, so that the first fault found is the one reported
    event_id = _text(data, "event_id", "event_id")
    charge_point_id = _text(data, "chargePointId", "charge_point_id")
    charger_ts = None if charger is None else _time(charger, "chargerTimestamp")
    received_ts = _time(data.get("receivedAt"), "receivedAt")
    site_id = _text(data, "siteID", "site_id", required=False)
    measurands = _finite_decoded(measurands)
    error_code = _text(data, "errorCode", "error_code", required=False)
    raw_truncated = bool(data.get("rawTruncated", False))
    gateway = _text(data, "gateway", "gateway", required=False)
    return TelemetryEvent(event_id, kind, charge_point_id, connector, transaction, charger_ts,
                          received_ts, version, site_id, measurands, status, error_code,
                          details, raw, raw_truncated, gateway)
