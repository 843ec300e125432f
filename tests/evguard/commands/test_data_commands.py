"""`evguard data synth | import | download` and `evguard ingest`, run in-process."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evguard.cli import app
from pipelines.data.datasets import latest_dataset
from pipelines.settings import load_settings
from tests.support.acn_server import LocalAcnServer


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EVGUARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVGUARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EVGUARD_ACN_TOKEN", "")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_every_data_command_has_help():
    for command in (["data"], ["data", "synth"], ["data", "import"], ["data", "download"],
                    ["ingest"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_synth_then_import_with_labels_then_rerun(env):
    out = env / "s.json"
    result = run("data", "synth", "--sessions", "300", "--seed", "8", "--anomaly-rate", "0.1",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    export = json.loads(out.read_text())
    labels = json.loads((env / "s.labels.json").read_text())
    assert len(export["_items"]) == 300 and len(labels) == 30

    result = run("data", "import", str(out), "--labels", str(env / "s.labels.json"))
    assert result.exit_code == 0, result.output
    assert "Validation passed" in result.output
    dataset = latest_dataset(load_settings())
    assert set(dataset.labels()) <= set(labels) and dataset.labels()

    again = run("ingest", "--source", "files", "--path", str(out))
    assert again.exit_code == 0 and latest_dataset(load_settings()).dataset_id == \
        dataset.dataset_id


def test_download_and_ingest_from_the_api_and_clear_errors(env, monkeypatch):
    from pipelines.data.synth import generate_sessions

    sessions = generate_sessions(40, seed=12, sites=("jpl",))[0]
    with LocalAcnServer({"jpl": sessions, "caltech": []}) as server:
        monkeypatch.setenv("EVGUARD_ACN_API_URL", server.api_url)
        result = run("data", "download", "--site", "jpl", "--start", "2019-01-01",
                     "--end", "2019-03-01")
        assert result.exit_code == 1 and "EVGUARD_ACN_TOKEN" in result.output

        monkeypatch.setenv("EVGUARD_ACN_TOKEN", server.token)
        result = run("data", "download", "--site", "jpl", "--start", "2019-01-01",
                     "--end", "2019-03-01", "--out", str(env / "jpl.json"))
        assert result.exit_code == 0, result.output
        assert len(json.loads((env / "jpl.json").read_text())["_items"]) == 40

        result = run("ingest", "--site", "jpl", "--start", "2019-01-01", "--end", "2019-03-01")
        assert result.exit_code == 0, result.output  # auto: a token is set -> the API
    manifest = latest_dataset(load_settings()).manifest
    assert manifest["source"]["kind"] == "acn" and manifest["rows"]["sessions"] == 40
