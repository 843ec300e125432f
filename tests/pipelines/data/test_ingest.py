"""Ingest without Prefect: export import, datasets, quarantine, idempotent re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data.anomalies import RULE_BREAKING_ANOMALIES
from pipelines.data.datasets import DatasetNotFound, latest_dataset, list_datasets
from pipelines.data.exports import ExportFormatError, load_export, load_exports
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION
from pipelines.data.ingest import FileSource, SynthSource, ValidationFailed, run_ingest
from pipelines.data.synth import generate_sessions
from pipelines.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", state_dir=tmp_path / "state")


def test_both_export_shapes_import_and_others_are_refused(tmp_path):
    records, _ = generate_sessions(6, seed=2)
    (tmp_path / "export.json").write_text(json.dumps(
        {"_meta": {"site": "caltech", "start": "x", "end": "y", "min_kWh": None},
         "_items": records[:4]}))
    (tmp_path / "bare.json").write_text(json.dumps(records[4:]))
    assert load_export(tmp_path / "export.json") == records[:4]
    assert load_exports([tmp_path]) == records[4:] + records[:4]  # directory, sorted by name
    (tmp_path / "other.json").write_text(json.dumps({"sessions": []}))
    with pytest.raises(ExportFormatError, match="other.json.*_items"):
        load_export(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ExportFormatError, match="not valid JSON"):
        load_export(tmp_path / "broken.json")


def test_synthetic_ingest_writes_a_dataset_and_quarantines_rule_breakers(settings):
    with pytest.raises(DatasetNotFound, match="evguard ingest"):
        latest_dataset(settings)
    steps = []
    report = run_ingest(settings, SynthSource(sessions=600, seed=9, anomaly_rate=0.1),
                        progress=lambda step, done, total: steps.append(step))
    records, labels = generate_sessions(600, seed=9, anomaly_rate=0.1)
    rule_breakers = {s for s, kind in labels.items() if kind in RULE_BREAKING_ANOMALIES}

    assert steps == ["load", "admit", "features", "validate", "quarantine", "write"]
    assert report.quarantined == len(rule_breakers) and report.added == 600 - len(rule_breakers)
    quarantined = [json.loads(line)
                   for line in Path(report.quarantine_path).read_text().splitlines()]
    assert {q["sessionID"] for q in quarantined} == rule_breakers
    assert all(q["failed"] for q in quarantined)

    dataset = latest_dataset(settings)
    manifest = dataset.manifest
    assert dataset.dataset_id == report.dataset_id
    assert manifest["rows"]["sessions"] == manifest["rows"]["features"] == report.added
    assert manifest["feature_version"] == FEATURE_VERSION and manifest["validation_passed"]
    assert set(manifest["sites"]) == {"0001", "0002", "0019"}
    assert manifest["validation"]["failed_rows"] == report.quarantined
    assert manifest["date_range"]["start"] <= manifest["date_range"]["end"]
    features = dataset.features()
    assert list(features.columns[-len(FEATURE_COLUMNS):]) == FEATURE_COLUMNS
    assert features["connectionTime"].is_monotonic_increasing
    kept = {r["sessionID"]: r for r in records if r["sessionID"] not in rule_breakers}
    assert {r["sessionID"]: r for r in dataset.records()} == kept
    assert dataset.labels() == {s: k for s, k in labels.items() if s in kept}


def test_rerun_is_idempotent_and_new_data_extends_the_dataset(settings):
    first = run_ingest(settings, SynthSource(sessions=300, seed=1, anomaly_rate=0.05))
    files = {p: p.read_bytes() for p in (settings.data_dir / "datasets").rglob("*") if p.is_file()}
    again = run_ingest(settings, SynthSource(sessions=300, seed=1, anomaly_rate=0.05))
    assert again.added == 0 and again.new_rows == 0 and again.dataset_id == first.dataset_id
    assert again.known == first.added and again.previously_quarantined == first.quarantined
    assert {p: p.read_bytes() for p in (settings.data_dir / "datasets").rglob("*")
            if p.is_file()} == files

    more, _ = generate_sessions(50, seed=77, start=pd.Timestamp("2019-06-03"))
    export = settings.data_dir.parent / "more.json"
    export.write_text(json.dumps(more + more[:10]))  # duplicates inside the batch too
    grown = run_ingest(settings, FileSource((str(export),)))
    assert grown.duplicates == 10 and grown.added == 50
    latest = latest_dataset(settings)
    assert latest.manifest["parent"] == first.dataset_id
    assert latest.manifest["rows"]["sessions"] == first.added + 50
    assert len(list_datasets(settings.data_dir)) == 2
    assert latest.features()["sessionID"].is_unique


def test_a_batch_over_the_failure_threshold_never_reaches_a_dataset(settings):
    with pytest.raises(ValidationFailed) as info:
        run_ingest(settings, SynthSource(sessions=200, seed=3, anomaly_rate=0.5),
                   max_failure_rate=0.05)
    assert info.value.report.failure_rate > 0.05
    assert info.value.quarantine.exists()
    assert list_datasets(settings.data_dir) == []


def test_odd_records_are_quarantined_as_they_came_and_skipped_on_a_rerun(settings):
    records, _ = generate_sessions(120, seed=12)
    odd = [dict(records[0], siteID=2, note="not an ACN field"),  # a number where text belongs
           dict(records[1], kWhDelivered="12.5 kWh"), {"sessionID": "just-an-id"}]
    batch = odd + records[3:] + [dict(records[4], kWhDelivered=7)]  # an integer that passes
    export = settings.data_dir.parent / "odd.json"
    export.write_text(json.dumps(batch))
    first = run_ingest(settings, FileSource((str(export),)))
    lines = [json.loads(line) for line in Path(first.quarantine_path).read_text().splitlines()]
    assert [line["record"] for line in lines] == odd  # the records themselves, not a copy
    again = run_ingest(settings, FileSource((str(export),)))
    assert again.previously_quarantined == len(odd) and again.new_rows == 0
    assert latest_dataset(settings).sessions().set_index("sessionID").loc[
        records[4]["sessionID"], "kWhDelivered"] == 7
