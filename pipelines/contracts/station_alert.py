"""The station alert (contract §5a): a charger that went silent, keeps failing or delivers less.

The scoring worker's health detectors open an alert episode for a station and
close it when the station recovers. Each transition is one message on the same
RabbitMQ topic exchange as the score results, routed `station.<siteID>.<kind>`.
`alert_id` names the episode (`<stationID>:<kind>:<opened_at epoch s>`), so the
open and the closed event of one episode share it and a consumer de-duplicates on
`(alert_id, status)`. Encoder and parser live together; anything the parser
rejects is a poison message for the consumer's dead-letter queue.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from pipelines.contracts.dates import epoch_to_iso, iso_to_epoch

SCHEMA = "evguard.station_alert/1"
KINDS = ("silent", "failing", "degraded")
STATUSES = ("open", "closed")

StationAlertKind = Literal["silent", "failing", "degraded"]
StationAlertStatus = Literal["open", "closed"]

# longest accepted texts; the store's columns are this wide
MAX_LENGTH = {"alert_id": 256, "stationID": 128, "siteID": 32, "worker": 128, "evidence": 1000}
_ROUTING_WILDCARDS = str.maketrans({".": "_", "*": "_", "#": "_"})


class InvalidStationAlert(ValueError):
    """A message body that is not a valid `evguard.station_alert/1` event."""


@dataclass(frozen=True)
class StationAlertMessage:
    """One event of a station alert episode, as it travels. Times are epoch seconds (UTC).

    `opened_ts` is when the episode opened, `at_ts` when this event happened (equal to
    `opened_ts` for the open event), `detected_ts` the worker's wall clock when it emitted it.
    """

    alert_id: str
    station_id: str
    site_id: str
    kind: StationAlertKind
    status: StationAlertStatus
    opened_ts: float
    at_ts: float
    evidence: str
    detected_ts: float
    metrics: dict[str, float] = field(default_factory=dict)
    worker: str = ""

    @property
    def routing_key(self) -> str:
        return station_routing_key(self.site_id, self.kind)

    @property
    def is_open(self) -> bool:
        return self.status == "open"


class StationAlertLike(Protocol):
    """What `station_alert_message` reads of the worker's pure `StationAlert`."""

    kind: str
    station_id: str
    site_id: str
    status: str
    opened_at: float
    at: float
    evidence: str
    metrics: Mapping[str, float]
    alert_id: str


def station_alert_id(station_id: str, kind: str, opened_ts: float) -> str:
    """The id of one episode: `<stationID>:<kind>:<opened_at epoch s>`."""
    return f"{station_id}:{kind}:{int(opened_ts)}"


