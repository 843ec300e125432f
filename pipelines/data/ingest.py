"""Ingest without Prefect: source -> de-duplicate -> features -> validate -> quarantine -> dataset.

`run_ingest` chains the steps; `flows/ingest.py` wraps the same steps in tasks.
Sessions already in the parent dataset are skipped (by sessionID), so a re-run on
the same input adds nothing and writes no new version; rows quarantined before
are skipped too unless their content changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipelines.data.acn import client_from_settings, download_sessions
from pipelines.data.datasets import (
    FEATURE_KEYS,
    Dataset,
    exact_sessions_table,
    list_datasets,
    table_chunks,
    write_dataset,
)
from pipelines.data.exports import load_exports
from pipelines.data.features import add_features_in_chunks
from pipelines.data.memory import release_freed_memory
from pipelines.data.synth import generate_sessions
from pipelines.data.validation import (
    ValidationReport,
    input_kinds,
    quarantine_failed_rows,
    quarantined_keys,
    record_key,
    validate_batch,
)
from pipelines.progress import Progress
from pipelines.settings import Settings


@dataclass(frozen=True)
class SynthSource:
    """Seeded synthetic sessions with labelled anomalies (the default without a token)."""

    sessions: int = 5000
    seed: int = 42
    anomaly_rate: float = 0.02


@dataclass(frozen=True)
class FileSource:
    """ACN export files (or directories of them), with an optional labels file."""

    paths: tuple[str, ...]
    labels: str | None = None  # JSON `sessionID -> anomaly type`, as `evguard data synth` writes


@dataclass(frozen=True)
class AcnSource:
    """The ACN-Data API; incremental per site."""

    sites: tuple[str, ...] = ("caltech", "jpl", "office001")
    start: datetime | None = None
    end: datetime | None = None


Source = SynthSource | FileSource | AcnSource


class ValidationFailed(RuntimeError):
    """More rows failed validation than the threshold allows; nothing was written."""

    def __init__(self, report: ValidationReport, quarantine: Path | None):
        super().__init__(f"validation failed: {report.failed_rows} of {report.rows} rows "
                         f"({report.failure_rate:.1%} > {report.max_failure_rate:.1%}); "
                         f"rows and reasons in {quarantine}")
        self.report, self.quarantine = report, quarantine


@dataclass
class IngestBatch:
    """New sessions of one run, as a table, with what was skipped; featurised by `featurise`."""

    run_id: str
    sessions: pd.DataFrame  # `sessions_table` of the new rows, in order
    originals: dict[int, dict]  # the rows the table does not give back exactly, as they came
    labels: pd.DataFrame  # sessionID, anomaly_type of the new rows (labelled ones only)
    source: dict
    rows_in: int
    duplicates: int
    known: int
    previously_quarantined: int
    parent: Dataset | None
    new_rows: int
    frame: pd.DataFrame | None = None  # featurised, index = row; userInputs as `input_kinds`

    def records(self, rows: Sequence[int]) -> dict[int, dict]:
        """The new sessions at these rows, as they came."""
        rows = sorted(rows)
        chunk = next(table_chunks(self.sessions.take(rows), chunk_rows=max(len(rows), 1)), [])
        return {row: self.originals.get(row, record)
                for row, record in zip(rows, chunk, strict=True)}


@dataclass
class IngestReport:
    """What one ingest run did."""

    run_id: str
    source: dict
    rows_in: int
    duplicates: int
    known: int
    previously_quarantined: int
    new_rows: int
    quarantined: int
    added: int
    dataset_id: str | None
    dataset_path: str | None
    quarantine_path: str | None
    validation: dict = field(default_factory=dict)
    validation_markdown: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def describe(source: Source) -> dict:
    kind = {SynthSource: "synth", FileSource: "files", AcnSource: "acn"}[type(source)]
    return {"kind": kind, **{k: (v.isoformat() if isinstance(v, datetime) else v)
                             for k, v in asdict(source).items()}}


def load_source(settings: Settings, source: Source, progress: Progress | None = None,
                ) -> tuple[list[dict], dict[str, str]]:
    """Sessions and labels from the source (I/O). Labels exist only for synthetic data."""
    if isinstance(source, SynthSource):
        return generate_sessions(source.sessions, source.seed, source.anomaly_rate)
    if isinstance(source, FileSource):
        labels = json.loads(Path(source.labels).read_text()) if source.labels else {}
        return load_exports(source.paths), labels
    records: list[dict] = []
    with client_from_settings(settings) as client:
        for site in source.sites:
            def on_page(done: int, total: int, site: str = site) -> None:
                if progress:
                    progress(f"download {site}", done, total)
            records.extend(download_sessions(client, Path(settings.data_dir) / "raw", site,
                                             source.start, source.end, on_page=on_page))
    return records, {}


def admit(settings: Settings, records: list[dict], labels: dict[str, str], source: dict,
          fresh: bool = False) -> IngestBatch:
    """Drop in-batch duplicates (last wins), sessions the parent already holds and rows
    quarantined before; hold the rest as a table.

    The batch keeps nothing of `records`, bar the few that a table would change, so the
    caller can let them go before the features are built (they are most of ingest's memory).
    """
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z"
    datasets = [d for d in list_datasets(settings.data_dir) if d.manifest.get("validation_passed")]
    parent = None if fresh or not datasets else datasets[-1]
    known_ids = set(parent.sessions()["sessionID"]) if parent else set()
    last_by_id: dict[str, int] = {}
    anonymous: list[dict] = []  # no sessionID: kept so that validation quarantines them
    for i, record in enumerate(records):
        sid = record.get("sessionID") if isinstance(record, dict) else None
        if sid is None:
            anonymous.append(record if isinstance(record, dict) else {})
        else:
            last_by_id[str(sid)] = i
    unique = [records[i] for i in sorted(last_by_id.values())] + anonymous
    del last_by_id, anonymous
    new = [r for r in unique if str(r.get("sessionID")) not in known_ids]
    del known_ids
    rejected = quarantined_keys(Path(settings.data_dir) / "quarantine")
    keys = [record_key(r) for r in new] if rejected else []
    fresh_rows = [r for r, k in zip(new, keys, strict=True) if k not in rejected] if rejected \
        else new
    requarantined = len(new) - len(fresh_rows)
    duplicates, known = len(records) - len(unique), len(unique) - len(fresh_rows) - requarantined
    new = fresh_rows
    del unique, keys, fresh_rows  # the table below is the peak: nothing else held meanwhile
    new_ids = {r.get("sessionID") for r in new}
    kept = {k: v for k, v in labels.items() if k in new_ids}
    del new_ids
    # Arrow strings: an object made now and kept would keep the pages of the records around it
    kept_labels = pd.DataFrame({"sessionID": list(kept), "anomaly_type": list(kept.values())},
                               dtype="str")
    del kept
    sessions, originals = exact_sessions_table(new)
    return IngestBatch(run_id, sessions, originals, kept_labels, source, rows_in=len(records),
                       duplicates=duplicates, known=known, previously_quarantined=requarantined,
                       parent=parent, new_rows=len(new))


def featurise(batch: IngestBatch) -> IngestBatch:
    """The batch's features, built a chunk of sessions at a time."""
    batch.frame = add_features_in_chunks(table_chunks(batch.sessions, originals=batch.originals),
                                         keep=input_kinds)
    return batch


def validate(batch: IngestBatch, max_failure_rate: float) -> ValidationReport:
    """Both suites on the new rows; the batch keeps only the frame's keys afterwards."""
    report = validate_batch(batch.frame, max_failure_rate)
    batch.frame = batch.frame[FEATURE_KEYS]  # all `publish` needs of it
    return report


def quarantine(settings: Settings, batch: IngestBatch, report: ValidationReport) -> Path | None:
    """Failing rows with their reasons to `<data_dir>/quarantine/<run_id>.jsonl`."""
    return quarantine_failed_rows(batch.records(list(report.failures)), report,
                                  Path(settings.data_dir) / "quarantine", batch.run_id)


def publish(settings: Settings, batch: IngestBatch, report: ValidationReport,
            quarantine_path: Path | None) -> tuple[Dataset | None, int]:
    """Write the passing rows as a new dataset version; refuse a failed batch.

    The batch's tables are released once the dataset's are built (run it after
    `quarantine`): the dataset holds the rows now.
    """
    if not report.passed:
        raise ValidationFailed(report, quarantine_path)
    keep = [i for i in range(batch.new_rows) if i not in report.failures]
    if not keep:
        return batch.parent, 0
    sessions = batch.sessions.take(keep).reset_index(drop=True)
    # the features are recomputed over the merged dataset: the keys give its order
    keys = batch.frame[FEATURE_KEYS].iloc[keep].reset_index(drop=True)
    batch.sessions, batch.frame, batch.originals = batch.sessions.iloc[:0], None, {}
    labels = dict(zip(batch.labels["sessionID"], batch.labels["anomaly_type"], strict=True))
    return write_dataset(settings.data_dir, sessions, keys, labels, report.summary(),
                         batch.source, batch.parent)


def make_report(batch: IngestBatch, report: ValidationReport, quarantine_path: Path | None,
                dataset: Dataset | None, added: int, started: float) -> IngestReport:
    return IngestReport(
        run_id=batch.run_id, source=batch.source, rows_in=batch.rows_in,
        duplicates=batch.duplicates, known=batch.known,
        previously_quarantined=batch.previously_quarantined, new_rows=batch.new_rows,
        quarantined=report.failed_rows, added=added,
        dataset_id=dataset.dataset_id if dataset else None,
        dataset_path=str(dataset.path) if dataset else None,
        quarantine_path=str(quarantine_path) if quarantine_path else None,
        validation=report.summary(), validation_markdown=report.markdown(),
        elapsed_s=round(time.perf_counter() - started, 3))


def run_ingest(settings: Settings, source: Source, *, max_failure_rate: float | None = None,
               fresh: bool = False, progress: Progress | None = None) -> IngestReport:
    """Ingest one source end to end.

    Args:
        settings: uses `data_dir`, the ACN and the ingest settings.
        source: `SynthSource`, `FileSource` or `AcnSource`.
        max_failure_rate: override of `settings.ingest_max_failure_rate`.
        fresh: start a new dataset lineage instead of extending the latest dataset.
        progress: called with (step, done, total) as the run advances.

    Returns:
        The `IngestReport`.

    Raises:
        ValidationFailed: too many rows failed (they are in the quarantine file).
        pipelines.data.acn.AcnError: the API could not be read.
    """
    started = time.perf_counter()
    rate = settings.ingest_max_failure_rate if max_failure_rate is None else max_failure_rate
    steps = ["load", "admit", "features", "validate", "quarantine", "write"]
    tick = (lambda i: progress(steps[i], i + 1, len(steps))) if progress else (lambda i: None)
    records, labels = load_source(settings, source, progress)
    tick(0)
    batch = admit(settings, records, labels, describe(source), fresh)
    del records, labels
    release_freed_memory()  # the records: the features would be built on top of them
    tick(1)
    batch = featurise(batch)
    tick(2)
    report = validate(batch, rate)
    tick(3)
    quarantine_path = quarantine(settings, batch, report)
    tick(4)
    dataset, added = publish(settings, batch, report, quarantine_path)
    release_freed_memory()  # what the write step built; training would start from its peak
    tick(5)
    return make_report(batch, report, quarantine_path, dataset, added, started)
