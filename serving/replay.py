"""The replay producer: stream ACN sessions into Kafka at a chosen pace.

Sources are ACN export files, the newest ingest dataset, or the synthetic
generator. Each message is the session JSON plus `schema_version`, keyed by
`stationID` (contract §1), produced with acks=all by an idempotent producer;
every delivery report is counted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from confluent_kafka import KafkaException, Producer

from pipelines.contracts.dates import parse_dates
from pipelines.contracts.sessions import encode_session, session_key
from pipelines.data.datasets import latest_dataset
from pipelines.data.exports import load_exports
from pipelines.data.synth import generate_sessions
from pipelines.settings import Settings
from serving.kafka import check_topic, pacing_wait_s, producer_config

log = logging.getLogger("evguard.serving.replay")

SourceKind = Literal["synthetic", "dataset", "files"]


@dataclass(frozen=True)
class ReplayPace:
    """How fast to send: `rate` sessions/s, or `speedup` x real time, or (neither) at once.

    With `speedup`, sessions are sent in order of `disconnectTime` (a session is
    complete, and reported, when the car leaves), spaced by their real gaps
    divided by `speedup`.
    """

    rate: float | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("choose a rate (sessions/s) or a speed-up of real time, not both")
        for name in ("rate", "speedup"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")


AS_FAST_AS_POSSIBLE = ReplayPace()


@dataclass
class ReplayReport:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)
    resent: int = 0  # sent again by a new producer after a fatal producer error

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


# delivery errors of a producer that has failed fatally (idempotence state lost or purged)
_RESEND_AFTER = ("_FATAL", "_PURGE_QUEUE", "_PURGE_INFLIGHT", "OUT_OF_ORDER_SEQUENCE_NUMBER",
                 "UNKNOWN_PRODUCER_ID", "INVALID_PRODUCER_EPOCH")


def _discard(retired: list) -> None:
    while retired:
        producer = retired.pop()
        try:
            producer.purge()
            producer.poll(0)
        except Exception as exc:  # noqa: BLE001 - it has failed already
            log.debug("discarding a failed producer: %s", exc)
        del producer  # destroyed here, on this thread


def _fatal(exc) -> bool:
    error = exc.args[0] if exc.args else None
    return hasattr(error, "fatal") and (error.fatal() or error.name() == "_FATAL")


class _Sender:
    """Produces with a delivery report per message and keeps each until it is acknowledged.

    An idempotent producer fails for good (a fatal error) when a restarted broker has lost
    the sequence of messages in flight (seen with the embedded broker). Then a new producer
    sends again what was not acknowledged: at-least-once for those few, nothing lost.
    confluent-kafka 2.16 surfaces that error from `flush`/`poll` as a bare SystemError.
    """

    max_restarts = 10

    def __init__(self, producer, make_producer: Callable[[], object], topic: str,
                 report: ReplayReport) -> None:
        self.producer, self._make, self.topic, self.report = producer, make_producer, topic, report
        self.unacked: dict[int, tuple[bytes, str | None]] = {}
        self._generation = self._restarts = self._count = 0
        self._broken = False
        self._retired: list = []  # failed producers, destroyed off the caller's thread

    def close(self) -> None:
        """Let go of failed producers: destroying one can wait for its requests to time out."""
        if self._retired:
            threading.Thread(target=_discard, args=(self._retired,), name="discard-producers",
                             daemon=True).start()
            self._retired = []

    def send(self, value: bytes, key: str | None) -> None:
        self.unacked[self._count] = (value, key)
        self._count += 1
        self._produce(self._count - 1)

    def _produce(self, i: int) -> None:
        value, key = self.unacked[i]
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key,
                                      on_delivery=self._reported(i, self._generation))
                return
            except BufferError:  # local queue full: let deliveries drain
                self.poll(0.05)
            except KafkaException as exc:
                if not _fatal(exc):
                    raise
                self._restart(exc)  # sends `i` again with the rest
                return

    def _reported(self, i: int, generation: int):
        def delivered(err, _msg) -> None:
            if generation != self._generation:
                return  # from a producer given up on; its messages are being resent
            if err is None:
                del self.unacked[i]
                self.report.delivered += 1
            elif err.fatal() or err.name() in _RESEND_AFTER:
                self._broken = True
            else:
                del self.unacked[i]
                self.report.failed += 1
                self.report.errors[err.str()] += 1
        return delivered

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except (KafkaException, SystemError) as exc:
            if isinstance(exc, KafkaException) and not _fatal(exc):
                raise
            self._restart(exc)
            return None

    def poll(self, timeout: float) -> None:
        self._guarded(self.producer.poll, timeout)
        if self._broken:
            self._restart("a delivery failed fatally")

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for every acknowledgement (afresh after a restart); the
        number still unacknowledged."""
        while True:
            generation = self._generation
            self._guarded(self.producer.flush, timeout)
            if self._broken and self.unacked:
                self._restart("a delivery failed fatally")
            elif generation == self._generation:
                return len(self.unacked)

    def _restart(self, reason) -> None:
        self._restarts += 1
        if self._restarts > self.max_restarts:
            raise RuntimeError(f"the Kafka producer failed {self._restarts} times; last: {reason}")
        log.warning("Kafka producer failed (%s); a new one sends the %d unacknowledged sessions "
                    "again", reason, len(self.unacked))
        self._retired.append(self.producer)
        self._generation, self._broken = self._generation + 1, False
        self.producer = self._make()
        self.report.resent += len(self.unacked)
        for i in list(self.unacked):
            if i in self.unacked:
                self._produce(i)


