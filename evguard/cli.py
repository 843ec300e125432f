"""The `evguard` command line. Each command group lives in `evguard/commands/`.

The command modules import their heavy dependencies (mlflow, prefect, sklearn and
the project's packages that load them) inside the command functions, so that
`evguard --help` stays instant.
"""

from __future__ import annotations

import typer

from evguard.commands import (
    data,
    evaluate,
    models,
    monitoring,
    ocpp,
    platform,
    services,
    serving,
    simulate,
    telemetry,
)

app = typer.Typer(
    name="evguard",
    help="Catch anomalous EV charging sessions in real time: ingest, train, serve, monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(services.app, name="services")
for commands in (data, models, serving, ocpp, telemetry, simulate, monitoring, platform, evaluate):
    commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
