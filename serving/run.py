"""Running the worker: build it from the settings, map how it ended to an exit code."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from confluent_kafka import KafkaException

from keyed_state import producer_state_lost
from pipelines.contracts.sessions import EXAMPLE_SESSION
from pipelines.data.features import FEATURE_COLUMNS, feature_matrix
from pipelines.models import registry
from pipelines.models.registry import NoChampionError, RegistryUnavailable
from pipelines.settings import Settings
from serving.champion import ChampionWatcher, Scorer, UnusableModelError
from serving.kafka import KafkaUnavailable, ensure_topics
from serving.prometheus import WorkerMetrics
from serving.steps.commit import StateWriteError
from serving.steps.dead_letters import DeadLetterError, InvalidRatioExceeded
from serving.steps.score import FeatureFn
from serving.worker import ScoringWorker, WorkerReport, batch_log

EXIT_OK, EXIT_ERROR, EXIT_NO_MODEL, EXIT_INVALID_RATIO, EXIT_DEAD_LETTER = 0, 1, 2, 3, 4
EXIT_STATE_WRITE = 5
log = logging.getLogger("evguard.serving")


@dataclass
class ServeOutcome:
    """How a worker run ended: the process exit code, why, and its counts."""

    code: int
    message: str
    report: WorkerReport


def run_worker(settings: Settings, stop: threading.Event | None = None,
               idle_exit_s: float = 0.0) -> ServeOutcome:
    """Serve the champion until stopped (signal, `stop`, or idle).

    Exit codes: 0 stopped cleanly, 1 Kafka unreachable, 2 no usable champion,
    3 invalid-ratio limit, 4 dead letter not acknowledged, 5 station-state changelog write not
    acknowledged. Codes 4 and 5, and a producer whose broker lost its idempotence state, end
    the run only after `stream_resume_limit` rebuilds of the worker in place (a new consumer
    and new producers read on from the last commit; station state restored from the
    changelog) failed the same way.
    """
    metrics = WorkerMetrics()
    watcher = ChampionWatcher(
        load=lambda: registry.load_champion(settings),
        poll_version=lambda: registry.champion_stamp(settings),
        interval_s=settings.serve_model_poll_s, feature_columns=FEATURE_COLUMNS,
        on_swap=metrics.observe_model, on_error=metrics.model_reload_errors.inc,
        warmup=lambda model: warm_up(model, feature_matrix, settings.serve_explain_top_k))
    empty = WorkerReport()
    try:
        watcher.start()
    except (NoChampionError, RegistryUnavailable, UnusableModelError) as exc:
        return ServeOutcome(EXIT_NO_MODEL, f"cannot serve: {exc}", empty)
    try:
        ensure_topics(settings, timeout=10)
    except KafkaUnavailable as exc:
        watcher.stop()
        return ServeOutcome(EXIT_ERROR, f"Kafka is not usable at {settings.kafka_servers} ({exc}); "
                            "start it with `evguard services up`", empty)
    stop = stop or threading.Event()
    total = WorkerReport()
    try:
        for attempt in range(settings.stream_resume_limit + 1):
            worker = ScoringWorker(settings, watcher, feature_matrix, metrics)
            try:
                return ServeOutcome(EXIT_OK, "stopped cleanly",
                                    _add(total, worker.run(stop, idle_exit_s)))
            except InvalidRatioExceeded as exc:
                return ServeOutcome(EXIT_INVALID_RATIO, f"STOPPED: {exc}", _add(total, worker.report))
            except (DeadLetterError, StateWriteError, KafkaException) as exc:
                _add(total, worker.report)
                outcome = _stopped_by(exc, total)
                if not _resumable(exc) or attempt == settings.stream_resume_limit:
                    return outcome
                if stop.is_set():
                    # asked to stop anyway, by a failure a restart gets past: nothing
                    # uncommitted is lost (the next start reads it again), so it is a stop
                    log.warning("%s; stopping as asked, the uncommitted batches are read again "
                                "on the next start", outcome.message)
                    return ServeOutcome(EXIT_OK, f"stopped; {outcome.message}", total)
                # what the failed worker did not commit is read again by the new one, and its
                # partitions' station state is restored from the changelog: a restart in place
                log.warning("%s; resuming with a new consumer and producers (%d of %d)",
                            outcome.message, attempt + 1, settings.stream_resume_limit)
                stop.wait(min(1.0 + attempt, 5.0))
        raise AssertionError("unreachable")
    finally:
        watcher.stop()


def _add(total: WorkerReport, report: WorkerReport) -> WorkerReport:
    for name, value in vars(report).items():
        setattr(total, name, getattr(total, name) + value)
    return total


def _resumable(exc: Exception) -> bool:
    """A failure that a worker rebuilt from scratch gets past: a write its producer could not
    get acknowledged, or a producer whose broker lost its idempotence state."""
    return producer_state_lost(exc) if isinstance(exc, KafkaException) else True


def _stopped_by(exc: Exception, report: WorkerReport) -> ServeOutcome:
    if isinstance(exc, DeadLetterError):
        return ServeOutcome(EXIT_DEAD_LETTER, f"STOPPED: {exc}", report)
    if isinstance(exc, StateWriteError):
        return ServeOutcome(EXIT_STATE_WRITE, f"STOPPED: {exc}", report)
    return ServeOutcome(EXIT_ERROR, f"STOPPED: Kafka: {exc.args[0].str()}", report)


def warm_up(model: Scorer, feature_fn: FeatureFn, top_k: int) -> None:
    """Score and explain one sample session, so lazy imports happen before serving."""
    features = feature_fn([EXAMPLE_SESSION], None)
    model.score(features)
    model.explain(features, top_k=top_k)


def configure_logging(level: int = logging.INFO, batches: bool = True) -> None:
    """One line per event on stderr; pika's own chatter only from warnings up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    batch_log.setLevel(logging.INFO if batches else logging.WARNING)
