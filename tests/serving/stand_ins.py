"""Stand-ins for unit tests of single steps: a next step, a dead-letter sink, a tiny scorer.

They are the neighbours of the step under test, not fakes of a service: the
services themselves are exercised by the integration tests.
"""

from __future__ import annotations

import numpy as np

from pipelines.contracts.sessions import Source, encode_session
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION
from serving.steps.base import Batch, MessageRejected, ProcessingStep
from serving.steps.decode import RawMessage


class RecordingStep(ProcessingStep):
    """Next step that records what it receives; `reject=True` pushes back."""

    def __init__(self, reject: bool = False) -> None:
        self.received: list[Batch] = []
        self.reject = reject
        self.polls = 0
        self.closed = False
        self.joined = False

    def submit(self, batch: Batch) -> None:
        if self.reject:
            raise MessageRejected()
        self.received.append(batch)

    def poll(self) -> None:
        self.polls += 1

    def close(self) -> None:
        self.closed = True

    def join(self, timeout=None) -> None:
        self.joined = True


class RecordingDeadLetters:
    """Dead-letter sink with the producer's interface; acknowledges when told to."""

    def __init__(self) -> None:
        self.sent = []
        self._unacked: list[Batch] = []

    def send(self, batch: Batch, message) -> None:
        batch.dead_letters_pending += 1
        self.sent.append(message)
        self._unacked.append(batch)

    def acknowledge(self, error: str | None = None) -> None:
        for batch in self._unacked:
            batch.dead_letters_pending -= 1
            if error:
                batch.dead_letter_error = error
        self._unacked.clear()

    def poll(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return len(self._unacked)


class PowerScorer:
    """Scores by average power; explains with the power feature. `poison` kWh makes it raise."""

    name = "stand-in"
    threshold = 0.5
    feature_version = FEATURE_VERSION
    feature_columns = FEATURE_COLUMNS

    def __init__(self, version: str = "1", poison_kwh: float | None = None) -> None:
        self.version = version
        self.poison_kwh = poison_kwh
        self.explained_rows = 0

    def score(self, features) -> np.ndarray:
        if self.poison_kwh is not None and (features["kwh_delivered"] == self.poison_kwh).any():
            raise ValueError("poisoned row")
        return np.clip(features["avg_kw"].to_numpy() / 20.0, 0.0, 1.0)

    def explain(self, features, top_k: int = 3) -> list[list[dict]]:
        self.explained_rows += len(features)
        return [[{"feature": "avg_kw", "value": float(v), "contribution": 0.5, "typical": 3.0}]
                for v in features["avg_kw"]]


def raw_batch(values: list[bytes | None], partition: int = 0, first_offset: int = 0) -> Batch:
    raw = [RawMessage(v, b"station", Source("ev-station-data", partition, first_offset + i,
                                            1_700_000_000_000 + i))
           for i, v in enumerate(values)]
    return Batch(offsets={("ev-station-data", partition): first_offset + len(values)}, raw=raw)


def session(i: int, kwh: float = 7.0, hours: int = 5, site: str = "0002") -> dict:
    return {"_id": f"id{i}", "clusterID": "0039", "sessionID": f"s{i}", "stationID": f"st{i % 5}",
            "siteID": site, "spaceID": "CA-1", "timezone": "America/Los_Angeles",
            "userID": None, "userInputs": None,
            "connectionTime": "Wed, 02 Jan 2019 14:00:00 GMT",
            "disconnectTime": f"Wed, 02 Jan 2019 {14 + hours:02d}:00:00 GMT",
            "doneChargingTime": "Wed, 02 Jan 2019 15:00:00 GMT", "kWhDelivered": kwh}


def encoded(i: int, **kw) -> bytes:
    return encode_session(session(i, **kw))
