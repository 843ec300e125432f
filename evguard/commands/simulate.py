"""`evguard simulate`: placeholder until its issue-13 part lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Nothing yet."""
