"""The proxy mirror's disk spool: telemetry events kept while Kafka is down or slow.

An append-only log of (key, value) records in segment files under one directory
(`<state_dir>/ocpp-spool/` in the gateway). Events are read back in the order they
were appended, and a segment file is deleted only once every event in it has been
acknowledged by Kafka (`ack`), so a gateway that stops at any moment finds on restart
every event not yet acknowledged, and sends it again (at least once: the consumer
de-duplicates on `event_id`).

Bounded: an append that would take the files past `max_bytes` is refused and the
event is dropped (the newest goes, never an event already spooled: nothing is deleted
before Kafka acknowledged it). The caller counts the drop.

Durability: records are written with one `os.write` each (a process crash loses
nothing written), and the open segment is fsynced by `sync()` — the mirror calls it
about once a second — and when it is sealed or closed. A power loss can lose the last
second of spooled events; a torn record at the end of a segment is cut off when the
spool is opened again.

Record format: `<u32 length><u32 crc32>` then the payload `<u16 key length><key><value>`.
Segment files are `<id>.seg` with a 16-digit id; ordinary segments have even ids, and
`rescue` writes an odd id to put events back in front of the current spooling run
(`begin_run`: each run starts a segment of its own).

Not thread-safe: one thread (the mirror's) owns a spool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("evguard.gateway.spool")

HEADER = struct.Struct("<II")
KEY_LENGTH = struct.Struct("<H")
SEGMENT_BYTES = 4 * 1024 * 1024
SUFFIX = ".seg"
READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One event read back from the spool; pass `segment` to `Spool.ack` once Kafka has it."""

    key: bytes
    value: bytes
    segment: int


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int = 0
    written: int = 0  # events in the file
    read: int = 0  # of those, handed out by `read`
    acked: int = 0  # of those, acknowledged
    read_offset: int = 0
    sealed: bool = False


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


