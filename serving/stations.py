"""The worker's station context and health: per-station state for the partitions it owns.

For each session, in Kafka order: its context is read from the station's state
(only sessions that arrived before it), then the session is applied to the
profiles and to the health detectors, unless the state already holds it (a
redelivery after a crash: the state records, per key, the input offset that
last changed it). The station's `profile:` key is written last in each changelog
flush (`STATION_WRITE_LAST`), so when it holds a session every other key that
session wrote holds it too; when it does not, the session is applied to exactly
the keys that lack it (`PartitionState.message_view`). A timer checks every station for silence, because a dead
station sends nothing. The pure logic is in `pipelines.stations`; the state,
its changelog and its restore are in `keyed_state`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from keyed_state import PartitionState, PrefixCodec
from pipelines.contracts.dates import date_to_epoch
from pipelines.contracts.sessions import Source
from pipelines.contracts.station_alert import (
    InvalidStationAlert,
    encode_station_alert,
    station_alert_message,
    station_routing_key,
)
from pipelines.stations import context as station_context
from pipelines.stations import health as station_health
from pipelines.stations.health import SiteHealth, StationHealth, UserPower
from pipelines.stations.profiles import Profile

log = logging.getLogger("evguard.serving.stations")

TIMER_OFFSET = -1

# how each kind of state key is stored in the changelog (prefixes: pipelines.stations)
STATION_STATE_CODEC = PrefixCodec({
    "profile": Profile, "site": Profile, "user": Profile,
    "health": StationHealth, "healthsite": SiteHealth, "healthuser": UserPower})
# the order of each changelog flush (`KeyedStateStore`): a station's health reads its site's
# and its driver's as the session left them, so those come after it, and `profile:`, which
# marks a session applied in full, comes last; a cut flush then never leaves a key holding a
# session that a key it was read by lacks (tested for every cut in tests/serving)
STATION_WRITE_LAST = ("healthsite:", "healthuser:", "profile:")


class DeadLetter(Protocol):
    """What the tracker reads of a dead-lettered message (`serving.steps.base.InvalidMessage`)."""

    key: bytes | None
    source: Source


class StreamClock:
    """Event time per partition, carried forward by the wall clock while nothing arrives.

    A replay of old sessions runs on their event time; a live stream's event time
    is the wall clock. When a partition goes quiet, its time keeps moving with the
    wall clock, so stations on it can still be found silent.
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._seen: dict[int, tuple[float, float]] = {}  # partition -> (event s, wall s then)

    def observe(self, partition: int, event_s: float) -> None:
        latest = self._seen.get(partition)
        if latest is None or event_s > self.now(partition):
            self._seen[partition] = (event_s, self._wall())

    def now(self, partition: int) -> float:
        event_s, wall_then = self._seen.get(partition, (self._wall(), self._wall()))
        return event_s + max(0.0, self._wall() - wall_then)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._seen.pop(p, None)


def _event_seconds(record: dict) -> float | None:
    for name in ("disconnectTime", "doneChargingTime", "connectionTime"):
        seconds = date_to_epoch(record.get(name))
        if seconds is not None:
            return seconds
    return None


class StationTracker:
    """Context and health of the stations on the partitions this worker owns.

    Args:
        state_of: the keyed state of one input partition.
        owned: the partitions owned now (the silence timer checks only those).
        tick_s: least wall-clock time between two silence checks.
        worker_id: names the worker in the station alerts it emits.
        wall: the wall clock (epoch seconds).
    """

    def __init__(self, state_of: Callable[[int], PartitionState],
                 owned: Callable[[], Sequence[int]], tick_s: float, worker_id: str = "",
                 wall: Callable[[], float] = time.time) -> None:
        self._state_of = state_of
        self._owned = owned
        self._tick_s = tick_s
        self._worker_id = worker_id
        self._wall = wall
        self.clock = StreamClock(wall)
        self._last_tick = wall()
        self.redelivered = 0

    def process(self, records: Sequence[dict], sources: Sequence[Source]) -> tuple[
            station_context.ContextRows, list[tuple[str, bytes]]]:
        """Contexts of `records` (aligned), and the station alerts they raise or close."""
        rows: list[tuple[float, ...]] = []
        alerts: list = []
        context_then_observe = station_context.context_then_observe
        on_session = station_health.on_session
        observe_clock = self.clock.observe
        state_of = self._state_of
        partition, state = None, None
        for record, source in zip(records, sources):
            if source.partition != partition:
                partition, state = source.partition, state_of(source.partition)
            offset = source.offset
            view = state.message_view(offset)
            alerted = False
            if offset <= state.high_water:  # maybe a redelivery after a crash
                station_id = record.get("stationID")
                if state.applied_offset(f"profile:{station_id}") >= offset:  # held in full
                    rows.append(context_then_observe(view, record, apply=False))
                    self.redelivered += 1
                    continue
                alerted = state.applied_offset(station_health.station_key(station_id)) >= offset
            rows.append(context_then_observe(view, record))
            raised = on_session(view, record)[1]
            if raised and not alerted:  # alerts went out when the health key took the session
                alerts.extend(raised)
            event_s = _event_seconds(record)
            if event_s is not None:
                observe_clock(partition, event_s)
        alerts.extend(self.tick_if_due())
        return station_context.ContextRows(rows), self._messages(alerts)

    def dead_lettered(self, messages: Sequence[DeadLetter]) -> list[tuple[str, bytes]]:
        """Count each dead-lettered session of a known station as failed, and the station
        alerts that raises. The Kafka key names the station; a key no session ever came
        with is ignored, so junk cannot grow the state."""
        alerts: list = []
        for message in messages:
            if not message.key:
                continue
            station_id = message.key.decode("utf-8", "replace")
            key = station_health.station_key(station_id)
            state = self._state_of(message.source.partition)
            known = state.get(key)
            if known is None or state.applied_offset(key) >= message.source.offset:
                continue
            _keys, raised = station_health.on_dead_letter(
                state.view(message.source.offset), station_id, known.site_id,
                self.clock.now(message.source.partition))
            alerts.extend(raised)
        return self._messages(alerts)

    def tick_if_due(self) -> list:
        """Check the owned stations for silence, at most once per `tick_s` of wall clock."""
        now = self._wall()
        if now - self._last_tick < self._tick_s:
            return []
        self._last_tick = now
        alerts = []
        for partition in self._owned():
            state = self._state_of(partition)
            # a timer's writes come from no input message: stamped -1 (only `profile:` keys'
            # offsets decide whether a redelivered session was applied)
            _keys, raised = station_health.on_tick(state.view(TIMER_OFFSET),
                                                  self.clock.now(partition))
            alerts.extend(raised)
        return alerts

    def tick_due(self) -> bool:
        return self._wall() - self._last_tick >= self._tick_s

    def _messages(self, alerts: list) -> list[tuple[str, bytes]]:
        if not alerts:
            return []
        detected_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        out = []
        for alert in alerts:
            log.info("station %s %s %s: %s", alert.station_id, alert.kind, alert.status,
                     alert.evidence)
            try:
                message = station_alert_message(alert, detected_at, self._worker_id)
            except InvalidStationAlert as exc:  # e.g. a late session closing before it opened
                log.warning("station alert of %s not sent: %s", alert.station_id, exc)
                continue
            out.append((station_routing_key(alert.site_id, alert.kind),
                        encode_station_alert(message)))
        return out
