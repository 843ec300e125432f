"""The replay deployment: stream ACN sessions into Kafka at a chosen pace."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, model_validator

from pipelines.settings import load_settings
from serving.replay import ReplayPace, ReplayReport, load_records, replay


class ReplayParams(BaseModel):
    source: Literal["synthetic", "dataset", "files"] = Field(
        "synthetic", description="Seeded generator, newest ingest dataset, or export files")
    paths: list[str] = Field([], description="ACN export files, for source=files")
    sessions: int = Field(1000, ge=1, le=5_000_000, description="Synthetic sessions")
    seed: int = Field(0, description="Seed of the synthetic generator")
    anomaly_rate: float = Field(0.02, ge=0, le=1, description="Share of injected anomalies")
    rate: float | None = Field(None, gt=0, description="Sessions per second; empty = no limit")
    speedup: float | None = Field(None, gt=0, description="Multiple of real time (by disconnect)")
    repeat: int = Field(1, ge=1, le=1000, description="Rounds, with unique sessionIDs per round")
    topic: str | None = Field(None, description="Kafka topic; empty = EVGUARD_TOPIC_SESSIONS")

    @model_validator(mode="after")
    def _one_pace(self) -> ReplayParams:
        ReplayPace(self.rate, self.speedup)  # raises on rate and speedup together
        if self.source == "files" and not self.paths:
            raise ValueError("source 'files' needs paths")
        return self


load_sessions = task(load_records, name="load-sessions", cache_policy=NO_CACHE)
produce = task(replay, name="produce-to-kafka", cache_policy=NO_CACHE)


def _progress_logger(every_s: float = 5.0):
    last = [time.monotonic()]

    def progress(report: ReplayReport) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            get_run_logger().info("delivered %d, failed %d (%.0f/s)", report.delivered,
                                  report.failed, report.rate)

    return progress


@flow(name="replay_flow", description="Stream ACN sessions into the Kafka sessions topic")
def replay_flow(params: ReplayParams = ReplayParams()) -> dict:  # noqa: B008
    """Load sessions, produce them at the chosen pace; returns the delivery counts."""
    settings = load_settings()
    records = load_sessions(params.source, settings, paths=params.paths,
                            sessions=params.sessions, seed=params.seed,
                            anomaly_rate=params.anomaly_rate)
    report = produce(settings, records, ReplayPace(params.rate, params.speedup),
                     topic=params.topic, repeat=params.repeat, progress=_progress_logger())
    summary = {"produced": report.produced, "delivered": report.delivered,
               "failed": report.failed, "seconds": round(report.seconds, 2),
               "rate_per_s": round(report.rate, 1)}
    create_markdown_artifact(
        "## Replay\n\n| source | topic | delivered | failed | seconds | sessions/s |\n"
        "|---|---|---|---|---|---|\n"
        f"| {params.source} | {params.topic or settings.topic_sessions} | {report.delivered} | "
        f"{report.failed} | {report.seconds:.1f} | {report.rate:.0f} |\n",
        key="replay-summary", description="Delivery counts of one replay")
    if report.failed:
        raise RuntimeError(f"{report.failed} sessions were not delivered: "
                           f"{dict(report.errors.most_common(3))}")
    return summary
