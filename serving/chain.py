"""The factories of the worker's chain, Decode -> Score -> Publish -> Commit, and of its
scoring-only part, Decode -> Score -> Collect, which scores exactly as the worker does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving.champion import Scorer
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch
from serving.steps.collect import CollectStep
from serving.steps.commit import FIVE_PER_SECOND, CommitPolicy, CommitStep, Offsets
from serving.steps.dead_letters import (
    LENIENT,
    DeadLetterList,
    DeadLetterProducer,
    InvalidRatioTracker,
)
from serving.steps.decode import DecodeStep
from serving.steps.publish import PublishStep, RabbitPublisher
from serving.steps.score import FeatureFn, ScoreStep


@dataclass
class Chain:
    """The first step (where batches go in) and the publish step (to discard on revoke)."""

    head: DecodeStep
    score: ScoreStep
    publish: PublishStep
    commit: CommitStep

    def idle(self) -> bool:
        """True when no batch is anywhere in the chain."""
        return (self.head.carried is None and self.score.carried is None
                and self.publish.inflight == 0 and self.commit.waiting == 0)


@dataclass(frozen=True)
class ChainOptions:
    max_inflight_batches: int = 8
    commit_policy: CommitPolicy = FIVE_PER_SECOND
    explain_top_k: int = 3
    site_ids: frozenset[str] = frozenset()


def build_chain(*, commit: Callable[[Offsets, bool], None], publisher: RabbitPublisher,
                dead_letters: DeadLetterProducer, invalid_ratio: InvalidRatioTracker,
                current_model: Callable[[], Scorer], feature_fn: FeatureFn,
                metrics: WorkerMetrics, options: ChainOptions,
                on_done: Callable[[Batch], None] = lambda b: None) -> Chain:
    """Build a fresh chain for one partition assignment.

    Args:
        commit: commits offsets; `(offsets, synchronous)`.
        publisher: the RabbitMQ publisher (outlives chains).
        dead_letters: the dead-letter producer (outlives chains).
        invalid_ratio: the invalid-message limit (outlives chains).
        current_model: returns the model for the next batch.
        feature_fn: records -> feature frame (`pipelines.data.features.feature_matrix`).
        metrics: the worker's metrics.
        options: sizes and policies.
        on_done: called with each batch once it is committable.

    Returns:
        The chain.
    """
    commit_step = CommitStep(commit, dead_letters, options.commit_policy, on_done)
    publish_step = PublishStep(commit_step, publisher, metrics, options.max_inflight_batches)
    score_step = ScoreStep(publish_step, current_model, feature_fn, dead_letters, metrics,
                           options.explain_top_k)
    decode_step = DecodeStep(score_step, dead_letters, invalid_ratio, metrics, options.site_ids)
    return Chain(decode_step, score_step, publish_step, commit_step)


@dataclass
class ScoringChain:
    """Decode -> Score -> Collect: finished batches and dead letters stay in memory."""

    head: DecodeStep
    collected: CollectStep
    dead_letters: DeadLetterList


def build_scoring_chain(*, current_model: Callable[[], Scorer], feature_fn: FeatureFn,
                        options: ChainOptions,
                        metrics: WorkerMetrics | None = None) -> ScoringChain:
    """The worker's decode and score steps, with no broker behind them.

    Every message is decoded, validated, featurised, scored, explained and encoded
    as the worker does; nothing stops on invalid messages (they are collected).
    """
    metrics = metrics or WorkerMetrics()
    collected, dead_letters = CollectStep(), DeadLetterList()
    score_step = ScoreStep(collected, current_model, feature_fn, dead_letters, metrics,
                           options.explain_top_k)
    decode_step = DecodeStep(score_step, dead_letters, InvalidRatioTracker(LENIENT), metrics,
                             options.site_ids)
    return ScoringChain(decode_step, collected, dead_letters)
