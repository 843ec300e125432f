"""The `evguard` command line. Each command group lives in `evguard/commands/`.

Command modules import heavy libraries (mlflow, prefect, sklearn) inside the
command functions, so that `evguard --help` stays instant.
"""

from __future__ import annotations

import typer

from evguard.commands import services

app = typer.Typer(
    name="evguard",
    help="Catch anomalous EV charging sessions in real time: ingest, train, serve, monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(services.app, name="services")

# each capability registers its commands here; a missing module is a bug, not optional
for _module in ("data", "models", "serving", "monitoring", "platform", "evaluate"):
    try:
        _mod = __import__(f"evguard.commands.{_module}", fromlist=["register"])
    except ModuleNotFoundError as exc:
        if exc.name != f"evguard.commands.{_module}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
