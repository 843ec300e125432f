"""Fixtures of the keyed-state tests: a uuid-named changelog topic on the embedded broker,
stores on it, and a small value type with `to_bytes` / `from_bytes`."""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass

import pytest

from keyed_state import KeyedStateStore, PrefixCodec
from tests.support.brokers import delete_topics


@dataclass(frozen=True)
class Tally:
    """A per-key count and sum, as a station profile keeps (stand-in for the domain's)."""

    sessions: int
    kwh: float

    _layout = struct.Struct(">Id")

    def to_bytes(self) -> bytes:
        return self._layout.pack(self.sessions, self.kwh)

    @classmethod
    def from_bytes(cls, data: bytes) -> Tally:
        return cls(*cls._layout.unpack(data))

    def add(self, kwh: float) -> Tally:
        return Tally(self.sessions + 1, self.kwh + kwh)


CODEC = PrefixCodec({"tally": Tally})


class Acks:
    """Counts a store's delivery reports, as the worker counts them against a batch."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []

    def __call__(self, error: str | None) -> None:
        if error is None:
            self.ok += 1
        else:
            self.errors.append(error)

    def wait(self, store: KeyedStateStore, expected: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ok + len(self.errors) < expected and time.monotonic() < deadline:
            store.poll(0.1)
        assert not self.errors
        assert self.ok == expected


@pytest.fixture
def changelog(kafka_settings):
    """(bootstrap, a fresh changelog topic name); the topic is deleted afterwards."""
    topic = f"state-{uuid.uuid4().hex[:8]}"
    yield kafka_settings.kafka_servers, topic
    delete_topics(kafka_settings, [topic])


@pytest.fixture
def new_store(changelog):
    """Builds stores on the test's changelog topic (each as a fresh process would)."""
    bootstrap, topic = changelog
    stores: list[KeyedStateStore] = []

    def build() -> KeyedStateStore:
        store = KeyedStateStore(bootstrap, topic, CODEC, f"test-{uuid.uuid4().hex[:6]}")
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close(5)
