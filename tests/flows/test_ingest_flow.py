"""Smoke test of `ingest_flow` under the Prefect test harness (logic is tested in pipelines)."""

from __future__ import annotations

import pytest

from pipelines.data.datasets import latest_dataset
from pipelines.settings import load_settings


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """The flow builds its settings from the environment: point it at a private data dir."""
    monkeypatch.setenv("EVGUARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVGUARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EVGUARD_ACN_TOKEN", "")
    return tmp_path


def test_ingest_flow_writes_a_dataset_and_publishes_the_validation_table(prefect_harness,
                                                                         data_env):
    from prefect.artifacts import Artifact

    from flows.ingest import IngestParams, ingest_flow

    result = ingest_flow(IngestParams(sessions=400, seed=5, anomaly_rate=0.05))
    assert result["source"]["kind"] == "synth"  # no token: synthetic by default
    assert result["added"] + result["quarantined"] == 400 and result["quarantined"] > 0
    assert latest_dataset(load_settings()).dataset_id == result["dataset_id"]
    artifact = Artifact.get("ingest-validation")
    assert artifact is not None and "of 400 rows failed" in artifact.data

    again = ingest_flow(IngestParams(sessions=400, seed=5, anomaly_rate=0.05))
    assert again["added"] == 0 and again["dataset_id"] == result["dataset_id"]

    state = ingest_flow(IngestParams(sessions=100, seed=6, anomaly_rate=0.6, fresh=True),
                        return_state=True)
    assert state.is_failed()
    assert "validation failed" in str(state.result(raise_on_failure=False))
