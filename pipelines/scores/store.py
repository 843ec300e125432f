"""The monitoring store: every score, alert, station alert, dead letter, window report and
retraining.

SQLAlchemy Core on SQLite (default, under the state dir) or PostgreSQL (by URL).
Times are epoch seconds (UTC) in float columns, so windows and per-minute
buckets are plain arithmetic on every database. Writes of scores and alerts are
idempotent on (session_id, model_version); station alert events and their email
notices on (alert_id, status).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from pipelines.contracts.score_result import ScoreResult
from pipelines.contracts.station_alert import StationAlertMessage

metadata = MetaData()
_Id = BigInteger().with_variant(Integer, "sqlite")  # sqlite autoincrements INTEGER keys only

scores = Table(
    "scores", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("session_id", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("feature_version", String(32), nullable=False),
    Column("station_id", String(128), nullable=False),
    Column("site_id", String(32), nullable=False),
    Column("space_id", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("is_anomaly", Boolean, nullable=False),
    Column("scored_ts", Float, nullable=False),
    Column("stored_ts", Float, nullable=False),
    Column("connection_ts", Float),
    Column("kafka_ts", Float),
    Column("latency_ms", Float),
    Column("kwh_delivered", Float),
    Column("features", JSON, nullable=False),
    Column("explanation", JSON, nullable=False),
    UniqueConstraint("session_id", "model_version", name="uq_scores_session_model"),
    Index("ix_scores_scored_ts", "scored_ts"),
    Index("ix_scores_station", "station_id"),
    Index("ix_scores_station_connection", "station_id", "connection_ts"),  # the station view
)

ALERT_STATES = ("pending", "retrying", "sent", "suppressed", "dead_lettered")

alerts = Table(
    "alerts", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("session_id", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("station_id", String(128), nullable=False),
    Column("site_id", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("subject", Text, nullable=False),
    Column("webhook_state", String(16)),
    Column("result", JSON, nullable=False),
    Column("created_ts", Float, nullable=False),
    Column("updated_ts", Float, nullable=False),
    Column("delivered_ts", Float),
    Column("acknowledged_ts", Float),
    UniqueConstraint("session_id", "model_version", name="uq_alerts_session_model"),
    Index("ix_alerts_station_state", "station_id", "state"),
)

# one row per event of a station alert episode (contract §5a): its open and its closed event
station_alerts = Table(
    "station_alerts", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("alert_id", String(256), nullable=False),
    Column("status", String(8), nullable=False),  # open | closed
    Column("station_id", String(128), nullable=False),
    Column("site_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # silent | failing | degraded
    Column("opened_ts", Float, nullable=False),
    Column("at_ts", Float, nullable=False),
    Column("detected_ts", Float, nullable=False),
    Column("stored_ts", Float, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("worker", String(128), nullable=False),
    UniqueConstraint("alert_id", "status", name="uq_station_alerts_alert_status"),
    Index("ix_station_alerts_station_kind", "station_id", "kind", "opened_ts"),
)

# the alerting consumer's email of each station alert event (sent once per (alert_id, status))
NOTICE_STATES = ("pending", "retrying", "sent", "suppressed", "dead_lettered", "recorded")

station_notices = Table(
    "station_notices", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("alert_id", String(256), nullable=False),
    Column("status", String(8), nullable=False),
    Column("station_id", String(128), nullable=False),
    Column("site_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("subject", Text, nullable=False),
    Column("webhook_state", String(16)),
    Column("created_ts", Float, nullable=False),
    Column("updated_ts", Float, nullable=False),
    Column("delivered_ts", Float),
    UniqueConstraint("alert_id", "status", name="uq_station_notices_alert_status"),
    Index("ix_station_notices_station_kind", "station_id", "kind", "state"),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("queue", String(255), nullable=False),
    Column("error", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_ts", Float, nullable=False),
)

window_reports = Table(
    "window_reports", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("start_ts", Float, nullable=False),
    Column("end_ts", Float, nullable=False),
    Column("volume", Integer, nullable=False),
    Column("anomaly_rate", Float),
    Column("report", JSON, nullable=False),
)

retrain_triggers = Table(
    "retrain_triggers", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("reason", Text, nullable=False),
    Column("state", String(16), nullable=False),  # triggered | failed
    Column("flow_run_id", String(64)),
    Column("error", Text),
    Column("created_ts", Float, nullable=False),
)


def connect(url: str) -> Engine:
    """An engine for `url` with the schema created; SQLite gets WAL so readers never block."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    for index in scores.indexes:  # create_all adds no index to a table that already exists
        index.create(engine, checkfirst=True)
    return engine


