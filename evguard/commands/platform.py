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
) -> None:
    """Run the platform end to end on the local stack and print a summary."""
    from evguard.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(train_sessions=train_sessions, replay_sessions=replay_sessions,
                          rate=rate, seed=seed, keep_running=keep_running,
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
    rows += [(f"{k} UI", v) for k, v in summary.urls.items()]
    rows.append(("wall time", f"{summary.timings.get('total', 0):.0f}s"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for path in summary.emails[:5]:
        console.print(f"  email: {path}")
    if len(summary.emails) > 5:
        console.print(f"  … and {len(summary.emails) - 5} more in {summary.emails[0].parent}")
    if keep_running:
        console.print("Everything is still running. Stop it with `evguard services down`.")


def register(app: typer.Typer) -> None:
    app.command()(demo)
