"""The fleet: one asyncio task per station, each a real OCPP client over a WebSocket.

`run_fleet` replays scheduled sessions (`fleet.schedule`) at `speedup` simulated
seconds per real second. A station connects (subprotocol `ocpp1.6` or `ocpp2.0.1`,
HTTP Basic auth with its id as the user), boots, says Available, and then plays each
session's plan (`pipelines.telemetry.charging`) event by event at its time, sending
heartbeats while idle. The charger's clock starts at the first session's connection
time (`clock="session"`) or at the real now (`clock="now"`) and runs `speedup` times
faster than the wall.

Each planted fault is written to the labels file (JSON lines, `LABEL_SCHEMA`) when its
first telltale frame has been sent, with the wall-clock time it left: a detector's
delay is measured from there. A `silent` fault's telltale is the dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
import zlib
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote

import numpy as np
from ocpp.exceptions import OCPPError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from fleet.charge_point import CHARGE_POINTS, SUBPROTOCOLS, charger_time
from fleet.schedule import ScheduledSession
from pipelines.contracts.dates import epoch_to_iso, rfc1123_to_epoch
from pipelines.telemetry.charging import (
    ChargingTrace,
    PlanOptions,
    PlantedFault,
    TransactionPlan,
    UnplannableSession,
    build_plan,
)

log = logging.getLogger(__name__)

LABEL_SCHEMA = "evguard.fleet_label/1"
_LINK_ERRORS = (ConnectionClosed, OSError, TimeoutError, asyncio.TimeoutError)


class FleetError(RuntimeError):
    """The fleet could not run at all (bad configuration, nothing reachable)."""


@dataclass(frozen=True)
class FleetConfig:
    """How the fleet runs.

    Attributes:
        url: the CSMS or gateway, `ws://host:port/path`; the charge point id is appended.
        speedup: simulated seconds per real second.
        meter_interval_s: simulated seconds between meter samples.
        password: HTTP Basic password of every charge point (None = no auth header);
            `passwords` overrides it per charge point id.
        clock: `session`: the charger clock starts at the first session's connection
            time; `now`: at the real time of the start.
        unplug_delay_s: how much longer a `never_unplugged` car stays (simulated).
        validate: check every frame against the OCPP JSON schemas (costs CPU at scale).
        max_wall_s: stop after this many real seconds (None = when every station is done).
        start_delay_s: real seconds for every station to connect before the first event.
    """

    url: str
    speedup: float = 60.0
    meter_interval_s: float = 10.0
    password: str | None = None
    passwords: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    clock: Literal["session", "now"] = "session"
    unplug_delay_s: float = 36 * 3600.0
    validate: bool = True
    response_timeout_s: float = 30.0
    connect_attempts: int = 5
    max_wall_s: float | None = None
    start_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {self.url!r}")
        if self.speedup <= 0 or self.connect_attempts < 1:
            raise ValueError("speedup must be > 0 and connect_attempts >= 1")
        if self.clock not in ("session", "now"):
            raise ValueError(f"clock must be session or now, got {self.clock!r}")
        PlanOptions(sample_interval_s=self.meter_interval_s, unplug_delay_s=self.unplug_delay_s)


@dataclass
class FleetReport:
    """What the fleet did; updated live while it runs."""

    stations: int = 0
    stations_by_version: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    sessions_done: int = 0
    transactions_started: int = 0
    transactions_ended: int = 0
    frames_sent: int = 0
    faults_planned: dict[str, int] = field(default_factory=dict)
    faults_sent: dict[str, int] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    reconnects: int = 0
    lateness_p50_s: float = 0.0
    lateness_p99_s: float = 0.0
    lateness_max_s: float = 0.0
    wall_s: float = 0.0
    simulated_s: float = 0.0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["errors"] = dict(self.errors)
        return body


class _Clock:
    """Simulated seconds since the run's start <-> wall clock <-> charger clock."""

    def __init__(self, speedup: float, wall0: float, charger0: float):
        self.speedup, self.wall0, self.charger0 = speedup, wall0, charger0

    def charger(self, sim_s: float) -> float:
        return self.charger0 + sim_s

    def now(self) -> float:
        return (time.time() - self.wall0) * self.speedup

    async def sleep_until(self, sim_s: float) -> float:
        """Wait for simulated time `sim_s`; return how late (real seconds) we woke up."""
        delay = self.wall0 + sim_s / self.speedup - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, time.time() - (self.wall0 + sim_s / self.speedup))


