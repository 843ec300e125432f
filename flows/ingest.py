"""The ingest deployment: source -> validate -> features -> versioned dataset.

Each step is a `pipelines.data.ingest` function wrapped as a task. The source is the
ACN-Data API when a token is set, else seeded synthetic sessions (`source=auto`).
The validation table is published as a markdown artifact (key `ingest-validation`)
before the batch is accepted or refused, so a refused batch still shows why.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pipelines.data import ingest
from pipelines.data.acn import ACN_SITES, AcnError
from pipelines.settings import Settings, load_settings

AcnSite = Literal["caltech", "jpl", "office001"]  # = pipelines.data.acn.ACN_SITES


class IngestParams(BaseModel):
    source: Literal["auto", "synth", "files", "acn"] = Field(
        "auto", description="auto = the ACN API when EVGUARD_ACN_TOKEN is set, else synthetic")
    sessions: int = Field(5000, ge=1, le=10_000_000, description="Synthetic sessions")
    seed: int = Field(42, description="Synthetic seed; the same seed re-ingests nothing new")
    anomaly_rate: float = Field(0.02, ge=0, le=1, description="Synthetic anomaly fraction")
    paths: list[str] = Field(default_factory=list, description="Export files or directories")
    labels: str | None = Field(None, description="files: labels JSON from `evguard data synth`")
    sites: list[AcnSite] = Field(default_factory=lambda: list(ACN_SITES), min_length=1)
    start: datetime | None = Field(None, description="ACN lower bound; default: last run")
    end: datetime | None = Field(None, description="ACN upper bound; default: now")
    max_failure_rate: float | None = Field(
        None, ge=0, le=1, description="Refuse the batch above this; empty = setting")
    fresh: bool = Field(False, description="Start a new dataset lineage")

    def to_source(self, settings: Settings) -> ingest.Source:
        kind = self.source
        if kind == "auto":
            kind = "acn" if settings.acn_token.get_secret_value() else "synth"
        if kind == "files":
            if not self.paths:
                raise ValueError("source=files needs at least one path")
            return ingest.FileSource(tuple(self.paths), self.labels)
        if kind == "acn":
            return ingest.AcnSource(tuple(self.sites), self.start, self.end)
        return ingest.SynthSource(self.sessions, self.seed, self.anomaly_rate)


def transient_only(task, task_run, state) -> bool:
    """Retry the download on timeouts/429/5xx, never on auth errors or bad input."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, AcnError) and error.transient


load = task(ingest.load_source, name="load-sessions", retries=3,
            retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient_only,
            cache_policy=NO_CACHE)
admit = task(ingest.admit, name="deduplicate", cache_policy=NO_CACHE)
featurise = task(ingest.featurise, name="featurise", cache_policy=NO_CACHE)
validate = task(ingest.validate, name="validate-great-expectations", cache_policy=NO_CACHE)
quarantine = task(ingest.quarantine, name="quarantine-failed-rows", cache_policy=NO_CACHE)
publish = task(ingest.publish, name="write-dataset", cache_policy=NO_CACHE)


@flow(name="ingest_flow", description="Download/import/synthesise, validate, write a dataset")
def ingest_flow(params: IngestParams = IngestParams()) -> dict:  # noqa: B008
    """Ingest one batch; returns the `IngestReport` as a dict. Fails on a refused batch."""
    started = time.perf_counter()
    settings = load_settings()
    logger = get_run_logger()
    source = params.to_source(settings)
    rate = (settings.ingest_max_failure_rate if params.max_failure_rate is None
            else params.max_failure_rate)
    records, labels = load(settings, source)
    batch = admit(settings, records, labels, ingest.describe(source), params.fresh)
    del records, labels  # most of ingest's memory; the batch holds the new rows as a table
    batch = featurise(batch)
    report = validate(batch, rate)
    quarantine_path = quarantine(settings, batch, report)
    create_markdown_artifact(report.markdown(), key="ingest-validation",
                             description=f"Validation of ingest run {batch.run_id}")
    dataset, added = publish(settings, batch, report, quarantine_path)
    result = ingest.make_report(batch, report, quarantine_path, dataset, added, started)
    logger.info("ingest %s: %d in, %d new, %d quarantined, %d added -> %s", batch.run_id,
                result.rows_in, result.new_rows, result.quarantined, added, result.dataset_id)
    return result.as_dict()


if __name__ == "__main__":
    ingest_flow()
