"""Great Expectations suites: planted bad rows, synthetic anomalies, the real exports."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.contracts.dates import format_date, parse_dates
from pipelines.data.anomalies import RULE_BREAKING_ANOMALIES
from pipelines.data.exports import load_export
from pipelines.data.features import add_features, sessions_to_frame
from pipelines.data.synth import generate_sessions
from pipelines.data.validation import (
    quarantine_failed_rows,
    quarantined_keys,
    record_key,
    validate_batch,
)


def _set_last_edit(record: dict, **values) -> dict:
    record["userInputs"] = [dict(record["userInputs"][-1], **values)]
    return record


def _shorten(record: dict, **values) -> dict:
    """The same session over 1 hour (done after 50 minutes)."""
    connect = parse_dates([record["connectionTime"]])[0]
    record.update(disconnectTime=format_date(connect + pd.Timedelta(hours=1)),
                  doneChargingTime=format_date(connect + pd.Timedelta(minutes=50)), **values)
    return record


# (what is planted, the expectation that must catch it)
PLANTED = [
    (lambda r: r.update(sessionID=None), "raw_sessions.expect_column_values_to_not_be_null(sessionID)"),
    (lambda r: r.update(connectionTime="yesterday"), "not_be_null(connectionTime)"),
    (lambda r: r.update(kWhDelivered="lots"), "not_be_null(kWhDelivered)"),
    (lambda r: r.update(kWhDelivered=-3.0), "to_be_between(kWhDelivered)"),
    (lambda r: r.update(disconnectTime=r["connectionTime"]), "a_to_be_greater_than_b(disconnectTime)"),
    (lambda r: r.update(siteID="9999"), "to_be_in_set(siteID)"),
    (lambda r: r.update(timezone="Europe/Paris"), "to_be_in_set(timezone)"),
    (lambda r: r.update(stationID="station seven"), "to_match_regex(stationID)"),
    (lambda r: r.update(userID="bob"), "to_match_regex(userID)"),
    (lambda r: r.update(userInputs="none given"), "to_be_in_set(userInputs)"),
    (lambda r: _set_last_edit(r, kWhRequested=0.0), "to_be_between(kWhRequested)"),
    (lambda r: _set_last_edit(r, WhPerMile=12), "to_be_between(WhPerMile)"),
    (lambda r: r.update(doneChargingTime="Sat, 05 Jan 2019 00:00:00 GMT"),
     "features.expect_column_values_to_be_between(charging_hours)"),
    (lambda r: r.update(doneChargingTime="Thu, 31 Dec 2099 00:00:00 GMT"), "(idle_hours)"),
    (lambda r: _shorten(r, kWhDelivered=70.0), "(avg_kw)"),
    (lambda r: r.update(disconnectTime="Thu, 31 Dec 2099 00:00:00 GMT"), "(connection_hours)"),
]


@pytest.fixture(scope="module")
def clean_records():
    records, _ = generate_sessions(120, seed=21)
    # plant only into level-2 sessions that have user inputs and a done time
    return [r for r in records if r["userInputs"] and r["doneChargingTime"]]


def test_every_planted_bad_row_is_caught_with_its_reason(clean_records, tmp_path):
    records = [dict(r) for r in clean_records[:60]]
    planted = {}
    for i, (plant, expected) in enumerate(PLANTED):
        plant(records[i * 3])
        planted[i * 3] = expected
    report = validate_batch(add_features(sessions_to_frame(records)), max_failure_rate=0.5)
    assert set(report.failures) == set(planted)
    for row, expected in planted.items():
        assert any(expected in reason for reason in report.failures[row]), (expected,
                                                                            report.failures[row])
    path = quarantine_failed_rows(records, report, tmp_path / "quarantine", "run-1")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["row"] for line in lines] == sorted(planted)
    for line in lines:
        assert line["record"] == json.loads(json.dumps(records[line["row"]], default=str))
        assert line["failed"] == report.failures[line["row"]]
    assert quarantined_keys(tmp_path / "quarantine") == {record_key(records[r]) for r in planted}
    assert "| raw_sessions | expect_column_values_to_be_in_set | siteID | 1 |" in report.markdown()


def test_duplicates_and_missing_columns_fail(clean_records):
    records = clean_records[:5] + [clean_records[0]]
    frame = add_features(sessions_to_frame(records))
    report = validate_batch(frame, max_failure_rate=0.0)
    assert set(report.failures) == {0, 5} and not report.passed
    broken = validate_batch(frame.drop(columns=["avg_kw"]), max_failure_rate=0.0)
    assert broken.failed_rows == len(frame)
    assert all(any("expect_table_columns_to_match_set" in r for r in reasons)
               for reasons in broken.failures.values())


def test_synthetic_data_passes_except_rule_breaking_anomalies():
    records, labels = generate_sessions(1500, seed=4, anomaly_rate=0.1)
    report = validate_batch(add_features(sessions_to_frame(records)), max_failure_rate=0.1)
    failed_ids = {records[i]["sessionID"] for i in report.failures}
    flagged = {sid for sid, kind in labels.items() if kind in RULE_BREAKING_ANOMALIES}
    assert flagged and failed_ids == flagged
    assert report.passed


def test_every_real_export_parses_and_validates(shared_acn):
    for path in sorted(shared_acn.glob("*.json")):
        records = load_export(path)
        report = validate_batch(add_features(sessions_to_frame(records)), max_failure_rate=0.05)
        assert report.rows == len(records) > 0
        assert report.passed, (path.name, report.markdown())
        summary = report.summary()
        assert summary["failed_rows"] == len(report.failures)
        for row, reasons in report.failures.items():  # reported with a reason each
            assert reasons and records[row]["sessionID"]
        print(f"{path.name}: {report.failed_rows} of {report.rows} rows failed",
              [reasons for reasons in report.failures.values()])
