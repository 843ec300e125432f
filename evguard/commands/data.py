"""`evguard data synth | import | download` and `evguard ingest`: ACN sessions in, datasets out.

The data code is imported inside the commands: it loads pandas and Great
Expectations, which would make `evguard --help` take seconds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table

from evguard.commands.common import clear_errors, console, progress_bar, settings

app = typer.Typer(help="ACN session data: synthesise, import exports, download from ACN-Data.",
                  no_args_is_help=True)

SITES = ("caltech", "jpl", "office001")  # = pipelines.data.acn.ACN_SITES, without pandas
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]
Date = Annotated[datetime | None, typer.Option(formats=DATE_FORMATS,
                                               help="UTC date, e.g. 2019-05-01")]


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


def _errors():
    from pipelines.data.acn import AcnError
    from pipelines.data.datasets import DatasetNotFound
    from pipelines.data.exports import ExportFormatError
    from pipelines.data.ingest import ValidationFailed

    return clear_errors(AcnError, ExportFormatError, ValidationFailed, DatasetNotFound,
                        FileNotFoundError, ValueError)


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


@app.command()
def synth(
    sessions: Annotated[int, typer.Option(min=1, help="Number of sessions")] = 5000,
    seed: Annotated[int, typer.Option(help="Same seed, same sessions and labels")] = 42,
    anomaly_rate: Annotated[float, typer.Option(min=0, max=1, help="Fraction of anomalies")] = 0.02,
    out: Annotated[Path | None, typer.Option(
        help="ACN export file to write; default <data dir>/synth/sessions.json")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="Labels file (sessionID -> anomaly type); default <out>.labels.json")] = None,
    site: Annotated[list[str] | None, typer.Option(help=f"Sites, repeatable: {', '.join(SITES)}")]
    = None,
    start: Date = None,
) -> None:
    """Write seeded synthetic sessions in the ACN export format, with a separate labels file."""
    from pipelines.data.synth import generate_sessions

    out = out or Path(settings().data_dir) / "synth" / "sessions.json"
    labels = labels or out.with_name(out.name.removesuffix(".json") + ".labels.json")
    with _errors(), console.status(f"generating {sessions:,} sessions"):
        records, truth = generate_sessions(sessions, seed, anomaly_rate, start=_utc(start),
                                           sites=tuple(site or SITES))
        _write_json(out, {"_meta": {"generator": "evguard synth", "seed": seed,
                                    "anomaly_rate": anomaly_rate, "sites": list(site or SITES),
                                    "start": records[0]["connectionTime"],
                                    "end": records[-1]["connectionTime"]},
                          "_items": records})
        _write_json(labels, truth)
    console.print(f"wrote {len(records):,} sessions to {out} and {len(truth):,} labels to {labels}")


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Export files or directories of them")],
    labels: Annotated[Path | None, typer.Option(help="Labels file from `evguard data synth`")]
    = None,
    max_failure_rate: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    fresh: Annotated[bool, typer.Option(help="Start a new dataset lineage")] = False,
) -> None:
    """Import ACN export files ({"_meta", "_items"} or bare lists): validate, write a dataset."""
    from pipelines.data.ingest import FileSource

    _run(FileSource(tuple(str(p) for p in paths), str(labels) if labels else None),
         max_failure_rate, fresh)


@app.command()
def download(
    site: Annotated[list[str], typer.Option(help=f"Site, repeatable: {', '.join(SITES)}")],
    start: Date = None,
    end: Date = None,
    out: Annotated[Path | None, typer.Option(help="Also write one export file here")] = None,
    incremental: Annotated[bool, typer.Option(
        help="Only sessions newer than the last download of each site")] = False,
) -> None:
    """Download sessions from ACN-Data (token in EVGUARD_ACN_TOKEN); raw pages go to data/raw/."""
    from pipelines.data.acn import client_from_settings, download_sessions

    s = settings()
    records: list[dict] = []
    with _errors(), progress_bar(24) as progress, client_from_settings(s) as client:
        for name in site:
            bar = progress.add_task(f"download {name}", total=None)
            records += download_sessions(
                client, Path(s.data_dir) / "raw", name, _utc(start), _utc(end),
                incremental=incremental,
                on_page=lambda done, total, bar=bar: progress.update(bar, completed=done,
                                                                     total=total))
    if out:
        _write_json(out, {"_meta": {"sites": site, "start": str(start), "end": str(end)},
                          "_items": records})
    console.print(f"downloaded {len(records):,} sessions; raw pages in {Path(s.data_dir) / 'raw'}"
                  + (f"; export in {out}" if out else ""))


def _run(source, max_failure_rate: float | None, fresh: bool) -> None:
    from pipelines.data.ingest import run_ingest

    with _errors():
        with progress_bar(24) as progress:
            bars: dict[str, int] = {}

            def on_progress(step: str, done: int, total: int) -> None:
                key = step if step.startswith("download") else "ingest"
                if key not in bars:
                    bars[key] = progress.add_task(key, total=total)
                label = key if key != "ingest" else f"ingest: {step}"
                progress.update(bars[key], completed=done, total=total, description=label)

            report = run_ingest(settings(), source, max_failure_rate=max_failure_rate,
                                fresh=fresh, progress=on_progress)
        console.print(Markdown(report.validation_markdown))
        table = Table(title=f"ingest {report.run_id}", title_justify="left", show_header=False)
        for key in ("rows_in", "duplicates", "known", "previously_quarantined", "new_rows",
                    "quarantined", "added", "dataset_id", "dataset_path", "quarantine_path",
                    "elapsed_s"):
            table.add_row(key, str(getattr(report, key)))
        console.print(table)


def ingest(
    source: Annotated[str, typer.Option(
        help="auto (ACN API if a token is set, else synth) | synth | files | acn")] = "auto",
    sessions: Annotated[int, typer.Option(min=1, help="synth: number of sessions")] = 5000,
    seed: Annotated[int, typer.Option(help="synth: seed")] = 42,
    anomaly_rate: Annotated[float, typer.Option(min=0, max=1, help="synth: anomalies")] = 0.02,
    path: Annotated[list[Path] | None, typer.Option(help="files: export file/dir, repeatable")]
    = None,
    site: Annotated[list[str] | None, typer.Option(help="acn: site, repeatable")] = None,
    start: Date = None,
    end: Date = None,
    max_failure_rate: Annotated[float | None, typer.Option(
        min=0, max=1, help="Refuse the batch above this failure rate (default: setting)")] = None,
    fresh: Annotated[bool, typer.Option(help="Start a new dataset lineage")] = False,
) -> None:
    """Ingest a batch: source -> validate (Great Expectations) -> features -> versioned dataset."""
    from pipelines.data.ingest import AcnSource, FileSource, SynthSource

    if source not in ("auto", "synth", "files", "acn"):
        raise typer.BadParameter("choose auto, synth, files or acn", param_hint="--source")
    if source == "auto":
        source = "acn" if settings().acn_token.get_secret_value() else "synth"
    if source == "files" and not path:
        raise typer.BadParameter("--source files needs --path", param_hint="--path")
    chosen = {"synth": lambda: SynthSource(sessions, seed, anomaly_rate),
              "files": lambda: FileSource(tuple(str(p) for p in path or ())),
              "acn": lambda: AcnSource(tuple(site or SITES), _utc(start), _utc(end))}[source]()
    _run(chosen, max_failure_rate, fresh)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
    root.command(name="ingest")(ingest)
