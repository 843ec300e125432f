"""`evguard simulate`: a fleet of simulated OCPP chargers replaying sessions as live transactions.

The fleet and the data sources are imported inside the command: they load numpy, the
OCPP schemas and websockets, which would slow `evguard --help` down.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from evguard.commands.common import clear_errors, console, err_console, progress_bar, settings

SOURCES = ("synth", "exports", "api")


def _load(source: str, exports: list[Path], sessions: int, seed: int, sites: list[str],
          start: datetime | None, end: datetime | None, stations: int | None = None):
    """(sessions, sessionID -> trace) from the chosen source; with `stations`, the
    generator makes enough for `sessions` on that many busiest stations."""
    from pipelines.telemetry.charging import parse_acn_trace

    if source == "synth":
        from pipelines.data.synth import generate_sessions

        return generate_sessions(sessions * (4 if stations else 1), seed=seed)[0], {}
    if source == "exports":
        from pipelines.data.exports import load_exports

        if not exports:
            raise ValueError("--source exports needs --exports PATH (repeat for several files)")
        records = load_exports(exports)
        traces = {t.session_id: t for t in map(parse_acn_trace, records) if t is not None}
        return records, traces
    from pipelines.data.acn import client_from_settings, download_traces

    if start is None or end is None:
        raise ValueError("--source api needs --start and --end (connection times to fetch)")
    records, traces = [], {}
    with client_from_settings(settings()) as client:
        for site in sites:
            got, found = download_traces(client, site, start, end)
            records += got
            traces.update(found)
    return records, traces


def simulate(
    url: Annotated[str | None, typer.Option(
        help="The CSMS or gateway, ws:// or wss://; the charge point id is appended "
             "[default: ws://EVGUARD_OCPP_HOST:EVGUARD_OCPP_PORT]")] = None,
    source: Annotated[str, typer.Option(
        help="synth (seeded generator), exports (ACN export files) or api (ACN-Data, with "
             "the recorded current/pilot)")] = "synth",
    exports: Annotated[list[Path] | None, typer.Option(
        exists=True, dir_okay=False, help="ACN export file (repeat for several)")] = None,
    site: Annotated[list[str] | None, typer.Option(
        help="--source api: ACN site (repeat for several)")] = None,
    start: Annotated[datetime | None, typer.Option(help="--source api: first connection time")] = None,
    end: Annotated[datetime | None, typer.Option(help="--source api: connection times before this")] = None,
    sessions: Annotated[int, typer.Option(min=1, help="Sessions to replay (synth: to generate)")] = 50,
    stations: Annotated[int | None, typer.Option(
        min=1, help="Keep only the sessions of this many busiest stations")] = None,
    copies: Annotated[int, typer.Option(
        min=1, help="Replay every station this many times over, under ids <id>-r<k> (load "
                    "tests: many chargers from few records)")] = 1,
    speedup: Annotated[float, typer.Option(min=0.001, help="Simulated seconds per real second")] = 60.0,
    meter_interval: Annotated[float, typer.Option(
        min=0.1, help="Simulated seconds between meter values")] = 10.0,
    ocpp_201_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of stations speaking OCPP 2.0.1 (the rest 1.6)")] = 0.5,
    fault_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of sessions with a planted live fault")] = 0.0,
    faults: Annotated[str | None, typer.Option(
        help="Comma-separated fault kinds to plant [default: all live alert kinds]")] = None,
    schedule: Annotated[str, typer.Option(
        help="calendar (the sessions' own times) or packed (each station's sessions back to "
             "back)")] = "calendar",
    clock: Annotated[str, typer.Option(
        help="session (charger clock starts at the first session) or now")] = "session",
    unplug_delay_h: Annotated[float, typer.Option(
        min=0.01, help="How much longer a never_unplugged car stays (simulated hours)")] = 36.0,
    seed: Annotated[int, typer.Option(help="Seed of everything random")] = 0,
    labels: Annotated[Path, typer.Option(
        help="Planted faults, JSON lines (the summary goes beside it)")] = Path("fleet-labels.jsonl"),
    password: Annotated[str | None, typer.Option(
        help="HTTP Basic password of every charger (user = its id)")] = None,
    password_file: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="Read that password from this file instead (kept out of the process list)")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        min=0.0, help="Stop after this many real minutes")] = None,
    validate: Annotated[bool, typer.Option(
        help="Check every frame against the OCPP schemas (costs CPU with many chargers)")] = True,
) -> None:
    """Replay sessions as live OCPP transactions from many simulated chargers, with planted
    live faults; writes the labels (ground truth for the detection benchmark) and a summary."""
    import asyncio

    from rich.progress import TextColumn

    from fleet import (
        FleetConfig,
        FleetError,
        assign_faults,
        assign_versions,
        replicate_stations,
        run_fleet,
        schedule_sessions,
        select_sessions,
    )
    from pipelines.data.exports import ExportFormatError
    from pipelines.telemetry.charging import FAULT_KINDS, PlanOptions

    s = settings()
    if source not in SOURCES:
        err_console.print(f"[bold red]error:[/] unknown --source {source!r}; choose "
                          f"{', '.join(SOURCES)}")
        raise typer.Exit(2)
    kinds = tuple(k.strip() for k in faults.split(",") if k.strip()) if faults else FAULT_KINDS
    if password_file is not None:
        password = password_file.read_text().strip()
    with clear_errors(ValueError, ExportFormatError, OSError, LookupError):
        config = FleetConfig(url=url or f"ws://{s.ocpp_host}:{s.ocpp_port}", speedup=speedup,
                             meter_interval_s=meter_interval, password=password, seed=seed,
                             clock=clock, unplug_delay_s=unplug_delay_h * 3600,
                             validate=validate,
                             max_wall_s=max_minutes * 60 if max_minutes else None)
        records, traces = _load(source, exports or [], sessions, seed, site or ["caltech"],
                                start, end, stations)
        chosen = replicate_stations(select_sessions(records, max_sessions=sessions,
                                                    max_stations=stations), copies)
        if not chosen:
            raise ValueError("no session to replay")
        versions = assign_versions((str(r["stationID"]) for r in chosen), ocpp_201_share, seed)
        options = PlanOptions(sample_interval_s=meter_interval, unplug_delay_s=unplug_delay_h * 3600)
        planted = assign_faults(chosen, versions, fault_rate, kinds, seed, options)
        scheduled = schedule_sessions(chosen, versions, planted, mode=schedule, seed=seed)
    span = max(x.offset_s for x in scheduled)
    console.print(f"{len(scheduled)} sessions on {len(versions)} stations "
                  f"({sum(v == '2.0.1' for v in versions.values())} on OCPP 2.0.1), "
                  f"{len(planted)} planted faults, {len(traces)} recorded traces -> {config.url} "
                  f"at {speedup:g}x (last start after {span / speedup / 60:.1f} real minutes)")
    extra = TextColumn("frames {task.fields[frames]}  faults {task.fields[faults]}  "
                       "late p99 {task.fields[late]:.2f}s")
    with progress_bar(8, extra) as bar:
        task = bar.add_task("sessions", total=len(scheduled), frames=0, faults=0, late=0.0)

        def show(report) -> None:
            bar.update(task, completed=report.sessions_done, frames=report.frames_sent,
                       faults=sum(report.faults_sent.values()), late=report.lateness_p99_s)

        with clear_errors(FleetError, OSError):
            report = asyncio.run(run_fleet(scheduled, config, traces=traces, labels_path=labels,
                                           progress=show))
    summary = labels.with_suffix(".summary.json")
    summary.write_text(json.dumps(report.as_dict(), indent=2))
    console.print(f"{report.transactions_ended}/{report.transactions_started} transactions "
                  f"completed, {report.frames_sent} frames in {report.wall_s:.1f}s "
                  f"({report.simulated_s / 3600:.1f} simulated h); faults sent "
                  f"{report.faults_sent}; lateness p50 {report.lateness_p50_s:.3f}s "
                  f"p99 {report.lateness_p99_s:.3f}s")
    console.print(f"labels: {labels}  summary: {summary}")
    for error, count in report.errors.most_common(5):
        err_console.print(f"  {count} x {error}")
    if report.errors and not report.transactions_started:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Live telemetry")(simulate)
