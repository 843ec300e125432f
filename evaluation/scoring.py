"""Score sessions through the worker's own Decode, Context and Score steps, in process,
without brokers.

Each session is encoded exactly as the replay producer sends it
(`encode_session`, key = stationID), in the order sessions end (the order they
reach Kafka), cut into micro-batches of `serve_batch_size` like the consumer loop
does, and submitted to the scoring-only chain that
`serving.chain.build_scoring_chain` builds from the worker's steps. What the
Score step hands on (routing key, result batch) is parsed with the consumers'
`parse_score_results`, so the evaluation reads the same results that monitoring
and alerting read; each result finds its session by its Kafka offset. Invalid messages are kept in memory instead of the
dead-letter topic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.contracts.score_result import ScoreResult, parse_score_results
from pipelines.contracts.sessions import Source, encode_session, session_key
from pipelines.data.features import feature_matrix, sessions_to_frame
from pipelines.models import registry
from pipelines.models.registry import ChampionModel
from pipelines.settings import Settings
from serving.chain import ChainOptions, build_scoring_chain
from serving.champion import Scorer
from serving.steps.base import Batch
from serving.steps.decode import RawMessage

EVALUATION_TOPIC = "evaluation"


@dataclass
class ServedSessions:
    """Per input session, aligned arrays of what the serving steps produced."""

    scores: np.ndarray  # NaN where dead-lettered
    alerts: np.ndarray  # bool
    top_features: np.ndarray  # object, "" when no explanation
    dead_lettered: np.ndarray  # bool
    rules: np.ndarray  # object: the validation rule the Score step found broken, "" when none
    model_scores: np.ndarray  # the model's own score: `scores` less what a broken rule added
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0


def arrival_order(records: Sequence[dict]) -> np.ndarray:
    """Indices of `records` in the order they reach Kafka: when each session ended."""
    ends = feature_frame_end_times(records)
    return np.argsort(ends, kind="stable")


def feature_frame_end_times(records: Sequence[dict]) -> np.ndarray:
    frame = sessions_to_frame(records)
    end = frame["disconnectTime"].fillna(frame["doneChargingTime"]).fillna(
        frame["connectionTime"])
    return end.astype("int64").to_numpy()


def score_through_serving(model: Scorer, records: Sequence[dict], settings: Settings,
                          history: Sequence[dict] = ()) -> ServedSessions:
    """Run `records` through Decode -> Context -> Score with `model`.

    Args:
        model: e.g. `pipelines.models.registry.load_champion(settings)`.
        records: ACN session dicts, in the order results are returned.
        settings: `serve_batch_size`, `serve_site_ids`, `serve_explain_top_k`.
        history: sessions that reached the worker before these (the training side of a
            time split): they build the station state first, unscored.

    Returns:
        Scores, alerts, first explanation feature and dead letters, per record.
    """
    chain = build_scoring_chain(
        current_model=lambda: model, feature_fn=feature_matrix,
        options=ChainOptions(explain_top_k=settings.serve_explain_top_k,
                             site_ids=frozenset(settings.serve_site_ids)))
    past = [history[i] for i in arrival_order(history)] if len(history) else []
    chain.tracker.process(past, [Source(EVALUATION_TOPIC, 0, i, 0) for i in range(len(past))])
    started = time.perf_counter()
    size = max(1, settings.serve_batch_size)
    now_ms = int(time.time() * 1000)
    order = arrival_order(records)
    base = len(past)  # offsets continue after the history's, as on one partition
    for first in range(0, len(records), size):
        chunk = order[first:first + size]
        raw = [RawMessage(encode_session(records[i]), str(session_key(records[i])).encode(),
                          Source(EVALUATION_TOPIC, 0, base + first + j, now_ms))
               for j, i in enumerate(chunk)]
        chain.head.submit(Batch(offsets={(EVALUATION_TOPIC, 0): base + first + len(chunk)},
                                raw=raw))
    n = len(records)
    served = ServedSessions(np.full(n, np.nan), np.zeros(n, bool), np.full(n, "", object),
                            np.zeros(n, bool), np.full(n, "", object), np.full(n, np.nan),
                            batches=len(chain.collected.batches))
    for batch in chain.collected.batches:
        for key, body in batch.results:
            if not key.startswith("score."):
                continue  # a station alert
            found = parse_score_results(body)
            if found.errors:
                raise ValueError(f"the Score step wrote invalid results: {found.errors[:3]}")
            for result in found.results:
                _record(served, result, order[result.kafka_offset - base])
    letters = chain.dead_letters.messages
    for message in letters:
        served.dead_lettered[order[message.source.offset - base]] = True
    served.dead_letter_reasons = dict(Counter(m.reason.split(",")[0][:80] for m in letters))
    served.seconds = time.perf_counter() - started
    return served


def _record(served: ServedSessions, result: ScoreResult, index: int) -> None:
    served.scores[index] = served.model_scores[index] = result.score
    served.alerts[index] = result.is_anomaly
    if result.explanation:
        first = result.explanation[0]
        served.top_features[index] = first["feature"]
        if "rule" in first:
            served.rules[index] = first["rule"]
            served.model_scores[index] = result.score - (first["contribution"] or 0.0)


def serving_model(settings: Settings, version: str) -> tuple[ChampionModel, bool]:
    """The model to serve: `(model, True)` when `version` is `@champion`.

    When the registry refused to promote `version` (a gate, or an older
    champion that is better), that version is still evaluated, as
    `(model, False)`, and the report says it was not promoted.
    """
    try:
        champion = registry.load_champion(settings)
        if champion.version == version:
            return champion, True
    except registry.NoChampionError:
        pass
    return registry.load_version(settings, version), False
