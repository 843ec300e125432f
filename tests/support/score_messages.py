"""Score results for the consumers' tests, built with the worker's own encoder (contract §5),
and a publisher that routes them as the worker does.

`score_message` gives one result as a version-1 object (`evguard.score/1`, one per
message); `score_batch` turns such objects into the version-2 messages the worker
publishes now (`evguard.scores/2`, one per routing key); `result_objects` reads either
back as version-1 objects, one per result."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from functools import cache

import numpy as np
import pika

from pipelines.contracts.dates import epoch_to_iso, format_rfc1123, iso_to_epoch
from pipelines.contracts.score_result import (
    SCHEMA_V2,
    build_results,
    encode_score_result,
    score_result_body,
)
from pipelines.contracts.sessions import EXAMPLE_SESSION, Source
from pipelines.data.features import FEATURE_VERSION, feature_matrix
from pipelines.settings import Settings

CHARGE_HOURS, CHARGE_KWH = 3.0, 7.2  # a 2.4 kW average: an ordinary level-2 session


@cache
def _typical_features() -> tuple[tuple[str, float], ...]:
    connect = 1_546_430_400.0  # Wed, 02 Jan 2019 12:00 GMT
    session = {**EXAMPLE_SESSION, "kWhDelivered": CHARGE_KWH,
               "connectionTime": format_rfc1123(connect),
               "disconnectTime": format_rfc1123(connect + CHARGE_HOURS * 3600),
               "doneChargingTime": format_rfc1123(connect + CHARGE_HOURS * 1800)}
    return tuple(feature_matrix([session]).iloc[0].items())


def typical_features() -> dict[str, float]:
    """The model inputs of an ordinary session, by their real column names."""
    return dict(_typical_features())


def score_message(session: str | None = None, station: str = "CA-101", site: str = "0002",
                  score: float = 0.40, threshold: float = 0.58, version: str = "3",
                  features: dict | None = None, scored_ts: float | None = None,
                  kafka_ms: int | None = None, explanation: list | None = None) -> dict:
    """One result object as the worker publishes it; an anomaly when score >= threshold."""
    now = time.time() if scored_ts is None else scored_ts
    feats = typical_features() if features is None else features
    record = {"sessionID": session or f"s-{uuid.uuid4().hex[:12]}", "stationID": station,
              "siteID": site, "spaceID": f"{station}-space",
              "connectionTime": format_rfc1123(now - CHARGE_HOURS * 3600),
              "kWhDelivered": feats.get("kwh_delivered", CHARGE_KWH)}
    if explanation is None and score >= threshold:
        explanation = [{"feature": "avg_kw", "value": feats.get("avg_kw", 41.0),
                        "contribution": 0.12, "typical": 3.2},
                       {"feature": "idle_hours", "value": feats.get("idle_hours", 0.5),
                        "contribution": 0.04, "typical": 1.1}]
    source = Source("ev-station-data", 0, 1,
                    kafka_ms if kafka_ms is not None else int(now * 1000) - 40)
    model = {"name": "ev-session-anomaly", "version": version, "feature_version": FEATURE_VERSION}
    return score_result_body(record, source, feats, score, threshold, explanation or [], model,
                             epoch_to_iso(now))


def score_json(**changes) -> str:
    """An anomalous result as JSON text, with fields changed (or broken) by `changes`."""
    return json.dumps({**score_message(score=0.9), **changes})


def score_batch(messages: Sequence[dict]) -> list[tuple[str, bytes]]:
    """`(routing key, body)` of result objects from `score_message` as the worker publishes
    them: `evguard.scores/2`, one message per routing key of the objects that share model and
    threshold, encoded by the worker's own `build_results`. A micro-batch has one scoring
    time: each message takes its first object's `scored_at`."""
    groups: dict[tuple, list[dict]] = {}
    for message in messages:
        shared = (json.dumps(message["model"], sort_keys=True), message["threshold"])
        groups.setdefault(shared, []).append(message)
    out = []
    for group in groups.values():
        first = group[0]
        columns = list(first["features"])
        records = [{"sessionID": m["sessionID"], "stationID": m["stationID"],
                    "siteID": m["siteID"], "spaceID": m["spaceID"],
                    "connectionTime": format_rfc1123(iso_to_epoch(m["connectionTime"])),
                    "kWhDelivered": m["kWhDelivered"]} for m in group]
        matrix = np.array([[np.nan if m["features"].get(c) is None else m["features"][c]
                            for c in columns] for m in group], dtype=np.float64)
        out += build_results(records, [Source(**m["kafka"]) for m in group], columns,
                             matrix.reshape(len(group), len(columns)),
                             np.array([m["score"] for m in group]), first["threshold"],
                             {i: m["explanation"] for i, m in enumerate(group)
                              if m["explanation"]},
                             first["model"], first["scored_at"])
    return out


def result_objects(body: dict) -> list[dict]:
    """A decoded result message as version-1 objects, one per result (a version-1 object or
    any other message comes back alone)."""
    if body.get("schema") != SCHEMA_V2:
        return [body]
    columns, names = body["results"], body["feature_columns"]
    explanations = columns.get("explanation") or [[] for _ in range(body["count"])]
    return [{"schema": SCHEMA_V2, "sessionID": columns["sessionID"][i],
             "stationID": columns["stationID"][i], "siteID": body["siteID"],
             "spaceID": columns["spaceID"][i], "connectionTime": columns["connectionTime"][i],
             "kWhDelivered": columns["kWhDelivered"][i],
             "features": dict(zip(names, columns["features"][i])),
             "score": columns["score"][i], "threshold": body["threshold"],
             "is_anomaly": body["is_anomaly"], "explanation": explanations[i],
             "model": body["model"],
             "kafka": {"topic": body["kafka_topic"], "partition": columns["kafka_partition"][i],
                       "offset": columns["kafka_offset"][i],
                       "timestamp_ms": columns["kafka_timestamp_ms"][i]},
             "scored_at": body["scored_at"]}
            for i in range(body["count"])]


def publish(settings: Settings, messages: Sequence[dict | bytes | tuple[str, bytes]],
            key: str | None = None) -> None:
    """Publish with confirms to the settings' exchange, routed like the worker does: a result
    object as one version-1 message, a `(routing key, body)` pair (from `score_batch`) as it
    is, bytes with `key`."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(settings.rabbitmq_exchange, exchange_type="topic", durable=True)
        for msg in messages:
            if isinstance(msg, bytes):
                rk, body = key or "score.0002.anomaly", msg
            elif isinstance(msg, tuple):
                rk, body = msg
            else:
                rk, body = encode_score_result(msg)
            ch.basic_publish(settings.rabbitmq_exchange, rk, body,
                             pika.BasicProperties(delivery_mode=2), mandatory=False)
    finally:
        conn.close()
