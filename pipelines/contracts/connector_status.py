"""The connector status (contract §5c): what connectors are doing now, for the live view.

The telemetry processor publishes, per micro-batch and site, ONE message holding the newest
snapshot of every connector of that site that changed in the batch (or is due: at most every
few seconds while it charges), at most `MAX_SNAPSHOTS` per message (a larger batch is split),
routed `connector.<siteID>.status` on the score exchange. A message per snapshot cost the
processor more in AMQP framing and confirms than the detectors cost. The monitoring consumer
keeps the latest per connector (by `updated_at`), and the dashboard's live view reads that.
Snapshots are idempotent: a redelivered or older snapshot never replaces a newer one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipelines.contracts.dates import epoch_to_iso, iso_to_epoch
from pipelines.contracts.telemetry import STATUSES

SCHEMA = "evguard.connector_status/1"
# a connector is in one OCPP status, or "Offline" when its charger stopped talking
STATES = (*STATUSES, "Offline")
MAX_LENGTH = {"chargePointId": 128, "transactionId": 64, "siteID": 32, "processor": 128,
              "errorCode": 64}
# ~280 bytes of JSON a snapshot: a full message stays near 140 KB
MAX_SNAPSHOTS = 500
# a poison message's reason names at most this many bad elements (it travels in a header)
MAX_REASONS = 10
_ROUTING_WILDCARDS = str.maketrans({".": "_", "*": "_", "#": "_"})
NUMBERS = ("power_w", "energy_wh", "current_a", "current_offered_a", "temperature_c")


class InvalidConnectorStatus(ValueError):
    """A message body that is not a valid `evguard.connector_status/1` batch."""


@dataclass(frozen=True)
class ConnectorStatusMessage:
    """One snapshot. Times are epoch seconds (UTC); a number is None when not yet seen.

    Attributes:
        energy_wh: energy delivered in the current transaction (0 outside one).
        last_sample_ts: the gateway's clock when the last event of this connector arrived.
        updated_ts: the processor's clock when it made this snapshot.
        open_alerts: live alert kinds open on this connector.
    """

    charge_point_id: str
    connector_id: int
    site_id: str
    state: str
    transaction_id: str | None
    power_w: float | None
    energy_wh: float | None
    current_a: float | None
    current_offered_a: float | None
    temperature_c: float | None
    error_code: str
    last_sample_ts: float
    updated_ts: float
    open_alerts: tuple[str, ...] = ()
    processor: str = ""

    @property
    def routing_key(self) -> str:
        return connector_routing_key(self.site_id)


def connector_routing_key(site_id: str) -> str:
    """`connector.<siteID>.status`; a `.`, `*` or `#` in the site becomes `_`."""
    return f"connector.{site_id.translate(_ROUTING_WILDCARDS) or '_'}.status"


def _number(value: Any) -> float | None:
    if type(value) is float:  # the processor's case, kept short
        return value if math.isfinite(value) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# ---- encoding (the processor's side: cheap, no validation beyond what JSON needs) ----------
def _element(m: ConnectorStatusMessage, updated_at: str) -> dict:
    number = _number
    return {
        "chargePointId": m.charge_point_id,
        "connectorId": m.connector_id,
        "state": m.state,
        "transactionId": m.transaction_id,
        "power_w": number(m.power_w),
        "energy_wh": number(m.energy_wh),
        "current_a": number(m.current_a),
        "current_offered_a": number(m.current_offered_a),
        "temperature_c": number(m.temperature_c),
        "errorCode": m.error_code,
        "last_sample_at": epoch_to_iso(m.last_sample_ts),
        "updated_at": updated_at,
        "open_alerts": list(m.open_alerts),
    }


def snapshot_element(message: ConnectorStatusMessage) -> dict:
    """One element of a batch's `connectors` list (the site and processor are the batch's)."""
    return _element(message, epoch_to_iso(message.updated_ts))


def connector_status_body(site_id: str, processor: str,
                          snapshots: Iterable[ConnectorStatusMessage]) -> dict:
    """The JSON object of one batch of a site's snapshots (contract §5c)."""
    # a processor batch makes all its snapshots at one time: format it once
    updated: dict[float, str] = {}
    elements = []
    for s in snapshots:
        text = updated.get(s.updated_ts)
        if text is None:
            text = updated[s.updated_ts] = epoch_to_iso(s.updated_ts)
        elements.append(_element(s, text))
    return {"schema": SCHEMA, "siteID": site_id, "processor": processor, "connectors": elements}


def encode_connector_statuses(snapshots: Iterable[ConnectorStatusMessage],
                              max_snapshots: int = MAX_SNAPSHOTS) -> list[tuple[str, bytes]]:
    """The messages of a batch of snapshots: one per (site, processor), split every
    `max_snapshots`; (routing key, UTF-8 JSON body) pairs, in first-seen order. The caller
    keeps one snapshot per connector (the newest) in `snapshots`."""
    groups: dict[tuple[str, str], list[ConnectorStatusMessage]] = {}
    for snapshot in snapshots:
        groups.setdefault((snapshot.site_id, snapshot.processor), []).append(snapshot)
    out = []
    for (site, processor), group in groups.items():
        key = connector_routing_key(site)
        for start in range(0, len(group), max_snapshots):
            out.append((key, orjson.dumps(connector_status_body(
                site, processor, group[start:start + max_snapshots]))))
    return out


