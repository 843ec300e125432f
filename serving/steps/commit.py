"""The last step: commit Kafka offsets once everything that came from them is acknowledged."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from serving.steps.base import Batch, ProcessingStep
from serving.steps.dead_letters import DeadLetterError, DeadLetterProducer

Offsets = dict[tuple[str, int], int]


class StateWriteError(RuntimeError):
    """A station-state changelog write was not acknowledged; its offset must not be committed."""


@dataclass(frozen=True)
class CommitPolicy:
    """How often to commit: at most once per `min_interval_s` (0 = after every batch)."""

    min_interval_s: float

    def __post_init__(self) -> None:
        if self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {self.min_interval_s}")

    def due(self, last_commit: float, now: float) -> bool:
        return now - last_commit >= self.min_interval_s


IMMEDIATE = CommitPolicy(0.0)
FIVE_PER_SECOND = CommitPolicy(0.2)


class CommitStep(ProcessingStep):
    """Receives batches whose results RabbitMQ confirmed; commits them in order.

    A batch is committable when its dead letters and its station-state changelog
    writes are acknowledged too. Commits
    are asynchronous in `poll` and synchronous in `join`. Raises
    DeadLetterError if a dead-letter write failed, so that offset is never
    committed.
    """

    def __init__(self, commit: Callable[[Offsets, bool], None], dead_letters: DeadLetterProducer,
                 policy: CommitPolicy = FIVE_PER_SECOND,
                 on_done: Callable[[Batch], None] = lambda b: None,
                 state_poll: Callable[[], None] = lambda: None) -> None:
        self._commit = commit
        self._state_poll = state_poll  # serves the changelog producer's delivery reports
        self._dead_letters = dead_letters
        self._policy = policy
        self._on_done = on_done
        self._waiting: deque[Batch] = deque()
        self._uncommitted: Offsets = {}
        self._last_commit = float("-inf")

    def submit(self, batch: Batch) -> None:
        self._waiting.append(batch)

    def poll(self) -> None:
        self._dead_letters.poll()
        self._state_poll()
        self._release()
        now = time.monotonic()
        if self._uncommitted and self._policy.due(self._last_commit, now):
            self._flush(sync=False)

    def _release(self) -> None:
        while self._waiting and self._waiting[0].dead_letters_pending <= 0 \
                and self._waiting[0].state_writes_pending <= 0:
            batch = self._waiting.popleft()
            if batch.dead_letter_error is not None:
                raise DeadLetterError(
                    f"a dead-letter write was not acknowledged ({batch.dead_letter_error}); "
                    f"stopping without committing it, so the message is read again")
            if batch.state_write_error is not None:
                raise StateWriteError(
                    f"a station-state changelog write was not acknowledged "
                    f"({batch.state_write_error}); stopping without committing it, so the "
                    f"message is read again and applied to the restored state")
            for tp, offset in batch.offsets.items():
                if offset > self._uncommitted.get(tp, -1):
                    self._uncommitted[tp] = offset
            self._on_done(batch)

    def _flush(self, sync: bool) -> None:
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = time.monotonic()
        self._commit(offsets, sync)

    def close(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._waiting and (deadline is None or time.monotonic() < deadline):
            self._dead_letters.poll()
            self._state_poll()
            self._release()
            if self._waiting:
                time.sleep(0.005)
        self._release()
        if self._uncommitted:
            self._flush(sync=True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def uncommitted(self) -> Offsets:
        return dict(self._uncommitted)
