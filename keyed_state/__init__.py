"""Keyed state for stream processors: per-partition dicts recovered from a compacted
changelog topic, with each key's last applied input offset (docs/stations.md, "Keyed state").

    store = KeyedStateStore(bootstrap, "sessions.state", PrefixCodec({"profile": Profile}), group)
    store.ensure_changelog(partitions=6)
    store.restore([0, 3])                         # on assignment
    state = store.partition(0).view(offset)       # a MutableMapping for the domain code
    pending += store.flush(on_delivered)          # per batch; commit once all acknowledged
"""

from keyed_state.changelog import (
    APPLIED_OFFSET_HEADER,
    CHANGELOG_TOPIC_CONFIG,
    ChangelogError,
    changelog_producer_config,
    producer_state_lost,
    topic_config,
)
from keyed_state.partition import Codec, PartitionState, PrefixCodec, StateView
from keyed_state.store import KeyedStateStore, OnDelivered

__all__ = [
    "APPLIED_OFFSET_HEADER",
    "CHANGELOG_TOPIC_CONFIG",
    "ChangelogError",
    "Codec",
    "KeyedStateStore",
    "OnDelivered",
    "PartitionState",
    "PrefixCodec",
    "StateView",
    "changelog_producer_config",
    "producer_state_lost",
    "topic_config",
]
