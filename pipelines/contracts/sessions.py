"""The session message (contract §1): an ACN session on Kafka `ev-station-data`.

The value is the ACN-Data session object (the API's and the exports' field names)
plus `schema_version`; the key is the `stationID`. `encode_session` is what every
producer sends and `decode_session` what the worker accepts: a light shape check,
not a data-quality suite (that is `pipelines.data.validation`). Pure; the worker
calls `decode_session` once per message, so it uses orjson and no datetime.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from pipelines.contracts.dates import RFC1123_RE

SCHEMA_VERSION = 1
MAX_KWH_DELIVERED = 1e6  # beyond this a value is not a meter reading

# the ACN-Data session object, field by field
SESSION_FIELDS = ("_id", "clusterID", "connectionTime", "disconnectTime", "doneChargingTime",
                  "kWhDelivered", "sessionID", "siteID", "spaceID", "stationID", "timezone",
                  "userID", "userInputs")
INPUT_FIELDS = ("WhPerMile", "kWhRequested", "milesRequested", "minutesAvailable", "modifiedAt",
                "paymentRequired", "requestedDeparture", "userID")
DATE_FIELDS = ("connectionTime", "disconnectTime", "doneChargingTime")
TEXT_FIELDS = ("_id", "clusterID", "sessionID", "siteID", "spaceID", "stationID", "timezone",
               "userID")

_SITE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # a routing-key word: no dots or wildcards
_REQUIRED_TEXT = ("sessionID", "stationID")
_DATES_REQUIRED = ("connectionTime", "disconnectTime")
_DATES_OPTIONAL = ("doneChargingTime",)
_OPTIONAL_TEXT = ("_id", "clusterID", "spaceID", "timezone", "userID")
_INPUT_NUMBERS = ("WhPerMile", "kWhRequested", "milesRequested", "minutesAvailable")
_INPUT_DATES = ("modifiedAt", "requestedDeparture")
_SITE_ID_MATCH = _SITE_ID.fullmatch
_DATE_MATCH = RFC1123_RE.fullmatch


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


class Source(NamedTuple):
    """Where a session message sits in Kafka; it travels in the score result and the dead
    letter made from it, for de-duplication and audit."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


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
    if type(value) is not str or RFC1123_RE.fullmatch(value) is None:
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
        if value is not None and (type(value) is not str or not RFC1123_RE.fullmatch(value)):
            raise InvalidSession(f"userInputs[{i}].{field} must be an RFC 1123 GMT date")


def _is_valid(record: Any, site_ids: frozenset[str]) -> bool:
    """True when `_check_session` would accept `record`: the same rules in one function, for
    the sessions the worker sees almost always (False sends a record through the rule by
    rule check, which names what it breaks)."""
    if type(record) is not dict:
        return False
    get = record.get
    version = get("schema_version")
    if version != SCHEMA_VERSION or type(version) is bool:
        return False
    session, station, site = get("sessionID"), get("stationID"), get("siteID")
    if type(session) is not str or not session or type(station) is not str or not station:
        return False
    if type(site) is not str or _SITE_ID_MATCH(site) is None or (site_ids
                                                                  and site not in site_ids):
        return False
    connect, disconnect, done = get("connectionTime"), get("disconnectTime"), \
        get("doneChargingTime")
    if type(connect) is not str or _DATE_MATCH(connect) is None or type(disconnect) is not str \
            or _DATE_MATCH(disconnect) is None:
        return False
    if done is not None and (type(done) is not str or _DATE_MATCH(done) is None):
        return False
    kwh = get("kWhDelivered")
    if type(kwh) not in (int, float) or not 0 <= kwh < MAX_KWH_DELIVERED \
            or not math.isfinite(kwh):
        return False
    for field in _OPTIONAL_TEXT:
        value = get(field)
        if value is not None and type(value) is not str:
            return False
    inputs = get("userInputs")
    if inputs is None:
        return True
    if type(inputs) is not list:
        return False
    for edit in inputs:
        if type(edit) is not dict:
            return False
    if not inputs:
        return True
    last = inputs[-1]
    for field in _INPUT_NUMBERS:
        value = last.get(field)
        if value is not None and type(value) not in (int, float):
            return False
    for field in _INPUT_DATES:
        value = last.get(field)
        if value is not None and (type(value) is not str or _DATE_MATCH(value) is None):
            return False
    return True


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
    if _is_valid(record, site_ids):
        return record
    return _check_session(record, site_ids)


def _check_session(record: Any, site_ids: frozenset[str]) -> dict:
    """`validate_session` rule by rule: raises naming the first rule `record` breaks."""
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


def session_key(record: Mapping[str, Any]) -> str | None:
    """The Kafka key of one session: its `stationID`, so a station's sessions keep their order."""
    station = record.get("stationID")
    return None if station is None else str(station)
