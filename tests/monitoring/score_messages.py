"""Contract-shaped score results (contract §5) and a publisher, for the consumers' tests."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pika

from evguard.services.process import free_port  # noqa: F401 - the kit hands it to tests
from pipelines.contracts.score_result import routing_key
from pipelines.settings import Settings

FEATURES = ("duration_h", "kwh", "avg_kw", "idle_h", "start_hour")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def score_message(session: str | None = None, station: str = "CA-101", site: str = "0002",
                  score: float = 0.40, threshold: float = 0.58, version: str = "3",
                  features: dict | None = None, scored_ts: float | None = None,
                  kafka_ms: int | None = None, explanation: list | None = None) -> dict:
    """One result as the worker publishes it; anomalous when score > threshold."""
    now = datetime.now(UTC).timestamp() if scored_ts is None else scored_ts
    is_anomaly = score > threshold
    feats = features or {"duration_h": 3.0, "kwh": 7.1, "avg_kw": 2.4, "idle_h": 0.5,
                         "start_hour": 9.0}
    if explanation is None and is_anomaly:
        explanation = [{"feature": "avg_kw", "value": feats.get("avg_kw", 41.0),
                        "contribution": 0.12, "typical": 3.2},
                       {"feature": "idle_h", "value": feats.get("idle_h", 0.5),
                        "contribution": 0.04, "typical": 1.1}]
    return {
        "schema": "evguard.score/1",
        "sessionID": session or f"s-{uuid.uuid4().hex[:12]}",
        "stationID": station, "siteID": site, "spaceID": f"{station}-space",
        "connectionTime": iso(now - 3 * 3600), "kWhDelivered": feats.get("kwh", 7.1),
        "features": feats,
        "score": score, "threshold": threshold, "is_anomaly": is_anomaly,
        "explanation": explanation or [],
        "model": {"name": "ev-session-anomaly", "version": version, "feature_version": "f1"},
        "kafka": {"topic": "ev-station-data", "partition": 0, "offset": 1,
                  "timestamp_ms": kafka_ms if kafka_ms is not None else int(now * 1000) - 40},
        "scored_at": iso(now),
    }


def publish(settings: Settings, messages: list[dict | bytes], key: str | None = None) -> None:
    """Publish with confirms to the settings' exchange, routed like the worker does."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(settings.rabbitmq_exchange, exchange_type="topic", durable=True)
        for msg in messages:
            if isinstance(msg, bytes):
                body, rk = msg, key or "score.0002.anomaly"
            else:
                body, rk = json.dumps(msg).encode(), routing_key(msg["siteID"], msg["is_anomaly"])
            ch.basic_publish(settings.rabbitmq_exchange, rk, body,
                             pika.BasicProperties(delivery_mode=2), mandatory=False)
    finally:
        conn.close()


def queue_messages(settings: Settings, queue: str) -> list[tuple[dict, bytes]]:
    """Take (headers, body) of every message in a queue (acked: the queue is emptied)."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props.headers or {}, body))
    finally:
        conn.close()
