"""Score results for the consumers' tests, built with the worker's own encoder (contract §5),
and a publisher that routes them as the worker does."""

from __future__ import annotations

import json
import time
import uuid
from functools import cache

import pika

from pipelines.contracts.dates import epoch_to_iso, format_rfc1123
from pipelines.contracts.score_result import encode_score_result, score_result_body
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


def publish(settings: Settings, messages: list[dict | bytes], key: str | None = None) -> None:
    """Publish with confirms to the settings' exchange, routed like the worker does."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(settings.rabbitmq_exchange, exchange_type="topic", durable=True)
        for msg in messages:
            if isinstance(msg, bytes):
                rk, body = key or "score.0002.anomaly", msg
            else:
                rk, body = encode_score_result(msg)
            ch.basic_publish(settings.rabbitmq_exchange, rk, body,
                             pika.BasicProperties(delivery_mode=2), mandatory=False)
    finally:
        conn.close()
