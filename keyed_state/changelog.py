"""The changelog topic: its configuration, its creation and check, and reading it back.

One changelog partition per input partition, compacted: the latest record of a key is
its value (a tombstone deletes it), and the record's `applied-offset` header is the
input offset that produced it. Reading it back needs no consumer group: partitions are
assigned directly and read from the start up to the high watermark found at the start.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

log = logging.getLogger("evguard.keyed_state")

APPLIED_OFFSET_HEADER = "applied-offset"
# compaction keeps each key's last record, but never touches the open segment: the default
# 1 GiB segment would leave up to 1 GiB per partition for a restore to read (measured on
# the embedded broker: no compaction at all with the default, 3 records per key -> ~1
# with 1 MiB segments). Both brokers accept these.
CHANGELOG_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(16 * 1024 * 1024)}
_OFFSET = struct.Struct(">q")


class ChangelogError(RuntimeError):
    """The changelog topic is unusable: wrong layout, not created, or unreadable."""


# errors a new idempotent producer clears: the broker forgot this producer's sequence numbers
# (it was restarted after a crash that lost its last writes); not a fenced or bad config
_PRODUCER_STATE_LOST = frozenset({KafkaError._FATAL, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                  KafkaError.UNKNOWN_PRODUCER_ID,
                                  KafkaError.INVALID_PRODUCER_EPOCH})


def producer_state_lost(exc: KafkaException) -> bool:
    """Whether a Kafka failure is an idempotent producer's, that a new producer gets past."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() in _PRODUCER_STATE_LOST


def changelog_producer_config(bootstrap: str) -> dict:
    # idempotent with acks=all: a retried write is neither lost nor duplicated, and the
    # writes of one partition stay in order, so the last one is the key's value
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "compression.type": "lz4",
            "client.id": f"evguard-state-{os.getpid()}", "log_level": 2}


def restore_consumer_config(bootstrap: str, group_id: str) -> dict:
    # group.id only names the client in the broker's logs: partitions are assigned, never
    # subscribed, and nothing is committed
    return {"bootstrap.servers": bootstrap, "group.id": group_id,
            "client.id": f"evguard-state-restore-{os.getpid()}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            # see serving.kafka.consumer_config: the embedded broker ignores fetch.max.bytes
            "receive.message.max.bytes": 1_000_000_000, "log_level": 2}


def applied_offset_headers(offset: int) -> list[tuple[str, bytes]]:
    return [(APPLIED_OFFSET_HEADER, _OFFSET.pack(offset))]


def applied_offset_of(headers: list[tuple[str, bytes]] | None) -> int:
    """The applied offset a changelog record carries (-1 without the header)."""
    for name, value in headers or ():
        if name == APPLIED_OFFSET_HEADER:
            return _OFFSET.unpack(value)[0]
    return -1


# ---- the topic ---------------------------------------------------------------------
def _topic_partitions(admin: AdminClient, topic: str, timeout: float) -> int | None:
    """Partitions of `topic`, None if it does not exist.

    Lists all topics: a metadata request naming the topic would create it on brokers
    with auto.create.topics.enable (the embedded broker does), with the wrong config.
    """
    metadata = admin.list_topics(timeout=timeout).topics.get(topic)
    return None if metadata is None else len(metadata.partitions)


def ensure_changelog_topic(bootstrap: str, topic: str, partitions: int,
                           replication_factor: int = -1, timeout: float = 20.0) -> bool:
    """Create the compacted changelog topic if missing, else check its partition count.

    Args:
        replication_factor: -1 = the broker's default.

    Returns:
        True if it was created now.

    Raises:
        ChangelogError: it exists with another partition count, or could not be created.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    have = _topic_partitions(admin, topic, timeout)
    if have is None:
        future = admin.create_topics([NewTopic(topic, partitions, replication_factor,
                                               config=CHANGELOG_TOPIC_CONFIG)])[topic]
        try:
            future.result(timeout=timeout)
            created = True
        except KafkaException as exc:  # another worker may have created it meanwhile
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ChangelogError(f"cannot create changelog topic {topic!r}: "
                                     f"{exc.args[0].str()}") from None
            created = False
        deadline = time.monotonic() + timeout
        while (have := _topic_partitions(admin, topic, timeout)) is None:
            if time.monotonic() > deadline:
                raise ChangelogError(f"changelog topic {topic!r} did not appear within "
                                     f"{timeout:.0f}s")
            time.sleep(0.1)
        if created:
            log.info("created changelog topic %s (%d partitions, compacted)", topic, partitions)
    else:
        created = False
    if have != partitions:
        raise ChangelogError(
            f"changelog topic {topic!r} has {have} partitions but the input has {partitions}: "
            f"state partition p must be input partition p. Delete the changelog topic (the "
            f"state is rebuilt from scratch) or give the state another topic name.")
    policy = topic_config(bootstrap, topic, timeout).get("cleanup.policy", "")
    if "compact" not in policy:
        log.warning("changelog topic %s has cleanup.policy=%s, not compact: old state "
                    "will expire", topic, policy)
    return created


def topic_config(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[str, str]:
    """The topic's effective configuration, as the broker describes it."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=timeout)
    return {name: entry.value for name, entry in entries.items()}


# ---- reading it back -----------------------------------------------------------------
@dataclass
class ChangelogContent:
    """The last record of each key in one changelog partition, not yet decoded."""

    values: dict[str, bytes] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    records: int = 0


def read_changelog(consumer: Consumer, topic: str, partitions: Iterable[int],
                   timeout: float = 300.0) -> dict[int, ChangelogContent]:
    """Read each partition from its start to the high watermark found now; last record wins.

    A missing topic or an empty partition returns at once (no wait for messages that
    will not come).

    Raises:
        ChangelogError: the end was not reached within `timeout`, or a read failed.
    """
    wanted = sorted(set(partitions))
    content = {p: ChangelogContent() for p in wanted}
    existing = consumer.list_topics(timeout=10).topics.get(topic)
    if existing is None:
        return content
    ends: dict[int, int] = {}
    for p in wanted:
        if p not in existing.partitions:
            continue
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    if not ends:
        return content
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    deadline = time.monotonic() + timeout
    try:
        while ends:
            if time.monotonic() > deadline:
                raise ChangelogError(f"restoring {topic} partitions {sorted(ends)}: end not "
                                     f"reached within {timeout:.0f}s")
            # what is fetched already, else wait for one: consume(n, t) would wait t for n
            for message in consumer.consume(10_000, 0) or consumer.consume(1, 0.5):
                p = message.partition()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(p, None)
                        continue
                    raise ChangelogError(f"restoring {topic}[{p}]: {error.str()}")
                part = content[p]
                key = message.key().decode()
                value = message.value()
                part.records += 1
                part.applied[key] = applied_offset_of(message.headers())
                if value is None:
                    part.values.pop(key, None)
                else:
                    part.values[key] = value
                if message.offset() >= ends.get(p, 0) - 1:
                    ends.pop(p, None)
    finally:
        consumer.unassign()
    return content
