"""Helpers shared by the CLI commands: settings, clear errors, progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from pipelines.progress import Progress as ProgressCallback
from pipelines.settings import Settings, load_settings

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


def progress_bar(label_width: int = 24, *extra: ProgressColumn) -> Progress:
    """A progress bar with a label column, the bar, done/total, `extra` columns and time."""
    return Progress(TextColumn(f"{{task.description:<{label_width}}}"), BarColumn(),
                    MofNCompleteColumn(), *extra, TimeElapsedColumn(), console=console)


def stage_updates(bar: Progress, task: TaskID, label_width: int = 44,
                  indent: str = "") -> ProgressCallback:
    """A `progress(stage, done, total)` callback that moves `task` of `bar`."""
    def update(stage: str, done: int, total: int) -> None:
        bar.update(task, description=(indent + stage)[:label_width], completed=done,
                   total=total)
    return update
