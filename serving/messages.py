"""Wire formats of the worker: session messages in, score results out (contracts §1, §5).

Pure functions only; the hot path calls them once per message, so they avoid
per-message date parsing and use orjson.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

SCHEMA_VERSION = 1
RESULT_SCHEMA = "evguard.score/1"
MAX_KWH_DELIVERED = 1e6  # beyond this a value is not a meter reading

# RFC 1123 in GMT, as ACN-Data writes it: "Wed, 02 Jan 2019 14:55:53 GMT"
_RFC1123 = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"(\d{4}) (\d\d):(\d\d):(\d\d) GMT"
)
_MONTHS = {m: f"{i:02d}" for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_SITE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # a routing-key word: no dots or wildcards

_REQUIRED_TEXT = ("sessionID", "stationID")
_DATES_REQUIRED = ("connectionTime", "disconnectTime")
_DATES_OPTIONAL = ("doneChargingTime",)
_OPTIONAL_TEXT = ("_id", "clusterID", "spaceID", "timezone", "userID")
_INPUT_NUMBERS = ("WhPerMile", "kWhRequested", "milesRequested", "minutesAvailable")
_INPUT_DATES = ("modifiedAt", "requestedDeparture")


# a valid session, used to warm a freshly loaded model up before it serves
EXAMPLE_SESSION = {
    "_id": "5c2e8f3bf9af8b13c02fbc07", "clusterID": "0039", "siteID": "0002",
    "connectionTime": "Wed, 02 Jan 2019 14:55:53 GMT",
    "disconnectTime": "Wed, 02 Jan 2019 22:35:04 GMT",
    "doneChargingTime": "Wed, 02 Jan 2019 18:10:56 GMT", "kWhDelivered": 9.6,
    "sessionID": "2_39_78_360_2019-01-02 14:55:53.203458", "spaceID": "CA-493",
    "stationID": "2-39-78-360", "timezone": "America/Los_Angeles", "userID": "000004321",
    "userInputs": [{"WhPerMile": 350, "kWhRequested": 14.0, "milesRequested": 40,
                    "minutesAvailable": 463, "modifiedAt": "Wed, 02 Jan 2019 14:56:35 GMT",
                    "paymentRequired": True, "requestedDeparture": "Wed, 02 Jan 2019 22:38:53 GMT",
                    "userID": 4321}],
    "schema_version": SCHEMA_VERSION,
}


class InvalidSession(ValueError):
    """A message that is not a valid session; the text says which rule it broke."""

    def __init__(self, reason: str, stage: str = "schema") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage  # decode | schema | features


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # JSON gives exactly these; bool is excluded


def _check_date(record: Mapping[str, Any], field: str, optional: bool) -> None:
    value = record.get(field)
    if value is None and optional:
        return
    if type(value) is not str or _RFC1123.fullmatch(value) is None:
        raise InvalidSession(f"{field} must be an RFC 1123 GMT date, got {value!r:.60}")


def _check_inputs(inputs: Any) -> None:
    """Every edit must be an object; the last one (the request in force, the only one the
    features read) must have numbers and dates where ACN has them."""
    if inputs is None:
        return
    if type(inputs) is not list:
        raise InvalidSession(f"userInputs must be a list or null, got {type(inputs).__name__}")
    for i, edit in enumerate(inputs):
        if type(edit) is not dict:
            raise InvalidSession(f"userInputs[{i}] must be an object")
    if not inputs:
        return
    last, i = inputs[-1], len(inputs) - 1
    for field in _INPUT_NUMBERS:
        value = last.get(field)
        if value is not None and type(value) not in (int, float):
            raise InvalidSession(f"userInputs[{i}].{field} must be a number, got {value!r:.40}")
    for field in _INPUT_DATES:
        value = last.get(field)
        if value is not None and (type(value) is not str or not _RFC1123.fullmatch(value)):
            raise InvalidSession(f"userInputs[{i}].{field} must be an RFC 1123 GMT date")


def validate_session(record: Any, site_ids: frozenset[str] = frozenset()) -> dict:
    """Check the shape of one decoded session (contract §1); not a data-quality suite.

    Args:
        record: the decoded JSON value.
        site_ids: accepted `siteID` values; empty accepts any well-formed one.

    Returns:
        The record itself when it is valid.

    Raises:
        InvalidSession: naming the first rule the record breaks.
    """
    if not isinstance(record, dict):
        raise InvalidSession(f"a session must be a JSON object, got {type(record).__name__}")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is bool:  # JSON true == 1 in Python
        raise InvalidSession(f"schema_version must be {SCHEMA_VERSION}, got {version!r:.20}")
    for field in _REQUIRED_TEXT:
        value = record.get(field)
        if not isinstance(value, str) or not value:
            raise InvalidSession(f"{field} must be a non-empty string, got {value!r:.60}")
    site = record.get("siteID")
    if not isinstance(site, str) or _SITE_ID.fullmatch(site) is None:
        raise InvalidSession(f"siteID must be a short word of letters/digits, got {site!r:.40}")
    if site_ids and site not in site_ids:
        raise InvalidSession(f"unknown siteID {site!r}")
    for field in _DATES_REQUIRED:
        _check_date(record, field, optional=False)
    for field in _DATES_OPTIONAL:
        _check_date(record, field, optional=True)
    kwh = record.get("kWhDelivered")
    if not _is_number(kwh) or not math.isfinite(kwh) or not 0 <= kwh < MAX_KWH_DELIVERED:
        raise InvalidSession(f"kWhDelivered must be a number in [0, {MAX_KWH_DELIVERED:g}), "
                             f"got {kwh!r:.40}")
    for field in _OPTIONAL_TEXT:
        value = record.get(field)
        if value is not None and not isinstance(value, str):
            raise InvalidSession(f"{field} must be a string or null, got {type(value).__name__}")
    _check_inputs(record.get("userInputs"))
    return record


def decode_session(value: bytes | None, site_ids: frozenset[str] = frozenset()) -> dict:
    """Decode and validate one Kafka message value.

    Raises:
        InvalidSession: with stage `decode` for bytes that are not JSON, else `schema`.
    """
    if value is None:
        raise InvalidSession("empty message (null value)", stage="decode")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidSession(f"not valid UTF-8 JSON: {exc}", stage="decode") from None
    return validate_session(record, site_ids)


def encode_session(record: Mapping[str, Any]) -> bytes:
    """The Kafka value of one session: the ACN object plus `schema_version`."""
    return orjson.dumps({**record, "schema_version": SCHEMA_VERSION})


def rfc1123_to_iso(value: str | None) -> str | None:
    """`Wed, 02 Jan 2019 14:55:53 GMT` -> `2019-01-02T14:55:53+00:00`, without datetime."""
    if value is None:
        return None
    m = _RFC1123.fullmatch(value)
    if m is None:
        return value
    _, day, month, year, hh, mm, ss = m.groups()
    return f"{year}-{_MONTHS[month]}-{day}T{hh}:{mm}:{ss}+00:00"


def routing_key(site_id: str, is_anomaly: bool) -> str:
    return f"score.{site_id}.{'anomaly' if is_anomaly else 'normal'}"


class Source(NamedTuple):
    """Where a message came from in Kafka; travels in the result for de-duplication."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def build_results(
    records: Sequence[Mapping[str, Any]],
    sources: Sequence[Source],
    feature_columns: Sequence[str],
    feature_rows: Sequence[Sequence[float]],
    scores: Sequence[float],
    threshold: float,
    explanations: Mapping[int, list[dict]],
    model: Mapping[str, str],
    scored_at: str,
) -> list[tuple[str, bytes]]:
    """Build the (routing key, JSON body) of each result (contract §5).

    Args:
        records: valid sessions, in batch order.
        sources: the Kafka position of each record.
        feature_columns: names of the model's inputs.
        feature_rows: one row of feature values per record (plain floats).
        scores: one score per record; higher is more anomalous.
        threshold: scores at or above it are anomalies.
        explanations: top contributions by record index, for anomalies only.
        model: `name`, `version`, `feature_version` of the model that scored.
        scored_at: ISO-8601 time of scoring, shared by the batch.

    Returns:
        One (routing key, body) per record, in order.
    """
    out = []
    for i, record in enumerate(records):
        score = float(scores[i])
        anomalous = score >= threshold
        src = sources[i]
        body = {
            "schema": RESULT_SCHEMA,
            "sessionID": record["sessionID"],
            "stationID": record["stationID"],
            "siteID": record["siteID"],
            "spaceID": record.get("spaceID"),
            "connectionTime": rfc1123_to_iso(record["connectionTime"]),
            "kWhDelivered": record["kWhDelivered"],
            "features": dict(zip(feature_columns, feature_rows[i])),
            "score": score,
            "threshold": threshold,
            "is_anomaly": anomalous,
            "explanation": explanations.get(i, []),
            "model": model,
            "kafka": {"topic": src.topic, "partition": src.partition, "offset": src.offset,
                      "timestamp_ms": src.timestamp_ms},
            "scored_at": scored_at,
        }
        out.append((routing_key(record["siteID"], anomalous),
                    orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)))
    return out