EXAMPLE_CONNECTOR_STATUS = {
    "schema": SCHEMA,
    "siteID": "caltech",
    "processor": "telemetry-1",
    "connectors": [
        {"chargePointId": "CP-0042", "connectorId": 1, "state": "Charging",
         "transactionId": "1187", "power_w": 6480.0, "energy_wh": 5321.0, "current_a": 27.0,
         "current_offered_a": 32.0, "temperature_c": 31.5, "errorCode": "",
         "last_sample_at": "2019-04-26T10:15:00.312000+00:00",
         "updated_at": "2019-04-26T10:15:00.402000+00:00", "open_alerts": []},
        {"chargePointId": "CP-0043", "connectorId": 2, "state": "Offline",
         "transactionId": "1190", "power_w": 7200.0, "energy_wh": 880.0, "current_a": 30.0,
         "current_offered_a": 32.0, "temperature_c": None, "errorCode": "",
         "last_sample_at": "2019-04-26T10:14:31.090000+00:00",
         "updated_at": "2019-04-26T10:15:00.402000+00:00", "open_alerts": ["silent"]},
    ],
}


# ---- parsing (the consumers' side) ----------------------------------------------------------
def _epoch(value: Any, name: str) -> float:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidConnectorStatus(f"{name} is not ISO-8601: {value!r:.80}") from exc


def _text(body: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidConnectorStatus(f"{key} must be a non-empty string, got {value!r:.80}"
                                     if required else f"{key} must be a string, got {value!r:.80}")
    if len(value) > MAX_LENGTH[key]:
        raise InvalidConnectorStatus(f"{key} is longer than {MAX_LENGTH[key]} characters")
    return value


def _snapshot(data: Any, site_id: str, processor: str) -> ConnectorStatusMessage:
    if not isinstance(data, dict):
        raise InvalidConnectorStatus(f"expected a JSON object, got {type(data).__name__}")
    connector = data.get("connectorId")
    if type(connector) is not int or connector < 0:
        raise InvalidConnectorStatus(f"connectorId must be an integer >= 0, got {connector!r:.80}")
    state = data.get("state")
    if state not in STATES:
        raise InvalidConnectorStatus(f"state must be one of {STATES}, got {state!r:.80}")
    transaction = data.get("transactionId")
    if transaction is not None:
        transaction = _text(data, "transactionId")
    alerts = data.get("open_alerts", [])
    if not isinstance(alerts, list) or not all(isinstance(a, str) for a in alerts):
        raise InvalidConnectorStatus("open_alerts must be a list of alert kinds")
    return ConnectorStatusMessage(
        charge_point_id=_text(data, "chargePointId"),
        connector_id=connector,
        site_id=site_id,
        state=state,
        transaction_id=transaction,
        **{name: _number(data.get(name)) for name in NUMBERS},
        error_code=_text(data, "errorCode", required=False),
        last_sample_ts=_epoch(data.get("last_sample_at"), "last_sample_at"),
        updated_ts=_epoch(data.get("updated_at"), "updated_at"),
        open_alerts=tuple(alerts),
        processor=processor,
    )


def parse_connector_statuses(body: bytes | str) -> list[ConnectorStatusMessage]:
    """Decode and check one batch; its snapshots in the message's order.

    A batch is taken whole or not at all: one bad element makes the whole message poison
    (it comes from a broken producer, and the next batch carries newer snapshots anyway).

    Raises:
        InvalidConnectorStatus: not JSON, another schema, a bad `siteID`, `processor` or
            `connectors` list, or bad elements; the message names each bad element by its
            index and field (`connectors[3]: state must be one of ...`), up to `MAX_REASONS`.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidConnectorStatus(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidConnectorStatus(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise InvalidConnectorStatus(f"schema must be {SCHEMA!r}, got {data.get('schema')!r:.80}")
    site_id = _text(data, "siteID", required=False)
    processor = _text(data, "processor", required=False)
    elements = data.get("connectors")
    if not isinstance(elements, list) or not elements:
        raise InvalidConnectorStatus(f"connectors must be a non-empty list of snapshots, got "
                                     f"{elements!r:.80}")
    if len(elements) > MAX_SNAPSHOTS:
        raise InvalidConnectorStatus(f"connectors holds {len(elements)} snapshots, at most "
                                     f"{MAX_SNAPSHOTS} are allowed")
    snapshots, reasons = [], []
    for index, element in enumerate(elements):
        try:
            snapshots.append(_snapshot(element, site_id, processor))
        except InvalidConnectorStatus as exc:
            reasons.append(f"connectors[{index}]: {exc}")
    if reasons:
        more = len(reasons) - MAX_REASONS
        raise InvalidConnectorStatus(
            f"{len(reasons)} of {len(elements)} snapshots are invalid: "
            + "; ".join(reasons[:MAX_REASONS])
            + (f"; and {more} more" if more > 0 else ""))
    return snapshots
