"""Writing dead letters (contract §6), and the limit that stops the worker when a producer
goes mad. The errors that stop the worker over dead letters live here too."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pipelines.contracts.dead_letters import session_dead_letter_headers
from serving.steps.base import Batch, InvalidMessage


class InvalidRatioExceeded(RuntimeError):
    """Too many invalid messages: a producer is broken. Stops the worker loudly."""


class DeadLetterError(RuntimeError):
    """A dead-letter write was not acknowledged; its offset must not be committed."""


@dataclass(frozen=True)
class InvalidRatioLimit:
    """Stop when more than `max_ratio` of the last `window` messages were invalid.

    `max_ratio=1.0` never stops. Checked once per batch, before its dead letters
    are written, so the batch that trips the limit is left uncommitted.
    """

    max_ratio: float = 0.5
    window: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {self.max_ratio}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


LENIENT = InvalidRatioLimit(max_ratio=1.0)


class InvalidRatioTracker:
    """Sliding count of (messages, invalid) over roughly the last `window` messages."""

    def __init__(self, limit: InvalidRatioLimit) -> None:
        self.limit = limit
        self._batches: deque[tuple[int, int]] = deque()
        self._seen = 0
        self._invalid = 0

    def record(self, seen: int, invalid: int) -> None:
        """Count one batch.

        Raises:
            InvalidRatioExceeded: the ratio over a full window is above the limit.
        """
        self._batches.append((seen, invalid))
        self._seen += seen
        self._invalid += invalid
        while self._batches and self._seen - self._batches[0][0] >= self.limit.window:
            old_seen, old_invalid = self._batches.popleft()
            self._seen -= old_seen
            self._invalid -= old_invalid
        if self._seen >= self.limit.window and self._invalid > self.limit.max_ratio * self._seen:
            raise InvalidRatioExceeded(
                f"{self._invalid} of the last {self._seen} messages were invalid "
                f"(limit {self.limit.max_ratio:.0%}); a producer is sending bad data. "
                f"The worker stops so that they are not all dead-lettered; fix the producer, "
                f"or raise EVGUARD_SERVE_MAX_INVALID_RATIO, and restart."
            )


class DeadLetterProducer:
    """Writes invalid messages to the dead-letter topic and tracks their acknowledgements.

    Each write counts against its batch (`dead_letters_pending`); the delivery
    report, served by `poll`, decrements it or records the error.
    """

    def __init__(self, producer, topic: str, on_written=lambda stage: None) -> None:
        self._producer = producer
        self.topic = topic
        self._on_written = on_written

    def send(self, batch: Batch, message: InvalidMessage) -> None:
        """Start one dead-letter write; never blocks for its acknowledgement."""
        headers = session_dead_letter_headers(message.reason, message.stage, message.source)

        def delivered(err, _msg) -> None:
            batch.dead_letters_pending -= 1
            if err is not None:
                batch.dead_letter_error = str(err)
            else:
                self._on_written(message.stage)

        batch.dead_letters_pending += 1
        while True:
            try:
                self._producer.produce(self.topic, value=message.value, key=message.key,
                                       headers=headers, on_delivery=delivered)
                return
            except BufferError:  # local queue full: serve reports, then retry
                self._producer.poll(0.05)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)
        self._producer.close()


class DeadLetterList:
    """Dead letters kept in memory, acknowledged at once: the sink of a scoring-only chain."""

    def __init__(self) -> None:
        self.messages: list[InvalidMessage] = []

    def send(self, batch: Batch, message: InvalidMessage) -> None:
        self.messages.append(message)