def load_records(source: SourceKind, settings: Settings, *, paths: Sequence[str | Path] = (),
                 sessions: int = 1000, seed: int = 0, anomaly_rate: float = 0.02) -> list[dict]:
    """Sessions to replay, in ACN format.

    Args:
        source: `synthetic` (the seeded generator), `dataset` (the newest ingest
            dataset) or `files` (ACN export files).
        settings: where datasets live.
        paths: export files, for `files`.
        sessions, seed, anomaly_rate: for `synthetic`.

    Returns:
        Session dicts.

    Raises:
        ValueError: a source without what it needs (no paths, no dataset).
    """
    if source == "synthetic":
        records, _labels = generate_sessions(sessions, seed=seed, anomaly_rate=anomaly_rate)
        return records
    if source == "files":
        if not paths:
            raise ValueError("source 'files' needs at least one ACN export path")
        return load_exports(paths)
    if source == "dataset":
        return latest_dataset(settings).records()
    raise ValueError(f"unknown source {source!r}; choose synthetic, dataset or files")


def _event_seconds(records: Sequence[dict]) -> list[float]:
    """Epoch seconds of each session's disconnect (connect when missing), NaN if neither."""
    disconnect = parse_dates([r.get("disconnectTime") for r in records])
    connect = parse_dates([r.get("connectionTime") for r in records])
    ns = np.where(disconnect.isna(), connect.asi8, disconnect.asi8).astype(np.float64)
    ns[np.asarray(disconnect.isna() & connect.isna())] = np.nan
    return (ns / 1e9).tolist()


def schedule(records: Sequence[dict], pace: ReplayPace) -> tuple[list[dict], list[float]]:
    """Order the records and give each a send time in seconds from the start (pure)."""
    n = len(records)
    if pace.rate is not None:
        return list(records), [i / pace.rate for i in range(n)]
    if pace.speedup is None:
        return list(records), [0.0] * n
    events = _event_seconds(records)
    known = [e for e in events if not math.isnan(e)]
    origin = min(known) if known else 0.0
    keyed = sorted(range(n), key=lambda i: (origin if math.isnan(events[i]) else events[i], i))
    ordered = [records[i] for i in keyed]
    offsets = [((origin if math.isnan(events[i]) else events[i]) - origin) / pace.speedup
               for i in keyed]
    return ordered, offsets


def _repeated(records: Sequence[dict], repeat: int) -> Iterator[dict]:
    """The records `repeat` times; later rounds get a `~r<k>` sessionID suffix (unique IDs)."""
    for k in range(repeat):
        for record in records:
            if k:
                record = {**record, "sessionID": f"{record.get('sessionID')}~r{k}"}
            yield record


def replay(settings: Settings, records: Sequence[dict], pace: ReplayPace = AS_FAST_AS_POSSIBLE,
           *, topic: str | None = None, repeat: int = 1,
           progress: Callable[[ReplayReport], None] | None = None,
           producer=None, flush_timeout_s: float = 60.0,
           connect_timeout_s: float = 5.0) -> ReplayReport:
    """Produce the records to Kafka at `pace` and wait for every delivery report.

    Args:
        settings: the Kafka bootstrap servers and default topic.
        records: ACN session dicts.
        pace: sessions/s, a speed-up of real time, or as fast as possible.
        topic: overrides `settings.topic_sessions`.
        repeat: send the records this many times (unique sessionIDs per round).
        progress: called about 10 times a second with the running report.
        producer: a confluent-kafka Producer to use (default: a new idempotent one); after
            a fatal producer error it is replaced by a new default one (see `_Sender`).
        flush_timeout_s: how long to wait for outstanding deliveries at the end.
        connect_timeout_s: how long the pre-flight check waits for the broker.

    Returns:
        Counts of produced, delivered and failed messages.

    Raises:
        ConnectionError, LookupError: the broker is down or the topic is missing (before
            anything is sent).
    """
    topic = topic or settings.topic_sessions
    producer = producer or Producer(producer_config(settings.kafka_servers))
    check_topic(producer, settings, topic, connect_timeout_s)
    report = ReplayReport()
    ordered, offsets = schedule(records, pace)
    span = offsets[-1] if offsets else 0.0
    if pace.rate is not None and offsets:
        span = len(offsets) / pace.rate

    sender = _Sender(producer, lambda: Producer(producer_config(settings.kafka_servers)), topic,
                     report)
    start = time.perf_counter()
    next_progress = 0.0
    for i, record in enumerate(_repeated(ordered, repeat)):
        round_, j = divmod(i, len(ordered))
        target = start + round_ * span + offsets[j]
        while (wait := target - time.perf_counter()) > 0:
            sender.poll(pacing_wait_s(wait))
        sender.send(encode_session(record), session_key(record))
        report.produced += 1
        sender.poll(0)
        if progress is not None and (now := time.perf_counter()) >= next_progress:
            report.seconds = now - start
            progress(report)
            next_progress = now + 0.1
    remaining = sender.flush(flush_timeout_s)
    sender.close()
    if remaining:
        report.failed += remaining
        report.errors["not delivered before the flush timeout"] += remaining
    report.seconds = time.perf_counter() - start
    if progress is not None:
        progress(report)
    log.info("replayed %d sessions to %s in %.1fs: %d delivered, %d failed", report.produced,
             topic, report.seconds, report.delivered, report.failed)
    return report
