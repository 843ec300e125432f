"""Read models of the dashboard: small, indexed queries on the monitoring store.

Every function takes an Engine and returns plain JSON-ready data. Reads never
lock writers out (SQLite runs in WAL mode; PostgreSQL uses MVCC).
"""

from __future__ import annotations

from sqlalchemy import Integer, and_, case, cast, func, select
from sqlalchemy.engine import Engine

from pipelines.contracts.station_alert import KINDS
from pipelines.data.features import readable_explanation
from pipelines.scores.store import (
    alerts,
    connectors,
    dead_letters,
    live_alerts,
    open_live_alert_rows,
    open_station_alert_rows,
    scores,
    station_notices,
    window_reports,
)

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


# ---- the station view ---------------------------------------------------------------
DAY_S = 86_400.0
RECENT_DAYS = 7  # observed: sessions in the last week
HISTORY_DAYS = 28  # expected: the station's own rate over the four weeks before it
MIN_HISTORY_DAYS = 7  # less history than this gives no expectation
HEALTH_ORDER = (*KINDS, "ok")  # worst first: silent, failing, degraded, ok


def stream_time(engine: Engine, now: float) -> float:
    """The station view's clock: the newest session's connection time, never after `now`.

    Live, that is about now; during a replay of old sessions it is the replay's time,
    so "the last 7 days" are the stream's last 7 days.
    """
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(scores.c.connection_ts))).scalar_one_or_none()
    return now if newest is None else min(now, newest)


def expected_sessions(history_sessions: int, first_seen: float | None, recent_start: float,
                      days: float = RECENT_DAYS) -> tuple[float | None, float]:
    """Sessions expected in `days` from the station's own rate over the history window
    before `recent_start` (pure). Returns (expected or None, days of history used); a
    station younger than the window is judged on the part it covers, and on nothing when
    that is under `MIN_HISTORY_DAYS`."""
    history_start = recent_start - HISTORY_DAYS * DAY_S
    if first_seen is None or first_seen >= recent_start:
        return None, 0.0
    covered = (recent_start - max(first_seen, history_start)) / DAY_S
    if covered < MIN_HISTORY_DAYS:
        return None, covered
    return history_sessions * days / covered, covered


def _health(open_kinds: list[str]) -> str:
    return next((kind for kind in KINDS if kind in open_kinds), "ok")


def _sort_key(row: dict) -> tuple:
    expected = row["expected_7d"]
    ratio = row["observed_7d"] / expected if expected else float("inf")
    return HEALTH_ORDER.index(row["health"]), ratio, row["station_id"]


def _station_counts(engine: Engine, as_of: float) -> list:
    recent_start = as_of - RECENT_DAYS * DAY_S
    history_start = recent_start - HISTORY_DAYS * DAY_S
    when, session = scores.c.connection_ts, scores.c.session_id
    in_recent = and_(when > recent_start, when <= as_of)
    in_history = and_(when > history_start, when <= recent_start)
    query = (select(scores.c.station_id, func.max(scores.c.site_id).label("site_id"),
                    func.min(when).label("first"), func.max(when).label("last"),
                    func.count(func.distinct(case((in_recent, session)))).label("recent"),
                    func.count(func.distinct(case((in_history, session)))).label("history"))
             .where(when.is_not(None)).group_by(scores.c.station_id))
    with engine.connect() as conn:
        return conn.execute(query).all()


def power_series(engine: Engine, station_ids: list[str], sessions: int = 20) -> dict[str, list]:
    """Each station's newest `sessions` sessions, oldest first: connection time, average kW
    (the `avg_kw` model input) and whether it was an anomaly."""
    if not station_ids:
        return {}
    newest_first = func.row_number().over(
        partition_by=scores.c.station_id,
        order_by=(scores.c.connection_ts.desc(), scores.c.id.desc())).label("n")
    ranked = (select(scores.c.station_id, scores.c.session_id, scores.c.connection_ts,
                     scores.c.features, scores.c.is_anomaly, newest_first)
              .where(scores.c.station_id.in_(station_ids), scores.c.connection_ts.is_not(None))
              .subquery())
    query = select(ranked).where(ranked.c.n <= 2 * sessions).order_by(ranked.c.n)
    out: dict[str, list] = {station: [] for station in station_ids}
    seen: set[tuple[str, str]] = set()  # a session scored by two model versions counts once
    with engine.connect() as conn:
        for r in conn.execute(query):
            kw = (r.features or {}).get("avg_kw")
            points = out[r.station_id]
            if (r.station_id, r.session_id) in seen or kw is None or len(points) >= sessions:
                continue
            seen.add((r.station_id, r.session_id))
            points.append({"ts": r.connection_ts, "kw": kw, "anomaly": bool(r.is_anomaly)})
    return {station: points[::-1] for station, points in out.items()}


