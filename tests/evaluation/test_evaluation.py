"""The evaluation end to end: injection, split, ingest, training, registry, serving steps, baseline.

Real components throughout (Great Expectations, a private sqlite MLflow, the
worker's decode and score steps); only the grids are small. Synthetic sessions
without anomalies stand in for real exports in the first test; the second runs
on one real export and skips only when `../shared/acn` is absent.
"""

from __future__ import annotations

import json

import numpy as np

from evaluation.report import markdown_tables, pr_curves_png
from evaluation.scenarios import EvaluationConfig, run_evaluation
from evaluation.split import split_by_time
from pipelines.data.anomalies import ANOMALY_TYPES, RULE_BREAKING_ANOMALIES
from pipelines.data.synth import generate_sessions

SMALL_TRAINING = {"kinds": ["eif"], "n_estimators": [50], "max_samples": [256],
                  "extension_levels": [3], "em_draws": 0, "n_jobs": 1, "probes": 0}
SMALL_BASELINE = {"n_estimators": (50,), "max_samples": ("auto", 128)}


def _check_scenario(scenario: dict, scored_sessions: int) -> None:
    metrics = scenario["metrics"]
    assert metrics["sessions"] == scored_sessions == scenario["scored"]["sessions"]
    assert sum(metrics["injected_by_type"].values()) == metrics["injected"]
    assert metrics["real_sessions"] + metrics["injected"] == metrics["sessions"]
    for model in ("evguard", "baseline"):
        values = metrics[model]
        assert 0 <= values["pr_auc"] <= 1 and 0 <= values["roc_auc"] <= 1
        assert set(values["recall_by_type"]) == set(metrics["injected_by_type"])
        assert all(0 <= r <= 1 for r in values["recall_by_type"].values())
        assert 0 <= values["false_alert_rate"] <= 1
    # the baseline learns from exactly the validated rows evguard's training got
    assert scenario["baseline"]["training_rows"] == scenario["train"]["training_rows"]
    assert scenario["train"]["training_rows"] == (scenario["train"]["sessions"]
                                                  - scenario["train"]["quarantined_by_ingest"])
    validation, combined = metrics["validation"], metrics["combined"]
    for kind in metrics["injected_by_type"]:
        caught = combined["recall_by_type"][kind]
        assert caught >= validation["caught_by_type"][kind]
        assert caught >= metrics["evguard"]["recall_by_type"][kind]
        if kind in RULE_BREAKING_ANOMALIES:  # the suites reject these by design
            assert validation["caught_by_type"][kind] == 1.0, kind
        else:
            assert validation["caught_by_type"][kind] == 0.0, kind
    # the stream's rules are the feature suite's ranges: what they flag, validation rejects
    rules = metrics["stream_rules"]
    for kind, share in rules["caught_by_type"].items():
        assert share <= validation["caught_by_type"][kind], kind
        if share:  # a flagged fault is published as an anomaly, whatever the model says
            assert metrics["evguard"]["recall_by_type"][kind] >= share, kind
    assert rules["caught_by_type"].get("timestamp_inversion", 1.0) == 1.0
    assert rules["real_flagged_rate"] <= validation["real_quarantined_rate"]
    model_only = metrics["model_only"]
    assert 0 <= model_only["pr_auc"] <= 1
    for kind, recall in model_only["recall_by_type"].items():
        assert recall <= metrics["evguard"]["recall_by_type"][kind], kind
    # monitoring's weekly re-calibration, replayed over the scored sessions as they arrive
    recalibrated = metrics["monitoring_recalibration"]
    assert 0 <= recalibrated["false_alert_rate"] <= 1 and 0 <= recalibrated["recall"] <= 1
    assert recalibrated["recalibrations"] >= 0 and recalibrated["window_scores"] > 0
    if recalibrated["recalibrations"] == 0:  # the trained threshold stayed in force
        assert recalibrated["false_alert_rate"] == metrics["evguard"]["false_alert_rate"]
    match = metrics["explanations"]["top_feature_match"]
    assert match is None or 0 <= match <= 1
    assert scenario["model"]["scored_with_champion"] is True
    assert metrics["dead_lettered"] == 0


