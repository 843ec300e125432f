"""The step interface of the worker's chain, its backpressure signal and the batch that flows
through it.

The chain is Decode -> Context -> Score -> Publish -> Commit (see `serving.chain`). Each
step has the same four calls, in the spirit of arroyo's ProcessingStrategy, but
the unit is a micro-batch from `Consumer.consume`, not one message: the worker
must handle ~20,000 sessions/s on one core, and per-message step overhead was
measured at ~17 us in arroyo (docs/serving.md).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipelines.contracts.sessions import Source


class MessageRejected(Exception):
    """Backpressure: the step cannot take this batch now; submit it again later.

    The step that raises it has done nothing with the batch.
    """


@dataclass(eq=False)
class InvalidMessage:
    """A message that goes to the dead-letter topic instead of being scored."""

    source: Source
    value: bytes | None
    key: bytes | None
    reason: str
    stage: str


@dataclass(eq=False)
class Batch:
    """One micro-batch: raw positions in, results out. Steps fill it in order.

    `offsets` maps (topic, partition) to the next offset to commit once every
    result and dead letter of this batch is acknowledged.
    """

    offsets: dict[tuple[str, int], int]
    raw: list = field(default_factory=list)  # RawMessage, dropped after decode
    payloads: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    received_at: float = field(default_factory=time.monotonic)
    records: list[dict] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    # station context, aligned with records (rows of `pipelines.stations.context.ContextRows`)
    contexts: Sequence[Mapping[str, float]] = field(default_factory=list)
    invalid: list[InvalidMessage] = field(default_factory=list)
    results: list[tuple[str, bytes]] = field(default_factory=list)
    anomalies: int = 0
    model_version: str = ""
    dead_letters_pending: int = 0
    dead_letter_error: str | None = None
    station_alerts: list[tuple[str, bytes]] = field(default_factory=list)
    state_writes_pending: int = 0  # station-state changelog writes not yet acknowledged
    state_write_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.sources) + len(self.invalid)


class WaitingBatches:
    """Batches consumed but not yet taken by the chain, in Kafka order.

    While the chain is full, what arrives joins the last waiting batch, up to `limit`
    messages: a busy chain gets bigger batches instead of a paused consumer (librdkafka
    fetches again only ~1 s after a resume: measured, that pause was the whole p99 at
    1,000 sessions/s). Once `room` is 0 the worker takes nothing more until the chain
    has room; it pauses the consumer only while RabbitMQ is unusable.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._batches: deque[Batch] = deque()

    def add(self, batch: Batch) -> None:
        """Queue `batch`, merged into the last waiting one when both carry messages.

        Nothing has been done with a waiting batch (a step that rejects does nothing with
        it), so merging changes only its size. The caller keeps to `room`.
        """
        last = self._batches[-1] if self._batches else None
        if last is not None and last.raw and batch.raw:
            last.raw.extend(batch.raw)
            last.offsets.update(batch.offsets)  # later offsets of a partition win
        else:
            self._batches.append(batch)

    @property
    def room(self) -> int:
        """How many more messages may be consumed before the consumer must pause."""
        return self.limit - sum(len(b.raw) for b in self._batches)

    def first(self) -> Batch:
        return self._batches[0]

    def pop_first(self) -> Batch:
        return self._batches.popleft()

    def clear(self) -> None:
        self._batches.clear()

    def __len__(self) -> int:
        return len(self._batches)


class ProcessingStep(ABC):
    """One step of the chain. All calls happen on the worker's main thread."""

    @abstractmethod
    def submit(self, batch: Batch) -> None:
        """Take a batch. Called once per batch, in Kafka order.

        Raises:
            MessageRejected: the step (or one after it) is full; nothing was done.
            InvalidRatioExceeded, DeadLetterError: fatal; the worker stops.
        """

    @abstractmethod
    def poll(self) -> None:
        """Do pending non-blocking work (hand completed batches on). Called every loop."""

    @abstractmethod
    def close(self) -> None:
        """No more batches will be submitted."""

    @abstractmethod
    def join(self, timeout: float | None = None) -> None:
        """Block until every accepted batch has gone through the chain, or the timeout.

        After `close`; what is not done by then is dropped without a commit, so
        its messages are read again (at-least-once).
        """


class TransformStep(ProcessingStep):
    """A step that transforms a batch and hands it on, carrying it over under backpressure.

    When the next step rejects, the transformed batch is kept here and retried
    on `poll`; meanwhile `submit` raises MessageRejected, so no work is repeated.
    """

    def __init__(self, next_step: ProcessingStep) -> None:
        self.next_step = next_step
        self._carried: Batch | None = None

    @property
    def carried(self) -> Batch | None:
        return self._carried

    @abstractmethod
    def transform(self, batch: Batch) -> None:
        """Fill in this step's part of the batch (in place)."""

    def submit(self, batch: Batch) -> None:
        if self._carried is not None:
            raise MessageRejected()
        self.transform(batch)
        try:
            self.next_step.submit(batch)
        except MessageRejected:
            self._carried = batch

    def poll(self) -> None:
        self.next_step.poll()
        if self._carried is not None:
            try:
                self.next_step.submit(self._carried)
                self._carried = None
            except MessageRejected:
                pass

    def close(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._carried is not None and (deadline is None or time.monotonic() < deadline):
            self.poll()
            if self._carried is not None:
                time.sleep(0.005)
        self._carried = None
        self.next_step.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.next_step.join(remaining)
