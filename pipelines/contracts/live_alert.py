"""The live alert (contract §5b): a fault seen in a charger's telemetry while the car is plugged in.

The telemetry processor's detectors open an episode for one connector and close it when
the condition clears or the transaction ends. Each transition is one message on the same
RabbitMQ topic exchange as the score results, routed `live.<siteID>.<kind>`. `alert_id`
names the episode (`<chargePoint>:<connector>:<kind>:<first telltale epoch s>`), so the
open and the closed event of one episode share it and a consumer de-duplicates on
`(alert_id, status)`.

Two clocks matter to a user: `first_sample_ts` is the charger's time of the first
telltale sample (where the fault shows in the data), `first_received_ts` the gateway's
clock when that sample arrived. The delay a user feels is from `first_received_ts` to
the email.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.contracts.dates import epoch_to_iso, iso_to_epoch

SCHEMA = "evguard.live_alert/1"
KINDS = ("no_current", "overcurrent", "meter_frozen", "meter_backwards", "overtemperature",
         "faulted", "silent", "never_unplugged")
STATUSES = ("open", "closed")

MAX_LENGTH = {"alert_id": 300, "chargePointId": 128, "transactionId": 64, "siteID": 32,
              "processor": 128, "evidence": 1000}
_ROUTING_WILDCARDS = str.maketrans({".": "_", "*": "_", "#": "_"})


class InvalidLiveAlert(ValueError):
    """A message body that is not a valid `evguard.live_alert/1` event."""


@dataclass(frozen=True)
class LiveAlertMessage:
    """One event of a live alert episode. Times are epoch seconds (UTC).

    Attributes:
        first_sample_ts: the charger's time of the first telltale sample.
        first_received_ts: the gateway's clock when that sample arrived.
        at_ts: the charger's time of this event (the open event: when the detector fired).
        detected_ts: the processor's wall clock when it emitted this event.
    """

    alert_id: str
    charge_point_id: str
    connector_id: int
    transaction_id: str | None
    site_id: str
    kind: str
    status: str
    first_sample_ts: float
    first_received_ts: float
    at_ts: float
    evidence: str
    detected_ts: float
    metrics: dict[str, float] = field(default_factory=dict)
    processor: str = ""

    @property
    def routing_key(self) -> str:
        return live_routing_key(self.site_id, self.kind)

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    @property
    def connector(self) -> str:
        """`<chargePoint>/<connector>`, how people name a connector."""
        return f"{self.charge_point_id}/{self.connector_id}"


def live_alert_id(charge_point_id: str, connector_id: int, kind: str, first_ts: float) -> str:
    """The id of one episode: `<chargePoint>:<connector>:<kind>:<first telltale epoch s>`."""
    return f"{charge_point_id}:{connector_id}:{kind}:{int(first_ts)}"


def live_routing_key(site_id: str, kind: str) -> str:
    """`live.<siteID>.<kind>`; a `.`, `*` or `#` in the site becomes `_` (the body keeps it).

    Raises:
        ValueError: `kind` is not one of `KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"live alert kind must be one of {KINDS}, got {kind!r}")
    return f"live.{site_id.translate(_ROUTING_WILDCARDS) or '_'}.{kind}"


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {str(k)[:64]: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def live_alert_body(message: LiveAlertMessage) -> dict:
    """The JSON object of one event (contract §5b)."""
    return {
        "schema": SCHEMA,
        "alert_id": message.alert_id,
        "chargePointId": message.charge_point_id,
        "connectorId": message.connector_id,
        "transactionId": message.transaction_id,
        "siteID": message.site_id,
        "kind": message.kind,
        "status": message.status,
        "first_sample_at": epoch_to_iso(message.first_sample_ts),
        "first_received_at": epoch_to_iso(message.first_received_ts),
        "at": epoch_to_iso(message.at_ts),
        "evidence": message.evidence,
        "metrics": _finite_metrics(message.metrics),
        "detected_at": epoch_to_iso(message.detected_ts),
        "processor": message.processor,
    }


def encode_live_alert(message: LiveAlertMessage) -> bytes:
    """The message body (UTF-8 JSON); publish it under `message.routing_key`, persistent."""
    return orjson.dumps(live_alert_body(message))


EXAMPLE_LIVE_ALERT = {
    "schema": SCHEMA,
    "alert_id": "CP-0042:1:no_current:1556273700",
    "chargePointId": "CP-0042",
    "connectorId": 1,
    "transactionId": "1187",
    "siteID": "caltech",
    "kind": "no_current",
    "status": "open",
    "first_sample_at": "2019-04-26T10:15:00+00:00",
    "first_received_at": "2019-04-26T10:15:00.312000+00:00",
    "at": "2019-04-26T10:15:20+00:00",
    "evidence": "current 0.0 A for 20 s while Charging, offered 32 A",
    "metrics": {"current_a": 0.0, "current_offered_a": 32.0, "seconds": 20.0},
    "detected_at": "2019-04-26T10:15:20.410000+00:00",
    "processor": "telemetry-1",
}


def _epoch(value: Any, name: str) -> float:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidLiveAlert(f"{name} is not ISO-8601: {value!r:.80}") from exc


def _text(body: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidLiveAlert(f"{key} must be a non-empty string, got {value!r:.80}"
                               if required else f"{key} must be a string, got {value!r:.80}")
    if len(value) > MAX_LENGTH[key]:
        raise InvalidLiveAlert(f"{key} is longer than {MAX_LENGTH[key]} characters")
    return value


def _choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    value = body.get(key)
    if value not in allowed:
        raise InvalidLiveAlert(f"{key} must be one of {allowed}, got {value!r:.80}")
    return value


def parse_live_alert(body: bytes | str) -> LiveAlertMessage:
    """Decode and check one message body.

    Raises:
        InvalidLiveAlert: not JSON, another schema, a field missing or of the wrong type,
            or the event dated before its first telltale sample. The message says which.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidLiveAlert(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidLiveAlert(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise InvalidLiveAlert(f"schema must be {SCHEMA!r}, got {data.get('schema')!r:.80}")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise InvalidLiveAlert("metrics must be an object of name -> number")
    connector = data.get("connectorId")
    if type(connector) is not int or connector < 0:
        raise InvalidLiveAlert(f"connectorId must be an integer >= 0, got {connector!r:.80}")
    transaction = data.get("transactionId")
    if transaction is not None:
        transaction = _text(data, "transactionId")
    first_ts = _epoch(data.get("first_sample_at"), "first_sample_at")
    at_ts = _epoch(data.get("at"), "at")
    if at_ts < first_ts:
        raise InvalidLiveAlert(f"at ({data['at']}) is before first_sample_at "
                               f"({data['first_sample_at']})")
    return LiveAlertMessage(
        alert_id=_text(data, "alert_id"),
        charge_point_id=_text(data, "chargePointId"),
        connector_id=connector,
        transaction_id=transaction,
        site_id=_text(data, "siteID", required=False),
        kind=_choice(data, "kind", KINDS),
        status=_choice(data, "status", STATUSES),
        first_sample_ts=first_ts,
        first_received_ts=_epoch(data.get("first_received_at"), "first_received_at"),
        at_ts=at_ts,
        evidence=_text(data, "evidence"),
        detected_ts=_epoch(data.get("detected_at"), "detected_at"),
        metrics=_finite_metrics(metrics),
        processor=_text(data, "processor", required=False),
    )
