"""The factories of the worker's chain, Decode -> Context -> Score -> Publish -> Commit, and of
its scoring-only part, Decode -> Context -> Score -> Collect, which scores exactly as the worker
does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keyed_state import PartitionState
from serving.champion import Scorer
from serving.prometheus import WorkerMetrics
from serving.stations import StationTracker
from serving.steps.base import Batch
from serving.steps.collect import CollectStep
from serving.steps.commit import FIVE_PER_SECOND, CommitPolicy, CommitStep, Offsets
from serving.steps.context import ContextStep, FlushState
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
    context: ContextStep
    score: ScoreStep
    publish: PublishStep
    commit: CommitStep

    def idle(self) -> bool:
        """True when no batch is anywhere in the chain."""
        return (self.head.carried is None and self.context.carried is None
                and self.score.carried is None
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
                tracker: StationTracker, flush_state: FlushState,
                state_poll: Callable[[], None], metrics: WorkerMetrics, options: ChainOptions,
                on_done: Callable[[Batch], None] = lambda b: None) -> Chain:
    """Build a fresh chain for one partition assignment.

    Args:
        commit: commits offsets; `(offsets, synchronous)`.
        publisher: the RabbitMQ publisher (outlives chains).
        dead_letters: the dead-letter producer (outlives chains).
        invalid_ratio: the invalid-message limit (outlives chains).
        current_model: returns the model for the next batch.
        feature_fn: (records, contexts) -> feature frame
            (`pipelines.data.features.feature_matrix`).
        tracker: the station context and health of the owned partitions (outlives chains).
        flush_state: starts the changelog writes of the state a batch changed.
        state_poll: serves the changelog writes' acknowledgements.
        metrics: the worker's metrics.
        options: sizes and policies.
        on_done: called with each batch once it is committable.

    Returns:
        The chain.
    """
    commit_step = CommitStep(commit, dead_letters, options.commit_policy, on_done, state_poll)
    publish_step = PublishStep(commit_step, publisher, metrics, options.max_inflight_batches)
    score_step = ScoreStep(publish_step, current_model, feature_fn, dead_letters, metrics,
                           options.explain_top_k)
    context_step = ContextStep(score_step, tracker, flush_state)
    decode_step = DecodeStep(context_step, dead_letters, invalid_ratio, metrics,
                             options.site_ids)
    return Chain(decode_step, context_step, score_step, publish_step, commit_step)


@dataclass
class ScoringChain:
    """Decode -> Context -> Score -> Collect: finished batches and dead letters stay in memory."""

    head: DecodeStep
    tracker: StationTracker
    collected: CollectStep
    dead_letters: DeadLetterList


def build_scoring_chain(*, current_model: Callable[[], Scorer], feature_fn: FeatureFn,
                        options: ChainOptions, tracker: StationTracker | None = None,
                        metrics: WorkerMetrics | None = None) -> ScoringChain:
    """The worker's decode, context and score steps, with no broker behind them.

    Every message is decoded, validated, given its station context, featurised,
    scored, explained and encoded as the worker does; nothing stops on invalid
    messages (they are collected). The station state stays in memory
    (`in_memory_tracker` unless a warmed-up `tracker` is given).
    """
    metrics = metrics or WorkerMetrics()
    tracker = tracker or in_memory_tracker()
    collected, dead_letters = CollectStep(), DeadLetterList()
    score_step = ScoreStep(collected, current_model, feature_fn, dead_letters, metrics,
                           options.explain_top_k)
    context_step = ContextStep(score_step, tracker)
    decode_step = DecodeStep(context_step, dead_letters, InvalidRatioTracker(LENIENT), metrics,
                             options.site_ids)
    return ScoringChain(decode_step, tracker, collected, dead_letters)


def in_memory_tracker(tick_s: float = float("inf")) -> StationTracker:
    """A station tracker whose state is one in-memory partition state, with no changelog."""
    state = PartitionState(0)
    return StationTracker(lambda _p: state, lambda: [0], tick_s)
