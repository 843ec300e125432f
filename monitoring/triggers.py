"""Where the monitoring consumer gets its drift reference and how it starts retraining.

Both are small callables handed to `MonitoringConsumer`, so tests (and other
deployments) can pass their own: a reference dict, or a launcher that records.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

from pipelines.models import registry
from pipelines.settings import Settings

log = logging.getLogger(__name__)


class ChampionReference:
    """The champion's training-time reference, reloaded only when the champion changes.

    Reads `pipelines.models.registry` (contract §4): `champion_version` is polled each
    call, `load_champion(...).reference` is loaded on a new version. While the
    registry is unreachable the last known reference is kept.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version: str | None = None
        self._reference: dict[str, list[float]] | None = None

    def __call__(self) -> dict[str, list[float]] | None:
        if not registry.store_exists(self.settings):
            return None  # nothing trained yet; do not import MLflow or create its store
        try:
            version = registry.champion_version(self.settings)
            if version is not None and version != self.version:
                self._reference = dict(registry.load_champion(self.settings).reference)
                self.version = version
                log.info("drift reference from champion version %s", version)
        except Exception as exc:  # noqa: BLE001 (MLflow away: keep the last reference)
            log.warning("champion lookup failed, keeping reference of v%s: %s", self.version, exc)
        return self._reference


def prefect_launcher(deployment: str, api_url: str | None = None):
    """A launcher that creates a flow run of `deployment` with `reason` as its parameter.

    Args:
        deployment: "flow name/deployment name", e.g. "train_flow/train-weekly".
        api_url: the Prefect API to talk to; None = the ambient one (inside a flow).

    Returns:
        A callable reason -> flow run id. It returns at once; the run is picked up
        by the deployment's work pool.
    """

    def launch(reason: str) -> str:
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        scope = temporary_settings({PREFECT_API_URL: api_url}) if api_url else nullcontext()
        with scope:
            run = run_deployment(name=deployment, parameters={"reason": reason}, timeout=0,
                                 as_subflow=False, tags=["evguard", "retrain-trigger"])
        return str(run.id)

    return launch
