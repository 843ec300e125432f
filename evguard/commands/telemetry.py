"""`evguard telemetry`: the telemetry processor (live detectors, connector status, hand-off).

The processor is imported inside the command: it loads Kafka's client and pika, which
would make `evguard --help` slower.
"""

from __future__ import annotations

from typing import Annotated

import typer

from evguard.commands.common import console, err_console, settings


def telemetry(
    batch_size: Annotated[int, typer.Option(min=1, help="Max events per micro-batch")] = 2000,
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535,
        help="Port of /metrics and /healthz; 0 = any free port [EVGUARD_TELEMETRY_METRICS_PORT]",
    )] = None,
    status_interval: Annotated[float | None, typer.Option(
        min=0.0, help="Least seconds between two snapshots of a charging connector "
                      "[EVGUARD_TELEMETRY_STATUS_INTERVAL_S]")] = None,
    instance_id: Annotated[str | None, typer.Option(
        help="Static group membership id, unique per processor: a restarted processor takes "
             "its partitions back at once [EVGUARD_TELEMETRY_INSTANCE_ID]")] = None,
    tick: Annotated[float, typer.Option(
        min=0.05, help="Seconds between two checks of the connectors for silence")] = 1.0,
    max_temperature: Annotated[float | None, typer.Option(
        help="overtemperature above this, °C (default: the policy's, 65)")] = None,
    idle_hours: Annotated[float | None, typer.Option(
        min=0.01, help="never_unplugged this long after a connector last drew power "
                       "(default: the policy's, 18)")] = None,
    samples: Annotated[int | None, typer.Option(
        min=1, help="Telltale samples before no_current, overcurrent and overtemperature "
                    "open: more is fewer false alerts, one sample interval later each "
                    "(default: the policy's, 1)")] = None,
    idle_exit: Annotated[float, typer.Option(
        min=0, help="Stop after this many seconds without messages; 0 = run until Ctrl-C")] = 0.0,
) -> None:
    """Run the telemetry processor: OCPP telemetry from Kafka -> live detectors -> live alerts
    and connector status on RabbitMQ; finished transactions -> ACN sessions for scoring.

    To scale out, start more processors (each with its own --instance-id and --metrics-port):
    they share the telemetry topic's partitions, and each restores its connectors' state.

    Exit codes: 0 stopped, 1 Kafka unusable, 5 a session, dead-letter or state write failed.
    """
    from dataclasses import replace

    from pipelines.telemetry.detectors import DEFAULT_POLICY
    from telemetry.processor import DEFAULT_OPTIONS
    from telemetry.run import configure_logging, run_processor

    overrides = {"telemetry_metrics_port": metrics_port,
                 "telemetry_status_interval_s": status_interval,
                 "telemetry_instance_id": instance_id}
    s = settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    changes = {"max_temperature_c": max_temperature, "idle_hours": idle_hours,
               "samples": samples}
    try:
        policy = replace(DEFAULT_POLICY, **{k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    options = replace(DEFAULT_OPTIONS, batch_size=batch_size, tick_s=tick, policy=policy)
    configure_logging()
    outcome = run_processor(s, options, idle_exit_s=idle_exit)
    r = outcome.report
    if outcome.code:
        err_console.print(f"[bold red]error:[/] {outcome.message}", highlight=False)
    else:
        console.print(f"telemetry processor stopped: {r.consumed} consumed, {r.applied} applied, "
                      f"{r.redelivered} redelivered, {r.dead_lettered} dead-lettered, "
                      f"{r.live_alerts} live alert events, {r.sessions} sessions handed off "
                      f"in {r.seconds:.1f}s")
    raise typer.Exit(outcome.code)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Serving")(telemetry)
