"""`evguard demo`: the whole platform, end to end, on the local stack.

The demo is imported inside the command: it loads Prefect and MLflow, which would
make `evguard --help` take seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from evguard.commands.common import clear_errors, console, settings


def demo(
    train_sessions: Annotated[int, typer.Option(help="Synthetic sessions to train on")] = 4000,
    replay_sessions: Annotated[int, typer.Option(help="Sessions streamed through Kafka")] = 2000,
    rate: Annotated[float, typer.Option(help="Replay rate in sessions/s")] = 1000.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic sessions")] = 7,
    acn: Annotated[list[Path] | None, typer.Option(
        help="Ingest these ACN export files instead of synthetic sessions")] = None,
    keep_running: Annotated[bool, typer.Option(
        help="Leave everything running to explore the UIs; stop later with `evguard services down`")] = False,
    live_chargers: Annotated[int, typer.Option(
        min=1, max=500, help="Simulated OCPP chargers (1.6 and 2.0.1) of the live part, through "
                             "the gateway with planted live faults")] = 30,
) -> None:
    """Run the platform end to end on the local stack and print a summary."""
    from evguard.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(train_sessions=train_sessions, replay_sessions=replay_sessions,
                          rate=rate, seed=seed, keep_running=keep_running,
                          live_chargers=live_chargers,
                          acn_paths=tuple(str(p.resolve()) for p in acn or ()))
    with clear_errors(DemoError):
        summary = run_demo(settings(), options, log=lambda m: console.print(m))
    print_summary(summary, keep_running)


def print_summary(summary, keep_running: bool) -> None:
    table = Table(title="evguard demo summary", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    champion = summary.champion
    rows = [
        ("sessions replayed", str(summary.replayed)),
        ("sessions scored", str(summary.scored)),
        ("anomalies", str(summary.anomalies)),
        ("alerts emailed", str(summary.alerts_sent)),
        ("champion", (f"{champion.get('name')} v{champion.get('version')} "
                      f"(threshold {champion.get('threshold', float('nan')):.4f})")),
    ]
    for name, value in sorted((champion.get("metrics") or {}).items()):
        rows.append((f"  {name}", f"{value:.4f}" if isinstance(value, float) else str(value)))
    rows += live_rows(summary)
    if keep_running:
        rows += [(f"{k} UI", v) for k, v in summary.urls.items()]
        if "dashboard" in summary.urls:
            rows.append(("live connectors", f"{summary.urls['dashboard']}/live"))
    else:
        stopped = ("stopped with the demo; `make demo DEMO_ARGS=--keep-running` (or `evguard "
                   "demo --keep-running`) leaves the dashboard, Prefect and MLflow up")
        rows.append(("UIs", stopped))
    rows.append(("wall time", f"{summary.timings.get('total', 0):.0f}s"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if getattr(summary, "live_alerts", None):
        console.print(live_alert_table(summary.live_alerts))
    for path in summary.emails[:5]:
        console.print(f"  email: {path}")
    if len(summary.emails) > 5:
        console.print(f"  … and {len(summary.emails) - 5} more in {summary.emails[0].parent}")
    if keep_running:
        console.print("Everything is still running. Stop it with `evguard services down`.")


def live_rows(summary) -> list[tuple[str, str]]:
    """The summary rows of the demo's live OCPP fleet (none when it did not run)."""
    live = getattr(summary, "live", None) or {}
    if not live:
        return []
    alerts = summary.live_alerts
    versions = ", ".join(f"{n} on OCPP {v}" for v, n in sorted(live["by_version"].items()))
    chargers = f"{live['chargers']} ({versions}) over real OCPP WebSockets, {live['speedup']:g}x"
    transactions = (f"{live['transactions']} in {live['wall_s']:.0f}s ({live['simulated_h']:g} "
                    f"simulated h, {live['frames']} frames, {live['errors']} errors)")
    planted = ", ".join(f"{k} {n}" for k, n in sorted(live["faults_sent"].items())) or "none"
    emailed = (f"{sum(a['email'] == 'sent' for a in alerts)} of "
               f"{sum(a['planted'] for a in alerts)} planted faults")
    scored = (f"{summary.live_scored} of {summary.live_sessions} "
              f"({summary.live_anomalies} anomalies)")
    return [("live chargers", chargers), ("live transactions", transactions),
            ("live faults planted", planted), ("live alerts emailed", emailed),
            ("handed-off sessions scored", scored)]


def live_alert_table(lines: list[dict]) -> Table:
    """The live alerts of the demo's fleet: what, where, the evidence and the delays."""
    table = Table(title="live alerts (delay: the fault's first telltale frame sent -> email "
                        "delivered; gateway: that frame received -> email)",
                  title_justify="left")
    for column in ("kind", "connector", "OCPP", "evidence", "email", "delay", "gateway"):
        table.add_column(column, overflow="fold")
    for line in lines:
        def seconds(value):
            return "" if value is None else f"{value:.1f}s"

        kind = line["kind"] if line["planted"] else f"{line['kind']} (not planted)"
        table.add_row(kind, f"{line['charge_point_id']}/{line['connector'] or '?'}",
                      line["ocpp_version"] or "", line["evidence"] or "", line["email"],
                      seconds(line["delay_s"]), seconds(line["gateway_to_email_s"]))
    return table


def register(app: typer.Typer) -> None:
    app.command()(demo)
