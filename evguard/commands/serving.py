"""`evguard serve | replay`: the scoring worker and the station replay producer.

The serving code is imported inside the commands: it loads MLflow and Kafka's
client, which would make `evguard --help` take seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evguard.commands.common import clear_errors, console, err_console, progress_bar, settings


def serve(
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Max messages per micro-batch [EVGUARD_SERVE_BATCH_SIZE]")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        min=0, help="Port of /metrics and /healthz; 0 = any free port [EVGUARD_METRICS_PORT]")] = None,
    model_poll: Annotated[float | None, typer.Option(
        min=0, help="Seconds between polls of the champion alias [EVGUARD_SERVE_MODEL_POLL_S]")] = None,
    max_invalid_ratio: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Stop when this share of recent messages is invalid; 1 = never")] = None,
    idle_exit: Annotated[float, typer.Option(
        min=0, help="Stop after this many seconds without messages; 0 = run until Ctrl-C")] = 0.0,
    quiet_batches: Annotated[bool, typer.Option(help="No per-batch log lines")] = False,
) -> None:
    """Run the scoring worker: Kafka -> champion model -> RabbitMQ, until Ctrl-C or SIGTERM.

    To scale out, start more workers, each with its own --metrics-port: they share the partitions.

    Exit codes: 0 stopped, 1 Kafka unreachable, 2 no champion, 3 too many invalid messages.
    """
    from serving.run import configure_logging, run_worker

    overrides = {"serve_batch_size": batch_size, "metrics_port": metrics_port,
                 "serve_model_poll_s": model_poll, "serve_max_invalid_ratio": max_invalid_ratio}
    s = settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    configure_logging(batches=not quiet_batches)
    outcome = run_worker(s, idle_exit_s=idle_exit)
    r = outcome.report
    if outcome.code:
        err_console.print(f"[bold red]error:[/] {outcome.message}", highlight=False)
    else:
        console.print(f"worker stopped: {r.consumed} consumed, {r.scored} scored, "
                      f"{r.anomalies} anomalies, {r.dead_lettered} dead-lettered "
                      f"in {r.seconds:.1f}s")
    raise typer.Exit(outcome.code)


def replay(
    source: Annotated[str, typer.Option(
        help="synthetic (seeded generator), dataset (newest ingest dataset) or files")] = "synthetic",
    path: Annotated[list[Path] | None, typer.Option(
        exists=True, dir_okay=False, help="ACN export file (repeat the option for several)")] = None,
    sessions: Annotated[int, typer.Option(min=1, help="Synthetic sessions to generate")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic generator")] = 0,
    anomaly_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of synthetic sessions with an injected anomaly")] = 0.02,
    rate: Annotated[float | None, typer.Option(
        min=0.0, help="Sessions per second (default: as fast as possible)")] = None,
    speedup: Annotated[float | None, typer.Option(
        min=0.0, help="Replay at this multiple of real time, by disconnectTime")] = None,
    repeat: Annotated[int, typer.Option(
        min=1, help="Send the sessions this many times (unique sessionIDs per round)")] = 1,
    topic: Annotated[str | None, typer.Option(
        help="Kafka topic [EVGUARD_TOPIC_SESSIONS]")] = None,
) -> None:
    """Stream ACN sessions into Kafka (acks=all, idempotent), with a progress bar."""
    from confluent_kafka import Producer
    from rich.progress import TextColumn

    from pipelines.data.exports import ExportFormatError
    from serving.kafka import check_topic, producer_config
    from serving.replay import ReplayPace, load_records
    from serving.replay import replay as run_replay

    s = settings()
    if source not in ("synthetic", "dataset", "files"):
        err_console.print(f"[bold red]error:[/] unknown --source {source!r}; "
                          "choose synthetic, dataset or files")
        raise typer.Exit(2)
    with clear_errors(ValueError, LookupError, ExportFormatError, OSError):
        pace = ReplayPace(rate=rate, speedup=speedup)
        records = load_records(source, s, paths=path or (), sessions=sessions, seed=seed,
                               anomaly_rate=anomaly_rate)
    total = len(records) * repeat
    target = topic or s.topic_sessions
    producer = Producer(producer_config(s.kafka_servers))
    with clear_errors(ConnectionError, LookupError):
        check_topic(producer, s, target)
    console.print(f"replaying {total} sessions ({source}) to [bold]{target}[/] at "
                  f"{s.kafka_servers}, " + (f"{rate:g}/s" if rate else
                                            f"{speedup:g}x real time" if speedup else
                                            "as fast as possible"))
    rate_column = TextColumn("{task.fields[rate]:>8.0f}/s  failed {task.fields[failed]}")
    with progress_bar(9, rate_column) as bar:
        task = bar.add_task("delivered", total=total, rate=0.0, failed=0)

        def show(report) -> None:
            bar.update(task, completed=report.delivered, rate=report.rate, failed=report.failed)

        report = run_replay(s, records, pace, topic=target, repeat=repeat, progress=show,
                            producer=producer)
    console.print(f"{report.delivered} delivered, {report.failed} failed in "
                  f"{report.seconds:.1f}s ({report.rate:.0f}/s)")
    for error, count in report.errors.most_common(5):
        err_console.print(f"  {count} x {error}")
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Serving")(serve)
    app.command(rich_help_panel="Serving")(replay)
