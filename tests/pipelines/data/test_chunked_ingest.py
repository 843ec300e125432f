"""Ingest and datasets work through the sessions in chunks to bound their memory; the
chunks must not show: the same features, records and dataset as in one piece."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data import datasets, ingest
from pipelines.data.datasets import records_from_table, sessions_table, table_chunks
from pipelines.data.features import (
    FEATURE_COLUMNS,
    add_features,
    add_features_in_chunks,
    sessions_to_frame,
)
from pipelines.data.synth import generate_sessions
from pipelines.settings import Settings


def _sessions_with_odd_ones(n: int) -> list[dict]:
    records, _ = generate_sessions(n, seed=5, anomaly_rate=0.1)
    odd = [dict(records[3], userInputs=None, userID=None), dict(records[4], timezone=None),
           dict(records[5], doneChargingTime=None), dict(records[6], kWhDelivered=None),
           dict(records[7], connectionTime="junk", sessionID="odd-1"), {}]
    return records[:300] + odd + records[300:]


@pytest.mark.parametrize("sizes", [[306 + 300], [100, 6, 200, 300], [1] * 5 + [601]])
def test_features_in_chunks_equal_one_call(sizes):
    records = _sessions_with_odd_ones(600)
    assert sum(sizes) == len(records)
    bounds = pd.Series(sizes).cumsum().tolist()
    chunks = [records[a:b] for a, b in zip([0] + bounds[:-1], bounds, strict=True)]
    whole = add_features(sessions_to_frame(records))
    pd.testing.assert_frame_equal(add_features_in_chunks(iter(chunks)), whole, check_exact=True)
    keys = ["sessionID", "connectionTime"]
    pd.testing.assert_frame_equal(add_features_in_chunks(chunks, lambda frame: frame[keys]),
                                  whole[keys + FEATURE_COLUMNS], check_exact=True)


def test_features_of_no_sessions_have_the_columns_of_one_call():
    pd.testing.assert_frame_equal(add_features_in_chunks([]), add_features(sessions_to_frame([])))


def test_records_read_back_in_chunks_equal_the_sessions_written():
    records, _ = generate_sessions(500, seed=3, anomaly_rate=0.1)
    records[10] = dict(records[10], kWhDelivered=None, userID=None, userInputs=None)
    table = sessions_table(records)
    assert records_from_table(table) == records
    chunks = list(table_chunks(table, chunk_rows=120))
    assert [len(c) for c in chunks] == [100] * 5
    assert [r for chunk in chunks for r in chunk] == records
    as_json = [json.dumps(r, sort_keys=True) for r in records]  # tells 1 from 1.0
    assert [json.dumps(r, sort_keys=True) for r in records_from_table(table)] == as_json


def test_a_batch_held_as_a_table_gives_back_every_record_exactly(monkeypatch):
    monkeypatch.setattr(datasets, "CHUNK_ROWS", 120)
    records, _ = generate_sessions(400, seed=8, anomaly_rate=0.1)
    odd = {7: dict(records[7], kWhDelivered=12), 130: dict(records[130], siteID=2),
           250: dict(records[250], note="extra key"), 333: {"sessionID": "only-an-id"}}
    records = [odd.get(i, r) for i, r in enumerate(records)]
    table, originals = datasets.exact_sessions_table(records)
    assert set(originals) == set(odd)
    assert table.equals(sessions_table(records))
    chunks = list(table_chunks(table, originals=originals))
    assert len(chunks) > 1
    as_json = [json.dumps(r, sort_keys=True) for r in records]  # tells 12 from 12.0
    assert [json.dumps(r, sort_keys=True) for chunk in chunks for r in chunk] == as_json


def test_a_cell_that_is_not_one_json_value_is_refused_as_before():
    records, _ = generate_sessions(5, seed=3)
    table = sessions_table(records)
    for bad in ('{"a": 1}, {"b": 2}', "[1] [2]", "{not json"):
        table.loc[2, "userInputs"] = bad
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad)
        with pytest.raises(json.JSONDecodeError):
            records_from_table(table)


def _ingest_twice(tmp_path, name: str) -> list:
    settings = Settings(_env_file=None, data_dir=tmp_path / name / "data",
                        state_dir=tmp_path / name / "state")
    reports = [ingest.run_ingest(settings, ingest.SynthSource(1500, seed, 0.05))
               for seed in (1, 2)]  # the second extends the first: a merge with a parent
    dataset = datasets.latest_dataset(settings)
    quarantined = [{k: v for k, v in json.loads(line).items() if k != "run_id"}
                   for r in reports if r.quarantine_path
                   for line in Path(r.quarantine_path).read_text().splitlines()]
    manifest = {k: v for k, v in dataset.manifest.items()
                if k not in ("dataset_id", "created_at", "parent")}
    return [dataset.sessions(), dataset.features(), dataset.labels(), manifest, quarantined,
            [(r.added, r.quarantined, r.validation) for r in reports]]


def test_ingest_in_chunks_writes_the_dataset_of_one_chunk(tmp_path, monkeypatch):
    one_chunk = _ingest_twice(tmp_path, "one")
    monkeypatch.setattr(datasets, "CHUNK_ROWS", 400)
    chunked = _ingest_twice(tmp_path, "chunked")
    for got, expected in zip(chunked[:2], one_chunk[:2], strict=True):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert len(one_chunk[0]) > 2 * 400 and one_chunk[4]  # several chunks, some quarantined
    assert chunked[2:] == one_chunk[2:]
