"""The monitoring store: every score, alert, station alert, live alert, connector snapshot,
dead letter, window report and retraining.

SQLAlchemy Core on SQLite (default, under the state dir) or PostgreSQL (by URL).
Times are epoch seconds (UTC) in float columns, so windows and per-minute
buckets are plain arithmetic on every database. Writes of scores and alerts are
idempotent on (session_id, model_version); station alert events and their email
notices on (alert_id, status); live alert events on (alert_id, status), kept as one row
per episode. A connector snapshot replaces the stored one only when it is newer.

Alert consumers share two tables, so that any number of them can run on one queue:
`alert_claims` says which consumer handles an alert now (a lease, taken over once it runs
out), and `alert_cooldowns` says which alert holds a station's or a connector's cooldown.
Both are taken with one conditional INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING:
the row that comes back says who won, on SQLite (one writer at a time) and on PostgreSQL
(the conflicting row is locked and re-checked).
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
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from pipelines.contracts.connector_status import ConnectorStatusMessage
from pipelines.contracts.live_alert import LiveAlertMessage
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

# one row per live alert episode (contract §5b): its open and its closed event, and its email
live_alerts = Table(
    "live_alerts", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("alert_id", String(300), nullable=False),
    Column("charge_point_id", String(128), nullable=False),
    Column("connector_id", Integer, nullable=False),
    Column("transaction_id", String(64)),
    Column("site_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(8), nullable=False),  # open | closed: the newest event seen
    Column("first_sample_ts", Float, nullable=False),  # charger time of the first telltale
    Column("first_received_ts", Float, nullable=False),  # gateway time it arrived
    Column("opened_ts", Float),  # charger time of the open event (null until it is seen)
    Column("closed_ts", Float),
    Column("evidence", Text, nullable=False),  # the open event's (the closed one's until then)
    Column("metrics", JSON, nullable=False),
    Column("closed_evidence", Text),
    Column("closed_metrics", JSON),
    Column("detected_ts", Float),  # processor clock when it emitted the open event
    Column("closed_detected_ts", Float),
    Column("processor", String(128), nullable=False),
    Column("open_stored_ts", Float),  # null = the open event is not stored (yet)
    Column("closed_stored_ts", Float),
    Column("email_state", String(16)),  # NOTICE_STATES, null = not judged by alerting yet
    Column("email_attempts", Integer, nullable=False, default=0),
    Column("email_error", Text),
    Column("email_subject", Text),
    Column("emailed_ts", Float),  # when the email was delivered
    Column("webhook_state", String(16)),
    UniqueConstraint("alert_id", name="uq_live_alerts_alert"),
    Index("ix_live_alerts_connector_kind", "charge_point_id", "connector_id", "kind",
          "first_sample_ts"),
    Index("ix_live_alerts_status", "status"),
)

# which alert consumer is handling an alert (an anomaly, a station alert episode, a live alert
# episode) right now; holder "" = released. A lease that ran out may be taken by another one.
alert_claims = Table(
    "alert_claims", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("alert_key", String(400), nullable=False),
    Column("holder", String(200), nullable=False),
    Column("lease_until_ts", Float, nullable=False),
    Column("claimed_ts", Float, nullable=False),
    Column("takeovers", Integer, nullable=False, default=0),  # claims taken from a lapsed lease
    UniqueConstraint("alert_key", name="uq_alert_claims_key"),
)

# the alert that started each cooldown (per station, station and kind, or connector and kind)
alert_cooldowns = Table(
    "alert_cooldowns", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("cooldown_key", String(400), nullable=False),
    Column("holder", String(400), nullable=False),  # the alert's key
    Column("since_ts", Float, nullable=False),  # when it was claimed, then when it was delivered
    UniqueConstraint("cooldown_key", name="uq_alert_cooldowns_key"),
)

# the newest snapshot of each connector (contract §5c), for the live view
connectors = Table(
    "connectors", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("charge_point_id", String(128), nullable=False),
    Column("connector_id", Integer, nullable=False),
    Column("site_id", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("transaction_id", String(64)),
    Column("power_w", Float),
    Column("energy_wh", Float),
    Column("current_a", Float),
    Column("current_offered_a", Float),
    Column("temperature_c", Float),
    Column("error_code", String(64), nullable=False),
    Column("last_sample_ts", Float, nullable=False),
    Column("updated_ts", Float, nullable=False),
    Column("open_alerts", JSON, nullable=False),
    Column("processor", String(128), nullable=False),
    Column("stored_ts", Float, nullable=False),
    UniqueConstraint("charge_point_id", "connector_id", name="uq_connectors_connector"),
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
    create_schema(engine)
    return engine


def create_schema(engine: Engine, tries: int = 5) -> None:
    """Create the missing tables and indexes. Consumers started together on a new database
    race to create the same table: the loser's CREATE fails ("already exists"), and trying
    again finds the table there."""
    for attempt in range(tries):
        try:
            metadata.create_all(engine)
            for index in scores.indexes:  # create_all adds no index to a table that exists
                index.create(engine, checkfirst=True)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _upsert(engine: Engine, table: Table):
    """The dialect's INSERT, which has `on_conflict_do_nothing` and `on_conflict_do_update`."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(engine.dialect.name)
    if dialect is None:
        raise ValueError(f"monitoring store supports sqlite and postgresql, not {engine.dialect.name}")
    return dialect.insert(table)