def _open_alerts_by_station(engine: Engine) -> dict[str, list[dict]]:
    rows = open_station_alert_rows(engine)
    ids = [r["alert_id"] for r in rows]
    notices: dict[str, str] = {}
    if ids:
        query = select(station_notices.c.alert_id, station_notices.c.state).where(
            station_notices.c.status == "open", station_notices.c.alert_id.in_(ids))
        with engine.connect() as conn:
            notices = dict(conn.execute(query).all())
    by_station: dict[str, list[dict]] = {}
    for r in rows:
        by_station.setdefault(r["station_id"], []).append({
            "alert_id": r["alert_id"], "kind": r["kind"], "site_id": r["site_id"],
            "opened_ts": r["opened_ts"], "at_ts": r["at_ts"], "evidence": r["evidence"],
            "metrics": r["metrics"], "notice": notices.get(r["alert_id"])})
    for found in by_station.values():
        found.sort(key=lambda a: KINDS.index(a["kind"]))
    return by_station


def station_view(engine: Engine, now: float, limit: int = 500, spark_sessions: int = 20) -> dict:
    """Every station's health: its open station alerts, last session, sessions observed in
    the last 7 days against the number its own previous 4 weeks predict, and its recent
    power. Unhealthy stations first (silent, failing, degraded), then the ones furthest
    below their expectation; at most `limit` stations, with counts over all of them."""
    as_of = stream_time(engine, now)
    recent_start = as_of - RECENT_DAYS * DAY_S
    open_alerts = _open_alerts_by_station(engine)
    rows: dict[str, dict] = {}
    for r in _station_counts(engine, as_of):
        expected, history = expected_sessions(r.history, r.first, recent_start)
        rows[r.station_id] = {"station_id": r.station_id, "site_id": r.site_id,
                              "last_session_ts": r.last, "observed_7d": r.recent,
                              "expected_7d": expected, "history_days": history}
    for station, found in open_alerts.items():  # alerted, but no session stored (yet)
        rows.setdefault(station, {"station_id": station, "site_id": found[0]["site_id"],
                                  "last_session_ts": None, "observed_7d": 0,
                                  "expected_7d": None, "history_days": 0.0})
    for station, row in rows.items():
        row["open_alerts"] = open_alerts.get(station, [])
        row["health"] = _health([a["kind"] for a in row["open_alerts"]])
    ordered = sorted(rows.values(), key=_sort_key)
    shown = ordered[:limit]
    power = power_series(engine, [r["station_id"] for r in shown], spark_sessions)
    for row in shown:
        row["power"] = power.get(row["station_id"], [])
    health = {state: 0 for state in HEALTH_ORDER}
    for row in ordered:
        health[row["health"]] += 1
    return {"now": now, "as_of": as_of, "recent_days": RECENT_DAYS, "history_days": HISTORY_DAYS,
            "total": len(ordered), "health": health, "stations": shown}


# ---- the live view ------------------------------------------------------------------
# a connector in one of these states is expected to send samples every few seconds
ACTIVE_STATES = ("Charging", "SuspendedEV", "SuspendedEVSE")


def is_offline(state: str | None, transaction_id: str | None, age_s: float | None,
               offline_after_s: float) -> bool:
    """Offline: the processor says so, or a connector in a transaction has sent nothing for
    longer than `offline_after_s` (pure). An idle connector sends nothing for hours, so its
    age alone says nothing."""
    if state == "Offline":
        return True
    active = transaction_id is not None or state in ACTIVE_STATES
    return active and age_s is not None and age_s > offline_after_s


def _connector_rank(row: dict) -> tuple:
    """Alerting first, then offline, then in a transaction, then idle."""
    busy = row["transaction_id"] is not None or row["state"] in ACTIVE_STATES
    alerting = row["open_alerts"] or row["reported_alerts"]
    return (not alerting, not row["offline"], not busy, row["charge_point_id"],
            row["connector_id"])


