"""The live dashboard: a FastAPI app over the monitoring store, polled by a static page.

`GET /` serves the page and `/static/*` its script and styles (no CDN). The page
polls `/api/feed?after_id=N` every 1.5 s for new scored sessions and
`/api/overview` every 3 s for charts, stations, alerts, the champion and the
worker. `POST /api/alerts/{id}/ack` acknowledges an alert. `GET /stations` is the
station view, which polls `/api/stations` every 10 s: each station's health from
its open station alerts, its last session, sessions observed against expected,
and its recent power. `GET /live` is the live view of the connectors, which polls
`/api/live` every 2 s: each connector's newest snapshot from the telemetry
processor and the live alerts; the page ages the last samples itself every second.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from dashboard import queries
from dashboard.sources import ChampionCache, WorkerStatus
from pipelines.scores.store import MonitoringStore
from pipelines.settings import Settings

STATIC = Path(__file__).with_name("static")


def ui_links(settings: Settings) -> dict[str, str]:
    return {"prefect": settings.prefect_ui, "mlflow": settings.mlflow_ui}


def create_app(settings: Settings, champion_refresh_s: float = 30.0) -> FastAPI:
    """The dashboard application for these settings.

    Args:
        settings: gives the monitoring store URL, the worker metrics URL, MLflow and the
            Prefect/MLflow UI addresses.
        champion_refresh_s: how often the champion summary is re-read from MLflow.
    """
    store = MonitoringStore(settings.monitoring_db)
    worker = WorkerStatus(settings)
    champion = ChampionCache(settings, every_s=champion_refresh_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        champion.start()
        yield
        champion.stop()
        store.close()

    app = FastAPI(title="evguard dashboard", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/stations", include_in_schema=False)
    def stations_page() -> FileResponse:
        return FileResponse(STATIC / "stations.html", headers={"Cache-Control": "no-store"})

    @app.get("/live", include_in_schema=False)
    def live_page() -> FileResponse:
        return FileResponse(STATIC / "live.html", headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/api/feed")
    def feed(after_id: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> dict:
        rows = queries.feed(store.engine, after_id, limit)
        return {"scores": rows, "last_id": rows[0]["id"] if rows else after_id}

    @app.get("/api/overview")
    def overview(minutes: int = Query(60, ge=5, le=24 * 60)) -> dict:
        now = time.time()
        bucket = 60 if minutes <= 120 else 600
        return {
            "now": now,
            "totals": queries.totals(store.engine, now),
            "series": queries.series(store.engine, now, minutes, bucket),
            "stations": queries.stations(store.engine, now),
            "alerts": queries.alert_list(store.engine),
            "window": queries.latest_window(store.engine),
            "champion": champion.snapshot(),
            "worker": worker.snapshot(),
            "links": ui_links(settings),
        }

    @app.get("/api/stations")
    def station_view(limit: int = Query(500, ge=1, le=5000),
                     spark: int = Query(20, ge=2, le=100)) -> dict:
        return queries.station_view(store.engine, time.time(), limit=limit, spark_sessions=spark)

    @app.get("/api/live")
    def live_view(limit: int = Query(1000, ge=1, le=10_000),
                  alerts: int = Query(100, ge=1, le=1000)) -> dict:
        return queries.live_view(store.engine, time.time(), settings.live_offline_after_s,
                                 limit=limit, alert_limit=alerts)

    @app.post("/api/alerts/{alert_id}/ack")
    def acknowledge(alert_id: int) -> dict:
        if not store.acknowledge_alert(alert_id):
            raise HTTPException(404, f"no alert {alert_id}")
        return {"ok": True, "id": alert_id}

    return app
