"""`evguard monitor | alert | dashboard`: the consumers of scores and the live dashboard.

The consumers and the dashboard are imported inside the commands: they load
SQLAlchemy, FastAPI and MLflow, which would make `evguard --help` take seconds.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from evguard.commands.common import clear_errors, console, settings


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM only set a flag; the consumer finishes its batch and closes cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its connect errors are reported by us


def monitor(
    once: Annotated[bool, typer.Option(help="Drain what is queued, judge one window, stop")] = False,
    window_s: Annotated[int | None, typer.Option(help="Window length in seconds")] = None,
    max_runtime_s: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    retrain: Annotated[bool, typer.Option(help="Start training when thresholds are crossed")] = True,
) -> None:
    """Store every score from RabbitMQ, judge each window (health, drift), trigger retraining."""
    from pika.exceptions import AMQPError
    from sqlalchemy.exc import SQLAlchemyError

    from monitoring.monitor import MonitoringConsumer
    from monitoring.triggers import ChampionReference, prefect_launcher
    from pipelines.scores.store import MonitoringStore

    _logging()
    s = settings()
    if window_s:
        s = s.model_copy(update={"monitor_window_s": window_s})
    launcher = prefect_launcher(s.retrain_deployment, api_url=s.prefect_api) if retrain else None
    with clear_errors(AMQPError, SQLAlchemyError, OSError):
        store = MonitoringStore(s.monitoring_db)
        consumer = MonitoringConsumer(s, store, reference=ChampionReference(s), launcher=launcher)
        consumer.rabbit.channel  # noqa: B018 (fail now, readably, if RabbitMQ is not there)
    console.print(f"monitoring queue [bold]{s.monitoring_queue}[/] on {s.rabbitmq_exchange} -> "
                  f"{s.monitoring_db}; window {s.monitor_window_s}s")

    def show(report: dict) -> None:
        rate = report.get("anomaly_rate")
        console.print(f"window: {report['volume']} sessions, anomaly rate "
                      f"{'-' if rate is None else f'{rate:.1%}'}, retraining "
                      f"{report['retrain']['state']}"
                      + (f" ({report['retrain']['reason']})" if report["retrain"]["reason"] else ""))

    with clear_errors(AMQPError, SQLAlchemyError, OSError):
        if once:
            stats = consumer.drain(idle_s=2.0)
            show(consumer.evaluate_window())
            consumer.close()
        else:
            stats = consumer.run(_stop_on_signals(), max_runtime_s=max_runtime_s, on_report=show)
    store.close()
    console.print(f"stored {stats.stored} new, {stats.duplicates} duplicates, "
                  f"{stats.dead_lettered} dead-lettered")


def alert(
    max_runtime_s: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    until_idle_s: Annotated[float | None, typer.Option(help="Stop once idle this long")] = None,
) -> None:
    """Email de-duplicated, explained alerts for anomalies; retry while SMTP is down."""
    from pika.exceptions import AMQPError
    from sqlalchemy.exc import SQLAlchemyError

    from monitoring.alerter import AlertConsumer
    from pipelines.scores.store import MonitoringStore

    _logging()
    s = settings()
    with clear_errors(AMQPError, SQLAlchemyError, OSError):
        store = MonitoringStore(s.monitoring_db)
        consumer = AlertConsumer(s, store)
        consumer.rabbit.channel  # noqa: B018 (fail now, readably, if RabbitMQ is not there)
    console.print(f"alerting on queue [bold]{s.alerts_queue}[/] -> {', '.join(s.alert_recipients)}"
                  f" via {s.smtp_host}:{s.smtp_port}; cooldown {s.alert_cooldown_s}s per station")
    outcomes = consumer.run(_stop_on_signals(), max_runtime_s=max_runtime_s,
                            idle_exit_s=until_idle_s)
    store.close()
    console.print("alerts: " + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
                                or "none"))


def dashboard(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings, 8050)")] = None,
) -> None:
    """Serve the live dashboard (feed, charts, stations, alerts, champion, worker health)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from dashboard.app import create_app
    from dashboard.auth import DashboardAuth

    s = settings()
    host, port = host or s.dashboard_host, port or s.dashboard_port
    with clear_errors(SQLAlchemyError, OSError, ValueError):
        app = create_app(s)
        access = DashboardAuth.from_settings(s).describe()
    console.print(f"dashboard on [bold]http://{host}:{port}/[/] (store {s.monitoring_db}; "
                  f"{access})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)
    app.command("alert")(alert)
    app.command("dashboard")(dashboard)
