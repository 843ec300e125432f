"""The model the worker scores with (`Scorer`), and its hot reload from the `champion` alias."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from pipelines.models.registry import NoChampionError, RegistryUnavailable

log = logging.getLogger("evguard.serving.champion")


@runtime_checkable
class Scorer(Protocol):
    """What the worker needs of a model (contract §4, `pipelines.models.registry.ChampionModel`)."""

    name: str
    version: str
    threshold: float
    feature_version: str
    feature_columns: Sequence[str]

    def score(self, features) -> np.ndarray:
        """One score per row; higher is more anomalous."""

    def explain(self, features, top_k: int = 3) -> list[list[dict]]:
        """Top contributions per row: dicts with feature, value, contribution, typical."""


class UnusableModelError(RuntimeError):
    """The champion cannot serve: it does not load, or fails on a sample session."""


class IncompatibleModelError(UnusableModelError):
    """The model needs a feature column that this code does not compute."""


def check_compatible(model: Scorer, computed_columns: Sequence[str] | None) -> None:
    """A model serves if every column it was trained on is computed here.

    Feature versions only add columns (`f3` = `f2` + station context), so an
    older champion keeps serving while a newer one must beat it to be promoted.
    """
    if computed_columns is None:
        return
    missing = [c for c in model.feature_columns if c not in set(computed_columns)]
    if missing:
        raise IncompatibleModelError(
            f"model {model.name} v{model.version} was trained on features "
            f"{model.feature_version!r} and needs {missing}, which this worker does not "
            f"compute; retrain it (`evguard train`) or deploy the matching code."
        )


def served_stamp(model: Scorer) -> str:
    """What the registry poll answers while `model` serves: its version, and the time of its
    threshold's re-calibration when it has one (`pipelines.models.registry.champion_stamp`)."""
    return str(getattr(model, "stamp", model.version))


class ChampionWatcher:
    """Serves one model and swaps in a new champion between batches, loaded off the hot path.

    A daemon thread polls `poll_version` every `interval_s`; when the champion
    changes, it loads it with `load` and leaves it for `current()` to pick up.
    If the registry is unreachable or the new model is broken, the loaded model
    keeps serving.
    """

    def __init__(self, load: Callable[[], Scorer], poll_version: Callable[[], str | None],
                 interval_s: float, feature_columns: Sequence[str] | None = None,
                 on_swap: Callable[[Scorer], None] = lambda m: None,
                 on_error: Callable[[], None] = lambda: None,
                 warmup: Callable[[Scorer], None] = lambda m: None) -> None:
        self._load = load
        self._warmup = warmup
        self._poll_version = poll_version
        self.interval_s = interval_s
        self.feature_columns = feature_columns
        self._on_swap = on_swap
        self._on_error = on_error
        self._current: Scorer | None = None
        self._next: Scorer | None = None
        self._rejected_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Scorer:
        """Load the champion now, then start watching.

        Raises:
            NoChampionError: there is no champion.
            RegistryUnavailable: the registry cannot be read.
            UnusableModelError: the champion does not load or fails on a sample session
                (`IncompatibleModelError`: it needs a feature this code does not compute).
        """
        try:
            version = self._poll_version()
        except Exception as exc:
            raise RegistryUnavailable(f"cannot read the model registry: {exc}") from exc
        if version is None:
            raise NoChampionError(
                "no champion model is registered: train one first with `evguard train` "
                "(or the train-weekly deployment), then start the worker again."
            )
        try:
            model = self._load()
        except Exception as exc:
            raise UnusableModelError(f"cannot load the champion model v{version}: {exc}") from exc
        check_compatible(model, self.feature_columns)
        try:
            self._warmup(model)
        except Exception as exc:
            raise UnusableModelError(f"champion v{version} fails on a sample session: {exc}") from exc
        self._current = model
        self._on_swap(model)
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._watch, name="champion-watcher",
                                            daemon=True)
            self._thread.start()
        return model

    def current(self) -> Scorer:
        """The model for the next batch; takes a freshly loaded one if there is one."""
        candidate = self._next
        if candidate is not None:
            self._next = None
            old = self._current
            self._current = candidate
            log.info("model swapped: %s v%s -> v%s", candidate.name,
                     getattr(old, "version", "?"), candidate.version)
            self._on_swap(candidate)
        assert self._current is not None, "start() first"
        return self._current

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_now(self) -> None:
        """One poll of the registry (what the thread does every interval)."""
        try:
            version = self._poll_version()
        except Exception as exc:  # noqa: BLE001 - unreachable registry: keep serving
            log.warning("model registry unreachable (%s); still serving v%s",
                        exc, self._current.version if self._current else "?")
            self._on_error()
            return
        pending = self._next or self._current
        if version is None:
            log.warning("the champion alias is gone; still serving v%s",
                        pending.version if pending else "?")
            return
        if pending is not None and str(version) == served_stamp(pending):
            return
        if version == self._rejected_version:
            return
        t0 = time.monotonic()
        try:
            model = self._load()
            check_compatible(model, self.feature_columns)
            self._warmup(model)  # lazy imports and explainers are built here, not in a batch
        except IncompatibleModelError as exc:
            log.error("not swapping to champion v%s: %s", version, exc)
            self._rejected_version = version  # retrying cannot help
            self._on_error()
            return
        except Exception:
            log.exception("cannot load champion v%s; still serving the loaded model", version)
            self._on_error()
            return
        log.info("loaded champion %s (threshold %.6g) in %.1fs; it scores from the next batch",
                 served_stamp(model), model.threshold, time.monotonic() - t0)
        self._next = model

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_now()
