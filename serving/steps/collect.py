"""The last step of a scoring-only chain: it keeps each finished batch in memory.

It stands where Publish -> Commit stand in the worker, for callers that score
sessions exactly as the worker does but need the results, not a broker
(the evaluation on real data).
"""

from __future__ import annotations

from serving.steps.base import Batch, ProcessingStep


class CollectStep(ProcessingStep):
    """Keeps every batch it receives, in order; never pushes back."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def submit(self, batch: Batch) -> None:
        self.batches.append(batch)

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass
