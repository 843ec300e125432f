"""What the dashboard reads besides the store: the champion panel tells "none" from "MLflow down"."""

from __future__ import annotations

from dashboard.sources import ChampionCache
from evguard.services.process import free_port
from pipelines.models import registry


def test_the_champion_panel_tells_no_champion_from_an_unreachable_registry(base_settings,
                                                                           tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not in minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = base_settings.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    assert ChampionCache(down).refresh()["state"] == "unavailable"

    empty = base_settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path}/empty.db"})
    assert ChampionCache(empty).refresh()["state"] == "none"  # no store yet
    assert registry.champion_version(empty) is None  # creates the store, still no champion
    none = ChampionCache(empty).refresh()
    assert none["state"] == "none" and "alias" in none["detail"]