@dataclass
class _Run:
    config: FleetConfig
    clock: _Clock
    report: FleetReport
    labels: IO[str] | None
    traces: Mapping[str, ChargingTrace]
    lateness: array = field(default_factory=lambda: array("d"))

    def count_frame(self) -> None:
        self.report.frames_sent += 1

    def write_label(self, station: _Station, plan: TransactionPlan, fault: PlantedFault,
                    sim_start: float, sent_ts: float) -> None:
        self.report.faults_sent[fault.kind] = self.report.faults_sent.get(fault.kind, 0) + 1
        if self.labels is None:
            return
        charger_ts = self.clock.charger(sim_start + fault.start_s)
        self.labels.write(json.dumps({
            "schema": LABEL_SCHEMA, "kind": fault.kind, "chargePointId": station.station_id,
            "connectorId": 1, "transactionId": station.transaction_id,
            "sessionID": plan.session_id, "siteID": plan.site_id,
            "ocppVersion": station.version, "fault_start_s": fault.start_s,
            "fault_start_ts": charger_ts, "fault_start_at": epoch_to_iso(charger_ts),
            "sent_ts": sent_ts, "sent_at": epoch_to_iso(sent_ts),
            "errorCode": fault.error_code, "detail": fault.detail}) + "\n")
        self.labels.flush()


def _events(plan: TransactionPlan) -> list[tuple[float, int, Any]]:
    """Status changes and samples in time order; at one time, statuses first, except that
    the car leaving (Finishing, Available) comes after the last sample."""
    events: list[tuple[float, int, Any]] = [
        (c.t_s, 2 if c.status in ("Finishing", "Available") else 0, c)
        for c in plan.status_changes]
    events += [(float(t), 1, i) for i, t in enumerate(plan.t_s)]
    events.sort(key=lambda e: (e[0], e[1]))
    return events


