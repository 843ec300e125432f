"""Read models of the dashboard: small, indexed queries on the monitoring store.

Every function takes an Engine and returns plain JSON-ready data. Reads never
lock writers out (SQLite runs in WAL mode; PostgreSQL uses MVCC).
"""

from __future__ import annotations

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.engine import Engine

from pipelines.data.features import readable_explanation
from pipelines.scores.store import alerts, dead_letters, scores, window_reports

FEED_COLUMNS = (scores.c.id, scores.c.session_id, scores.c.station_id, scores.c.site_id,
                scores.c.score, scores.c.threshold, scores.c.is_anomaly, scores.c.scored_ts,
                scores.c.kwh_delivered, scores.c.model_version, scores.c.latency_ms,
                scores.c.explanation)


def feed(engine: Engine, after_id: int = 0, limit: int = 50) -> list[dict]:
    """The newest scored sessions with id > after_id, newest first."""
    query = (select(*FEED_COLUMNS).where(scores.c.id > after_id)
             .order_by(scores.c.id.desc()).limit(limit))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        row["explanation"] = readable_explanation(row["explanation"] or [])
    return rows


def series(engine: Engine, now: float, minutes: int = 60, bucket_s: int = 60) -> list[dict]:
    """Sessions and anomalies per bucket over the last `minutes`, oldest first, gaps filled."""
    first = int((now - minutes * 60) // bucket_s)
    bucket = cast(scores.c.scored_ts / bucket_s, Integer)  # scored_ts > 0: truncation = floor
    query = (select(bucket.label("b"), func.count().label("n"),
                    func.sum(case((scores.c.is_anomaly, 1), else_=0)).label("a"))
             .where(scores.c.scored_ts >= first * bucket_s).group_by(bucket))
    with engine.connect() as conn:
        counts = {int(r.b): (int(r.n), int(r.a or 0)) for r in conn.execute(query)}
    out = []
    for b in range(first, int(now // bucket_s) + 1):
        n, a = counts.get(b, (0, 0))
        out.append({"ts": b * bucket_s, "volume": n, "anomalies": a,
                    "rate": a / n if n else None})
    return out


def totals(engine: Engine, now: float) -> dict:
    """Counts for the header cards: all time, last hour, alerts by state, dead letters."""
    hour = now - 3600
    anomaly = func.sum(case((scores.c.is_anomaly, 1), else_=0))
    recent = scores.c.scored_ts >= hour
    with engine.connect() as conn:
        all_n, all_a = conn.execute(select(func.count(), anomaly)).one()
        hour_n, hour_a = conn.execute(select(func.count(), anomaly).where(recent)).one()
        by_state = dict(conn.execute(select(alerts.c.state, func.count())
                                     .group_by(alerts.c.state)).all())
        unacked = conn.execute(select(func.count()).where(
            alerts.c.acknowledged_ts.is_(None), alerts.c.state != "suppressed")).scalar_one()
        letters = dict(conn.execute(select(dead_letters.c.queue, func.count())
                                    .group_by(dead_letters.c.queue)).all())
    return {"sessions": all_n, "anomalies": int(all_a or 0),
            "sessions_hour": hour_n, "anomalies_hour": int(hour_a or 0),
            "anomaly_rate_hour": (hour_a or 0) / hour_n if hour_n else None,
            "alerts": by_state, "alerts_unacknowledged": unacked, "dead_letters": letters}


def stations(engine: Engine, now: float, hours: int = 24, limit: int = 30) -> list[dict]:
    """Per station over the last `hours`: sessions, anomalies, rate and its last alert."""
    since = now - hours * 3600
    anomaly = func.sum(case((scores.c.is_anomaly, 1), else_=0))
    query = (select(scores.c.station_id, scores.c.site_id, func.count().label("n"),
                    anomaly.label("a"), func.max(scores.c.scored_ts).label("last"))
             .where(scores.c.scored_ts >= since)
             .group_by(scores.c.station_id, scores.c.site_id)
             .order_by(anomaly.desc(), func.count().desc()).limit(limit))
    last_alert = (select(alerts.c.station_id, alerts.c.created_ts, alerts.c.severity,
                         alerts.c.state, alerts.c.id)
                  .where(alerts.c.created_ts >= since, alerts.c.state != "suppressed")
                  .order_by(alerts.c.id.desc()))
    suppressed = (select(alerts.c.station_id, func.count())
                  .where(alerts.c.created_ts >= since, alerts.c.state == "suppressed")
                  .group_by(alerts.c.station_id))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        latest: dict[str, dict] = {}
        for r in conn.execute(last_alert):
            latest.setdefault(r.station_id, {"ts": r.created_ts, "severity": r.severity,
                                             "state": r.state, "id": r.id})
        quiet = dict(conn.execute(suppressed).all())
    return [{"station_id": r.station_id, "site_id": r.site_id, "sessions": r.n,
             "anomalies": int(r.a or 0), "rate": (r.a or 0) / r.n, "last_seen": r.last,
             "last_alert": latest.get(r.station_id), "suppressed": quiet.get(r.station_id, 0)}
            for r in rows]


def alert_list(engine: Engine, limit: int = 40) -> list[dict]:
    """Newest alerts first, with their delivery state and acknowledgement."""
    cols = (alerts.c.id, alerts.c.session_id, alerts.c.station_id, alerts.c.site_id,
            alerts.c.severity, alerts.c.score, alerts.c.threshold, alerts.c.state,
            alerts.c.attempts, alerts.c.last_error, alerts.c.created_ts, alerts.c.delivered_ts,
            alerts.c.acknowledged_ts, alerts.c.model_version)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in
                conn.execute(select(*cols).order_by(alerts.c.id.desc()).limit(limit))]


def latest_window(engine: Engine) -> dict | None:
    """The newest window report (health, drift, retraining decision), if any."""
    query = select(window_reports.c.report).order_by(window_reports.c.id.desc()).limit(1)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one_or_none()
