"""The score result (contract §5): one scored session on the RabbitMQ exchange `ev.scores`.

The worker encodes results with `build_results` (one `encode_score_result` per
session); the consumers decode them with `parse_score_result`, and anything it
rejects is a poison message for their dead-letter queue. Encoder and parser live
together so that they cannot drift apart; test kits build results with the encoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.contracts.dates import iso_to_epoch, rfc1123_to_iso
from pipelines.contracts.sessions import Source

SCHEMA = "evguard.score/1"


class InvalidScoreResult(ValueError):
    """A message body that is not a valid `evguard.score/1` result."""


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
    """The JSON object of one result: `is_anomaly` is `score >= threshold`.

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
        "schema": SCHEMA,
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
    """`(routing key, message body)` of one result object from `score_result_body`."""
    return (routing_key(body["siteID"], body["is_anomaly"]),
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


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
    """The encoded results of one scored micro-batch, in record order.

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
    """
    return [encode_score_result(score_result_body(
        record, sources[i], dict(zip(feature_columns, feature_rows[i])), float(scores[i]),
        threshold, explanations.get(i, []), model, scored_at))
        for i, record in enumerate(records)]


def _epoch(value: Any, name: str) -> float:
    try:
        return iso_to_epoch(value)
    except (TypeError, ValueError) as exc:
        raise InvalidScoreResult(f"{name} is not ISO-8601: {value!r}") from exc


# longest accepted identifiers; the store's columns are this wide
MAX_LENGTH = {"sessionID": 128, "stationID": 128, "siteID": 32, "spaceID": 128, "name": 128,
              "version": 32, "feature_version": 32}


def _text(body: dict, key: str, required: bool = True) -> str:
    value = body.get(key)
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
    """A number as float; NaN, infinities and non-numbers become None (JSON null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _explanation(items: list[dict]) -> list[dict[str, Any]]:
    return [{"feature": str(item.get("feature", "?"))[:128],
             **{k: _finite_or_none(item.get(k)) for k in ("value", "contribution", "typical")}}
            for item in items]


def _number(value: Any, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidScoreResult(f"{name} must be a finite number, got {value!r}")
    return float(value)


def parse_score_result(body: bytes | str) -> ScoreResult:
    """Decode and check one message body.

    Args:
        body: the raw message body (UTF-8 JSON).

    Returns:
        The parsed result.

    Raises:
        InvalidScoreResult: the body is not JSON, has another schema, or a field is
            missing or of the wrong type. The message says which.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidScoreResult(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidScoreResult(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise InvalidScoreResult(f"schema must be {SCHEMA!r}, got {data.get('schema')!r}")
    model = data.get("model")
    if not isinstance(model, dict):
        raise InvalidScoreResult("model must be an object with name and version")
    if not isinstance(data.get("is_anomaly"), bool):
        raise InvalidScoreResult(f"is_anomaly must be true or false, got {data.get('is_anomaly')!r}")
    features = data.get("features") or {}
    if not isinstance(features, dict):
        raise InvalidScoreResult("features must be an object of column -> number")
    explanation = data.get("explanation") or []
    if not isinstance(explanation, list) or not all(isinstance(e, dict) for e in explanation):
        raise InvalidScoreResult("explanation must be a list of objects")
    kafka = data.get("kafka") or {}
    kafka_ms = _number(kafka.get("timestamp_ms") if isinstance(kafka, dict) else None,
                       "kafka.timestamp_ms", optional=True)
    connection = data.get("connectionTime")
    return ScoreResult(
        session_id=_text(data, "sessionID"),
        station_id=_text(data, "stationID"),
        site_id=_text(data, "siteID"),
        space_id=_text(data, "spaceID", required=False),
        score=_number(data.get("score"), "score"),
        threshold=_number(data.get("threshold"), "threshold"),
        is_anomaly=data["is_anomaly"],
        model_name=_text(model, "name"),
        model_version=_text(model, "version"),
        feature_version=_text(model, "feature_version", required=False),
        scored_ts=_epoch(data.get("scored_at"), "scored_at"),
        connection_ts=_epoch(connection, "connectionTime") if connection else None,
        kwh_delivered=_number(data.get("kWhDelivered"), "kWhDelivered", optional=True),
        kafka_ts=kafka_ms / 1000.0 if kafka_ms else None,  # 0 = broker gave no timestamp
        features={str(k)[:128]: _finite_or_none(v) for k, v in features.items()},
        explanation=_explanation(explanation),
    )