def station_routing_key(site_id: str, kind: str) -> str:
    """`station.<siteID>.<kind>`; a `.`, `*` or `#` in the site becomes `_` (the body keeps it),
    so that `station.*.*` still matches every station alert.

    Raises:
        ValueError: `kind` is not one of `KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"station alert kind must be one of {KINDS}, got {kind!r}")
    return f"station.{site_id.translate(_ROUTING_WILDCARDS) or '_'}.{kind}"


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only: a NaN, an infinity or a non-number says nothing and is left out."""
    return {str(k)[:64]: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def station_alert_message(alert: StationAlertLike, detected_at_iso: str,
                          worker: str = "") -> StationAlertMessage:
    """The message of one detector event (duck-typed: any object with `StationAlertLike`'s
    attributes, times in epoch seconds).

    Args:
        alert: the event: kind, station_id, site_id, status, opened_at, at, evidence,
            metrics, alert_id.
        detected_at_iso: ISO 8601 wall-clock time of emission.
        worker: the emitting worker's instance id, or "".

    Raises:
        InvalidStationAlert: a field would not survive `parse_station_alert`.
    """
    message = StationAlertMessage(
        alert_id=str(alert.alert_id), station_id=str(alert.station_id),
        site_id=str(alert.site_id), kind=alert.kind, status=alert.status,
        opened_ts=float(alert.opened_at), at_ts=float(alert.at), evidence=str(alert.evidence),
        detected_ts=_epoch(detected_at_iso, "detected_at"),
        metrics=_finite_metrics(alert.metrics or {}), worker=worker or "")
    return parse_station_alert(encode_station_alert(message))  # one set of rules


def station_alert_body(message: StationAlertMessage) -> dict:
    """The JSON object of one event (contract §5a)."""
    return {
        "schema": SCHEMA,
        "alert_id": message.alert_id,
        "stationID": message.station_id,
        "siteID": message.site_id,
        "kind": message.kind,
        "status": message.status,
        "opened_at": epoch_to_iso(message.opened_ts),
        "at": epoch_to_iso(message.at_ts),
        "evidence": message.evidence,
        "metrics": _finite_metrics(message.metrics),
        "detected_at": epoch_to_iso(message.detected_ts),
        "worker": message.worker,
    }


def encode_station_alert(message: StationAlertMessage) -> bytes:
    """The message body (UTF-8 JSON); publish it under `message.routing_key`, persistent."""
    return orjson.dumps(station_alert_body(message))


EXAMPLE_STATION_ALERT = {
    "schema": SCHEMA,
    "alert_id": "2-39-79-379:silent:1556236800",
    "stationID": "2-39-79-379",
    "siteID": "0002",
    "kind": "silent",
    "status": "open",
    "opened_at": "2019-04-26T00:00:00+00:00",
    "at": "2019-04-26T00:00:00+00:00",
    "evidence": "no session for 27 h; 6.2 expected in that window",
    "metrics": {"hours_since_last": 27.0, "expected_sessions": 6.2},
    "detected_at": "2019-04-26T00:00:02.114000+00:00",
    "worker": "worker-1",
}


def _epoch(value: Any, name: str) -> float:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidStationAlert(f"{name} is not ISO-8601: {value!r:.80}") from exc


def _text(body: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidStationAlert(f"{key} must be a non-empty string, got {value!r:.80}"
                                  if required else f"{key} must be a string, got {value!r:.80}")
    if len(value) > MAX_LENGTH[key]:
        raise InvalidStationAlert(f"{key} is longer than {MAX_LENGTH[key]} characters")
    return value


def _choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    value = body.get(key)
    if value not in allowed:
        raise InvalidStationAlert(f"{key} must be one of {allowed}, got {value!r:.80}")
    return value


def parse_station_alert(body: bytes | str) -> StationAlertMessage:
    """Decode and check one message body.

    Metric values that are not finite numbers are left out: an alert about a dead
    charger is worth more than one of its figures.

    Args:
        body: the raw message body (UTF-8 JSON).

    Returns:
        The parsed event.

    Raises:
        InvalidStationAlert: the body is not JSON, has another schema, a field is missing
            or of the wrong type, or the event is dated before its episode opened. The
            message says which.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidStationAlert(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidStationAlert(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise InvalidStationAlert(f"schema must be {SCHEMA!r}, got {data.get('schema')!r:.80}")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise InvalidStationAlert("metrics must be an object of name -> number")
    opened_ts = _epoch(data.get("opened_at"), "opened_at")
    at_ts = _epoch(data.get("at"), "at")
    if at_ts < opened_ts:
        raise InvalidStationAlert(f"at ({data['at']}) is before opened_at ({data['opened_at']})")
    return StationAlertMessage(
        alert_id=_text(data, "alert_id"),
        station_id=_text(data, "stationID"),
        site_id=_text(data, "siteID"),
        kind=_choice(data, "kind", KINDS),
        status=_choice(data, "status", STATUSES),
        opened_ts=opened_ts,
        at_ts=at_ts,
        evidence=_text(data, "evidence"),
        detected_ts=_epoch(data.get("detected_at"), "detected_at"),
        metrics=_finite_metrics(metrics),
        worker=_text(data, "worker", required=False),
    )
