"""Helpers shared by the CLI commands: settings, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from evguard.settings import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    return load_settings()


@contextmanager
def clear_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn expected failures into one readable paragraph and exit code 1, not a traceback."""
    try:
        yield
    except kinds as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
