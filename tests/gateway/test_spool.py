"""The proxy mirror's disk spool: order, bound, restart recovery, deletion only after
acknowledgement (by hand here, by a real Kafka in test_proxy_mirror.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.spool import Spool, encode_record


def events(n: int, start: int = 0, size: int = 40) -> list[tuple[bytes, bytes]]:
    return [(f"CP-{i % 3}".encode(), f"event-{i:06d}".encode().ljust(size, b".")) for i in
            range(start, start + n)]


def read_all(spool: Spool) -> list:
    out = []
    while batch := spool.read(7):
        out += batch
    return out


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_events_come_back_in_the_order_they_were_appended_across_segments(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=500)
    sent = events(60)
    assert all(spool.append(k, v) for k, v in sent)
    assert len(segment_files(tmp_path)) > 3
    got = read_all(spool)
    assert [(e.key, e.value) for e in got] == sent
    assert spool.unread == 0 and spool.events == 60


def test_a_full_spool_refuses_the_newest_and_keeps_within_its_bytes(tmp_path):
    record = len(encode_record(*events(1)[0]))
    spool = Spool(tmp_path, max_bytes=10 * record + record // 2, segment_bytes=3 * record)
    accepted = [spool.append(k, v) for k, v in events(25)]
    assert accepted == [True] * 10 + [False] * 15
    assert spool.bytes == 10 * record
    assert sum(f.stat().st_size for f in segment_files(tmp_path)) <= spool.max_bytes
    assert [e.value for e in read_all(spool)] == [v for _k, v in events(10)]


def test_a_segment_is_deleted_only_when_every_event_in_it_is_acknowledged(tmp_path):
    record = len(encode_record(*events(1)[0]))
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4 * record)
    for k, v in events(12):
        spool.append(k, v)
    got = read_all(spool)
    first, *_ = segment_files(tmp_path)
    in_first = [e for e in got if e.segment == got[0].segment]
    assert len(in_first) == 4
    for event in in_first[:-1]:
        spool.ack(event.segment)
    assert first.exists(), "deleted before its last event was acknowledged"
    spool.ack(in_first[-1].segment)
    assert not first.exists()
    for event in got[4:]:
        spool.ack(event.segment)
    assert segment_files(tmp_path) == [] and spool.bytes == 0 and spool.events == 0


def test_unacknowledged_events_survive_a_restart_and_come_back_in_order(tmp_path):
    record = len(encode_record(*events(1)[0]))
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=5 * record)
    for k, v in events(20):
        spool.append(k, v)
    got = read_all(spool)
    for event in got[:7]:  # the first segment whole, two of the second
        spool.ack(event.segment)
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=5 * record)
    assert again.events == 15 and again.unread == 15
    assert [e.value for e in read_all(again)] == [v for _k, v in events(15, start=5)]
    for k, v in events(3, start=20):  # new events go after the recovered ones
        again.append(k, v)
    assert [e.value for e in read_all(again)] == [v for _k, v in events(3, start=20)]


def test_a_torn_record_at_the_end_is_cut_off_on_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for k, v in events(5):
        spool.append(k, v)
    spool.close()
    (last,) = segment_files(tmp_path)
    whole = last.stat().st_size
    with open(last, "ab") as file:  # a crash in the middle of a write
        file.write(encode_record(b"CP-9", b"half written")[:-4])
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.events == 5 and last.stat().st_size == whole
    assert [e.value for e in read_all(again)] == [v for _k, v in events(5)]


def test_rescued_events_go_in_front_of_the_current_spooling_run(tmp_path):
    """The mirror's direct sends Kafka never acknowledged are older than what it spooled
    after them, and newer than what the spool had handed out before."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for k, v in events(3):  # an earlier run, read (in flight) but not acknowledged
        spool.append(k, v)
    assert len(read_all(spool)) == 3
    spool.begin_run()  # the mirror goes from direct sends to the spool
    for k, v in events(4, start=10):  # spooled after the direct sends below
        spool.append(k, v)
    assert spool.rescue(events(2, start=5)) == 2
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20)
    expected = events(3) + events(2, start=5) + events(4, start=10)
    assert [e.value for e in read_all(again)] == [v for _k, v in expected]


def test_rescue_after_the_run_ended_appends_at_the_end(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.begin_run()
    for k, v in events(2):
        spool.append(k, v)
    read_all(spool)
    spool.end_run()  # direct sends again: newer than everything spooled
    assert spool.rescue(events(2, start=2)) == 2
    spool.close()
    assert [e.value for e in read_all(Spool(tmp_path, max_bytes=1 << 20))] == \
        [v for _k, v in events(4)]


def test_bad_bounds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path, max_bytes=0)


def test_a_segment_corrupt_in_the_middle_is_set_aside_and_its_events_counted_lost(tmp_path):
    record = len(encode_record(*events(1)[0]))
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4 * record)
    for k, v in events(8):
        spool.append(k, v)
    spool.close()
    _first, second = segment_files(tmp_path)
    data = bytearray(second.read_bytes())
    data[record + 12] ^= 0xFF  # the second record's payload: its checksum fails
    second.write_bytes(bytes(data))

    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4 * record)
    got = read_all(again)
    # a torn tail is cut on open: the second segment keeps its first record only
    assert [e.value for e in got] == [v for _k, v in events(5)]
    assert again.lost == 0

    third = Spool(tmp_path / "other", max_bytes=1 << 20, segment_bytes=4 * record)
    for k, v in events(4):
        third.append(k, v)
    (path,) = segment_files(tmp_path / "other")
    data = bytearray(path.read_bytes())
    data[12] ^= 0xFF  # corrupted while the spool is open: found when read
    path.write_bytes(bytes(data))
    assert third.read(10) == [] and third.lost == 4
    assert path.with_suffix(".corrupt").exists() and third.bytes == 0


def test_a_run_keeps_appending_to_its_segment_while_it_is_read(tmp_path):
    """Kafka slow: the mirror reads each event back as soon as it is spooled; that must not
    cost a segment file per event."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.begin_run()
    for k, v in events(50):
        spool.append(k, v)
        assert len(spool.read(10)) == 1
    assert len(segment_files(tmp_path)) == 1