def _insert_ignoring_duplicates(engine: Engine, table: Table, index: list[str]):
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(engine.dialect.name)
    if dialect is None:
        raise ValueError(f"monitoring store supports sqlite and postgresql, not {engine.dialect.name}")
    return dialect.insert(table).on_conflict_do_nothing(index_elements=index)


class MonitoringStore:
    """Reads and writes of the monitoring consumers. One instance per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = connect(url)

    def close(self) -> None:
        self.engine.dispose()

    # ---- scores ------------------------------------------------------
    def save_scores(self, results: Sequence[ScoreResult], now: float | None = None) -> int:
        """Insert results in one transaction; duplicates are skipped. Returns how many were new."""
        if not results:
            return 0
        stored = time.time() if now is None else now
        rows = [score_row(r, stored) for r in results]
        stmt = _insert_ignoring_duplicates(self.engine, scores, ["session_id", "model_version"])
        with self.engine.begin() as conn:
            inserted = conn.execute(stmt.returning(scores.c.id), rows).all()
        return len(inserted)

    def scores_between(self, start_ts: float, end_ts: float, limit: int = 20_000) -> list[dict]:
        """The newest `limit` results scored in [start_ts, end_ts), as dicts."""
        query = (select(scores).where(scores.c.scored_ts >= start_ts, scores.c.scored_ts < end_ts)
                 .order_by(scores.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count_scores(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(scores)).scalar_one()

    # ---- alerts ------------------------------------------------------
    def get_alert(self, session_id: str, model_version: str) -> dict | None:
        query = select(alerts).where(alerts.c.session_id == session_id,
                                     alerts.c.model_version == model_version)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def create_alert(self, result: ScoreResult, severity: str, state: str, subject: str,
                     now: float | None = None) -> dict:
        """Record an alert for a result, or return the one already recorded for it."""
        ts = time.time() if now is None else now
        row = {"session_id": result.session_id, "model_version": result.model_version,
               "station_id": result.station_id, "site_id": result.site_id, "severity": severity,
               "score": result.score, "threshold": result.threshold, "state": state,
               "attempts": 0, "subject": subject, "result": json.loads(json.dumps(asdict(result))),
               "created_ts": ts, "updated_ts": ts}
        stmt = _insert_ignoring_duplicates(self.engine, alerts, ["session_id", "model_version"])
        with self.engine.begin() as conn:
            conn.execute(stmt, [row])
        return self.get_alert(result.session_id, result.model_version)

    def update_alert(self, alert_id: int, **values: Any) -> None:
        values.setdefault("updated_ts", time.time())
        with self.engine.begin() as conn:
            conn.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))

    def last_sent_ts(self, station_id: str) -> float | None:
        """When the newest delivered alert of this station was delivered."""
        query = select(func.max(alerts.c.delivered_ts)).where(
            alerts.c.station_id == station_id, alerts.c.state == "sent")
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def acknowledge_alert(self, alert_id: int, now: float | None = None) -> bool:
        """Mark an alert acknowledged. Returns False when there is no such alert."""
        ts = time.time() if now is None else now
        with self.engine.begin() as conn:
            done = conn.execute(update(alerts).where(alerts.c.id == alert_id)
                                .values(acknowledged_ts=ts, updated_ts=ts))
        return done.rowcount == 1

    # ---- station alerts ------------------------------------------------
    def save_station_alerts(self, events: Sequence[StationAlertMessage],
                            now: float | None = None) -> int:
        """Insert station alert events in one transaction; a second (alert_id, status) is
        skipped. Returns how many were new."""
        if not events:
            return 0
        stored = time.time() if now is None else now
        stmt = _insert_ignoring_duplicates(self.engine, station_alerts, ["alert_id", "status"])
        with self.engine.begin() as conn:
            inserted = conn.execute(stmt.returning(station_alerts.c.id),
                                    [station_alert_row(e, stored) for e in events]).all()
        return len(inserted)

    def station_alert_events(self, alert_id: str) -> list[dict]:
        """The stored events of one episode, oldest first."""
        query = (select(station_alerts).where(station_alerts.c.alert_id == alert_id)
                 .order_by(station_alerts.c.at_ts, station_alerts.c.id))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def open_station_alerts(self) -> list[dict]:
        """The open episodes: per station and kind, the newest episode, if it has no closed
        event. An older episode left open (its closed event lost) is superseded by a newer
        one. Rows are the episodes' open events, newest first."""
        return open_station_alert_rows(self.engine)

    def get_station_notice(self, alert_id: str, status: str) -> dict | None:
        query = select(station_notices).where(station_notices.c.alert_id == alert_id,
                                              station_notices.c.status == status)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def create_station_notice(self, event: StationAlertMessage, state: str, subject: str,
                              now: float | None = None) -> dict:
        """Record the notice of an event, or return the one already recorded for it."""
        ts = time.time() if now is None else now
        row = {"alert_id": event.alert_id, "status": event.status, "station_id": event.station_id,
               "site_id": event.site_id, "kind": event.kind, "state": state, "attempts": 0,
               "subject": subject, "created_ts": ts, "updated_ts": ts}
        stmt = _insert_ignoring_duplicates(self.engine, station_notices, ["alert_id", "status"])
        with self.engine.begin() as conn:
            conn.execute(stmt, [row])
        return self.get_station_notice(event.alert_id, event.status)

    def update_station_notice(self, notice_id: int, **values: Any) -> None:
        values.setdefault("updated_ts", time.time())
        with self.engine.begin() as conn:
            conn.execute(update(station_notices).where(station_notices.c.id == notice_id)
                         .values(**values))

    def last_station_email_ts(self, station_id: str, kind: str) -> float | None:
        """When the newest emailed opening of this station and kind was delivered."""
        query = select(func.max(station_notices.c.delivered_ts)).where(
            station_notices.c.station_id == station_id, station_notices.c.kind == kind,
            station_notices.c.status == "open", station_notices.c.state == "sent")
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    # ---- dead letters, window reports, retraining ----------------------
    def record_dead_letters(self, queue: str, letters: Iterable[tuple[str, bytes]]) -> None:
        """Keep a readable copy of poison messages: (error, body) pairs."""
        now = time.time()
        rows = [{"queue": queue, "error": err[:2000], "created_ts": now,
                 "body": body[:4000].decode("utf-8", errors="replace")} for err, body in letters]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(dead_letters), rows)

    def save_window_report(self, report: dict) -> None:
        row = {"start_ts": report["start_ts"], "end_ts": report["end_ts"],
               "volume": report["volume"], "anomaly_rate": report.get("anomaly_rate"),
               "report": report}
        with self.engine.begin() as conn:
            conn.execute(insert(window_reports), [row])

    def last_retrain_ts(self) -> float | None:
        query = select(func.max(retrain_triggers.c.created_ts)).where(
            retrain_triggers.c.state == "triggered")
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def record_retrain(self, reason: str, state: str, flow_run_id: str | None = None,
                       error: str | None = None, now: float | None = None) -> None:
        row = {"reason": reason, "state": state, "flow_run_id": flow_run_id, "error": error,
               "created_ts": time.time() if now is None else now}
        with self.engine.begin() as conn:
            conn.execute(insert(retrain_triggers), [row])


