"""Versioned Parquet datasets with a manifest (contract §3).

`<data_dir>/datasets/<dataset_id>/` holds `sessions.parquet` (the ACN fields;
`userInputs` as JSON text), `features.parquet` (sessionID, siteID, stationID,
connectionTime and `FEATURE_COLUMNS`, recomputed over the whole dataset at each
version, since a session's station context depends on the sessions before it),
`labels.parquet` (sessionID, anomaly_type;
only when labels exist) and `manifest.json`. A dataset is cumulative: it holds
its parent's sessions plus the new ones, de-duplicated by sessionID. Ids sort
by creation time, so the newest is the last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts.sessions import SESSION_FIELDS
from pipelines.data.features import (
    FEATURE_COLUMNS,
    FEATURE_VERSION,
    add_features_in_chunks,
)
from pipelines.data.memory import release_freed_memory
from pipelines.settings import Settings

FEATURE_KEYS = ["sessionID", "siteID", "stationID", "connectionTime"]
CHUNK_ROWS = 50_000  # sessions parsed at a time when a whole table is featurised
# a few distinct values over millions of sessions: one string object per value
_REPEATED_FIELDS = ("clusterID", "siteID", "spaceID", "stationID", "timezone", "userID")


class DatasetNotFound(LookupError):
    """No dataset has been written yet."""


@dataclass(frozen=True)
class Dataset:
    """One written dataset version."""

    dataset_id: str
    path: Path
    manifest: dict

    @property
    def feature_version(self) -> str:
        return self.manifest["feature_version"]

    def sessions(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "sessions.parquet")

    def features(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "features.parquet")

    def labels(self) -> dict[str, str]:
        path = self.path / "labels.parquet"
        if not path.exists():
            return {}
        table = pd.read_parquet(path)
        return dict(zip(table["sessionID"], table["anomaly_type"], strict=True))

    def records(self) -> list[dict]:
        """The sessions as ACN dicts, as they were ingested."""
        return records_from_table(self.sessions())


def sessions_table(records: list[dict]) -> pd.DataFrame:
    """The ACN fields of `records` as a Parquet-friendly frame (pure).

    Text is held in Arrow string columns, not as the records' own string objects, so the
    frame keeps none of the records' memory once they are gone.
    """
    columns = {}
    for name in SESSION_FIELDS:
        values = [r.get(name) for r in records]
        if name == "kWhDelivered":
            columns[name] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
            continue
        if name == "userInputs":  # JSON text, made and stored one chunk at a time
            parts = [pa.array([None if u is None else json.dumps(u) for u in values[a:b]],
                              pa.string()) for a, b in chunk_bounds(len(values), CHUNK_ROWS)]
            columns[name] = pd.Series(pa.chunked_array(parts, pa.string()),
                                      dtype=pd.StringDtype("pyarrow", na_value=np.nan))
            continue
        columns[name] = pd.Series([None if v is None else str(v) for v in values], dtype="str")
    return pd.DataFrame(columns)[list(SESSION_FIELDS)]


def records_from_table(table: pd.DataFrame) -> list[dict]:
    """Inverse of `sessions_table` (pure)."""
    records: list[dict] = []
    shared: dict[str, dict] = {name: {} for name in _REPEATED_FIELDS}
    for chunk in table_chunks(table, shared):
        records.extend(chunk)
    return records


def exact_sessions_table(records: Sequence[dict]) -> tuple[pd.DataFrame, dict[int, dict]]:
    """`sessions_table(records)`, and the records it does not give back exactly (position ->
    record): one with other keys, a number where text belongs, an integer kWhDelivered.

    With `table_chunks(table, originals=...)` the records come back as they were, so a
    batch can be held as a table (Arrow strings, no dict per session) and still be
    featurised, validated and quarantined as the records themselves (pure).
    """
    parts, originals = [], {}
    for start, stop in chunk_bounds(len(records), CHUNK_ROWS):
        chunk = records[start:stop]
        table = sessions_table(chunk)
        back = next(table_chunks(table, chunk_rows=len(chunk)), [])
        for i, (again, record) in enumerate(zip(back, chunk, strict=True)):
            # == takes 1 for 1.0 and True for 1; a quarantine key would not
            if again != record or type(again["kWhDelivered"]) is not type(
                    record["kWhDelivered"]):
                originals[start + i] = record
        parts.append(table)
    if not parts:
        return sessions_table([]), originals
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0], originals


def table_chunks(table: pd.DataFrame, shared: dict[str, dict] | None = None,
                 chunk_rows: int | None = None,
                 originals: Mapping[int, dict] | None = None) -> Iterator[list[dict]]:
    """`records_from_table(table)` in consecutive chunks of at most `chunk_rows` records
    (default `CHUNK_ROWS`), with `originals` (position -> record) in place of their rows.

    Memory: a chunk's dicts are built from that chunk's rows alone, the values of
    `_REPEATED_FIELDS` are shared through `shared` (value -> the one object, per field),
    and a chunk's `userInputs` are parsed in one JSON document, so their keys are one
    string object per chunk rather than per edit. The records compare equal either way.
    """
    shared = {name: {} for name in _REPEATED_FIELDS} if shared is None else shared
    fields = list(SESSION_FIELDS)
    for start, stop in chunk_bounds(len(table), chunk_rows or CHUNK_ROWS):
        if originals:
            chunk = next(table_chunks(table.iloc[start:stop], shared, stop - start))
            yield [originals.get(start + i, record) for i, record in enumerate(chunk)]
            continue
        rows = table.iloc[start:stop]
        columns = rows[fields].astype(object).where(rows.notna(), None)
        values = {name: columns[name].tolist() for name in fields}
        for name, seen in shared.items():
            values[name] = [seen.setdefault(v, v) if type(v) is str else v
                            for v in values[name]]
        values["userInputs"] = _parse_json_column(values["userInputs"])
        yield [dict(zip(fields, row, strict=True)) for row in zip(*values.values(), strict=True)]


def file_chunks(path: Path) -> Iterator[list[dict]]:
    """The records of a `sessions.parquet` in chunks (`table_chunks`), read from the file
    a chunk at a time rather than held as one table."""
    shared: dict[str, dict] = {name: {} for name in _REPEATED_FIELDS}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
        yield from table_chunks(batch.to_pandas(), shared, CHUNK_ROWS)


def chunk_bounds(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    """`(start, stop)` of consecutive chunks of nearly equal size, none above `chunk_rows`
    (and none tiny: a featurised chunk of a few rows takes a slower, equal-valued path)."""
    edges = np.linspace(0, n, max(1, -(-n // chunk_rows)) + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _parse_json_column(texts: list[str | None]) -> list:
    present = [t for t in texts if t is not None]
    parsed = json.loads(f"[{','.join(present)}]") if present else []
    # the cells are `sessions_table`'s json.dumps of one value each; should a count still
    # differ (a table written by something else), parse cell by cell, failing as before
    if len(parsed) != len(present):
        parsed = [json.loads(t) for t in present]
    values = iter(parsed)
    return [None if t is None else next(values) for t in texts]


def features_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Keys and model input of a featurised frame (pure)."""
    return frame[FEATURE_KEYS + FEATURE_COLUMNS].reset_index(drop=True)


