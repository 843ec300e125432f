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

Every request that changes state first passes `dashboard.auth` (same origin, and a
token, Basic login or proxy identity; loopback only when none is configured).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from dashboard import queries
from dashboard.auth import SAFE_METHODS, DashboardAuth
from dashboard.sources import ChampionCache, WorkerStatus
from pipelines.scores.store import MonitoringStore
from pipelines.settings import Settings

STATIC = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


def ui_links(settings: Settings) -> dict[str, str]:
    return {"prefect": settings.prefect_ui, "mlflow": settings.mlflow_ui}


def create_app(settings: Settings, champion_refresh_s: float = 30.0) -> FastAPI:
    """The dashboard application for these settings.

    Args:
        settings: gives the monitoring store URL, the worker metrics URL, MLflow and the
            Prefect/MLflow UI addresses.
        champion_refresh_s: how often the champion summary is re-read from MLflow.
    """
    auth = DashboardAuth.from_settings(settings)
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

    @app.middleware("http")
    async def guard_actions(request: Request, call_next):
        if request.method in SAFE_METHODS:
            return await call_next(request)
        client = request.client.host if request.client else None
        # off the event loop: a Basic login costs one scrypt hash
        decision = await run_in_threadpool(auth.check, request.method, request.headers, client)
        if not decision.allowed:
            log.warning("refused %s %s from %s: %s", request.method, request.url.path, client,
                        decision.reason)
            challenge = {"WWW-Authenticate": decision.challenge} if decision.challenge else {}
            return JSONResponse({"detail": decision.reason}, status_code=decision.status,
                                headers=challenge)
        request.state.identity = decision.identity
        return await call_next(request)

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
    def acknowledge(alert_id: int, request: Request) -> dict:
        if not store.acknowledge_alert(alert_id):
            raise HTTPException(404, f"no alert {alert_id}")
        log.info("alert %s acknowledged by %s", alert_id, request.state.identity)
        return {"ok": True, "id": alert_id}

    return app