def encode_record(key: bytes, value: bytes) -> bytes:
    """One record's bytes (header and payload)."""
    if len(key) > 0xFFFF:
        raise ValueError(f"key of {len(key)} bytes is longer than 65535")
    payload = KEY_LENGTH.pack(len(key)) + key + value
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The complete records at the start of `data` and the bytes they take; a record cut
    off at the end (or failing its checksum) ends the list."""
    records, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if end > len(data):
            break
        payload = data[offset + HEADER.size:end]
        if zlib.crc32(payload) != crc or length < KEY_LENGTH.size:
            break
        (key_length,) = KEY_LENGTH.unpack_from(payload)
        records.append((payload[2:2 + key_length], payload[2 + key_length:]))
        offset = end
    return records, offset


class Spool:
    """Append-only segment files holding events until Kafka acknowledges them.

    Args:
        directory: where the segments live (created if missing); existing segments are
            recovered, in id order, as unread.
        max_bytes: the files never take more than this; an append that would is refused.
        segment_bytes: a segment is sealed (and a new one started) past this size.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError(f"max_bytes and segment_bytes must be > 0, got {max_bytes}, "
                             f"{segment_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segments: dict[int, _Segment] = {}
        self._order: list[int] = []  # ids, ascending
        self._fd: int | None = None  # the open (writable) segment's file
        self._writing: _Segment | None = None
        self._dirty = False
        self._run_first: int | None = None  # first segment of the current spooling run
        self._run_starting = False
        self.lost = 0  # events in segments found corrupt (see `_quarantine`)
        self._recover()
        last = max(self._order, default=0)
        self._next_id = last + 2 - (last % 2)  # even, above everything on disk, from 2

    # ---- state ---------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes of the segment files on disk."""
        return sum(s.size for s in self._segments.values())

    @property
    def events(self) -> int:
        """Events on disk not yet acknowledged."""
        return sum(s.written - s.acked for s in self._segments.values())

    @property
    def unread(self) -> int:
        """Events on disk not yet handed out by `read`."""
        return sum(s.written - s.read for s in self._segments.values())

    # ---- writing -------------------------------------------------------------------
    def append(self, key: bytes, value: bytes) -> bool:
        """Add one event at the end. False (nothing written) when the spool is full.

        Raises:
            OSError: the disk refused the write (full, read-only); nothing was added.
        """
        record = encode_record(key, value)
        if self.bytes + len(record) > self.max_bytes:
            return False
        if self._run_starting:  # the run gets segments of its own (see `begin_run`)
            self._seal()
        segment = self._writable(len(record))
        if self._run_starting:
            self._run_first, self._run_starting = segment.id, False
        try:
            if os.write(self._fd, record) != len(record):
                raise OSError(f"short write to {segment.path}")
        except OSError:
            os.ftruncate(self._fd, segment.size)  # no torn record before the next one
            raise
        segment.size += len(record)
        segment.written += 1
        self._dirty = True
        return True

    def begin_run(self) -> None:
        """Events appended from now on are newer than the events sent past the spool so
        far (the mirror switched from producing directly to spooling). They start a new
        segment, so that `rescue` can put those sends in front of them."""
        self._run_starting, self._run_first = True, None

    def end_run(self) -> None:
        """Events sent past the spool from now on are newer than everything spooled (the
        mirror went back to producing directly)."""
        self._run_starting, self._run_first = False, None

    def rescue(self, events: Iterable[tuple[bytes, bytes]]) -> int:
        """Spool events sent past the spool and not acknowledged (the mirror's direct sends,
        at shutdown), in their place: in front of the current run (`begin_run`), or at the
        end when none is going on. Returns how many were written; the rest did not fit.

        Raises:
            OSError: the disk refused the write.
        """
        events = list(events)
        if not events:
            return 0
        if self._run_first is None:
            return sum(self.append(k, v) for k, v in events)
        records = []
        budget = self.max_bytes - self.bytes
        for key, value in events:
            record = encode_record(key, value)
            if len(record) > budget:
                break
            records.append(record)
            budget -= len(record)
        if not records:
            return 0
        segment_id = self._run_first - 1
        path = self._path(segment_id)
        if path.exists():  # a rescue already sits there: keep both, this one at the end
            return sum(self.append(k, v) for k, v in events)
        data = b"".join(records)
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        self._add(_Segment(segment_id, path, size=len(data), written=len(records), sealed=True))
        self._sync_directory()
        return len(records)

    def sync(self) -> None:
        """fsync what was appended since the last sync."""
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def close(self) -> None:
        """Sync and close the open segment; the files stay for the next process."""
        self._seal()

    # ---- reading and acknowledging ---------------------------------------------------
    def read(self, limit: int) -> list[SpooledEvent]:
        """Up to `limit` unread events, oldest first; each is read once per process."""
        out: list[SpooledEvent] = []
        for segment_id in self._order:
            segment = self._segments[segment_id]
            while segment.read < segment.written and len(out) < limit:
                data = _read_at(segment.path, segment.read_offset, READ_CHUNK)
                records, used = decode_records(data)
                if not records and len(data) >= HEADER.size:  # one record past the chunk
                    length, _crc = HEADER.unpack_from(data)
                    data = _read_at(segment.path, segment.read_offset, HEADER.size + length)
                    records, used = decode_records(data)
                if not records:
                    self._quarantine(segment)
                    break
                taken = records[:limit - len(out)]
                if len(taken) < len(records):
                    used = sum(HEADER.size + KEY_LENGTH.size + len(k) + len(v) for k, v in taken)
                out.extend(SpooledEvent(k, v, segment_id) for k, v in taken)
                segment.read += len(taken)
                segment.read_offset += used
            if len(out) >= limit:
                break
        return out

    def ack(self, segment_id: int, count: int = 1) -> None:
        """`count` events read from `segment_id` are acknowledged by Kafka; a segment whose
        every event is acknowledged is deleted."""
        segment = self._segments.get(segment_id)
        if segment is None:
            return
        segment.acked = min(segment.written, segment.acked + count)
        if segment.acked == segment.written and segment.read == segment.written:
            if segment.sealed:
                self._delete(segment)
            else:
                self._seal()  # deletes it, with every other acknowledged sealed segment

    # ---- segments ------------------------------------------------------------------
    def _path(self, segment_id: int) -> Path:
        return self.directory / f"{segment_id:016d}{SUFFIX}"

    def _add(self, segment: _Segment) -> None:
        self._segments[segment.id] = segment
        self._order = sorted(self._segments)

    def _writable(self, record_bytes: int) -> _Segment:
        segment = self._writing
        if segment is not None and segment.size + record_bytes > self.segment_bytes \
                and segment.size > 0:
            self._seal()
            segment = None
        if segment is None:
            segment = _Segment(self._next_id, self._path(self._next_id))
            self._next_id += 2
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._add(segment)
            self._writing = segment
            self._sync_directory()
        return segment

    def _seal(self) -> None:
        if self._fd is None or self._writing is None:
            return
        self.sync()
        os.close(self._fd)
        self._writing.sealed = True
        self._fd, self._writing = None, None
        # an acknowledged segment kept open only because it was being written goes now
        for segment in list(self._segments.values()):
            if segment.sealed and segment.acked == segment.written == segment.read:
                self._delete(segment)

    def _quarantine(self, segment: _Segment) -> None:
        """A record that fails its checksum inside a segment (the disk, not a crash): the
        segment's unread events are lost; the file is kept as `.corrupt` for a person."""
        lost = segment.written - segment.read
        self.lost += lost
        log.error("spool: %s is corrupt at byte %d; its %d unread events are lost, the file "
                  "is kept as .corrupt", segment.path, segment.read_offset, lost)
        if segment is self._writing:
            self._seal()
        self._segments.pop(segment.id, None)
        self._order = sorted(self._segments)
        with contextlib.suppress(OSError):
            segment.path.rename(segment.path.with_suffix(".corrupt"))

    def _delete(self, segment: _Segment) -> None:
        self._segments.pop(segment.id, None)
        self._order = sorted(self._segments)
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _recover(self) -> None:
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                segment_id = int(path.stem)
            except ValueError:
                log.warning("spool: ignoring %s (not a segment name)", path)
                continue
            data = path.read_bytes()
            records, used = decode_records(data)
            if used < len(data):
                log.warning("spool: %s ends in %d bytes of a torn record; cut off", path,
                            len(data) - used)
                with open(path, "r+b") as file:
                    file.truncate(used)
                    os.fsync(file.fileno())
            if not records:
                path.unlink()
                continue
            self._add(_Segment(segment_id, path, size=used, written=len(records), sealed=True))
        if self._segments:
            log.info("spool: recovered %d events in %d segments (%d bytes) from %s",
                     self.events, len(self._segments), self.bytes, self.directory)