def content_hash(sessions: pd.DataFrame) -> str:
    """Order-independent hash of the sessions and the feature version."""
    order = np.argsort(pd.factorize(sessions["sessionID"], sort=True)[0], kind="stable")
    digest = hashlib.sha256(FEATURE_VERSION.encode())
    # row hashes chunk by chunk: the same bytes, without a text copy of the whole table
    for start, stop in chunk_bounds(len(order), CHUNK_ROWS):
        rows = sessions.take(order[start:stop]).reset_index(drop=True).astype(object)
        rows = rows.where(rows.notna(), None).astype(str)  # null reads "None" in any dtype
        digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def datasets_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "datasets"


def list_datasets(data_dir: Path) -> list[Dataset]:
    """All complete datasets, oldest first."""
    root = datasets_dir(data_dir)
    found = []
    for manifest in sorted(root.glob("*/manifest.json")) if root.exists() else []:
        found.append(Dataset(manifest.parent.name, manifest.parent,
                             json.loads(manifest.read_text())))
    return found


def latest_dataset(settings: Settings) -> Dataset:
    """The newest dataset that passed validation (contract §3).

    Raises:
        DatasetNotFound: nothing ingested yet under `settings.data_dir`.
    """
    passed = [d for d in list_datasets(settings.data_dir) if d.manifest.get("validation_passed")]
    if not passed:
        raise DatasetNotFound(f"no dataset under {datasets_dir(settings.data_dir)}: run "
                              "`evguard ingest` (synthetic data needs no token)")
    return passed[-1]


