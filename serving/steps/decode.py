"""The Decode step of the chain: bytes to valid sessions, the rest to the dead-letter topic."""

from __future__ import annotations

import time
from typing import NamedTuple

from pipelines.contracts.sessions import InvalidSession, Source, decode_session
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch, InvalidMessage, ProcessingStep, TransformStep
from serving.steps.dead_letters import DeadLetterProducer, InvalidRatioTracker


class RawMessage(NamedTuple):
    """What the consumer loop hands to Decode: bytes and where they came from."""

    value: bytes | None
    key: bytes | None
    source: Source


class DecodeStep(TransformStep):
    """Decode and validate each message; invalid ones go to the dead-letter topic.

    Blocks never. Raises InvalidRatioExceeded before writing any dead letter of
    the batch that crosses the limit.
    """

    def __init__(self, next_step: ProcessingStep, dead_letters: DeadLetterProducer,
                 invalid_ratio: InvalidRatioTracker, metrics: WorkerMetrics,
                 site_ids: frozenset[str] = frozenset()) -> None:
        super().__init__(next_step)
        self._dead_letters = dead_letters
        self._invalid_ratio = invalid_ratio
        self._metrics = metrics
        self._site_ids = site_ids

    def transform(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        payloads = []
        for raw in batch.raw:
            try:
                record = decode_session(raw.value, self._site_ids)
            except InvalidSession as exc:
                batch.invalid.append(InvalidMessage(raw.source, raw.value, raw.key,
                                                    exc.reason, exc.stage))
                continue
            batch.records.append(record)
            batch.sources.append(raw.source)
            payloads.append((raw.value, raw.key))
        self._metrics.consumed.inc(len(batch.raw))
        self._invalid_ratio.record(len(batch.raw), len(batch.invalid))
        for message in batch.invalid:
            self._dead_letters.send(batch, message)
        batch.payloads = payloads
        batch.raw = []
        batch.timings["decode_ms"] = (time.perf_counter() - t0) * 1000