def _alert_item(row: dict, is_open: bool) -> dict:
    received = row["first_received_ts"]

    def since_arrival(ts: float | None) -> float | None:
        return None if ts is None else ts - received

    status = "open" if is_open else ("closed" if row["status"] == "closed" else "superseded")
    return {"alert_id": row["alert_id"], "connector": f"{row['charge_point_id']}/{row['connector_id']}",
            "charge_point_id": row["charge_point_id"], "connector_id": row["connector_id"],
            "site_id": row["site_id"], "kind": row["kind"], "status": status,
            "transaction_id": row["transaction_id"], "first_sample_ts": row["first_sample_ts"],
            "first_received_ts": received, "opened_ts": row["opened_ts"],
            "closed_ts": row["closed_ts"], "evidence": row["evidence"],
            "closed_evidence": row["closed_evidence"], "metrics": row["metrics"],
            "detected_ts": row["detected_ts"], "email_state": row["email_state"],
            "emailed_ts": row["emailed_ts"],
            "detection_delay_s": since_arrival(row["detected_ts"]),
            "email_delay_s": since_arrival(row["emailed_ts"])}


def live_alert_list(engine: Engine, limit: int = 100) -> list[dict]:
    """Every open live alert (newest first), then the newest of the others, `limit` in all
    (never fewer than the open ones). An episode left open by a lost close event, with a
    newer episode of the same connector and fault, is `superseded`."""
    open_rows = open_live_alert_rows(engine)
    open_ids = {r["alert_id"] for r in open_rows}
    recent = (select(live_alerts).order_by(live_alerts.c.first_sample_ts.desc(),
                                           live_alerts.c.id.desc()).limit(limit))
    with engine.connect() as conn:
        others = [dict(r._mapping) for r in conn.execute(recent)
                  if r.alert_id not in open_ids]
    items = [_alert_item(r, True) for r in open_rows]
    return items + [_alert_item(r, False) for r in others[:max(0, limit - len(items))]]


def live_view(engine: Engine, now: float, offline_after_s: float, limit: int = 1000,
              alert_limit: int = 100) -> dict:
    """Every connector's newest snapshot (state, power, energy this session, when its last
    sample arrived, whether it is offline, its open live alerts) and the live alerts.
    Alerting connectors first, then offline ones, then those in a transaction; at most
    `limit` connectors, with counts over all of them."""
    alerts = live_alert_list(engine, alert_limit)
    by_connector: dict[tuple[str, int], list[dict]] = {}
    for alert in alerts:
        if alert["status"] == "open":
            by_connector.setdefault((alert["charge_point_id"], alert["connector_id"]), []).append(
                {key: alert[key] for key in ("alert_id", "kind", "evidence", "first_sample_ts")})
    with engine.connect() as conn:
        snapshots = [dict(r._mapping) for r in conn.execute(select(connectors))]
    rows = []
    for snap in snapshots:
        age = now - snap["last_sample_ts"]
        rows.append({
            "connector": f"{snap['charge_point_id']}/{snap['connector_id']}",
            **{key: snap[key] for key in (
                "charge_point_id", "connector_id", "site_id", "state", "transaction_id",
                "power_w", "energy_wh", "current_a", "current_offered_a", "temperature_c",
                "error_code", "last_sample_ts", "updated_ts")},
            "age_s": age,
            "offline": is_offline(snap["state"], snap["transaction_id"], age, offline_after_s),
            "reported_alerts": snap["open_alerts"],
            "open_alerts": by_connector.pop((snap["charge_point_id"], snap["connector_id"]), [])})
    for (charge_point, connector), found in by_connector.items():  # alerted, no snapshot yet
        alert = next(a for a in alerts if a["alert_id"] == found[0]["alert_id"])
        rows.append({"connector": f"{charge_point}/{connector}", "charge_point_id": charge_point,
                     "connector_id": connector, "site_id": alert["site_id"], "state": None,
                     "transaction_id": alert["transaction_id"], "power_w": None,
                     "energy_wh": None, "current_a": None, "current_offered_a": None,
                     "temperature_c": None, "error_code": "", "last_sample_ts": None,
                     "updated_ts": None, "age_s": None, "offline": False,
                     "reported_alerts": [], "open_alerts": found})
    rows.sort(key=_connector_rank)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"] or "unknown"] = states.get(row["state"] or "unknown", 0) + 1
    live_power = [r["power_w"] for r in rows if r["power_w"] is not None and not r["offline"]]
    return {"now": now, "offline_after_s": offline_after_s, "total": len(rows),
            "counts": {"connectors": len(rows), "states": states,
                       "offline": sum(r["offline"] for r in rows),
                       "in_transaction": sum(r["transaction_id"] is not None for r in rows),
                       "alerting": sum(bool(r["open_alerts"]) for r in rows),
                       "open_alerts": sum(a["status"] == "open" for a in alerts),
                       "power_w": sum(live_power)},
            "connectors": rows[:limit], "alerts": alerts}