def test_evaluation_end_to_end_on_sessions_without_anomalies(base_settings, tmp_path):
    records, labels = generate_sessions(1200, seed=5, anomaly_rate=0.0)
    assert not labels
    config = EvaluationConfig(rate=0.05, seed=2, train=SMALL_TRAINING,
                              baseline_grid=SMALL_BASELINE)

    result = run_evaluation(base_settings, records, config, tmp_path / "work")

    report = json.loads(json.dumps(result.report))  # JSON-safe, as written by the CLI
    assert report["injected"] == round(0.05 * len(records))
    assert report["failed"] == {} and report["skipped"] == {}
    assert set(report["scenarios"]) == {"time_split", "cross_site"}
    timed, crossed = report["scenarios"]["time_split"], report["scenarios"]["cross_site"]

    n_scored = round(0.3 * len(records))
    _check_scenario(timed, n_scored)
    assert timed["train"]["sessions"] == len(records) - n_scored
    assert timed["train"]["time_range"]["end"] <= timed["scored"]["time_range"]["start"]
    assert timed["train"]["injected"] + timed["metrics"]["injected"] == report["injected"]
    assert set(timed["metrics"]["injected_by_type"]) == set(ANOMALY_TYPES)

    jpl = [r for r in records if r["siteID"] == "0001"]
    caltech = [r for r in records if r["siteID"] == "0002"]
    _check_scenario(crossed, len(jpl))
    assert crossed["train"]["sessions"] == len(caltech)
    assert crossed["model"]["name"] != timed["model"]["name"]

    for title, curves in result.curves.items():
        assert len(curves["evguard"]) == len(curves["baseline"]) == len(curves["labels"])
        assert curves["labels"].sum() == next(s["metrics"]["injected"] for s in
                                              report["scenarios"].values()
                                              if s["title"] == title)
        assert np.isfinite(curves["evguard"]).all()
    assert pr_curves_png(result.curves).startswith(b"\x89PNG")
    assert "| impossible_power |" in markdown_tables(report)


def test_time_split_puts_every_scored_session_after_training():
    records, _ = generate_sessions(300, seed=9, anomaly_rate=0.0)
    shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    train, scored = split_by_time(shuffled, 0.25)
    assert len(scored) == 75 and len(train) == 225
    assert {r["sessionID"] for r in train}.isdisjoint(r["sessionID"] for r in scored)
    from pipelines.contracts.dates import parse_dates

    last_train = parse_dates([r["connectionTime"] for r in train]).max()
    assert parse_dates([r["connectionTime"] for r in scored]).min() >= last_train


def test_evaluation_on_a_real_acn_export(base_settings, tmp_path, shared_acn):
    from pipelines.data.exports import load_export

    records = load_export(shared_acn / "jpl_2019q1.json")
    config = EvaluationConfig(rate=0.03, seed=1, train_site=None, score_site=None,
                              train=SMALL_TRAINING, baseline_grid=SMALL_BASELINE)

    report = run_evaluation(base_settings, records, config, tmp_path / "work").report

    assert report["injected"] == round(0.03 * len(records))
    assert set(report["scenarios"]) == {"time_split"}
    scenario = report["scenarios"]["time_split"]
    _check_scenario(scenario, round(0.3 * len(records)))
    metrics = scenario["metrics"]
    prevalence = metrics["injected"] / metrics["sessions"]
    # ranking real faults well above chance, on real sessions
    assert metrics["evguard"]["pr_auc"] > 3 * prevalence
    assert metrics["validation"]["real_quarantined_rate"] < 0.01


def test_evaluate_command_explains_bad_input(tmp_path):
    from typer.testing import CliRunner

    from evguard.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["evaluate"])
    assert missing.exit_code == 2 and "--acn" in missing.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"_meta": {}, "_items": [1, 2]}')
    result = runner.invoke(app, ["evaluate", "--acn", str(broken), "--out",
                                 str(tmp_path / "out.json")])
    assert result.exit_code == 1
    assert "not a session object" in " ".join(result.output.split())
    assert not (tmp_path / "out.json").exists()
