"""The keyed state of the partitions a worker owns, backed by a compacted changelog topic.

Lifecycle, driven by the consumer's rebalance callbacks:
- on assignment, `restore(partitions)` rebuilds each partition's state from its changelog
  partition (blocking; see docs/stations.md for how long);
- while processing, domain code writes through `partition(p).view(offset)`;
- per batch, `flush(on_delivered)` writes each changed key once; the caller commits the
  batch's input offsets only after every `on_delivered(None)`;
- on revoke (after the last flush) or loss, `drop(partitions)`.

After a crash, either the changelog holds an update, and its key's applied offset marks
the redelivered message as already applied, or the input offset was not committed and the
message is applied again on top of the older state. A crash can cut a flush short, so a
redelivered message may be held by some of its keys and not others: `message_view` applies
it to the others only. Either way nothing counts twice, and nothing is missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, Producer

from keyed_state.changelog import (
    applied_offset_headers,
    changelog_producer_config,
    ensure_changelog_topic,
    read_changelog,
    restore_consumer_config,
)
from keyed_state.partition import Codec, PartitionState

log = logging.getLogger("evguard.keyed_state")

OnDelivered = Callable[[str | None], None]


class KeyedStateStore:
    """Per-partition keyed state of one worker, and its changelog topic.

    Args:
        bootstrap: Kafka bootstrap servers.
        changelog_topic: the compacted topic; its partition p holds input partition p's state.
        codec: encodes values for the changelog and decodes them on restore.
        group_id_for_logs: names the restore consumer; no group is joined, nothing committed.
        restore_timeout_s: longest a `restore` may take before it fails.
        write_last: prefixes of the keys each flush writes after all the others, in this
            order. A changelog partition keeps the order of its writes, so after a crash
            that cut a flush short, a key written later holds a message only if every key
            written before it does. A domain orders its keys so that one key marks a message
            applied in full, and a key that another's update reads is never ahead of it.
    """

    def __init__(self, bootstrap: str, changelog_topic: str, codec: Codec,
                 group_id_for_logs: str, restore_timeout_s: float = 300.0,
                 write_last: tuple[str, ...] = ()) -> None:
        self.bootstrap = bootstrap
        self.changelog_topic = changelog_topic
        self.codec = codec
        self.group_id_for_logs = group_id_for_logs
        self.restore_timeout_s = restore_timeout_s
        self.write_last = write_last
        self._partitions: dict[int, PartitionState] = {}
        self._producer = Producer(changelog_producer_config(bootstrap))

    def ensure_changelog(self, partitions: int, replication_factor: int = -1) -> bool:
        """Create the changelog topic if missing (compacted, `partitions` partitions).

        Returns:
            True if it was created now.

        Raises:
            ChangelogError: it exists with another partition count, or cannot be created.
        """
        return ensure_changelog_topic(self.bootstrap, self.changelog_topic, partitions,
                                      replication_factor)

    def restore(self, partitions: Iterable[int]) -> dict[int, int]:
        """Rebuild these partitions' state from the changelog, replacing what was held.

        Returns:
            keys restored per partition.

        Raises:
            ChangelogError: the changelog could not be read to its end in time.
        """
        wanted = sorted(set(partitions))
        t0 = time.monotonic()
        consumer = Consumer(restore_consumer_config(self.bootstrap, self.group_id_for_logs))
        try:
            content = read_changelog(consumer, self.changelog_topic, wanted,
                                     self.restore_timeout_s)
        finally:
            consumer.close()
        decode = self.codec.decode
        restored = {}
        for p, part in content.items():
            values = {key: decode(key, data) for key, data in part.values.items()}
            self._partitions[p] = PartitionState.restored(p, values, part.applied)
            restored[p] = len(values)
        log.info("restored state of partitions %s from %s: %d keys from %d records in %.2fs",
                 wanted, self.changelog_topic, sum(restored.values()),
                 sum(part.records for part in content.values()), time.monotonic() - t0)
        return restored

    def partition(self, p: int) -> PartitionState:
        """The state of input partition `p`.

        Raises:
            LookupError: `p` was not restored (not assigned to this worker).
        """
        try:
            return self._partitions[p]
        except KeyError:
            raise LookupError(f"no state for partition {p}: restore it on assignment "
                              f"(held: {sorted(self._partitions)})") from None

    @property
    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget these partitions' state (revoked or lost); unflushed changes are lost."""
        for p in partitions:
            self._partitions.pop(p, None)

    def flush(self, on_delivered: OnDelivered) -> int:
        """Start one changelog write per changed key (its latest value); never blocks on acks.

        Each write's delivery report, served by `poll`, calls `on_delivered(None)`, or
        `on_delivered(error text)` when it failed: then the state and the changelog may
        differ, and the caller must not commit, and should drop and restore the partition
        (or stop).

        Returns:
            how many writes were started (as many `on_delivered` calls will follow).
        """
        started = 0
        encode = self.codec.encode
        topic = self.changelog_topic

        def delivered(err, _msg) -> None:
            on_delivered(None if err is None else err.str())

        for p, state in self._partitions.items():
            for key, value, offset in state.take_dirty(self.write_last):
                data = None if value is None else encode(key, value)
                self._produce(topic, p, key, data, offset, delivered)
                started += 1
        return started

    def _produce(self, topic, p, key, data, offset, delivered) -> None:
        while True:
            try:
                self._producer.produce(topic, value=data, key=key, partition=p,
                                       headers=applied_offset_headers(offset),
                                       on_delivery=delivered)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.05)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (calls `on_delivered`); how many were served."""
        return self._producer.poll(timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Wait up to `timeout` for the writes in flight; how many are still unacknowledged."""
        return self._producer.flush(timeout)


