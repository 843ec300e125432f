"""Telemetry events to Kafka, awaited from asyncio: a CALL is answered only once Kafka
acknowledged every event it carried.

One idempotent producer (acks=all) per gateway. A daemon thread polls it; its delivery
callbacks count each batch of events down, and after each poll the thread settles every
batch that poll completed in one call on the gateway's loop (one wake-up of the loop per
poll, not per batch: at 5,000 chargers a poll often completes several). When
the producer fails for good (a crashed broker came back without this producer's state:
every later event would time out), the next send starts a new one; the events the old one
held fail, and their chargers send them again.
`message.timeout.ms` is the acknowledgement timeout: an event Kafka does not take in time
fails, the CALL gets CALLERROR InternalError, and the charger sends it again (OCPP chargers
queue transaction messages). Kafka may still have stored the first copy; the consumer
de-duplicates on `event_id`, which the retry repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from keyed_state import producer_state_lost
from pipelines.contracts.telemetry import TelemetryEvent, encode_telemetry
from pipelines.settings import Settings

log = logging.getLogger("evguard.gateway.kafka")


class DeliveryFailed(ConnectionError):
    """Kafka did not acknowledge an event in time, or refused it."""


def producer_config(settings: Settings, ack_timeout_s: float) -> dict:
    return {"bootstrap.servers": settings.kafka_servers, "acks": "all",
            "enable.idempotence": True, "linger.ms": 2,
            "message.timeout.ms": max(1000, int(ack_timeout_s * 1000)),
            "client.id": f"evguard-gateway-{os.getpid()}", "log_level": 2}


def ensure_topic(settings: Settings, topic: str, timeout_s: float = 20.0) -> None:
    """Create the telemetry topic (`settings.topic_partitions` partitions) if it is missing.

    Raises:
        ConnectionError: the broker does not answer, or the topic could not be made.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_servers, "log_level": 2})
    try:
        if topic in admin.list_topics(timeout=timeout_s).topics:
            return
    except KafkaException as exc:
        raise ConnectionError(f"Kafka does not answer at {settings.kafka_servers}: "
                              f"{exc.args[0].str()}") from None
    future = admin.create_topics([NewTopic(topic, settings.topic_partitions, 1)])[topic]
    try:
        future.result(timeout=timeout_s)
    except Exception as exc:  # a second gateway may have made it meanwhile
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise ConnectionError(f"cannot create topic {topic}: {exc}") from exc


class _Batch:
    """Counts the acknowledgements of one batch; once all came, it joins `completed`, whose
    batches the polling thread settles on their loop (`KafkaSink._settle_completed`)."""

    __slots__ = ("completed", "error", "future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int,
                 completed: deque[_Batch]) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = size
        self.error: str | None = None
        self.completed = completed

    def delivered(self, err, _message) -> None:  # on the thread that polls (or flushes)
        if err is not None and self.error is None:
            self.error = str(err)
        self.remaining -= 1
        if self.remaining == 0:
            self.completed.append(self)

    def settle(self) -> None:  # on the loop
        if self.future.done():
            return
        if self.error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(DeliveryFailed(self.error))


def _settle_all(batches: list[_Batch]) -> None:
    for batch in batches:
        batch.settle()


class KafkaSink:
    """Produces telemetry events and tells when Kafka has them.

    Args:
        settings: Kafka address.
        topic: the telemetry topic.
        ack_timeout_s: how long an event may wait for Kafka's acknowledgement.
    """

    def __init__(self, settings: Settings, topic: str, ack_timeout_s: float = 10.0) -> None:
        self.topic = topic
        self.ack_timeout_s = ack_timeout_s
        self._config = {**producer_config(settings, ack_timeout_s), "error_cb": self._on_error}
        self._producer = Producer(self._config)
        self._failed_for_good = False
        self._retired: list[Producer] = []  # renewed away: polled until their callbacks ran
        self.renewals = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="gateway-kafka-poll",
                                        daemon=True)
        self.last_ack = 0.0  # monotonic time of the last acknowledged batch
        self.last_failure = 0.0
        self._completed: deque[_Batch] = deque()  # acknowledged (or failed), not yet settled
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:  # on the poll thread
        if err.fatal():
            log.warning("Kafka producer failed for good (%s): the next send starts a new one",
                        err.str())
            self._failed_for_good = True

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                self._producer.poll(0.05)
            except KafkaException as exc:  # a failed producer may raise here: renew it
                self._on_error(exc.args[0])
                time.sleep(0.05)
            for old in list(self._retired):
                try:
                    old.poll(0)
                    done = len(old) == 0
                except KafkaException:
                    done = True
                if done:
                    self._retired.remove(old)
            self._settle_completed()

    def _settle_completed(self) -> None:
        """Settle the batches whose callbacks all ran: one call per loop (any thread)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Batch]] = {}
        while self._completed:
            batch = self._completed.popleft()
            by_loop.setdefault(batch.loop, []).append(batch)
        for loop, batches in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle_all, batches)

    def _renew(self) -> None:
        """A new producer in place of one that failed for good (on the loop's thread)."""
        old, self._producer = self._producer, Producer(self._config)
        self._failed_for_good = False
        with contextlib.suppress(KafkaException):  # its events fail now: their CALLs are
            old.purge()  # answered with an error and repeated
        self._retired.append(old)
        self.renewals += 1

    def send(self, events: list[TelemetryEvent]) -> asyncio.Future[None]:
        """Produce `events` in order (each under its charge point's key); the future is done
        when Kafka acknowledged them all, or fails with DeliveryFailed. Call on the loop."""
        batch = _Batch(asyncio.get_running_loop(), len(events), self._completed)
        if not events:
            batch.future.set_result(None)
            return batch.future
        if self._failed_for_good:
            self._renew()
        try:
            for event in events:
                self._producer.produce(self.topic, encode_telemetry(event), event.key,
                                       on_delivery=batch.delivered)
        except (BufferError, KafkaException) as exc:  # local queue full: Kafka is far behind
            if isinstance(exc, KafkaException) and producer_state_lost(exc):
                self._failed_for_good = True
            # the events queued before still get callbacks; they find the future done
            batch.error = f"cannot queue for Kafka: {exc}"
            batch.future.set_exception(DeliveryFailed(batch.error))
        # a batch given up on by `deliver` still settles later: nobody reads its outcome
        batch.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return batch.future

    async def deliver(self, events: list[TelemetryEvent]) -> None:
        """Produce `events` and wait for Kafka's acknowledgement.

        Raises:
            DeliveryFailed: not acknowledged within `ack_timeout_s`, or refused.
        """
        future = self.send(events)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.ack_timeout_s)
        except TimeoutError:
            self.last_failure = time.monotonic()
            raise DeliveryFailed(f"Kafka did not acknowledge within {self.ack_timeout_s:g}s") \
                from None
        except DeliveryFailed:
            self.last_failure = time.monotonic()
            raise
        self.last_ack = time.monotonic()

    def healthy(self) -> bool:
        """False while the latest delivery failed (Kafka down or refusing)."""
        return self.last_failure <= self.last_ack or time.monotonic() - self.last_failure > 60

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush what is queued, stop polling. Returns the events Kafka did not take."""
        self._stopping.set()  # callbacks run on one thread at a time: the poller, then flush
        self._thread.join(timeout=5)
        remaining = self._producer.flush(timeout_s)
        self._settle_completed()
        if remaining:
            log.warning("%d telemetry events were not acknowledged by Kafka at shutdown",
                        remaining)
        return remaining
