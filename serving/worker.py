"""The scoring worker: the consumer loop that feeds the chain, and its lifecycle.

Started by `serving.run.run_worker` (`evguard serve`, `python -m serving`, the `serve`
deployment).
The loop consumes micro-batches and submits them to the chain; while the chain
pushes back it takes nothing more, and pauses the partitions only while RabbitMQ
is unusable. On a signal it closes the chain, waits for its confirms and
commits. See docs/serving.md.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from keyed_state import KeyedStateStore
from messaging import consume_micro_batch, publisher_parameters
from pipelines import native
from pipelines.contracts.sessions import Source
from pipelines.data.memory import trim_c_heap
from pipelines.metrics_http import Heartbeat, MetricsServer
from pipelines.settings import Settings
from pipelines.stations import context as station_context
from serving.chain import Chain, ChainOptions, build_chain
from serving.champion import ChampionWatcher
from serving.kafka import consumer_config, dead_letter_producer_config
from serving.prometheus import WorkerMetrics
from serving.stations import STATION_STATE_CODEC, STATION_WRITE_LAST, StationTracker
from serving.steps.base import Batch, MessageRejected, WaitingBatches
from serving.steps.commit import CommitPolicy, Offsets
from serving.steps.dead_letters import (
    DeadLetterProducer,
    InvalidRatioExceeded,
    InvalidRatioLimit,
    InvalidRatioTracker,
)
from serving.steps.decode import RawMessage
from serving.steps.publish import RECONNECT, RabbitPublisher
from serving.steps.score import FeatureFn

log = logging.getLogger("evguard.serving.worker")
batch_log = logging.getLogger("evguard.serving.batch")

STUCK_AFTER_S = 60.0
# glibc keeps the freed memory of its arenas (librdkafka's fetch buffers, the batches'
# frames) mapped; handing it back every few seconds keeps the resident size near what is live
HEAP_TRIM_INTERVAL_S = 10.0
# how long the loop waits between looks for room in a full chain (confirms free it)
ROOM_WAIT_S = 0.002


@dataclass
class WorkerReport:
    consumed: int = 0
    scored: int = 0
    anomalies: int = 0
    dead_lettered: int = 0
    station_alerts: int = 0
    batches: int = 0
    seconds: float = 0.0


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT only set `stop`; a second one acts as usual. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, _frame) -> None:
        log.info("%s: finishing the batches in flight, then stopping",
                 signal.Signals(signum).name)
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ScoringWorker:
    """One member of the consumer group: Kafka -> chain -> RabbitMQ, at-least-once."""

    def __init__(self, settings: Settings, watcher: ChampionWatcher, feature_fn: FeatureFn,
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.watcher = watcher
        self.feature_fn = feature_fn
        self.metrics = metrics or WorkerMetrics()
        self.report = WorkerReport()
        self.heartbeat = Heartbeat()
        self.metrics_port: int | None = None
        self._options = ChainOptions(
            max_inflight_batches=settings.serve_max_inflight_batches,
            commit_policy=CommitPolicy(settings.serve_commit_interval_ms / 1000),
            explain_top_k=settings.serve_explain_top_k,
            site_ids=frozenset(settings.serve_site_ids))
        self._invalid_ratio = InvalidRatioTracker(InvalidRatioLimit(
            settings.serve_max_invalid_ratio, settings.serve_invalid_window))
        self._chain: Chain | None = None
        self._held = WaitingBatches(settings.serve_batch_size)
        self._paused = False
        self._assigned: set[tuple[str, int]] = set()
        self._positions: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._publisher: RabbitPublisher | None = None
        self._dead_letters: DeadLetterProducer | None = None
        self._state: KeyedStateStore | None = None
        self._tracker: StationTracker | None = None
        self._last_error_log = 0.0
        self._model = None

    # ---- lifecycle ----------------------------------------------------------
    def run(self, stop: threading.Event | None = None, idle_exit_s: float = 0.0) -> WorkerReport:
        """Consume, score and publish until `stop` is set, a signal arrives, or idle.

        Args:
            stop: set it to stop gracefully (signals set it too, on the main thread).
            idle_exit_s: stop after this long without messages and work in flight (0 = never).

        Raises:
            InvalidRatioExceeded: too many invalid messages (nothing of that batch committed).
            DeadLetterError: a dead letter was not acknowledged.
        """
        s = self.settings
        stop = stop or threading.Event()
        t0 = time.monotonic()
        server = MetricsServer(self.metrics, self.liveness, s.metrics_host, s.metrics_port).start()
        self.metrics_port = server.port
        self._publisher = RabbitPublisher(
            publisher_parameters(s), s.rabbitmq_exchange, self.metrics,
            replace(RECONNECT, max_s=s.serve_publish_retry_max_s),
            s.serve_confirm_timeout_s).start()
        self._dead_letters = DeadLetterProducer(
            Producer(dead_letter_producer_config(s.kafka_servers)), s.topic_dlq,
            on_written=lambda stage: self.metrics.dead_lettered.labels(stage).inc())
        self._state = KeyedStateStore(s.kafka_servers, s.topic_station_state,
                                      STATION_STATE_CODEC, s.consumer_group,
                                      write_last=STATION_WRITE_LAST)
        self._state.ensure_changelog(s.topic_partitions)
        self._tracker = StationTracker(
            self._state.partition, lambda: sorted(p for _t, p in self._assigned),
            s.station_tick_s, s.serve_instance_id)
        self._consumer = Consumer({**consumer_config(s), "on_commit": self._on_commit,
                                   "error_cb": self._on_kafka_error})
        self._consumer.subscribe([s.topic_sessions], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("worker started: group %s topic %s -> exchange %s, model %s v%s, metrics on "
                 "http://%s:%d/metrics", s.consumer_group, s.topic_sessions, s.rabbitmq_exchange,
                 self.watcher.current().name, self.watcher.current().version, s.metrics_host,
                 server.port)
        log.info("station context and health run %s", "compiled (mypyc)"
                 if native.is_compiled(station_context)
                 else "as Python: no build matches their sources (make install builds one)")
        # the modules and the model are long-lived: keep the collector from re-scanning them
        # after every few batches (measured: -20% CPU per session)
        gc.freeze()
        clean = False
        try:
            with stop_on_signals(stop):
                self._loop(stop, idle_exit_s)
            clean = True
        except InvalidRatioExceeded:
            clean = True  # what was accepted before is consistent: finish and commit it
            raise
        finally:
            self._shutdown(commit=clean)
            server.stop()
            self.report.seconds = time.monotonic() - t0
        return self.report

    def _shutdown(self, commit: bool) -> None:
        s = self.settings
        if self._chain is not None and commit:
            self._finish_chain(s.serve_shutdown_timeout_s)
        self._chain = None
        self._held.clear()
        if self._consumer is not None:
            self._consumer.close()
        if self._dead_letters is not None:
            self._dead_letters.close(5.0)
        if self._state is not None:
            self._state.close(5.0)
        if self._publisher is not None:
            self._publisher.close()
        log.info("worker stopped: consumed %d, scored %d, anomalies %d, dead-lettered %d",
                 self.report.consumed, self.report.scored, self.report.anomalies,
                 self.report.dead_lettered)

    # ---- the loop -----------------------------------------------------------
    def _loop(self, stop: threading.Event, idle_exit_s: float) -> None:
        s = self.settings
        consumer = self._consumer
        timeout, linger = s.serve_batch_timeout_ms / 1000, s.serve_batch_linger_ms / 1000
        last_message = time.monotonic()
        next_lag = next_summary = next_trim = time.monotonic()
        while not stop.is_set():
            self.heartbeat.beat()
            self._submit_held()
            room = self._held.room
            if room <= 0 and not self._publisher.ready:
                self._pause()  # RabbitMQ is down or blocking: keep serving Kafka, take nothing
            if room <= 0 and not self._paused:
                # the chain is full and RabbitMQ confirms: take nothing until there is room.
                # Not a pause: librdkafka drops a paused partition's prefetched messages and
                # fetches them again on resume (the embedded broker sends the whole backlog)
                time.sleep(ROOM_WAIT_S)
                messages = []
            else:
                # what arrived while the last batch was processed, plus the linger
                messages = consume_micro_batch(consumer, max(room, 1),
                                               0.05 if self._paused else timeout, linger)
            batch = self._to_batch(messages)
            if batch is not None:
                last_message = time.monotonic()
                self._held.add(batch)
                self._submit_held()
            elif not self._held and self._chain is not None and self._tracker.tick_due():
                self._held.add(Batch(offsets={}))  # no session: the silence timer still runs
                self._submit_held()
            if self._chain is not None:
                self._chain.head.poll()
            now = time.monotonic()
            if now >= next_lag:
                self._update_lag()
                next_lag = now + 5.0
            if now >= next_summary:
                self._log_summary()
                next_summary = now + 30.0
            if now >= next_trim:
                trim_c_heap()
                next_trim = now + HEAP_TRIM_INTERVAL_S
            if idle_exit_s and now - last_message >= idle_exit_s and self._idle():
                log.info("no messages for %.0fs and nothing in flight: stopping", idle_exit_s)
                return

    def _submit_held(self) -> None:
        while self._held and self._chain is not None:
            try:
                self._chain.head.submit(self._held.first())
            except MessageRejected:
                if not self._publisher.ready:
                    self._pause()  # RabbitMQ is down or blocking: don't wait to fill up
                return
            self._held.pop_first()
        if not self._held:
            self._resume()

    def _pause(self) -> None:
        if not self._paused and self._consumer is not None:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
            self.metrics.paused.set(1)
            log.info("backpressure: consumption paused (RabbitMQ %s)",
                     "ready" if self._publisher.ready else "unavailable")

    def _resume(self) -> None:
        if self._paused and self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
            self.metrics.paused.set(0)
            log.info("consumption resumed")

    def _to_batch(self, messages: list) -> Batch | None:
        raw: list[RawMessage] = []
        offsets: Offsets = {}
        for m in messages:
            err = m.error()
            if err is not None:
                self._on_kafka_error(err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            raw.append(RawMessage(m.value(), m.key(), Source(topic, partition, offset,
                                                             m.timestamp()[1])))
            offsets[(topic, partition)] = offset + 1
        if not raw:
            return None
        self._positions.update(offsets)
        return Batch(offsets=offsets, raw=raw)

    def _idle(self) -> bool:
        chain = self._chain
        return not self._held and (chain is None or chain.idle())

    # ---- chain per assignment ---------------------------------------------------
    def _new_chain(self) -> Chain:
        return build_chain(
            commit=self._commit, publisher=self._publisher, dead_letters=self._dead_letters,
            invalid_ratio=self._invalid_ratio, current_model=self._current_model,
            feature_fn=self.feature_fn, tracker=self._tracker, flush_state=self._state.flush,
            state_poll=self._state.poll, metrics=self.metrics, options=self._options,
            on_done=self._on_batch_done)

    def _current_model(self):
        model = self.watcher.current()
        if model is not self._model:
            if self._model is not None:
                gc.freeze()  # the new model is long-lived too
            self._model = model
        return model

    def _finish_chain(self, timeout: float) -> None:
        chain = self._chain
        self._chain = None
        chain.head.close()
        chain.head.join(timeout)
        chain.publish.discard()

    def _on_assign(self, _consumer, partitions: list[TopicPartition]) -> None:
        restored = self._state.restore(tp.partition for tp in partitions)
        log.info("station state restored: %s keys per partition", restored)
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._paused = False
        self.metrics.paused.set(0)
        if self._chain is None:
            self._chain = self._new_chain()
        log.info("assigned partitions %s", sorted(p for _t, p in self._assigned))

    def _on_revoke(self, _consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions %s revoked: finishing what is in flight",
                 sorted(tp.partition for tp in partitions))
        self._held.clear()  # not accepted yet: the next owner reads them again
        if self._chain is not None:
            self._finish_chain(self.settings.serve_shutdown_timeout_s)
        self._forget_state(partitions)
        self._assigned = set()

    def _forget_state(self, partitions: list[TopicPartition]) -> None:
        """The next owner restores these partitions' station state from the changelog."""
        numbers = [tp.partition for tp in partitions]
        self._state.drop(numbers)
        self._tracker.clock.forget(numbers)

    def _on_lost(self, _consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions %s lost (session timed out): dropping work in flight, "
                    "committing nothing", sorted(tp.partition for tp in partitions))
        self._held.clear()
        if self._chain is not None:
            self._chain.publish.discard()
            self._chain = None
        self._forget_state(partitions)
        self._assigned = set()

    def _commit(self, offsets: Offsets, sync: bool) -> None:
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()
               if (t, p) in self._assigned]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=not sync)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); those messages may be scored again", exc)

    # ---- callbacks and reporting ------------------------------------------------
    def _on_commit(self, err, _partitions) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed (%s); those messages may be scored again", err)

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._FENCED or "fenced" in err.str().lower():
            raise KafkaException(KafkaError(err.code(), f"another worker uses instance id "
                                 f"{self.settings.serve_instance_id!r}; give each worker its own "
                                 f"EVGUARD_SERVE_INSTANCE_ID ({err.str()})", fatal=True))
        if err.fatal():
            raise KafkaException(err)
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning("kafka: %s (retrying)", err.str())

    def _on_batch_done(self, batch: Batch) -> None:
        r = self.report
        r.batches += 1
        r.consumed += batch.size
        r.scored += len(batch.records)  # results travel as one message per routing key
        r.station_alerts += len(batch.station_alerts)
        r.anomalies += batch.anomalies
        r.dead_lettered += len(batch.invalid)
        if batch_log.isEnabledFor(logging.INFO):
            t = batch.timings
            batch_log.info(
                "batch n=%d scored=%d anomalies=%d dead=%d model=v%s decode_ms=%.1f "
                "context_ms=%.1f score_ms=%.1f explain_ms=%.1f encode_ms=%.1f confirm_ms=%.1f "
                "batch_ms=%.1f e2e_max_ms=%.1f", batch.size, len(batch.records), batch.anomalies,
                len(batch.invalid), batch.model_version, t.get("decode_ms", 0),
                t.get("context_ms", 0), t.get("score_ms", 0), t.get("explain_ms", 0), t.get("encode_ms", 0),
                t.get("confirm_ms", 0), t.get("batch_ms", 0), t.get("e2e_max_ms", 0))

    def _update_lag(self) -> None:
        for (topic, partition) in self._assigned:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            position = self._positions.get((topic, partition))
            if high is not None and high >= 0 and position is not None:
                self.metrics.consumer_lag.labels(topic, str(partition)).set(max(0, high - position))

    def _log_summary(self) -> None:
        r = self.report
        log.info("serving: consumed %d, scored %d, anomalies %d, dead-lettered %d, model v%s, "
                 "partitions %s%s", r.consumed, r.scored, r.anomalies, r.dead_lettered,
                 self.watcher.current().version, sorted(p for _t, p in self._assigned),
                 ", PAUSED" if self._paused else "")

    def liveness(self) -> tuple[bool, dict]:
        """The `/healthz` answer: (alive, detail); not alive once the loop is stuck."""
        age = self.heartbeat.age()
        publisher_ok = self._publisher is not None and self._publisher.ready
        ok = age < STUCK_AFTER_S
        status = "stuck" if not ok else ("ok" if publisher_ok else "degraded")
        return ok, {"status": status, "loop_age_s": round(age, 3),
                    "rabbitmq": "connected" if publisher_ok else "unavailable",
                    "paused": self._paused,
                    "partitions": sorted(p for _t, p in self._assigned),
                    "model_version": str(self.watcher.current().version)}