class _Station:
    """One charge point: its connection, its energy register and its sessions in turn."""

    def __init__(self, station_id: str, version: str, sessions: Sequence[ScheduledSession],
                 run: _Run):
        self.station_id, self.version, self.sessions, self.run = (
            station_id, version, sessions, run)
        self.cp: Any = None
        self.ws: Any = None
        self._serving: asyncio.Task | None = None
        self.heartbeat_s = 300.0
        self.transaction_id: str | None = None
        rng = np.random.default_rng([run.config.seed, zlib.crc32(station_id.encode())])
        self.register_wh = float(rng.integers(100_000, 5_000_000))

    # -- the link ---------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        password = self.run.config.passwords.get(self.station_id, self.run.config.password)
        if password is None:
            return {}
        token = base64.b64encode(f"{self.station_id}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _serve(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.cp.start()

    async def connect(self) -> None:
        """Open the WebSocket and boot; retries with backoff, raises the last error."""
        config = self.run.config
        url = f"{config.url.rstrip('/')}/{quote(self.station_id, safe='')}"
        for attempt in range(config.connect_attempts):
            try:
                self.ws = await connect(url, subprotocols=[SUBPROTOCOLS[self.version]],
                                        additional_headers=self._headers(), compression=None,
                                        open_timeout=10, close_timeout=2, max_size=2**20)
                if self.ws.subprotocol != SUBPROTOCOLS[self.version]:
                    await self.ws.close()
                    raise FleetError(f"{self.station_id}: the CSMS did not accept "
                                     f"{SUBPROTOCOLS[self.version]}")
                self.cp = CHARGE_POINTS[self.version](
                    self.station_id, self.ws, validate=config.validate,
                    response_timeout=config.response_timeout_s)
                self.cp.on_send = self.run.count_frame
                if self.transaction_id is not None:  # back after a drop, mid-transaction
                    self.cp.transaction_id = (int(self.transaction_id) if self.version == "1.6"
                                              else self.transaction_id)
                self._serving = asyncio.create_task(self._serve())
                status, interval = await self.cp.boot()
                if status != "Accepted":
                    raise FleetError(f"{self.station_id}: BootNotification {status}")
                self.heartbeat_s = float(interval or 300)
                return
            except InvalidStatus as exc:  # 401/403/404: retrying will not help
                raise FleetError(f"{self.station_id}: refused with HTTP "
                                 f"{exc.response.status_code}") from exc
            except (*_LINK_ERRORS, InvalidHandshake, FleetError) as exc:
                await self.close()
                if attempt + 1 == config.connect_attempts:
                    raise
                self.run.report.errors[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))

    async def close(self, abort: bool = False) -> None:
        if self.ws is not None:
            if abort:
                self.ws.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await self.ws.close()
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._serving
        self.ws, self.cp, self._serving = None, None, None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # the run's stop landed while we waited: the suppress above must not eat it
            raise asyncio.CancelledError

    async def reconnect(self) -> None:
        await self.close()
        self.run.report.reconnects += 1
        await self.connect()

    async def send(self, action: str, exchange: Awaitable[Any]) -> bool:
        """One exchange; a CALLERROR or a dropped link is counted, and the link restored."""
        try:
            await exchange
            return True
        except OCPPError as exc:
            self.run.report.errors[f"{action}: {type(exc).__name__}"] += 1
        except _LINK_ERRORS as exc:
            self.run.report.errors[f"{action}: {type(exc).__name__}"] += 1
            await self.reconnect()
        return False

    # -- the sessions -----------------------------------------------------------------
    async def idle_until(self, sim_s: float) -> None:
        clock = self.run.clock
        while clock.now() + self.heartbeat_s < sim_s:
            await clock.sleep_until(clock.now() + self.heartbeat_s)
            await self.send("Heartbeat", self.cp.heartbeat())
        await clock.sleep_until(sim_s)

    async def run_all(self) -> None:
        try:
            await self.connect()
            clock = self.run.clock
            connected_at = clock.now()
            await self.send("StatusNotification", self.cp.status(
                "Available", clock.charger(connected_at)))
            # a charger that connected late starts late: its clock never runs backwards
            free_at = connected_at + 1.0
            for scheduled in self.sessions:
                plan = self.plan(scheduled)
                if plan is None:
                    continue
                start = max(scheduled.offset_s, free_at)
                await self.idle_until(start)
                await self.replay(plan, start)
                free_at = start + plan.end_s + 1.0
                self.run.report.sessions_done += 1
        finally:
            await self.close()

    def plan(self, scheduled: ScheduledSession) -> TransactionPlan | None:
        config = self.run.config
        options = PlanOptions(sample_interval_s=config.meter_interval_s,
                              unplug_delay_s=config.unplug_delay_s)
        trace = self.run.traces.get(scheduled.session_id)
        try:
            return build_plan(scheduled.session, seed=config.seed, fault=scheduled.fault,
                              trace=trace, options=options)
        except UnplannableSession as exc:
            self.run.report.errors[f"plan: {exc}"[:120]] += 1
        except ValueError as exc:  # a recorded trace with no charging where the fault goes
            if scheduled.fault is None:
                raise
            log.info("%s: %s; replayed without it", scheduled.session_id, exc)
            planned = self.run.report.faults_planned
            planned[scheduled.fault] -= 1
            return build_plan(scheduled.session, seed=config.seed, trace=trace, options=options)
        return None

    def _telltales(self, plan: TransactionPlan) -> dict[tuple[float, str], PlantedFault]:
        """(time, "status"|"sample") of each fault's first telltale frame."""
        found = {}
        for fault in plan.faults:
            if fault.kind == "faulted":
                found[(fault.start_s, "status")] = fault
            elif fault.kind != "silent":
                found[(fault.start_s, "sample")] = fault
        return found

    async def replay(self, plan: TransactionPlan, start: float) -> None:
        run, clock = self.run, self.run.clock
        telltales = self._telltales(plan)
        silent = next((f for f in plan.faults if f.kind == "silent"), None)
        base, started = self.register_wh, False
        self.transaction_id = None
        reason = "EVDisconnected"
        for t, order, item in _events(plan):
            run.lateness.append(await clock.sleep_until(start + t))
            charger_ts = clock.charger(start + t)
            if silent is not None and t >= silent.start_s and started:
                await self.go_silent(plan, silent, start, base)
                return
            if order == 1:
                if not started:
                    continue
                watch = telltales.pop((t, "sample"), None)
                sample = plan.sample(item)
                ok = await self.send("meter", self.cp.meter(
                    sample, base + sample.energy_wh, charger_ts, watch=watch is not None))
                if ok and watch is not None:
                    run.write_label(self, plan, watch, start, self.cp.watched_sent_ts)
                continue
            change = item
            if change.status == "Preparing":
                started = await self.start_transaction(plan, base, charger_ts)
            elif not started:
                continue
            elif change.status == "Faulted":
                reason = "Other"
                watch = telltales.pop((t, "status"), None)
                ok = await self.send("fault", self.cp.report_fault(
                    change.error_code, charger_ts, watch=watch is not None))
                if ok and watch is not None:
                    run.write_label(self, plan, watch, start, self.cp.watched_sent_ts)
            elif change.status == "Finishing":
                await self.stop_transaction(plan, base, charger_ts, reason)
            elif change.status == "Available":
                await self.send("StatusNotification", self.cp.status("Available", charger_ts))
            else:
                await self.send("state", self.cp.charging_state(change.status, charger_ts))
        self.register_wh = base + float(plan.energy_wh[-1])

    async def start_transaction(self, plan: TransactionPlan, base: float, at: float) -> bool:
        hint = str(uuid.uuid5(uuid.NAMESPACE_URL, f"evguard:{plan.session_id}"))

        async def start() -> None:
            self.transaction_id = await self.cp.start_transaction(plan.id_tag, base, at, hint)
        if await self.send("start", start()):
            self.run.report.transactions_started += 1
            return True
        return False

    async def stop_transaction(self, plan: TransactionPlan, base: float, at: float,
                               reason: str, offline: bool = False) -> None:
        if await self.send("stop", self.cp.stop_transaction(
                base + float(plan.energy_wh[-1]), at, reason, plan.id_tag, offline=offline)):
            self.run.report.transactions_ended += 1

    async def go_silent(self, plan: TransactionPlan, fault: PlantedFault, start: float,
                        base: float) -> None:
        """Drop the link mid-transaction; come back when the car has left, and close the
        transaction as a charger does after a power loss."""
        await self.close(abort=True)
        self.run.write_label(self, plan, fault, start, time.time())
        await self.run.clock.sleep_until(start + plan.end_s)
        try:
            await self.reconnect()
        except (*_LINK_ERRORS, FleetError) as exc:
            self.run.report.errors[f"reconnect: {type(exc).__name__}"] += 1
            raise
        at = self.run.clock.charger(start + plan.end_s)
        await self.stop_transaction(plan, base, at, "PowerLoss", offline=True)
        await self.send("StatusNotification", self.cp.status("Available", at))
        self.register_wh = base + float(plan.energy_wh[-1])


