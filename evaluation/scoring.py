"""Score sessions through the worker's own Decode and Score steps, in process, without brokers.

Each session is encoded exactly as the replay producer sends it
(`encode_session`, key = stationID), cut into micro-batches of `serve_batch_size`
like the consumer loop does, and submitted to the scoring-only chain that
`serving.chain.build_scoring_chain` builds from the worker's steps. What the
Score step hands on (routing key, result body) is parsed with the consumers'
`parse_score_result`, so the evaluation reads the same results that monitoring
and alerting read. Invalid messages are kept in memory instead of the
dead-letter topic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.contracts.score_result import parse_score_result
from pipelines.contracts.sessions import Source, encode_session, session_key
from pipelines.data.features import feature_matrix
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
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0


def score_through_serving(model: Scorer, records: Sequence[dict],
                          settings: Settings) -> ServedSessions:
    """Run `records` through Decode -> Score with `model`.

    Args:
        model: e.g. `pipelines.models.registry.load_champion(settings)`.
        records: ACN session dicts, in the order results are returned.
        settings: `serve_batch_size`, `serve_site_ids`, `serve_explain_top_k`.

    Returns:
        Scores, alerts, first explanation feature and dead letters, per record.
    """
    chain = build_scoring_chain(
        current_model=lambda: model, feature_fn=feature_matrix,
        options=ChainOptions(explain_top_k=settings.serve_explain_top_k,
                             site_ids=frozenset(settings.serve_site_ids)))
    started = time.perf_counter()
    size = max(1, settings.serve_batch_size)
    now_ms = int(time.time() * 1000)
    for first in range(0, len(records), size):
        chunk = records[first:first + size]
        raw = [RawMessage(encode_session(r), str(session_key(r)).encode(),
                          Source(EVALUATION_TOPIC, 0, first + i, now_ms))
               for i, r in enumerate(chunk)]
        chain.head.submit(Batch(offsets={(EVALUATION_TOPIC, 0): first + len(chunk)}, raw=raw))
    n = len(records)
    served = ServedSessions(np.full(n, np.nan), np.zeros(n, bool), np.full(n, "", object),
                            np.zeros(n, bool), batches=len(chain.collected.batches))
    for batch in chain.collected.batches:
        for source, (_key, body) in zip(batch.sources, batch.results):
            result = parse_score_result(body)
            served.scores[source.offset] = result.score
            served.alerts[source.offset] = result.is_anomaly
            if result.explanation:
                served.top_features[source.offset] = result.explanation[0]["feature"]
    letters = chain.dead_letters.messages
    for message in letters:
        served.dead_lettered[message.source.offset] = True
    served.dead_letter_reasons = dict(Counter(m.reason.split(",")[0][:80] for m in letters))
    served.seconds = time.perf_counter() - started
    return served


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
