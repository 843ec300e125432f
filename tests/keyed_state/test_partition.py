"""PartitionState without Kafka: the dict view, applied offsets, dirty keys, tombstones."""

from __future__ import annotations

import pytest

from keyed_state import PartitionState
from tests.keyed_state.conftest import CODEC, Tally


def test_the_view_writes_with_the_offset_of_its_message():
    state = PartitionState(0)
    view = state.view(41)
    view["tally:a"] = Tally(1, 7.5)
    state.view(42)["tally:b"] = Tally(1, 3.0)
    assert state.get("tally:a") == Tally(1, 7.5)
    assert state.applied_offset("tally:a") == 41
    assert state.applied_offset("tally:b") == 42
    assert state.applied_offset("tally:never") == -1
    assert state.already_applied("tally:a", 41) and not state.already_applied("tally:a", 43)
    assert sorted(view) == ["tally:a", "tally:b"] and len(view) == 2
    assert view.get("tally:missing") is None
    with pytest.raises(KeyError):
        view["tally:missing"]


def test_each_changed_key_is_handed_over_once_with_its_latest_value():
    state = PartitionState(3)
    for offset in range(5):
        state.put("tally:a", Tally(offset, 0.0), offset)
    state.put("tally:b", Tally(1, 1.0), 5)
    assert state.dirty == 2
    changed = sorted(state.take_dirty(), key=lambda change: change[0])
    assert changed == [("tally:a", Tally(4, 0.0), 4), ("tally:b", Tally(1, 1.0), 5)]
    assert state.take_dirty() == []


def test_a_deleted_key_becomes_a_tombstone_and_keeps_its_offset():
    state = PartitionState(0)
    state.put("tally:a", Tally(1, 1.0), 1)
    state.take_dirty()
    del state.view(9)["tally:a"]
    assert "tally:a" not in state and len(state) == 0
    assert state.applied_offset("tally:a") == 9
    assert state.take_dirty() == [("tally:a", None, 9)]
    with pytest.raises(KeyError):
        del state.view(10)["tally:a"]


def test_none_is_not_a_value():
    with pytest.raises(ValueError, match="delete the key"):
        PartitionState(0).put("tally:a", None, 1)


def test_the_prefix_codec_decodes_by_kind_and_names_an_unknown_one():
    data = CODEC.encode("tally:x", Tally(3, 2.5))
    assert CODEC.decode("tally:x", data) == Tally(3, 2.5)
    with pytest.raises(KeyError, match="no codec for state key 'profile:x'"):
        CODEC.decode("profile:x", data)


def test_a_redelivered_message_writes_only_the_keys_that_lack_it():
    state = PartitionState.restored(0, {"tally:held": Tally(3, 30.0), "tally:behind": Tally(1, 5.0)},
                                    {"tally:held": 10, "tally:behind": 4})
    assert state.high_water == 10
    assert type(state.message_view(11)) is type(state.view(11))  # new to every key

    view = state.message_view(8)  # written by offset 8 before a crash, as far as "held" goes
    held = view["tally:held"]
    view["tally:held"] = Tally(held.sessions + 1, held.kwh + 2.0)
    view["tally:behind"] = Tally(2, 7.0)
    view["tally:new"] = Tally(1, 1.0)
    assert view["tally:held"] == Tally(4, 32.0)  # the message reads its own write back

    assert state.get("tally:held") == Tally(3, 30.0) and state.applied_offset("tally:held") == 10
    assert state.get("tally:behind") == Tally(2, 7.0) and state.applied_offset("tally:behind") == 8
    assert state.get("tally:new") == Tally(1, 1.0)
    assert sorted(key for key, _v, _o in state.take_dirty()) == ["tally:behind", "tally:new"]


def test_a_held_value_read_by_a_redelivery_is_a_copy():
    state = PartitionState(0)
    state.put("list:a", [1, 2], 5)
    state.message_view(3)["list:a"].append(3)  # domain code mutates what it reads
    assert state.get("list:a") == [1, 2]


def test_keys_named_last_are_handed_over_after_all_the_others_in_that_order():
    state = PartitionState(0)
    for i, key in enumerate(["mark:a", "tally:a", "late:a", "mark:b", "tally:b", "late:b"]):
        state.put(key, Tally(1, float(i)), i)
    keys = [key for key, _v, _o in state.take_dirty(last=("late:", "mark:"))]
    assert sorted(keys[:2]) == ["tally:a", "tally:b"]
    assert sorted(keys[2:4]) == ["late:a", "late:b"]
    assert sorted(keys[4:]) == ["mark:a", "mark:b"]
