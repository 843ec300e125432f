"""One input partition's keyed state, in memory: values, the input offset that produced
each, and which keys changed since the last flush. Pure: no Kafka here.

Domain code sees a `MutableMapping[str, object]` (`PartitionState.view(offset)`): it reads
and writes state as in a dict, and every write is stamped with the offset of the input
message being applied, so that a message delivered twice can be recognised by
`already_applied`. A crash can leave only some of a message's keys in the changelog, so
`message_view` applies a redelivered message to exactly the keys that lack it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Protocol


class Codec(Protocol):
    """How values become changelog bytes and back; the key says which kind a value is."""

    def encode(self, key: str, value: object) -> bytes: ...

    def decode(self, key: str, data: bytes) -> object: ...


class PrefixCodec:
    """A `Codec` for values with `to_bytes()` / `from_bytes()`, chosen by key prefix.

    `PrefixCodec({"profile": StationProfile, "site": SiteProfile})` decodes the key
    `profile:CA-303` with `StationProfile.from_bytes`.
    """

    def __init__(self, kinds: Mapping[str, type], separator: str = ":") -> None:
        self.kinds = dict(kinds)
        self.separator = separator

    def encode(self, key: str, value: object) -> bytes:
        return value.to_bytes()

    def decode(self, key: str, data: bytes) -> object:
        kind = key.split(self.separator, 1)[0]
        try:
            return self.kinds[kind].from_bytes(data)
        except KeyError:
            raise KeyError(f"no codec for state key {key!r} (kinds: {sorted(self.kinds)})") \
                from None


NEVER = -1


class PartitionState:
    """The state of one input partition: key -> value, with each key's applied offset.

    Writes mark the key dirty; `take_dirty` hands the changed keys to the changelog
    once. A deleted key keeps its applied offset (its tombstone carries it too).
    Not thread-safe: read, write and flush from one thread.
    """

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._values: dict[str, object] = {}
        self._applied: dict[str, int] = {}
        self._dirty: set[str] = set()
        # the highest offset any key holds: a message above it is new to every key
        self.high_water = NEVER

    @classmethod
    def restored(cls, partition: int, values: dict[str, object],
                 applied: dict[str, int]) -> PartitionState:
        """A clean state (nothing dirty) from what a changelog held."""
        state = cls(partition)
        state._values = values
        state._applied = applied
        state.high_water = max(applied.values(), default=NEVER)
        return state

    # ---- reading --------------------------------------------------------------
    def get(self, key: str, default: object | None = None) -> object | None:
        return self._values.get(key, default)

    def applied_offset(self, key: str) -> int:
        """The input offset of the last write to `key` (deletes included); -1 when never."""
        return self._applied.get(key, NEVER)

    def already_applied(self, key: str, offset: int) -> bool:
        """True when the message at `offset` (or a later one) already wrote `key`."""
        return self._applied.get(key, NEVER) >= offset

    def keys(self):
        return self._values.keys()

    def items(self):
        return self._values.items()

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # ---- writing --------------------------------------------------------------
    def put(self, key: str, value: object, offset: int) -> None:
        """Set `key` as applied from the input message at `offset`."""
        if value is None:
            raise ValueError(f"state value for {key!r} is None; delete the key instead")
        self._values[key] = value
        self._stamp(key, offset)

    def delete(self, key: str, offset: int) -> None:
        """Remove `key` (a tombstone in the changelog); a missing key is still recorded."""
        self._values.pop(key, None)
        self._stamp(key, offset)

    def _stamp(self, key: str, offset: int) -> None:
        self._applied[key] = offset
        self._dirty.add(key)
        self.high_water = max(self.high_water, offset)

    def view(self, offset: int) -> StateView:
        """A dict-like view whose writes are stamped with `offset`."""
        return StateView(self, offset)

    def message_view(self, offset: int) -> StateView:
        """The view for applying the input message at `offset`, once per key.

        A message above every key's applied offset gets the plain view. One at or below it
        may be a redelivery that some keys already hold (a crash can interrupt a batch's
        changelog writes), so it gets a `RedeliveryView`: the keys that hold it are read as
        copies and not written, the others are updated.
        """
        if offset > self.high_water:
            return StateView(self, offset)
        return RedeliveryView(self, offset)

    # ---- changelog ------------------------------------------------------------
    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def take_dirty(self, last: tuple[str, ...] = ()) -> list[tuple[str, object | None, int]]:
        """(key, value or None if deleted, applied offset) of each changed key, once. Keys
        starting with `last[0]` come after all others, then those starting with `last[1]`,
        and so on (see `KeyedStateStore`)."""
        changed = [(key, self._values.get(key), self._applied[key]) for key in self._dirty]
        self._dirty = set()
        if last:
            def rank(item: tuple[str, object | None, int]) -> int:
                return next((i for i, prefix in enumerate(last, 1)
                             if item[0].startswith(prefix)), 0)
            changed.sort(key=rank)
        return changed


class StateView(MutableMapping):
    """`MutableMapping[str, object]` over a `PartitionState` for the message at `offset`."""

    __slots__ = ("_state", "offset")

    def __init__(self, state: PartitionState, offset: int) -> None:
        self._state = state
        self.offset = offset

    def __getitem__(self, key: str) -> object:
        value = self._state.get(key)
        if value is None:
            raise KeyError(key)
        return value

    # get and set go to the partition's dicts directly: domain code calls them several
    # times per message, and the worker's context step is per-message Python
    def get(self, key: str, default: object | None = None) -> object | None:
        return self._state._values.get(key, default)

    def __setitem__(self, key: str, value: object) -> None:
        if value is None:
            raise ValueError(f"state value for {key!r} is None; delete the key instead")
        state = self._state
        state._values[key] = value
        state._applied[key] = offset = self.offset
        state._dirty.add(key)
        if offset > state.high_water:  # noqa: PLR1730 (a compare, not max(): per write)
            state.high_water = offset

    def __delitem__(self, key: str) -> None:
        if key not in self._state:
            raise KeyError(key)
        self._state.delete(key, self.offset)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


class RedeliveryView(StateView):
    """The view of a message that some keys may already hold: those keys are read as
    private copies (domain code mutates what it reads) and their writes are dropped; the
    other keys are read and written as usual. Each key is applied the message once."""

    __slots__ = ("_copies",)

    def __init__(self, state: PartitionState, offset: int) -> None:
        super().__init__(state, offset)
        self._copies: dict[str, object] = {}

    def _holds(self, key: str) -> bool:
        return self._state._applied.get(key, NEVER) >= self.offset

    def __getitem__(self, key: str) -> object:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: object | None = None) -> object | None:
        if key in self._copies:
            held = self._copies[key]
            return default if held is None else held
        value = self._state._values.get(key)
        if value is None:
            return default
        if self._holds(key):
            value = self._copies[key] = copy.deepcopy(value)
        return value

    def __setitem__(self, key: str, value: object) -> None:
        if self._holds(key):
            self._copies[key] = value
            return
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        if self._holds(key):
            self._copies[key] = None
            return
        super().__delitem__(key)