def _merge(parent: Dataset | None, sessions: pd.DataFrame, features: pd.DataFrame,
           labels: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The merged sessions in dataset order (connectionTime, then sessionID; the last row of
    a sessionID wins), and their labels. `sessions` and `features` hold the same rows in
    the same order, as a dataset's two tables do."""
    if parent is not None:
        sessions = pd.concat([parent.sessions(), sessions], ignore_index=True)
        features = pd.concat([parent.features()[FEATURE_KEYS], features[FEATURE_KEYS]],
                             ignore_index=True)
        labels = {**parent.labels(), **labels}
    if len(sessions) != len(features):
        raise ValueError(f"{len(sessions)} sessions but {len(features)} feature rows")
    # positions and codes, not an index of millions of IDs: Arrow strings stay in Arrow
    ids = pd.factorize(features["sessionID"], sort=True)[0]  # codes in sessionID order
    last = np.full(ids.max() + 1 if len(ids) else 0, -1)
    last[ids] = np.arange(len(ids))  # a later row overwrites an earlier one
    last = last[last >= 0]
    connect = pd.DatetimeIndex(features["connectionTime"]).asi8[last]
    connect = np.where(connect == np.iinfo(np.int64).min, np.iinfo(np.int64).max, connect)
    order = last[np.lexsort((ids[last], connect))]  # an unknown time sorts last
    sessions = sessions.take(order).reset_index(drop=True)[list(SESSION_FIELDS)]
    kept = set(features["sessionID"].take(order))
    return sessions, {k: v for k, v in labels.items() if k in kept}


def write_dataset(data_dir: Path, sessions: pd.DataFrame, features: pd.DataFrame,
                  labels: dict[str, str], validation: dict, source: dict,
                  parent: Dataset | None = None) -> tuple[Dataset, int]:
    """Write a new version = parent + new rows, unless it would hold exactly the parent's data.

    Args:
        data_dir: `settings.data_dir`.
        sessions: `sessions_table` of the new, validated rows.
        features: `features_table` of the same rows, or its `FEATURE_KEYS` alone (every
            row's features are recomputed over the merged dataset).
        labels: `sessionID -> anomaly type` for new rows (may be empty).
        validation: `ValidationReport.summary()` of this batch.
        source: what the rows came from (recorded in the manifest).
        parent: the dataset this one extends (None starts a fresh lineage).

    Returns:
        `(dataset, added)`: the new dataset (or the parent, unchanged) and the number of
        sessions it added.
    """
    sessions, labels = _merge(parent, sessions, features, labels)
    digest = content_hash(sessions)
    if parent is not None and parent.manifest.get("content_hash") == digest:
        return parent, 0
    added = len(sessions) - (parent.manifest["rows"]["sessions"] if parent else 0)
    created = datetime.now(UTC)
    dataset_id = f"{created:%Y%m%dT%H%M%S%f}Z-{digest[:8]}"
    final = datasets_dir(data_dir) / dataset_id
    staging = final.with_name(f".staging-{dataset_id}")
    staging.mkdir(parents=True)
    try:
        sessions.to_parquet(staging / "sessions.parquet", index=False)
        rows = len(sessions)
        sites = {str(k): int(v) for k, v in sessions["siteID"].value_counts().items()}
        del sessions  # the features pass reads the file back a chunk at a time
        release_freed_memory()
        # a row's station context depends on the rows before it: recompute every row's features
        features = features_table(add_features_in_chunks(
            file_chunks(staging / "sessions.parquet"), lambda frame: frame[FEATURE_KEYS]))
        features.to_parquet(staging / "features.parquet", index=False)
        if labels:
            pd.DataFrame({"sessionID": list(labels), "anomaly_type": list(labels.values())}) \
                .to_parquet(staging / "labels.parquet", index=False)
        times = features["connectionTime"]
        manifest = {
            "dataset_id": dataset_id, "created_at": created.isoformat(),
            "parent": parent.dataset_id if parent else None,
            "rows": {"sessions": rows, "features": len(features),
                     "labels": len(labels), "added": added},
            "date_range": {"start": times.min().isoformat() if len(times) else None,
                           "end": times.max().isoformat() if len(times) else None},
            "sites": sites,
            "content_hash": digest, "feature_version": FEATURE_VERSION,
            "feature_columns": FEATURE_COLUMNS, "validation": validation,
            "validation_passed": bool(validation.get("passed", True)), "source": source,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Dataset(dataset_id, final, manifest), added