def score_row(result: ScoreResult, stored_ts: float) -> dict:
    """The `scores` row of one result (pure)."""
    return {
        "session_id": result.session_id, "model_version": result.model_version,
        "model_name": result.model_name, "feature_version": result.feature_version,
        "station_id": result.station_id, "site_id": result.site_id, "space_id": result.space_id,
        "score": result.score, "threshold": result.threshold, "is_anomaly": result.is_anomaly,
        "scored_ts": result.scored_ts, "stored_ts": stored_ts,
        "connection_ts": result.connection_ts, "kafka_ts": result.kafka_ts,
        "latency_ms": result.latency_ms, "kwh_delivered": result.kwh_delivered,
        "features": result.features, "explanation": result.explanation,
    }


def station_alert_row(event: StationAlertMessage, stored_ts: float) -> dict:
    """The `station_alerts` row of one event (pure)."""
    return {"alert_id": event.alert_id, "status": event.status, "station_id": event.station_id,
            "site_id": event.site_id, "kind": event.kind, "opened_ts": event.opened_ts,
            "at_ts": event.at_ts, "detected_ts": event.detected_ts, "stored_ts": stored_ts,
            "evidence": event.evidence, "metrics": dict(event.metrics), "worker": event.worker}


def open_station_alert_rows(engine: Engine, station_ids: Sequence[str] | None = None) -> list[dict]:
    """`MonitoringStore.open_station_alerts`, optionally for some stations only (the dashboard
    reads it with its own engine)."""
    episode = station_alerts.alias("episode")
    closed = station_alerts.alias("closed")
    newer = station_alerts.alias("newer")
    query = (select(episode)
             .where(episode.c.status == "open",
                    ~exists().where(and_(closed.c.alert_id == episode.c.alert_id,
                                         closed.c.status == "closed")),
                    ~exists().where(and_(newer.c.station_id == episode.c.station_id,
                                         newer.c.kind == episode.c.kind,
                                         newer.c.opened_ts > episode.c.opened_ts)))
             .order_by(episode.c.opened_ts.desc(), episode.c.id.desc()))
    if station_ids is not None:
        query = query.where(episode.c.station_id.in_(list(station_ids)))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