def _insert_ignoring_duplicates(engine: Engine, table: Table, index: list[str]):
    return _upsert(engine, table).on_conflict_do_nothing(index_elements=index)


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

    # ---- live alerts ------------------------------------------------------
    def save_live_alerts(self, events: Sequence[LiveAlertMessage], now: float | None = None) -> int:
        """Store live alert events in one transaction, one row per episode. A second
        (alert_id, status) changes nothing; a closed event seen before its open event makes
        the row, and the open event fills in its part later. Returns how many were new."""
        if not events:
            return 0
        stored = time.time() if now is None else now
        new = 0
        with self.engine.begin() as conn:
            for event in events:  # one by one: an open and a closed event may share a batch
                new += conn.execute(_live_alert_upsert(self.engine, event, stored)).first() \
                    is not None
        return new

    def get_live_alert(self, alert_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(live_alerts).where(live_alerts.c.alert_id == alert_id)).first()
        return dict(row._mapping) if row else None

    def live_alert_rows(self, since_ts: float | None = None) -> list[dict]:
        """Every episode (whose first telltale sample is at or after `since_ts`), oldest first:
        what the demo and the benchmarks read the delays from (`emailed_ts` or `detected_ts`
        minus `first_received_ts`)."""
        query = select(live_alerts).order_by(live_alerts.c.first_sample_ts, live_alerts.c.id)
        if since_ts is not None:
            query = query.where(live_alerts.c.first_sample_ts >= since_ts)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def open_live_alerts(self) -> list[dict]:
        """The open episodes, newest first (see `open_live_alert_rows`)."""
        return open_live_alert_rows(self.engine)

    def claim_live_email(self, alert_id: str, state: str, subject: str,
                         now: float | None = None) -> bool:
        """Record the alerting decision of an episode (`pending`, `suppressed`...) once.
        Returns False when it was already decided (by a redelivery or another consumer)."""
        query = (update(live_alerts)
                 .where(live_alerts.c.alert_id == alert_id, live_alerts.c.email_state.is_(None))
                 .values(email_state=state, email_subject=subject, email_attempts=0))
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def update_live_email(self, alert_id: str, **values: Any) -> None:
        """Update the email of an episode. Takes the delivery loop's names: `state`,
        `attempts`, `last_error`, `delivered_ts`, `webhook_state`."""
        names = {"state": "email_state", "attempts": "email_attempts",
                 "last_error": "email_error", "delivered_ts": "emailed_ts"}
        columns = {names.get(key, key): value for key, value in values.items()}
        with self.engine.begin() as conn:
            conn.execute(update(live_alerts).where(live_alerts.c.alert_id == alert_id)
                         .values(**columns))

    def last_live_email_ts(self, charge_point_id: str, connector_id: int,
                           kind: str) -> float | None:
        """When the newest emailed live alert of this connector and kind was delivered."""
        query = select(func.max(live_alerts.c.emailed_ts)).where(
            live_alerts.c.charge_point_id == charge_point_id,
            live_alerts.c.connector_id == connector_id, live_alerts.c.kind == kind,
            live_alerts.c.email_state == "sent")
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    # ---- claims and cooldowns shared by the alert consumers -----------------
    def claim_alert(self, alert_key: str, holder: str, now: float, lease_s: float) -> bool:
        """Take (or renew) the claim on an alert until `now + lease_s`. Wins when the alert is
        unclaimed, released, already this holder's, or its lease ran out (a takeover, counted).
        Returns whether `holder` now has it."""
        stmt = _upsert(self.engine, alert_claims).values(
            alert_key=alert_key, holder=holder, lease_until_ts=now + lease_s, claimed_ts=now,
            takeovers=0)
        held, new = alert_claims.c, stmt.excluded
        free = or_(held.holder == new.holder, held.holder == "")
        stmt = stmt.on_conflict_do_update(
            index_elements=["alert_key"],
            set_={"holder": new.holder, "lease_until_ts": new.lease_until_ts,
                  "claimed_ts": case((held.holder == new.holder, held.claimed_ts),
                                     else_=new.claimed_ts),
                  "takeovers": held.takeovers + case((free, 0), else_=1)},
            where=or_(free, held.lease_until_ts <= new.claimed_ts))
        with self.engine.begin() as conn:
            return conn.execute(stmt.returning(alert_claims.c.id)).first() is not None

    def release_alert(self, alert_key: str, holder: str) -> None:
        """Give the claim up (if `holder` still has it), so a redelivery need not wait."""
        with self.engine.begin() as conn:
            conn.execute(update(alert_claims)
                         .where(alert_claims.c.alert_key == alert_key,
                                alert_claims.c.holder == holder)
                         .values(holder="", lease_until_ts=0.0))

    def take_cooldown(self, cooldown_key: str, holder: str, now: float,
                      cooldown_s: float) -> bool:
        """Start the cooldown `cooldown_key` for the alert `holder`, unless another alert started
        it less than `cooldown_s` ago. Taking it again for the same alert wins (a redelivery
        after a crash decides as before). Returns whether `holder` has it."""
        stmt = _upsert(self.engine, alert_cooldowns).values(
            cooldown_key=cooldown_key, holder=holder, since_ts=now)
        held, new = alert_cooldowns.c, stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["cooldown_key"],
            set_={"holder": new.holder,
                  "since_ts": case((held.holder == new.holder, held.since_ts),
                                   else_=new.since_ts)},
            where=or_(held.holder == new.holder, held.since_ts <= new.since_ts - cooldown_s))
        with self.engine.begin() as conn:
            return conn.execute(stmt.returning(alert_cooldowns.c.id)).first() is not None

    def restart_cooldown(self, cooldown_key: str, holder: str, delivered_ts: float) -> None:
        """The alert holding the cooldown was delivered: the cooldown counts from then."""
        with self.engine.begin() as conn:
            conn.execute(update(alert_cooldowns)
                         .where(alert_cooldowns.c.cooldown_key == cooldown_key,
                                alert_cooldowns.c.holder == holder)
                         .values(since_ts=delivered_ts))

    def release_cooldown(self, cooldown_key: str, holder: str) -> None:
        """The alert holding the cooldown was never delivered (dead-lettered): the next alert
        may be emailed. The cooldown before it had run out, or this one could not have started."""
        with self.engine.begin() as conn:
            conn.execute(delete(alert_cooldowns)
                         .where(alert_cooldowns.c.cooldown_key == cooldown_key,
                                alert_cooldowns.c.holder == holder))

    # ---- connector snapshots ----------------------------------------------
    def save_connector_statuses(self, snapshots: Sequence[ConnectorStatusMessage],
                                now: float | None = None) -> int:
        """Keep the newest snapshot per connector, in one transaction: a snapshot replaces
        the stored one only when its `updated_ts` is later, so a redelivered or late one
        changes nothing. Returns how many snapshots were applied."""
        newest = newest_snapshots(snapshots)
        if not newest:
            return 0
        stored = time.time() if now is None else now
        stmt = _upsert(self.engine, connectors)
        replaced = {c.name: stmt.excluded[c.name] for c in connectors.columns if c.name != "id"}
        stmt = stmt.on_conflict_do_update(
            index_elements=["charge_point_id", "connector_id"], set_=replaced,
            where=connectors.c.updated_ts < stmt.excluded.updated_ts)
        with self.engine.begin() as conn:
            applied = conn.execute(stmt.returning(connectors.c.id),
                                   [connector_row(s, stored) for s in newest]).all()
        return len(applied)

    def connector_rows(self) -> list[dict]:
        """Every connector's newest snapshot, by charge point and connector."""
        query = select(connectors).order_by(connectors.c.charge_point_id,
                                            connectors.c.connector_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

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


def live_alert_row(event: LiveAlertMessage, stored_ts: float) -> dict:
    """The `live_alerts` row of an episode as far as this one event tells it (pure)."""
    row = {"alert_id": event.alert_id, "charge_point_id": event.charge_point_id,
           "connector_id": event.connector_id, "transaction_id": event.transaction_id,
           "site_id": event.site_id, "kind": event.kind, "status": event.status,
           "first_sample_ts": event.first_sample_ts,
           "first_received_ts": event.first_received_ts, "evidence": event.evidence,
           "processor": event.processor, "email_attempts": 0}
    if event.is_open:
        return {**row, "opened_ts": event.at_ts, "metrics": dict(event.metrics),
                "detected_ts": event.detected_ts, "open_stored_ts": stored_ts}
    return {**row, "metrics": {}, "closed_ts": event.at_ts, "closed_evidence": event.evidence,
            "closed_metrics": dict(event.metrics), "closed_detected_ts": event.detected_ts,
            "closed_stored_ts": stored_ts}


OPEN_PART = ("transaction_id", "opened_ts", "evidence", "metrics", "detected_ts", "processor",
             "open_stored_ts")
CLOSED_PART = ("status", "closed_ts", "closed_evidence", "closed_metrics", "closed_detected_ts",
               "closed_stored_ts")


def _live_alert_upsert(engine: Engine, event: LiveAlertMessage, stored_ts: float):
    """Insert the episode, or add this event's part to it if that part is not there yet.
    RETURNING gives a row only when something was written."""
    stmt = _upsert(engine, live_alerts).values(live_alert_row(event, stored_ts))
    part, marker = ((OPEN_PART, live_alerts.c.open_stored_ts) if event.is_open
                    else (CLOSED_PART, live_alerts.c.closed_stored_ts))
    return stmt.on_conflict_do_update(
        index_elements=["alert_id"], set_={name: stmt.excluded[name] for name in part},
        where=marker.is_(None)).returning(live_alerts.c.id)


def open_live_alert_rows(engine: Engine) -> list[dict]:
    """The open live alert episodes, newest first: no closed event, and no newer episode of
    the same connector and kind (which means its close was lost)."""
    episode = live_alerts.alias("episode")
    newer = live_alerts.alias("newer")
    query = (select(episode)
             .where(episode.c.status == "open",
                    ~exists().where(and_(newer.c.charge_point_id == episode.c.charge_point_id,
                                         newer.c.connector_id == episode.c.connector_id,
                                         newer.c.kind == episode.c.kind,
                                         newer.c.first_sample_ts > episode.c.first_sample_ts)))
             .order_by(episode.c.first_sample_ts.desc(), episode.c.id.desc()))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def newest_snapshots(snapshots: Iterable[ConnectorStatusMessage]) -> list[ConnectorStatusMessage]:
    """The newest snapshot (by `updated_ts`) of each connector among these, in first-seen
    order (pure). One statement may not touch a row twice, so a batch is reduced first."""
    newest: dict[tuple[str, int], ConnectorStatusMessage] = {}
    for snapshot in snapshots:
        key = (snapshot.charge_point_id, snapshot.connector_id)
        if key not in newest or snapshot.updated_ts > newest[key].updated_ts:
            newest[key] = snapshot
    return list(newest.values())


def connector_row(snapshot: ConnectorStatusMessage, stored_ts: float) -> dict:
    """The `connectors` row of one snapshot (pure)."""
    return {"charge_point_id": snapshot.charge_point_id, "connector_id": snapshot.connector_id,
            "site_id": snapshot.site_id, "state": snapshot.state,
            "transaction_id": snapshot.transaction_id, "power_w": snapshot.power_w,
            "energy_wh": snapshot.energy_wh, "current_a": snapshot.current_a,
            "current_offered_a": snapshot.current_offered_a,
            "temperature_c": snapshot.temperature_c, "error_code": snapshot.error_code,
            "last_sample_ts": snapshot.last_sample_ts, "updated_ts": snapshot.updated_ts,
            "open_alerts": list(snapshot.open_alerts), "processor": snapshot.processor,
            "stored_ts": stored_ts}
