"""The model registry: which version is the champion, and loading a registered version.

Aliases of the registered model `settings.model_name`:
- `champion`: the version serving uses;
- `previous`: the champion before the last promotion (for rollback);
- `challenger`: the last version that was valid but not better.
Who moves them is `pipelines.models.promotion`.

Every alias lookup goes through `find_version`, which tells "no such alias" (None)
from "the registry cannot be read" (`RegistryUnavailable`), so an MLflow outage is
never mistaken for a missing champion.

A threshold re-calibrated by monitoring (`pipelines.scores.calibration`) is
recorded on the model version as tags (`calibrated_threshold`, `calibrated_at`,
`calibration_*` evidence) and as the metric `calibrated_threshold` of the
version's training run (its history is the timeline). `load_champion` and
`load_version` serve it; the trained threshold stays readable as
`ChampionModel.original_threshold`. A worker notices a re-calibration by polling
`champion_stamp` (version and calibration), not `champion_version`.

This module stays cheap to import: MLflow (and the model classes, which need it)
are imported only where a version is read or loaded, because they take seconds
and the consumers and the dashboard import this module at start-up.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

CALIBRATED_THRESHOLD = "calibrated_threshold"  # tag of the version, and metric of its run
CALIBRATED_AT = "calibrated_at"
CALIBRATION_PREFIX = "calibration_"  # the evidence: calibration_window, calibration_quantile...


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


def champion_stamp(settings: Settings) -> str | None:
    """`<version>` or `<version>@<calibrated_at>` of `@champion`, or None: what a worker polls
    to reload on a new champion and on a re-calibrated threshold alike.

    Raises:
        RegistryUnavailable: the registry cannot be read.
    """
    found = find_version(mlflow_client(settings), settings.model_name, CHAMPION)
    return None if found is None else version_stamp(str(found.version), dict(found.tags))


def version_stamp(version: str, tags: Mapping[str, str]) -> str:
    """`ChampionModel.stamp` of a version with these tags."""
    at = tags.get(CALIBRATED_AT)
    return f"{version}@{at}" if at and calibrated_threshold(tags) is not None else version


def record_calibration(settings: Settings, version: str, threshold: float,
                       evidence: Mapping[str, str], at: float | None = None) -> str:
    """Serve `threshold` for `version` from now on, replacing any earlier calibration.

    Args:
        settings: the registry and model name.
        version: the registered version (normally the champion's).
        threshold: the re-calibrated threshold.
        evidence: short strings kept as `calibration_<key>` tags
            (`pipelines.scores.calibration.Calibration.evidence()`).
        at: epoch seconds of the calibration (now when None).

    Returns:
        The version's new stamp (see `champion_stamp`).

    Raises:
        ValueError: `threshold` is not finite.
        RegistryUnavailable: the registry cannot be written.
    """
    from mlflow.exceptions import MlflowException

    if not math.isfinite(threshold):
        raise ValueError(f"a calibrated threshold must be finite, got {threshold}")
    when = time.time() if at is None else at
    # ISO 8601 like `pipelines.contracts.dates.epoch_to_iso`, whose pandas this module avoids
    stamp_at = datetime.fromtimestamp(when, UTC).isoformat()
    client = mlflow_client(settings)
    name = settings.model_name
    try:
        found = client.get_model_version(name, version)
        stale = [k for k in found.tags if k.startswith(CALIBRATION_PREFIX)
                 and k.removeprefix(CALIBRATION_PREFIX) not in evidence]
        for key in stale:
            client.delete_model_version_tag(name, version, key)
        for key, value in evidence.items():
            client.set_model_version_tag(name, version, f"{CALIBRATION_PREFIX}{key}", str(value))
        client.set_model_version_tag(name, version, CALIBRATED_THRESHOLD, repr(float(threshold)))
        # written last: a reader polling the stamp sees it only once the threshold is there
        client.set_model_version_tag(name, version, CALIBRATED_AT, stamp_at)
        if found.run_id:
            client.log_metric(found.run_id, CALIBRATED_THRESHOLD, float(threshold),
                              timestamp=int(when * 1000))
    except MlflowException as exc:
        raise RegistryUnavailable(str(exc)) from exc
    except OSError as exc:
        raise RegistryUnavailable(f"unreachable: {exc}") from exc
    return f"{version}@{stamp_at}"


def calibrated_threshold(tags: Mapping[str, str]) -> float | None:
    """The re-calibrated threshold recorded in a version's tags, or None."""
    value = tags.get(CALIBRATED_THRESHOLD)
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


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
    original_threshold: float | None = None  # the trained one; `threshold` may be re-calibrated

    def __post_init__(self) -> None:
        if self.original_threshold is None:
            self.original_threshold = self.threshold

    @property
    def calibrated(self) -> bool:
        return calibrated_threshold(self.tags) is not None

    @property
    def stamp(self) -> str:
        """What `champion_stamp` answers while this model is the champion."""
        return version_stamp(self.version, self.tags)

    @property
    def calibration(self) -> dict[str, str]:
        """The recorded calibration: `calibrated_threshold`, `calibrated_at` and the evidence."""
        return {k: v for k, v in self.tags.items()
                if k in (CALIBRATED_THRESHOLD, CALIBRATED_AT) or k.startswith(CALIBRATION_PREFIX)}

    def score(self, features) -> np.ndarray:
        """Anomaly score per row of `features` (higher = more anomalous)."""
        return self.model.score(features)

    def explain(self, features, top_k: int = 3) -> list[list[dict]]:
        """Per row, the `top_k` dicts `{feature, value, contribution, typical}`."""
        return self.model.explain(features, top_k=top_k)


def _serving_view(settings: Settings, client: Any, found: Any) -> ChampionModel:
    model = load_model_version(settings, str(found.version))
    metrics = client.get_run(found.run_id).data.metrics if found.run_id else {}
    tags = dict(found.tags)
    calibrated = calibrated_threshold(tags)
    return ChampionModel(name=settings.model_name, version=str(found.version),
                         threshold=model.threshold if calibrated is None else calibrated,
                         feature_version=model.feature_version,
                         feature_columns=list(model.feature_columns),
                         reference=model.reference, model=model, metrics=dict(metrics),
                         tags=tags, original_threshold=model.threshold)


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
