"""The Context step of the chain: each session's station context, and the station alerts.

Between Decode and Score. It reads and updates the keyed station state
(`serving.stations.StationTracker`), then starts the changelog writes of what
the batch changed; the Commit step waits for their acknowledgements as it does
for dead letters, so an offset is committed only once the state it produced is
durable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipelines.contracts.dates import read_rfc1123
from serving.stations import StationTracker
from serving.steps.base import Batch, ProcessingStep, TransformStep

# (on_delivered) -> writes started; on_delivered(error or None) is called once per write
FlushState = Callable[[Callable[[str | None], None]], int]


def no_changelog(_on_delivered: Callable[[str | None], None]) -> int:
    """The flush of a state kept only in memory (evaluation, scoring-only chains)."""
    return 0


_SESSION_DATES = ("connectionTime", "disconnectTime", "doneChargingTime")


class ContextStep(TransformStep):
    def __init__(self, next_step: ProcessingStep, tracker: StationTracker,
                 flush_state: FlushState = no_changelog) -> None:
        super().__init__(next_step)
        self._tracker = tracker
        self._flush_state = flush_state

    def transform(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        # the dates the context, the health detectors and the features read, in one go
        read_rfc1123([r.get(name) for r in batch.records for name in _SESSION_DATES])
        batch.contexts, batch.station_alerts = self._tracker.process(batch.records,
                                                                     batch.sources)
        if batch.invalid:  # what Decode dead-lettered: a failed session of its station
            batch.station_alerts += self._tracker.dead_lettered(batch.invalid)

        def delivered(error: str | None) -> None:
            batch.state_writes_pending -= 1
            if error is not None:
                batch.state_write_error = error

        batch.state_writes_pending += self._flush_state(delivered)
        batch.timings["context_ms"] = (time.perf_counter() - t0) * 1000
