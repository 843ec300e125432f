"""A re-calibrated threshold on a real sqlite MLflow: recorded, served, replaced, stamped."""

from __future__ import annotations

import pytest

from pipelines.models import registry
from tests.support.champion import register_champion


@pytest.fixture(scope="module")
def store(base_settings, tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow-calibration")
    return base_settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{path}/mlflow.db",
                                            "state_dir": path / "state"})


def test_a_recorded_calibration_is_served_replaced_and_stamped(store):
    from mlflow import MlflowClient

    champion = register_champion(store, seed=2, sessions=600, n_estimators=20)
    trained = champion.model.threshold
    before = registry.load_champion(store)
    assert before.threshold == before.original_threshold == trained
    assert not before.calibrated and before.calibration == {}
    assert registry.champion_stamp(store) == champion.version == before.stamp

    first = trained * 1.1
    stamp = registry.record_calibration(store, champion.version, first,
                                        {"window": "1200", "quantile": "0.99", "clamped": "true"},
                                        at=1_700_000_000.0)
    assert stamp.startswith(f"{champion.version}@") and stamp != champion.version
    assert registry.champion_stamp(store) == stamp
    loaded = registry.load_champion(store)
    assert loaded.threshold == pytest.approx(first) and loaded.calibrated
    assert loaded.original_threshold == pytest.approx(trained)
    assert loaded.model.threshold == pytest.approx(trained)  # the logged model is untouched
    assert loaded.stamp == stamp
    assert loaded.calibration["calibration_window"] == "1200"
    assert loaded.calibration["calibrated_at"].startswith("2023-11-14T22:13:20")
    assert registry.load_version(store, champion.version).threshold == pytest.approx(first)

    second = trained * 0.95
    newer = registry.record_calibration(store, champion.version, second,
                                        {"window": "3000", "quantile": "0.99"},
                                        at=1_700_086_400.0)
    assert newer != stamp and registry.champion_stamp(store) == newer
    reloaded = registry.load_champion(store)
    assert reloaded.threshold == pytest.approx(second)
    assert reloaded.original_threshold == pytest.approx(trained)
    assert reloaded.calibration["calibration_window"] == "3000"
    assert "calibration_clamped" not in reloaded.calibration  # the first one's evidence is gone

    client = MlflowClient(store.mlflow_uri)
    run_id = client.get_model_version(store.model_name, champion.version).run_id
    history = client.get_metric_history(run_id, registry.CALIBRATED_THRESHOLD)
    assert sorted(m.timestamp for m in history) == [1_700_000_000_000, 1_700_086_400_000]
    assert {round(m.value, 9) for m in history} == {round(first, 9), round(second, 9)}


def test_a_new_champion_serves_its_own_trained_threshold(store):
    old = register_champion(store, seed=4, sessions=600, n_estimators=20)
    registry.record_calibration(store, old.version, old.model.threshold * 1.2, {"window": "999"})
    new = register_champion(store, seed=5, sessions=600, n_estimators=20)
    loaded = registry.load_champion(store)
    assert loaded.version == new.version and not loaded.calibrated
    assert loaded.threshold == pytest.approx(new.model.threshold)
    assert registry.champion_stamp(store) == new.version


def test_a_non_finite_threshold_is_refused(store):
    champion = register_champion(store, seed=6, sessions=600, n_estimators=20)
    with pytest.raises(ValueError, match="finite"):
        registry.record_calibration(store, champion.version, float("nan"), {})
    assert not registry.load_champion(store).calibrated
