"""Fixtures of the dashboard tests: a private store, queues, SMTP sink, a served app, and a
fleet of stations with a known health."""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
import uvicorn
from pydantic import SecretStr

from dashboard import queries
from evguard.services.process import free_port, wait_until
from pipelines.contracts.score_result import parse_score_result
from pipelines.contracts.station_alert import StationAlertMessage, station_alert_id
from pipelines.scores.store import MonitoringStore
from pipelines.settings import Settings
from tests.support.queues import consumer_queues


@pytest.fixture(scope="session")
def dash_mlflow_uri(tmp_path_factory) -> str:
    """One sqlite MLflow store for the dashboard tests (creating one costs seconds);
    each test registers its own uuid-named model in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('dash-mlflow')}/mlflow.db"


@pytest.fixture
def dash_settings(rabbit_settings: Settings, tmp_path, dash_mlflow_uri) -> Settings:
    settings = rabbit_settings.model_copy(update={
        "state_dir": tmp_path / "state",
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "mlflow_tracking_uri": dash_mlflow_uri,
        "model_name": f"ev-session-anomaly-{uuid.uuid4().hex[:8]}",
        "dashboard_port": free_port(),
        "smtp_port": free_port(),
        "metrics_port": free_port(),
        "monitor_window_s": 3600,
        "monitor_min_volume": 20,
    })
    with consumer_queues(settings) as settings:
        yield settings


def with_auth(settings: Settings, **values: str) -> Settings:
    """These settings with dashboard credentials, on a port of their own."""
    secret = {k: SecretStr(v) for k, v in values.items()
              if k in ("dashboard_token", "dashboard_basic_password_hash")}
    return settings.model_copy(update={**values, **secret, "dashboard_port": free_port()})


@contextmanager
def serve_dashboard(settings: Settings, host: str = "127.0.0.1"):
    """The dashboard app for these settings on a real uvicorn server at `host`; yields its
    base URL."""
    from dashboard.app import create_app

    config = uvicorn.Config(create_app(settings, champion_refresh_s=2.0), host=host,
                            port=settings.dashboard_port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 15)
    yield f"http://{host}:{settings.dashboard_port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def served(dash_settings):
    """The dashboard app on a real uvicorn server; yields its base URL."""
    with serve_dashboard(dash_settings) as url:
        yield url


class Alerts:
    """Sent score alerts in the dashboard's store, and whether each was acknowledged."""

    def __init__(self, store: MonitoringStore, kit) -> None:
        self.store, self.kit = store, kit

    def open(self, station: str = "CA-9") -> int:
        result = parse_score_result(json.dumps(self.kit.score_message(
            station=station, score=0.95, scored_ts=time.time() - 60)))
        self.store.save_scores([result])
        return self.store.create_alert(result, "critical", "sent", "subject")["id"]

    def acknowledged(self, alert_id: int) -> bool:
        alert = next(a for a in queries.alert_list(self.store.engine) if a["id"] == alert_id)
        return alert["acknowledged_ts"] is not None


@pytest.fixture
def alerts(dash_settings, kit):
    store = MonitoringStore(dash_settings.monitoring_db)
    yield Alerts(store, kit)
    store.close()


@pytest.fixture
def alias_champion(dash_settings, tmp_path):
    """A registry entry (run metrics and tags, no model) aliased `champion`, its threshold
    re-calibrated by monitoring: what the dashboard reads of a champion."""

    def register() -> None:
        from pipelines.models.registry import CHAMPION, mlflow_client, record_calibration

        client = mlflow_client(dash_settings)
        experiment = client.create_experiment(f"dashboard-{dash_settings.model_name}",
                                              artifact_location=(tmp_path / "art").as_uri())
        run = client.create_run(experiment)
        for name, value in {"pr_auc": 0.81, "recall_at_budget": 0.74, "roc_auc": 0.93,
                            "threshold": 0.62}.items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id)
        client.create_registered_model(dash_settings.model_name)
        (tmp_path / "model").mkdir()
        version = client.create_model_version(dash_settings.model_name,
                                              source=str(tmp_path / "model"),
                                              run_id=run.info.run_id)
        client.set_model_version_tag(dash_settings.model_name, version.version, "decision_reason",
                                     "first valid model: no champion yet")
        record_calibration(dash_settings, version.version, 0.71,
                           {"window": "5000", "reason": "2.4% of the window alerted"})
        # aliased last: the dashboard polls, and must not catch a champion without its tags
        client.set_registered_model_alias(dash_settings.model_name, CHAMPION, version.version)

    return register


@dataclass(frozen=True)
class Fleet:
    """Stations with a known health, as score results and station alert events."""

    now: float
    scores: list[dict]
    events: list[StationAlertMessage]

    def closing(self, station: str, kind: str) -> StationAlertMessage:
        """The closed event of a station's open episode of this kind."""
        opened = next(e for e in self.events if e.station_id == station and e.kind == kind
                      and e.is_open)
        return replace(opened, status="closed", at_ts=self.now, detected_ts=self.now,
                       evidence="sessions are back at the usual rate")


@pytest.fixture
def fleet(kit) -> Fleet:
    """Six stations, one session a day each unless said otherwise (connection = scored - 3 h):
    - CA-OK: every day for 36 days;
    - CA-SILENT: every day, none in the last 5 days; an open `silent` alert;
    - CA-SLOW: every day, power from 6.6 kW down to 2 kW in its last 8 sessions; open `degraded`;
    - CA-MENDED: every day; a `failing` episode opened and closed: healthy again;
    - CA-NEW: its first session 3 days ago: too little history for an expectation;
    - CA-GONE: no session stored at all, an open `silent` alert (and a `failing` one).
    """
    now = time.time()
    day = 86_400.0
    scores: list[dict] = []

    def daily(station: str, days: range, kw=lambda d: 6.6) -> None:
        scores.extend(kit.score_message(station=station, scored_ts=now - d * day - 600,
                                        features={"avg_kw": kw(d), "kwh_delivered": 3 * kw(d)})
                      for d in days)

    daily("CA-OK", range(36))
    daily("CA-SILENT", range(5, 36))
    daily("CA-SLOW", range(36), kw=lambda d: 2.0 if d < 8 else 6.6)
    daily("CA-MENDED", range(36))
    daily("CA-NEW", range(3))

    def opened(station: str, kind: str, days_ago: float, evidence: str) -> StationAlertMessage:
        at = now - days_ago * day
        return StationAlertMessage(
            alert_id=station_alert_id(station, kind, at), station_id=station, site_id="0002",
            kind=kind, status="open", opened_ts=at, at_ts=at, evidence=evidence,
            detected_ts=at + 1, metrics={"days": days_ago}, worker="w-1")

    failing = opened("CA-MENDED", "failing", 6, "4 of its last 6 sessions failed")
    events = [opened("CA-SILENT", "silent", 2, "no session for 4.8 days; 4.8 expected"),
              opened("CA-SLOW", "degraded", 1, "power 2.0 kW over 8 sessions, 6.6 kW usual"),
              failing, replace(failing, status="closed", at_ts=now - 4 * day,
                               evidence="5 good sessions in a row"),
              opened("CA-GONE", "silent", 20, "no session for 20 days; 14 expected"),
              opened("CA-GONE", "failing", 25, "6 of its last 6 sessions failed")]
    return Fleet(now, scores, events)
