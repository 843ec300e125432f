"""Score sessions through the worker's own Decode and Score steps, in process, without brokers.

Each session is encoded exactly as the replay producer sends it
(`serving.messages.encode_session`, key = stationID), cut into micro-batches of
`serve_batch_size` like the consumer loop does, and submitted to a
`DecodeStep -> ScoreStep` chain built with the worker's classes. What the
Score step hands on (routing key, result body) is parsed with the consumers'
`parse_score_result`, so the evaluation reads the same results that
monitoring and alerting read. Publish and Commit are the broker-facing steps
and are replaced by a collector; invalid messages go to an in-memory list
instead of the dead-letter topic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evguard.settings import Settings

EVALUATION_TOPIC = "evaluation"


@dataclass
class ServedSessions:
    """Per input session, aligned arrays of what the serving steps produced."""

    scores: np.ndarray  # NaN where dead-lettered
    alerts: np.ndarray  # bool
    top_features: np.ndarray  # object, "" when no explanation
    dead_lettered: np.ndarray  # bool
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0


def score_through_serving(model, records: Sequence[dict], settings: Settings) -> ServedSessions:
    """Run `records` through Decode -> Score with `model` (a `serving.model.Scorer`).

    Args:
        model: e.g. `pipelines.registry.load_champion(settings)`.
        records: ACN session dicts, in the order results are returned.
        settings: `serve_batch_size`, `serve_site_ids`, `serve_explain_top_k`.

    Returns:
        Scores, alerts, first explanation feature and dead letters, per record.
    """
    from pipelines.features import feature_matrix
    from pipelines.score_result import parse_score_result
    from serving.dlq import LENIENT, InvalidRatioTracker
    from serving.messages import Source, encode_session
    from serving.metrics import WorkerMetrics
    from serving.steps import DecodeStep, RawMessage, ScoreStep
    from serving.strategy import Batch, ProcessingStep

    class Collect(ProcessingStep):
        """Stands where Publish -> Commit stand in the worker: keeps each finished batch."""

        def __init__(self) -> None:
            self.batches = []

        def submit(self, batch) -> None:
            self.batches.append(batch)

        def poll(self) -> None:
            pass

        def close(self) -> None:
            pass

        def join(self, timeout=None) -> None:
            pass

    class DeadLetterList:
        def __init__(self) -> None:
            self.messages = []

        def send(self, batch, message) -> None:
            self.messages.append(message)

    collect, dead_letters, metrics = Collect(), DeadLetterList(), WorkerMetrics()
    score = ScoreStep(collect, lambda: model, feature_matrix, dead_letters, metrics,
                      settings.serve_explain_top_k)
    decode = DecodeStep(score, dead_letters, InvalidRatioTracker(LENIENT), metrics,
                        frozenset(settings.serve_site_ids))
    started = time.perf_counter()
    size = max(1, settings.serve_batch_size)
    now_ms = int(time.time() * 1000)
    for first in range(0, len(records), size):
        chunk = records[first:first + size]
        raw = [RawMessage(encode_session(r), str(r.get("stationID")).encode(),
                          Source(EVALUATION_TOPIC, 0, first + i, now_ms))
               for i, r in enumerate(chunk)]
        decode.submit(Batch(offsets={(EVALUATION_TOPIC, 0): first + len(chunk)}, raw=raw))
    n = len(records)
    served = ServedSessions(np.full(n, np.nan), np.zeros(n, bool), np.full(n, "", object),
                            np.zeros(n, bool), batches=len(collect.batches))
    for batch in collect.batches:
        for source, (_key, body) in zip(batch.sources, batch.results):
            result = parse_score_result(body)
            served.scores[source.offset] = result.score
            served.alerts[source.offset] = result.is_anomaly
            if result.explanation:
                served.top_features[source.offset] = result.explanation[0]["feature"]
    for message in dead_letters.messages:
        served.dead_lettered[message.source.offset] = True
    served.dead_letter_reasons = dict(Counter(m.reason.split(",")[0][:80]
                                              for m in dead_letters.messages))
    served.seconds = time.perf_counter() - started
    return served


def serving_model(settings: Settings, version: str):
    """The model to serve: `(model, True)` when `version` is `@champion`.

    When the registry refused to promote `version` (a gate, or an older
    champion that is better), that version is still evaluated, as
    `(model, False)`, and the report says it was not promoted.
    """
    from pipelines import registry

    try:
        champion = registry.load_champion(settings)
        if champion.version == version:
            return champion, True
    except registry.NoChampionError:
        pass
    model = registry.load_model_version(settings, version)
    return registry.ChampionModel(settings.model_name, version, model.threshold,
                                  model.feature_version, list(model.feature_columns),
                                  model.reference, model), False
