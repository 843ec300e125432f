"""The score results (contract §5) on the RabbitMQ exchange `ev.scores`.

Version 2 (`evguard.scores/2`, what the worker publishes): one message carries the
results of one micro-batch for one routing key `score.<site>.<normal|anomaly>`.
What the batch shares is written once; each per-session field is a column, one
entry per result, so the worker encodes numpy arrays directly instead of building
a dict per session (`build_results`).

Version 1 (`evguard.score/1`): one message per scored session
(`score_result_body`, `encode_score_result`). Consumers still accept it, for a
rolling upgrade, and the test kits use it where one message per result matters.

Consumers decode both with `parse_score_results`: a body that is not JSON or of
another schema is wholly bad; in a batch, a bad element is reported with its index
and the good ones are still returned. Encoder and parser live together so that they
cannot drift apart; test kits build results with the encoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import orjson

from pipelines.contracts.dates import iso_to_epoch, rfc1123_to_epoch, rfc1123_to_iso
from pipelines.contracts.sessions import Source

SCHEMA_V1 = "evguard.score/1"  # one result per message
SCHEMA_V2 = "evguard.scores/2"  # one micro-batch per routing key
SCHEMA = SCHEMA_V2  # what the worker publishes


class InvalidScoreResult(ValueError):
    """A message body (or one element of a batch) that is not a valid score result."""


@dataclass(frozen=True)
class ScoreResult:
    """One scored session, as consumers see it. Times are epoch seconds (UTC)."""

    session_id: str
    station_id: str
    site_id: str
    space_id: str
    score: float
    threshold: float
    is_anomaly: bool
    model_name: str
    model_version: str
    feature_version: str
    scored_ts: float
    connection_ts: float | None = None
    kwh_delivered: float | None = None
    kafka_ts: float | None = None
    features: dict[str, float | None] = field(default_factory=dict)
    explanation: list[dict[str, Any]] = field(default_factory=list)
    kafka_partition: int | None = None
    kafka_offset: int | None = None

    @property
    def latency_ms(self) -> float | None:
        """Produce-to-scored latency, when the Kafka timestamp is known."""
        if self.kafka_ts is None:
            return None
        return max(0.0, (self.scored_ts - self.kafka_ts) * 1000.0)


def routing_key(site_id: str, is_anomaly: bool) -> str:
    """The routing key of a result: `score.<siteID>.<normal|anomaly>`."""
    return f"score.{site_id}.{'anomaly' if is_anomaly else 'normal'}"


def score_result_body(record: Mapping[str, Any], source: Source, features: Mapping[str, float],
                      score: float, threshold: float, explanation: list[dict],
                      model: Mapping[str, str], scored_at: str) -> dict:
    """The JSON object of one version-1 result: `is_anomaly` is `score >= threshold`.

    Args:
        record: the valid session that was scored (contract §1).
        source: its position in Kafka.
        features: the model's inputs, column -> value.
        score: its anomaly score; higher is more anomalous.
        threshold: the champion's alert threshold.
        explanation: top contributions (empty for a normal session).
        model: `name`, `version` and `feature_version` of the model that scored it.
        scored_at: ISO-8601 time of scoring.
    """
    return {
        "schema": SCHEMA_V1,
        "sessionID": record["sessionID"],
        "stationID": record["stationID"],
        "siteID": record["siteID"],
        "spaceID": record.get("spaceID"),
        "connectionTime": rfc1123_to_iso(record["connectionTime"]),
        "kWhDelivered": record["kWhDelivered"],
        "features": features,
        "score": score,
        "threshold": threshold,
        "is_anomaly": score >= threshold,
        "explanation": explanation,
        "model": model,
        "kafka": {"topic": source.topic, "partition": source.partition,
                  "offset": source.offset, "timestamp_ms": source.timestamp_ms},
        "scored_at": scored_at,
    }


def encode_score_result(body: Mapping[str, Any]) -> tuple[str, bytes]:
    """`(routing key, message body)` of one version-1 result object from `score_result_body`."""
    return (routing_key(body["siteID"], body["is_anomaly"]),
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


_SESSION_ID, _STATION_ID = itemgetter("sessionID"), itemgetter("stationID")
_CONNECTION_TIME, _KWH = itemgetter("connectionTime"), itemgetter("kWhDelivered")


def build_results(
    records: Sequence[Mapping[str, Any]],
    sources: Sequence[Source],
    feature_columns: Sequence[str],
    features: np.ndarray | Sequence[Sequence[float]],
    scores: np.ndarray | Sequence[float],
    threshold: float,
    explanations: Mapping[int, list[dict]],
    model: Mapping[str, str],
    scored_at: str,
) -> list[tuple[str, bytes]]:
    """The encoded results of one scored micro-batch: one `evguard.scores/2` message per
    routing key (and Kafka topic), its results in record order.

    Args:
        records: valid sessions, in batch order.
        sources: the Kafka position of each record.
        feature_columns: names of the model's inputs.
        features: the feature matrix, one row per record (n x k, float64; NaN -> null).
        scores: one score per record; higher is more anomalous.
        threshold: scores at or above it are anomalies.
        explanations: top contributions by record index, for anomalies only.
        model: `name`, `version`, `feature_version` of the model that scored.
        scored_at: ISO-8601 time of scoring, shared by the batch.

    Returns:
        `(routing key, body)` pairs, in the order each key first occurs in the batch.
    """
    if not records:
        return []
    scores = np.asarray(scores, dtype=np.float64)
    matrix = np.asarray(features, dtype=np.float64)
    anomalous = (scores >= threshold).tolist()
    groups: dict[tuple[str, bool, str], list[int]] = {}
    for i, key in enumerate(zip(map(itemgetter("siteID"), records), anomalous,
                                (source.topic for source in sources))):
        members = groups.get(key)
        if members is None:
            groups[key] = [i]
        else:
            members.append(i)
    shared = {"model": model, "threshold": float(threshold), "scored_at": scored_at,
              "feature_columns": list(feature_columns)}
    return [(routing_key(site, is_anomaly),
             _encode_group(records, sources, matrix, scores, explanations, members, site,
                           is_anomaly, topic, shared))
            for (site, is_anomaly, topic), members in groups.items()]


def _encode_group(records, sources, matrix: np.ndarray, scores: np.ndarray,
                  explanations: Mapping[int, list[dict]], members: list[int], site: str,
                  is_anomaly: bool, topic: str, shared: dict) -> bytes:
    if len(members) == len(records):  # one routing key for the whole batch: no copies
        part, where, index = records, sources, slice(None)
    else:
        part = [records[i] for i in members]
        where = [sources[i] for i in members]
        index = np.asarray(members)
    _, partitions, offsets, stamps = zip(*where)
    columns = {
        "sessionID": list(map(_SESSION_ID, part)),
        "stationID": list(map(_STATION_ID, part)),
        "spaceID": [record.get("spaceID") for record in part],
        "connectionTime": list(map(_CONNECTION_TIME, part)),  # RFC 1123, as the session has it
        "kWhDelivered": list(map(_KWH, part)),
        "score": scores[index],
        "features": np.ascontiguousarray(matrix[index]),
        "kafka_partition": partitions, "kafka_offset": offsets, "kafka_timestamp_ms": stamps,
    }
    if is_anomaly and explanations:
        columns["explanation"] = [explanations.get(i, []) for i in members]
    body = {"schema": SCHEMA_V2, "siteID": site, "is_anomaly": is_anomaly, **shared,
            "kafka_topic": topic, "count": len(members), "results": columns}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _session_date(value: Any, name: str) -> float:
    """Epoch seconds of a session's date: RFC 1123 GMT as sessions carry it, or ISO 8601."""
    seconds = rfc1123_to_epoch(value)
    if seconds is not None:
        return seconds
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidScoreResult(f"{name} is not an RFC 1123 or ISO-8601 date: {value!r:.80}") \
            from exc


