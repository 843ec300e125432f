"""The one factory that builds the chain: Decode -> Score -> Publish -> Commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving.commit import FIVE_PER_SECOND, CommitPolicy, CommitStep, Offsets
from serving.dlq import DeadLetterProducer, InvalidRatioTracker
from serving.metrics import WorkerMetrics
from serving.model import Scorer
from serving.publish import PublishStep, RabbitPublisher
from serving.steps import DecodeStep, FeatureFn, ScoreStep
from serving.strategy import Batch


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
        feature_fn: records -> feature frame (`pipelines.features.feature_matrix`).
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