def _count(values: Sequence[str | None]) -> dict[str, int]:
    return dict(Counter(v for v in values if v is not None))


async def run_fleet(scheduled: Sequence[ScheduledSession], config: FleetConfig, *,
                    traces: Mapping[str, ChargingTrace] | None = None,
                    labels_path: Path | None = None,
                    progress: Callable[[FleetReport], None] | None = None,
                    progress_every_s: float = 0.5) -> FleetReport:
    """Replay `scheduled` sessions as live OCPP transactions; return when all are done.

    Args:
        scheduled: from `fleet.schedule.schedule_sessions`.
        config: the CSMS, speed and sampling.
        traces: sessionID -> recorded current/pilot, replayed instead of a curve.
        labels_path: where the JSON-lines labels go (overwritten); None = nowhere.
        progress: called with the live report every `progress_every_s` real seconds.

    Returns:
        The report. A station that cannot connect at all is counted in `errors`.
    """
    by_station: dict[str, list[ScheduledSession]] = {}
    for item in sorted(scheduled, key=lambda s: s.offset_s):
        by_station.setdefault(item.station_id, []).append(item)
    report = FleetReport(
        stations=len(by_station), sessions=len(scheduled),
        stations_by_version=_count([items[0].ocpp_version for items in by_station.values()]),
        faults_planned=_count([s.fault for s in scheduled]))
    wall0 = time.time() + config.start_delay_s
    first = min((rfc1123_to_epoch(s.session.get("connectionTime")) or wall0
                 for s in scheduled), default=wall0)
    clock = _Clock(config.speedup, wall0, wall0 if config.clock == "now" else first)
    if labels_path is not None:
        labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels = labels_path.open("w") if labels_path is not None else None
    run = _Run(config, clock, report, labels, traces or {})
    stations = [_Station(sid, items[0].ocpp_version, items, run)
                for sid, items in by_station.items()]
    tasks = [asyncio.create_task(s.run_all(), name=s.station_id) for s in stations]
    started = time.time()

    async def watch_progress() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            report.wall_s = time.time() - started
            if progress is not None:
                progress(report)

    watcher = asyncio.create_task(watch_progress())
    try:
        done, pending = await asyncio.wait(tasks, timeout=config.max_wall_s)
        report.stopped_early = bool(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                exc = task.exception()
                report.errors[f"station: {type(exc).__name__}"] += 1
                log.warning("station %s stopped: %s", task.get_name(), exc, exc_info=exc)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if labels is not None:
            labels.close()
    report.wall_s = time.time() - started
    report.simulated_s = max(0.0, clock.now())
    if run.lateness:
        values = np.frombuffer(run.lateness, dtype=float)
        report.lateness_p50_s, report.lateness_p99_s = (float(v) for v in np.quantile(
            values, [0.5, 0.99]))
        report.lateness_max_s = float(values.max())
    if progress is not None:
        progress(report)
    return report


def simulate(scheduled: Sequence[ScheduledSession], config: FleetConfig, **kwargs: Any
             ) -> FleetReport:
    """`run_fleet` on a fresh event loop (for the CLI and scripts)."""
    return asyncio.run(run_fleet(scheduled, config, **kwargs))


__all__ = ["LABEL_SCHEMA", "FleetConfig", "FleetError", "FleetReport", "charger_time",
           "run_fleet", "simulate"]
