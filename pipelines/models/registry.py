"""The model registry: which version is the champion, and loading a registered version.

Aliases of the registered model `settings.model_name`:
- `champion`: the version serving uses;
- `previous`: the champion before the last promotion (for rollback);
- `challenger`: the last version that was valid but not better.
Who moves them is `pipelines.models.promotion`.

Every alias lookup goes through `find_version`, which tells "no such alias" (None)
from "the registry cannot be read" (`RegistryUnavailable`), so an MLflow outage is
never mistaken for a missing champion.

This module stays cheap to import: MLflow (and the model classes, which need it)
are imported only where a version is read or loaded, because they take seconds
and the consumers and the dashboard import this module at start-up.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.settings import Settings

if TYPE_CHECKING:  # imports MLflow: see the module docstring
    from pipelines.models.anomaly_model import SessionAnomalyModel

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"

# Versions logged before the packages were split pickled their classes under these
# module paths; while such a version loads, the old paths name today's modules.
LEGACY_MODULES = {"pipelines.model_package": "pipelines.models.anomaly_model",
                  "pipelines.estimators": "pipelines.models.estimators",
                  "pipelines.explain": "pipelines.models.explain"}
_legacy_paths_lock = threading.Lock()


class NoChampionError(LookupError):
    """The registered model has no `@champion` yet: train one first."""


class RegistryUnavailable(RuntimeError):
    """The registry cannot be read (MLflow down, or its store failing); not "no champion"."""


def mlflow_client(settings: Settings):
    """Point MLflow at the settings' tracking/registry store and return a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def store_exists(settings: Settings) -> bool:
    """False while a local sqlite store has not been created (nothing was trained yet)."""
    uri = settings.mlflow_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def find_version(client: Any, name: str, alias: str):
    """The model version behind `name@alias`, or None when the model or the alias is absent.

    Raises:
        RegistryUnavailable: the registry did not answer, or failed.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryUnavailable(str(exc)) from exc
    except OSError as exc:
        raise RegistryUnavailable(f"unreachable: {exc}") from exc


def champion_version(settings: Settings) -> str | None:
    """The version number behind `@champion`, or None (a cheap poll for the worker).

    Raises:
        RegistryUnavailable: the registry cannot be read.
    """
    found = find_version(mlflow_client(settings), settings.model_name, CHAMPION)
    return None if found is None else str(found.version)


@contextmanager
def _legacy_module_paths() -> Iterator[None]:
    with _legacy_paths_lock:
        added = [old for old in LEGACY_MODULES if old not in sys.modules]
        sys.modules.update({old: importlib.import_module(LEGACY_MODULES[old]) for old in added})
        try:
            yield
        finally:
            for old in added:
                sys.modules.pop(old, None)


def load_model_version(settings: Settings, version: str) -> SessionAnomalyModel:
    """The `SessionAnomalyModel` of one registered version (older layouts included)."""
    import mlflow.pyfunc

    mlflow_client(settings)
    with _legacy_module_paths():
        loaded = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    return loaded.unwrap_python_model()


@dataclass
class ChampionModel:
    """The serving view of a registered version, usually the champion (contract §4)."""

    name: str
    version: str
    threshold: float
    feature_version: str
    feature_columns: list[str]
    reference: dict[str, list[float]]
    model: SessionAnomalyModel
    metrics: dict[str, float] = field(default_factory=dict)  # of the training run
    tags: dict[str, str] = field(default_factory=dict)  # of the registered version

    def score(self, features) -> np.ndarray:
        """Anomaly score per row of `features` (higher = more anomalous)."""
        return self.model.score(features)

    def explain(self, features, top_k: int = 3) -> list[list[dict]]:
        """Per row, the `top_k` dicts `{feature, value, contribution, typical}`."""
        return self.model.explain(features, top_k=top_k)


def _serving_view(settings: Settings, client: Any, found: Any) -> ChampionModel:
    model = load_model_version(settings, str(found.version))
    metrics = client.get_run(found.run_id).data.metrics if found.run_id else {}
    return ChampionModel(name=settings.model_name, version=str(found.version),
                         threshold=model.threshold, feature_version=model.feature_version,
                         feature_columns=list(model.feature_columns),
                         reference=model.reference, model=model, metrics=dict(metrics),
                         tags=dict(found.tags))


def load_champion(settings: Settings) -> ChampionModel:
    """Load the current champion.

    Raises:
        NoChampionError: there is no champion yet.
        RegistryUnavailable: the registry cannot be read.
    """
    client = mlflow_client(settings)
    found = find_version(client, settings.model_name, CHAMPION)
    if found is None:
        raise NoChampionError(f"registered model {settings.model_name!r} has no @champion "
                              f"in {settings.mlflow_uri}; run `evguard train` first")
    return _serving_view(settings, client, found)


def load_version(settings: Settings, version: str) -> ChampionModel:
    """The serving view of any registered version (the evaluation scores non-champions too)."""
    client = mlflow_client(settings)
    return _serving_view(settings, client, client.get_model_version(settings.model_name, version))
