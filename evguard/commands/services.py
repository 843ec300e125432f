"""`evguard services up | down | status`: the embedded local stack."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from evguard.commands.common import clear_errors, console, settings
from evguard.services.process import ServiceError
from evguard.services.stack import ALL_SERVICES, LocalStack

app = typer.Typer(help="Start, stop and inspect the local service stack (127.0.0.1 only).",
                  no_args_is_help=True)

Only = Annotated[str, typer.Option(help=f"Comma-separated subset of: {', '.join(ALL_SERVICES)}")]
EVERY_SERVICE = ",".join(ALL_SERVICES)


@app.command()
def up(
    only: Only = EVERY_SERVICE,
    ui: Annotated[bool, typer.Option(help="Also start the MLflow UI server")] = False,
) -> None:
    """Start the services that are not running yet (safe to run twice)."""
    stack = LocalStack(settings())
    t0 = time.monotonic()
    with clear_errors(ServiceError):
        started = stack.up(tuple(s.strip() for s in only.split(",") if s.strip()), ui=ui,
                           log=lambda m: console.print(f"  {m}"))
    console.print(f"services up in {time.monotonic() - t0:.1f}s; started: "
                  f"{', '.join(started) or 'nothing (all were up)'}")
    print_status(stack)


@app.command()
def down() -> None:
    """Stop every service that `up` started, by PID (and the stack's own broker, found by its
    data dir, if its launcher died). Others are left alone."""
    stopped = LocalStack(settings()).down(log=lambda m: console.print(f"  {m}"))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def status() -> None:
    """Show each service with its URL and state."""
    print_status(LocalStack(settings()))


def print_status(stack: LocalStack) -> None:
    table = Table(title="evguard services", title_justify="left")
    for col in ("service", "url", "state", "pid"):
        table.add_column(col)
    colors = {"running": "green", "external": "cyan", "embedded": "green"}
    rows = stack.status()
    for row in rows:
        color = colors.get(row.state, "red")
        table.add_row(row.name, row.url, f"[{color}]{row.state}[/]", str(row.pid or ""))
    console.print(table)
    console.print("[dim]running = started by evguard; external = already there, "
                  "used as is; embedded = in-process (sqlite)[/]")
    for row in rows:
        if row.note:
            console.print(f"[yellow]note:[/] {row.note}")