def _epoch(value: Any, name: str) -> float:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidScoreResult(f"{name} is not ISO-8601: {value!r}") from exc


# longest accepted identifiers; the store's columns are this wide
MAX_LENGTH = {"sessionID": 128, "stationID": 128, "siteID": 32, "spaceID": 128, "name": 128,
              "version": 32, "feature_version": 32}


def _text(body: dict, key: str, required: bool = True) -> str:
    return _text_value(body.get(key), key, required)


def _text_value(value: Any, key: str, required: bool = True) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (required and not value):
        if required:
            raise InvalidScoreResult(f"{key} must be a non-empty string, got {value!r:.80}")
        return ""
    if len(value) > MAX_LENGTH.get(key, 256):
        raise InvalidScoreResult(f"{key} is longer than {MAX_LENGTH.get(key, 256)} characters")
    return value


def _finite_or_none(value: Any) -> float | None:
    """A number as float; NaN, infinities, integers beyond a double and non-numbers become
    None (JSON null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


_FLOAT = {float}


def _feature_values(row: list) -> list[float | None] | map:
    """`_finite_or_none` of each value; a row of finite floats (the usual one) as it is."""
    # one NaN or infinity makes the sum non-finite (so does an overflow: the slow path then)
    if set(map(type, row)) <= _FLOAT and math.isfinite(sum(row)):
        return row
    return map(_finite_or_none, row)


def _explanation(items: list[dict]) -> list[dict[str, Any]]:
    return [{"feature": str(item.get("feature", "?"))[:128],
             **{k: _finite_or_none(item.get(k)) for k in ("value", "contribution", "typical")},
             **({"rule": item["rule"][:256]} if isinstance(item.get("rule"), str) else {})}
            for item in items]


def _number(value: Any, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    number = _finite_or_none(value)
    if number is None:
        raise InvalidScoreResult(f"{name} must be a finite number, got {value!r:.80}")
    return number


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ScoreBatch(NamedTuple):
    """What `parse_score_results` found in one message."""

    results: list[ScoreResult]  # the good elements, in batch order
    errors: list[tuple[int, str]]  # (index in the batch, reason) of each bad element
    indexes: list[int]  # the index in the batch of each good element


def _load(body: bytes | str) -> dict:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # NaN and Infinity literals, which orjson refuses, are read as null later
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidScoreResult(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidScoreResult(f"expected a JSON object, got {type(data).__name__}")
    return data


def parse_score_results(body: bytes | str) -> ScoreBatch:
    """Decode and check one message body of either version.

    Args:
        body: the raw message body (UTF-8 JSON), `evguard.scores/2` or `evguard.score/1`.

    Returns:
        The good results and, for a batch, the index and reason of each bad element
        (a version-1 message is one result or wholly bad).

    Raises:
        InvalidScoreResult: the body is not JSON, has another schema, or a field shared
            by the batch (model, threshold, columns...) is missing or of the wrong type.
    """
    data = _load(body)
    schema = data.get("schema")
    if schema == SCHEMA_V1:
        return ScoreBatch([_parse_v1(data)], [], [0])
    if schema != SCHEMA_V2:
        raise InvalidScoreResult(
            f"schema must be {SCHEMA_V2!r} or {SCHEMA_V1!r}, got {schema!r:.80}")
    batch = _BatchReader(data)
    found = ScoreBatch([], [], [])
    for i in range(batch.count):
        try:
            found.results.append(batch.element(i))
        except InvalidScoreResult as exc:
            found.errors.append((i, str(exc)))
        else:
            found.indexes.append(i)
    return found


def parse_score_result(body: bytes | str) -> ScoreResult:
    """Decode and check one version-1 message body (one result).

    Raises:
        InvalidScoreResult: the body is not JSON, has another schema, or a field is
            missing or of the wrong type. The message says which.
    """
    data = _load(body)
    if data.get("schema") != SCHEMA_V1:
        raise InvalidScoreResult(f"schema must be {SCHEMA_V1!r}, got {data.get('schema')!r:.80}")
    return _parse_v1(data)


def _model(data: dict) -> tuple[str, str, str]:
    model = data.get("model")
    if not isinstance(model, dict):
        raise InvalidScoreResult("model must be an object with name and version")
    return (_text(model, "name"), _text(model, "version"),
            _text(model, "feature_version", required=False))


def _explanation_of(value: Any) -> list[dict[str, Any]]:
    explanation = value or []
    if not isinstance(explanation, list) or not all(isinstance(e, dict) for e in explanation):
        raise InvalidScoreResult("explanation must be a list of objects")
    return _explanation(explanation)


def _parse_v1(data: dict) -> ScoreResult:
    name, version, feature_version = _model(data)
    if not isinstance(data.get("is_anomaly"), bool):
        raise InvalidScoreResult(f"is_anomaly must be true or false, got {data.get('is_anomaly')!r}")
    features = data.get("features") or {}
    if not isinstance(features, dict):
        raise InvalidScoreResult("features must be an object of column -> number")
    explanation = _explanation_of(data.get("explanation"))
    kafka = data.get("kafka") if isinstance(data.get("kafka"), dict) else {}
    kafka_ms = _number(kafka.get("timestamp_ms"), "kafka.timestamp_ms", optional=True)
    connection = data.get("connectionTime")
    return ScoreResult(
        session_id=_text(data, "sessionID"),
        station_id=_text(data, "stationID"),
        site_id=_text(data, "siteID"),
        space_id=_text(data, "spaceID", required=False),
        score=_number(data.get("score"), "score"),
        threshold=_number(data.get("threshold"), "threshold"),
        is_anomaly=data["is_anomaly"],
        model_name=name,
        model_version=version,
        feature_version=feature_version,
        scored_ts=_epoch(data.get("scored_at"), "scored_at"),
        connection_ts=_epoch(connection, "connectionTime") if connection else None,
        kwh_delivered=_number(data.get("kWhDelivered"), "kWhDelivered", optional=True),
        kafka_ts=kafka_ms / 1000.0 if kafka_ms else None,  # 0 = broker gave no timestamp
        features={str(k)[:128]: _finite_or_none(v) for k, v in features.items()},
        explanation=explanation,
        kafka_partition=_int_or_none(kafka.get("partition")),
        kafka_offset=_int_or_none(kafka.get("offset")),
    )


REQUIRED_COLUMNS = ("sessionID", "stationID", "score")
OPTIONAL_COLUMNS = ("spaceID", "connectionTime", "kWhDelivered", "features", "explanation",
                    "kafka_partition", "kafka_offset", "kafka_timestamp_ms")


class _BatchReader:
    """The shared fields of a version-2 body, checked once; `element(i)` checks one result."""

    def __init__(self, data: dict) -> None:
        self.name, self.version, self.feature_version = _model(data)
        self.site_id = _text(data, "siteID")
        self.is_anomaly = data.get("is_anomaly")
        if not isinstance(self.is_anomaly, bool):
            raise InvalidScoreResult(f"is_anomaly must be true or false, got {self.is_anomaly!r:.80}")
        self.threshold = _number(data.get("threshold"), "threshold")
        self.scored_ts = _epoch(data.get("scored_at"), "scored_at")
        names = data.get("feature_columns", [])
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            raise InvalidScoreResult("feature_columns must be a list of column names")
        self.feature_columns = [c[:128] for c in names]
        count = data.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidScoreResult(f"count must be a number of results, got {count!r:.80}")
        self.count = count
        columns = data.get("results")
        if not isinstance(columns, dict):
            raise InvalidScoreResult("results must be an object of column -> list")
        for name in REQUIRED_COLUMNS:
            if name not in columns:
                raise InvalidScoreResult(f"results.{name} is missing")
        self.columns = {}
        for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
            column = columns.get(name)
            if column is None:
                continue
            if not isinstance(column, list) or len(column) != count:
                raise InvalidScoreResult(f"results.{name} must be a list of {count} entries")
            self.columns[name] = column

    def _value(self, name: str, i: int) -> Any:
        column = self.columns.get(name)
        return None if column is None else column[i]

    def element(self, i: int) -> ScoreResult:
        value = self._value
        row = value("features", i)
        if row is None:
            features = {}
        elif isinstance(row, list) and len(row) == len(self.feature_columns):
            features = dict(zip(self.feature_columns, _feature_values(row)))
        else:
            raise InvalidScoreResult(
                f"features must be a list of {len(self.feature_columns)} numbers")
        connection = value("connectionTime", i)
        kafka_ms = _number(value("kafka_timestamp_ms", i), "kafka_timestamp_ms", optional=True)
        return ScoreResult(
            session_id=_text_value(value("sessionID", i), "sessionID"),
            station_id=_text_value(value("stationID", i), "stationID"),
            site_id=self.site_id,
            space_id=_text_value(value("spaceID", i), "spaceID", required=False),
            score=_number(value("score", i), "score"),
            threshold=self.threshold,
            is_anomaly=self.is_anomaly,
            model_name=self.name,
            model_version=self.version,
            feature_version=self.feature_version,
            scored_ts=self.scored_ts,
            connection_ts=_session_date(connection, "connectionTime") if connection else None,
            kwh_delivered=_number(value("kWhDelivered", i), "kWhDelivered", optional=True),
            kafka_ts=kafka_ms / 1000.0 if kafka_ms else None,
            features=features,
            explanation=_explanation_of(value("explanation", i)),
            kafka_partition=_int_or_none(value("kafka_partition", i)),
            kafka_offset=_int_or_none(value("kafka_offset", i)),
        )
