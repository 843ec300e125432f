"""The connector status (contract §5c): what one connector is doing now, for the live view.

The telemetry processor publishes one snapshot per connector when its state changes
and at most every few seconds while it charges, routed `connector.<siteID>.status` on
the score exchange. The monitoring consumer keeps the latest per connector (by
`updated_at`), and the dashboard's live view reads that. Snapshots are idempotent: a
redelivered or older snapshot never replaces a newer one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
_ROUTING_WILDCARDS = str.maketrans({".": "_", "*": "_", "#": "_"})
NUMBERS = ("power_w", "energy_wh", "current_a", "current_offered_a", "temperature_c")


class InvalidConnectorStatus(ValueError):
    """A message body that is not a valid `evguard.connector_status/1` snapshot."""


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
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def connector_status_body(message: ConnectorStatusMessage) -> dict:
    """The JSON object of one snapshot (contract §5c)."""
    return {
        "schema": SCHEMA,
        "chargePointId": message.charge_point_id,
        "connectorId": message.connector_id,
        "siteID": message.site_id,
        "state": message.state,
        "transactionId": message.transaction_id,
        **{name: _number(getattr(message, name)) for name in NUMBERS},
        "errorCode": message.error_code,
        "last_sample_at": epoch_to_iso(message.last_sample_ts),
        "updated_at": epoch_to_iso(message.updated_ts),
        "open_alerts": list(message.open_alerts),
        "processor": message.processor,
    }


def encode_connector_status(message: ConnectorStatusMessage) -> bytes:
    """The message body (UTF-8 JSON); publish it under `message.routing_key`."""
    return orjson.dumps(connector_status_body(message))


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


def parse_connector_status(body: bytes | str) -> ConnectorStatusMessage:
    """Decode and check one snapshot.

    Raises:
        InvalidConnectorStatus: not JSON, another schema, or a field missing or of the
            wrong type. The message says which.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidConnectorStatus(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidConnectorStatus(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise InvalidConnectorStatus(f"schema must be {SCHEMA!r}, got {data.get('schema')!r:.80}")
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
        site_id=_text(data, "siteID", required=False),
        state=state,
        transaction_id=transaction,
        **{name: _number(data.get(name)) for name in NUMBERS},
        error_code=_text(data, "errorCode", required=False),
        last_sample_ts=_epoch(data.get("last_sample_at"), "last_sample_at"),
        updated_ts=_epoch(data.get("updated_at"), "updated_at"),
        open_alerts=tuple(alerts),
        processor=_text(data, "processor", required=False),
    )
