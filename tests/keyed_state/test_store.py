"""KeyedStateStore on the embedded broker: flush, restore, tombstones, topic layout."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from keyed_state import CHANGELOG_TOPIC_CONFIG, ChangelogError, topic_config
from tests.keyed_state.conftest import Acks, Tally


def write_state(store, keys_per_partition: dict[int, list[str]]) -> dict[int, dict]:
    """Put one value per key (offset = its index); what was written, per partition."""
    written = {}
    for p, keys in keys_per_partition.items():
        state = store.partition(p)
        for offset, key in enumerate(keys):
            state.put(key, Tally(offset + 1, offset * 1.5 + p), offset + 100 * p)
        written[p] = {key: (state.get(key), state.applied_offset(key)) for key in keys}
    return written


def flush_and_wait(store) -> int:
    acks = Acks()
    started = store.flush(acks)
    acks.wait(store, started)
    return started


def test_a_new_store_restores_the_acknowledged_state_of_the_partitions_asked(new_store):
    writer = new_store()
    writer.ensure_changelog(3)
    writer.restore([0, 1, 2])
    keys = {p: [f"tally:st-{p}-{i}" for i in range(40)] for p in range(3)}
    written = write_state(writer, keys)
    assert flush_and_wait(writer) == 120

    reader = new_store()
    assert reader.restore([0, 2]) == {0: 40, 2: 40}
    assert reader.partitions == [0, 2]
    for p in (0, 2):
        state = reader.partition(p)
        restored = {key: (state.get(key), state.applied_offset(key)) for key in state}
        assert restored == written[p]
        assert state.dirty == 0
    with pytest.raises(LookupError, match="no state for partition 1"):
        reader.partition(1)


def test_the_last_write_wins_and_a_deleted_key_stays_deleted(new_store):
    writer = new_store()
    writer.ensure_changelog(2)
    writer.restore([1])
    state = writer.partition(1)
    for offset in range(3):  # three flushes: three records per key in the log
        state.put("tally:kept", Tally(offset, float(offset)), offset)
        state.put("tally:gone", Tally(offset, 0.0), offset)
        flush_and_wait(writer)
    del state.view(7)["tally:gone"]
    assert flush_and_wait(writer) == 1

    restored = new_store()
    assert restored.restore([1]) == {1: 1}
    state = restored.partition(1)
    assert state.get("tally:kept") == Tally(2, 2.0)
    assert state.applied_offset("tally:kept") == 2
    assert "tally:gone" not in state
    assert state.applied_offset("tally:gone") == 7  # the tombstone carries it


def test_a_partition_without_records_and_a_missing_topic_restore_empty(new_store, changelog):
    bootstrap, topic = changelog
    store = new_store()
    assert store.restore([0, 1]) == {0: 0, 1: 0}  # the topic does not exist yet
    assert topic not in AdminClient({"bootstrap.servers": bootstrap}).list_topics(
        timeout=10).topics  # and reading it did not create it (with the wrong config)
    store.ensure_changelog(4)
    assert store.restore([3]) == {3: 0}
    store.partition(3).put("tally:x", Tally(1, 1.0), 5)
    flush_and_wait(store)
    fresh = new_store()
    assert fresh.restore([0, 1, 2]) == {0: 0, 1: 0, 2: 0}
    assert len(fresh.partition(0)) == 0
    assert fresh.restore([3]) == {3: 1}


def test_the_changelog_is_compacted_and_its_partition_count_is_checked(new_store, changelog):
    bootstrap, topic = changelog
    store = new_store()
    assert store.ensure_changelog(3) is True
    assert store.ensure_changelog(3) is False
    config = topic_config(bootstrap, topic)
    assert config["cleanup.policy"] == "compact"
    assert {name: config[name] for name in CHANGELOG_TOPIC_CONFIG} == CHANGELOG_TOPIC_CONFIG
    with pytest.raises(ChangelogError, match="has 3 partitions but the input has 6"):
        new_store().ensure_changelog(6)


def test_flush_writes_each_changed_key_once_and_nothing_when_unchanged(new_store):
    store = new_store()
    store.ensure_changelog(2)
    store.restore([0, 1])
    for offset in range(10):  # ten updates of the same three keys between two flushes
        for key in ("tally:a", "tally:b"):
            store.partition(0).put(key, Tally(offset, 0.0), offset)
        store.partition(1).put("tally:c", Tally(offset, 0.0), offset)
    acks = Acks()
    assert store.flush(acks) == 3
    acks.wait(store, 3)
    nothing = Acks()
    assert store.flush(nothing) == 0
    store.poll(0.5)
    assert nothing.ok == 0 and not nothing.errors


def test_a_redelivered_message_does_not_count_twice(new_store):
    """The worker's protocol: apply, flush, commit after the acks. A crash after the state
    was acknowledged but before the input offsets were committed redelivers the batch."""
    sessions = [(offset, f"tally:st-{offset % 4}", 1.0 + offset) for offset in range(30)]

    def apply(store, batch) -> None:
        state = store.partition(0)
        for offset, key, kwh in batch:
            if state.already_applied(key, offset):
                continue
            state.view(offset)[key] = (state.get(key) or Tally(0, 0.0)).add(kwh)

    uninterrupted = new_store()
    uninterrupted.restore([0])
    apply(uninterrupted, sessions)
    expected = dict(uninterrupted.partition(0).items())

    first = new_store()
    first.ensure_changelog(1)
    first.restore([0])
    apply(first, sessions[:10])
    flush_and_wait(first)  # committed: offsets 0-9
    apply(first, sessions[10:20])
    flush_and_wait(first)  # acknowledged, then the worker dies before committing 10-19

    restarted = new_store()
    restarted.restore([0])
    apply(restarted, sessions[10:])  # redelivered from the committed offset 10
    assert dict(restarted.partition(0).items()) == expected
