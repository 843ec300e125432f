"""The Score step of the chain: pure work on the main thread, no waiting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np

from pipelines.contracts.score_result import build_results
from pipelines.data.session_rules import RuleCheck, score_with_rules
from serving.champion import Scorer
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch, InvalidMessage, ProcessingStep, TransformStep
from serving.steps.dead_letters import DeadLetterProducer

log = logging.getLogger("evguard.serving.steps")

# (records, station contexts or None = replay them as the whole history) -> DataFrame
FeatureFn = Callable[[Sequence[dict], Sequence[dict] | None], "object"]


class ScoreStep(TransformStep):
    """Features -> score the whole batch -> rules -> threshold -> explain anomalies -> result
    bodies.

    The model is fetched once per batch from `current_model`, so a hot reload
    swaps it between batches. A session that breaks a range rule of the features
    suite (what ingest quarantines) is an anomaly whatever the model says: its
    score is raised to `RULE_SCORE` and its explanation is the rule. Records the features or model cannot handle are
    isolated by bisection and dead-lettered; the rest of the batch is scored.
    """

    def __init__(self, next_step: ProcessingStep, current_model: Callable[[], Scorer],
                 feature_fn: FeatureFn, dead_letters: DeadLetterProducer,
                 metrics: WorkerMetrics, explain_top_k: int = 3) -> None:
        super().__init__(next_step)
        self._current_model = current_model
        self._features = feature_fn
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._top_k = explain_top_k
        self._rules: RuleCheck | None = None

    def transform(self, batch: Batch) -> None:
        model = self._current_model()
        batch.model_version = model.version
        if not batch.records:
            batch.results = list(batch.station_alerts)
            return
        t0 = time.perf_counter()
        try:
            features, scores = self._score(model, batch.records, batch.contexts)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the batch
            log.warning("batch scoring failed (%s: %s); isolating the bad records",
                        type(exc).__name__, exc)
            features, scores = self._score_isolating(model, batch)
            if not batch.records:
                batch.results = list(batch.station_alerts)
                return
        t1 = time.perf_counter()
        columns = list(features.columns)
        matrix = features.to_numpy(dtype=np.float64)
        scores, explanations = score_with_rules(
            self._rule_check(columns), matrix, scores, model.threshold,
            lambda rows: self._explain(model, features, rows))
        t2 = time.perf_counter()
        # one evguard.scores/2 message per routing key, encoded from the arrays themselves
        batch.results = build_results(
            batch.records, batch.sources, columns, matrix, scores, float(model.threshold),
            explanations,
            {"name": model.name, "version": str(model.version),
             "feature_version": model.feature_version},
            datetime.now(UTC).isoformat(timespec="milliseconds"),
        ) + batch.station_alerts
        batch.anomalies = int(np.count_nonzero(scores >= model.threshold))
        batch.payloads = []
        batch.timings.update(score_ms=(t1 - t0) * 1000, explain_ms=(t2 - t1) * 1000,
                             encode_ms=(time.perf_counter() - t2) * 1000)
        self._metrics.scored.inc(len(batch.records))
        self._metrics.anomalies.inc(batch.anomalies)

    def _rule_check(self, columns: list[str]) -> RuleCheck:
        """The rules for these columns; rebuilt only when a new model's columns differ."""
        if self._rules is None or self._rules.columns != tuple(columns):
            self._rules = RuleCheck(columns)
        return self._rules

    def _score(self, model: Scorer, records: Sequence[dict], contexts: Sequence[dict]):
        features = self._features(records, contexts)
        scores = np.asarray(model.score(features), dtype=np.float64)
        if scores.shape != (len(records),):
            raise ValueError(f"model returned {scores.shape} scores for {len(records)} records")
        if not np.isfinite(scores).all():
            raise ValueError("model returned a non-finite score")
        return features, scores

    def _score_isolating(self, model: Scorer, batch: Batch):
        """Score by halves until each failure is one record; dead-letter those."""
        good: list[int] = []
        bad: dict[int, str] = {}

        def visit(indices: list[int]) -> None:
            try:
                self._score(model, [batch.records[i] for i in indices],
                            [batch.contexts[i] for i in indices])
                good.extend(indices)
            except Exception as exc:  # noqa: BLE001
                if len(indices) == 1:
                    bad[indices[0]] = f"{type(exc).__name__}: {exc}"[:500]
                    return
                mid = len(indices) // 2
                visit(indices[:mid])
                visit(indices[mid:])

        visit(list(range(len(batch.records))))
        for i, reason in bad.items():
            value, key = batch.payloads[i]
            message = InvalidMessage(batch.sources[i], value, key, reason, "features")
            batch.invalid.append(message)
            self._dead_letters.send(batch, message)
        keep = sorted(good)
        batch.records = [batch.records[i] for i in keep]
        batch.sources = [batch.sources[i] for i in keep]
        batch.payloads = [batch.payloads[i] for i in keep]
        batch.contexts = [batch.contexts[i] for i in keep]
        if not keep:
            return None, np.empty(0)
        return self._score(model, batch.records, batch.contexts)

    def _explain(self, model: Scorer, features, anomalous: np.ndarray) -> dict[int, list[dict]]:
        try:
            explained = model.explain(features.iloc[anomalous], top_k=self._top_k)
        except Exception:
            log.exception("explaining %d anomalies failed; publishing them unexplained",
                          len(anomalous))
            self._metrics.explain_errors.inc()
            return {}
        return {int(i): list(e) for i, e in zip(anomalous, explained)}
