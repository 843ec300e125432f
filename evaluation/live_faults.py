"""Live faults planted in replayed ACN sessions, and how the live detectors find them.

Event time, one process, no network: what the real stack does over WebSockets, Kafka
and RabbitMQ, minus the transport.

1. `plan_fleet(records, config, seed)` samples sessions, gives their stations an OCPP
   version and a share of the sessions one live fault each (`fleet.assign_versions`,
   `fleet.assign_faults`: a kind only where the session can show it), and builds each
   session's `TransactionPlan` (`pipelines.telemetry.charging.build_plan`). A station
   replays its sessions in turn at their own dates; one that arrives while the previous
   car is still there starts when it leaves.
2. `replay_station` drives the fleet's own charge points (`fleet.charge_point`, which
   build the 1.6 and 2.0.1 payloads) over a loopback link: each CALL becomes the JSON
   frame the `ocpp` package would send, is read by the gateway's parser and normaliser
   (`ocpp_frames.parse_frame` / `normalise`, schema-validated as the gateway does) and
   answered by the standalone CSMS's answers (`gateway.standalone.CsmsAnswers`). The
   frame order per session is the fleet's: statuses and samples in time order, the
   silent charger's dropped link (a `disconnected` event, as the gateway sees a reset
   socket) and its PowerLoss stop after it came back. The gateway receives a frame a
   seeded 20-500 ms after the charger's timestamp.
3. The events go through `detectors.on_event` in order, and `detectors.on_tick` runs on
   the stream clock whenever a connector in a transaction could have fallen silent
   (the processor ticks every second, so the timer is dated to the next whole second).
4. `score_live_faults` matches the open alerts to the labels (same charger,
   transaction and kind): recall per kind; delay in charger time from the fault's
   first telltale sample (`fault_start`) to the alert's `at`; false alerts per 1,000
   charger-hours. Charger-hours are the connected hours of the replayed transactions
   (plug-in to unplug), counted only while no planted fault is active: a faulted
   transaction counts up to its fault's start. An alert of another kind on a faulted
   transaction after its start is a consequence of the fault (a Faulted connector
   draws no current), reported as `secondary`, not as false.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
from ocpp.charge_point import snake_to_camel_case
from ocpp.messages import Call as OcppCall

from fleet import assign_faults, assign_versions
from fleet.charge_point import CHARGE_POINTS
from gateway.standalone import CsmsAnswers
from pipelines.contracts.dates import rfc1123_to_epoch
from pipelines.contracts.telemetry import TelemetryEvent
from pipelines.telemetry.charging import (
    FAULT_KINDS,
    PlanOptions,
    TransactionPlan,
    UnplannableSession,
    build_plan,
)
from pipelines.telemetry.detectors import (
    DEFAULT_POLICY,
    ConnectorState,
    LiveAlert,
    LivePolicy,
    on_event,
    on_tick,
    silence_limit,
)
from pipelines.telemetry.ocpp_frames import (
    Call,
    ConnectionState,
    connection_event,
    encode_call_result,
    normalise,
    parse_frame,
)

TICK_S = 1.0  # the processor's timer period on the stream clock
TIMER_STEP_S = 60.0  # later timer ticks inside a long silence (never_unplugged)


@dataclass(frozen=True)
class LiveEvalConfig:
    """How the fleet is replayed.

    Args:
        sessions: sessions sampled per seed (None: all).
        fault_rate: share of the sampled sessions given a live fault.
        share_201: share of stations that speak OCPP 2.0.1.
        sample_interval_s: meter values every this many seconds.
        latency_s: the gateway receives a frame this long after its timestamp (uniform).
        validate: schema-check every frame as the gateway does (2x slower; the fleet's
            frames are schema-valid, which its tests check, so it changes no event).
        disconnect_seen: the gateway sees the silent charger's socket drop (a reset);
            False: the charger just stops talking, only the timer can find it.
        kinds: the fault kinds planted.
        policy: the detectors' thresholds.
    """

    sessions: int | None = 600
    fault_rate: float = 0.5
    share_201: float = 0.5
    sample_interval_s: float = 10.0
    latency_s: tuple[float, float] = (0.02, 0.5)
    validate: bool = False
    disconnect_seen: bool = True
    kinds: tuple[str, ...] = FAULT_KINDS
    policy: LivePolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if self.sessions is not None and self.sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {self.sessions}")
        if not 0 <= self.fault_rate <= 1 or not 0 <= self.share_201 <= 1:
            raise ValueError("fault_rate and share_201 must be in [0, 1]")
        if self.sample_interval_s <= 0 or not 0 <= self.latency_s[0] <= self.latency_s[1]:
            raise ValueError("sample_interval_s must be > 0 and latency_s an ordered pair")
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")


@dataclass(frozen=True)
class Label:
    """One planted fault as the replay sent it (the fleet's label, in event time)."""

    kind: str
    charge_point_id: str
    transaction_id: str
    session_id: str
    ocpp_version: str
    start_ts: float  # charger time of the first telltale sample (silent: the drop)
    received_ts: float  # when the gateway got that frame (silent: saw the drop)


@dataclass
class StationReplay:
    """What one station's replay produced."""

    station_id: str
    labels: list[Label] = field(default_factory=list)
    alerts: list[LiveAlert] = field(default_factory=list)
    # transaction id -> (plug-in, unplug, fault start or None, the record itself stayed
    # long enough for never_unplugged)
    transactions: dict[str, tuple[float, float, float | None, bool]] = field(
        default_factory=dict)
    frames: int = 0
    events: int = 0


@dataclass(frozen=True)
class StationPlan:
    station_id: str
    version: str
    site_id: str
    plans: tuple[tuple[float, TransactionPlan], ...]  # (charger time of plug-in, plan)


def _connection(record: Mapping) -> float:
    return rfc1123_to_epoch(record.get("connectionTime")) or 0.0


def plan_fleet(records: Sequence[Mapping], config: LiveEvalConfig, seed: int
               ) -> tuple[list[StationPlan], Counter]:
    """Sample sessions, assign versions and faults, build the plans (seeded).

    Returns:
        The stations with their plans in order, and a count of sessions left out
        (unplannable) by reason.
    """
    usable = [r for r in records if r.get("stationID") and _connection(r)
              and rfc1123_to_epoch(r.get("disconnectTime"))]
    rng = np.random.default_rng([seed, 1301])
    if config.sessions is not None and config.sessions < len(usable):
        usable = [usable[i] for i in sorted(rng.choice(len(usable), config.sessions,
                                                       replace=False).tolist())]
    usable.sort(key=_connection)
    options = PlanOptions(sample_interval_s=config.sample_interval_s)
    versions = assign_versions((str(r["stationID"]) for r in usable), config.share_201, seed)
    faults = assign_faults(usable, versions, config.fault_rate, config.kinds, seed, options)
    by_station: dict[str, list[Mapping]] = defaultdict(list)
    for record in usable:
        by_station[str(record["stationID"])].append(record)
    skipped: Counter = Counter()
    stations = []
    for station_id, sessions in sorted(by_station.items()):
        free_at, plans = -math.inf, []
        for record in sessions:
            fault = faults.get(str(record.get("sessionID")))
            try:
                plan = build_plan(record, seed=seed, fault=fault, options=options)
            except UnplannableSession as exc:
                skipped[str(exc)[:60]] += 1
                continue
            start = max(plan.connection_ts, free_at)
            plans.append((start, plan))
            free_at = start + plan.end_s + 60.0
        if plans:
            stations.append(StationPlan(station_id, versions[station_id],
                                        str(sessions[0].get("siteID") or ""), tuple(plans)))
    return stations, skipped


class _Loopback:
    """The link of one simulated charge point: frames to the gateway's normaliser and the
    standalone CSMS's answers back, with the gateway's clock set by the caller."""

    def __init__(self, station: StationPlan, answers: CsmsAnswers, validate: bool,
                 deliver: Callable[[list[TelemetryEvent]], None]):
        self.station, self.answers, self.validate, self.deliver = (
            station, answers, validate, deliver)
        self.rx = 0.0
        self.frames = 0
        self.connection: ConnectionState | None = None
        self.charge_point: Any = None

    def connect(self, rx: float) -> None:
        self.rx = rx
        self.connection = ConnectionState(self.station.station_id, self.station.version,
                                          site_id=self.station.site_id, gateway="eval",
                                          connection_id=uuid.uuid4().hex[:12])
        self.deliver([connection_event(self.connection, "connected", rx)])
        link = self

        class LoopbackChargePoint(CHARGE_POINTS[self.station.version]):
            async def send(self, payload: Any, *, watch: bool = False,
                           validate: bool = True) -> Any:
                return link.exchange(payload)

        self.charge_point = LoopbackChargePoint(self.station.station_id, None,
                                                validate=False)

    def drop(self, rx: float, seen: bool) -> None:
        if seen and self.connection is not None:
            self.deliver([connection_event(self.connection, "disconnected", rx, "1006")])
        self.connection, self.charge_point = None, None

    def exchange(self, payload: Any) -> SimpleNamespace:
        """One CALL through the normaliser; the CALLRESULT's fields, snake_case."""
        state = self.connection
        message_id = uuid.uuid4().hex
        text = OcppCall(unique_id=message_id, action=payload.__class__.__name__,
                        payload=ocpp_payload(payload)).to_json()
        frame = parse_frame(text, state.version, validate=self.validate)
        assert isinstance(frame, Call)
        events = normalise(frame, text, "charger", state, self.rx)
        answer = self.answers.answer(frame, state.version, self.rx)
        result_text = encode_call_result(message_id, answer)
        events += normalise(parse_frame(result_text, state.version, validate=False),
                            result_text, "csms", state, self.rx)
        self.frames += 1
        self.deliver(events)
        return SimpleNamespace(status=answer.get("status"), interval=answer.get("interval"),
                               transaction_id=answer.get("transactionId"))


_SCALARS = frozenset({str, int, float, bool})


@cache
def _camel_key(key: str) -> str:
    return next(iter(snake_to_camel_case({key: None})))


def ocpp_payload(value: Any) -> Any:
    """What `ocpp.ChargePoint.call` sends for a payload (camelCase keys, no None), built
    without its per-call `asdict` and deep copies: the same JSON, several times faster."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return {_camel_key(k): ocpp_payload(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [ocpp_payload(v) for v in value if v is not None]
    if is_dataclass(value) and not isinstance(value, type):
        return ocpp_payload({f.name: getattr(value, f.name) for f in fields(value)})
    return value


def _drive(coroutine: Any) -> Any:
    """Run a coroutine that never suspends (the loopback answers at once)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the loopback charge point suspended")


def _timeline(plan: TransactionPlan) -> list[tuple[float, int, Any]]:
    """Statuses and samples in time order, as the fleet sends them: at one time statuses
    first, except that the car leaving (Finishing, Available) comes after the last sample."""
    items: list[tuple[float, int, Any]] = [
        (c.t_s, 2 if c.status in ("Finishing", "Available") else 0, c)
        for c in plan.status_changes]
    items += [(float(t), 1, i) for i, t in enumerate(plan.t_s)]
    items.sort(key=lambda e: (e[0], e[1]))
    return items


class _Detectors:
    """The processor's per-connector work on one station's stream: events in order, the
    timer whenever a connector in a transaction could have gone quiet."""

    def __init__(self, policy: LivePolicy, out: StationReplay):
        self.policy, self.out = policy, out
        self.state: dict[str, object] = {}
        self.last_rx = -math.inf

    def tick_until(self, rx: float) -> None:
        for key, conn in list(self.state.items()):
            if type(conn) is not ConnectorState or not conn.transaction_id:
                continue
            limit = silence_limit(conn, self.policy)
            due = conn.last_rx + min(limit, self.policy.idle_hours * 3600.0)
            if not due < rx:
                continue
            t = math.floor(due / TICK_S) * TICK_S + TICK_S
            while t < rx:
                for _key, alerts in on_tick(self.state, t, self.policy, keys=[key]):
                    self.out.alerts += alerts
                if not conn.transaction_id:
                    break
                t += TIMER_STEP_S

    def apply(self, events: Iterable[TelemetryEvent]) -> None:
        for event in events:
            self.tick_until(event.received_ts)
            self.out.events += 1
            self.out.alerts += on_event(self.state, event, self.policy).alerts


def replay_station(station: StationPlan, config: LiveEvalConfig, seed: int) -> StationReplay:
    """Replay one station's sessions through the normaliser and the detectors."""
    out = StationReplay(station.station_id)
    detectors = _Detectors(config.policy, out)
    rng = np.random.default_rng([seed, zlib.crc32(station.station_id.encode())])
    low, high = config.latency_s
    transaction_ids = iter(range(1_000_000 + 10_000 * seed, 2**31))
    link = _Loopback(station, CsmsAnswers(300, lambda: next(transaction_ids)), config.validate,
                     detectors.apply)
    register = float(rng.integers(100_000, 5_000_000))

    def at(charger_ts: float) -> float:
        link.rx = charger_ts + float(rng.uniform(low, high))
        return charger_ts

    def boot(charger_ts: float) -> None:
        link.connect(charger_ts + low)
        at(charger_ts)
        _drive(link.charge_point.boot())

    first_start = station.plans[0][0]
    boot(first_start - 60.0)
    _drive(link.charge_point.status("Available", at(first_start - 59.0)))
    for start, plan in station.plans:
        fault = plan.faults[0] if plan.faults else None
        transaction, base, reason, started = None, register, "EVDisconnected", False
        for t, order, item in _timeline(plan):
            charger_ts = start + t
            cp = link.charge_point
            if fault is not None and fault.kind == "silent" and started and t >= fault.start_s:
                link.drop(charger_ts + low, config.disconnect_seen)
                out.labels.append(Label("silent", station.station_id, transaction,
                                        plan.session_id, station.version, charger_ts,
                                        charger_ts + low))
                back = start + plan.end_s
                boot(back)
                link.charge_point.transaction_id = (int(transaction) if station.version == "1.6"
                                                    else transaction)
                _drive(link.charge_point.stop_transaction(
                    base + float(plan.energy_wh[-1]), at(back), "PowerLoss", plan.id_tag,
                    offline=True))
                _drive(link.charge_point.status("Available", at(back)))
                break
            telltale = (fault is not None and t == fault.start_s and (
                (order == 1 and fault.kind not in ("faulted", "silent"))
                or (order == 0 and fault.kind == "faulted" and item.status == "Faulted")))
            if order == 1:
                if not started:
                    continue
                sample = plan.sample(item)
                _drive(cp.meter(sample, base + sample.energy_wh, at(charger_ts)))
            elif item.status == "Preparing":
                hint = str(uuid.uuid5(uuid.NAMESPACE_URL, f"evguard:{plan.session_id}"))
                transaction = _drive(cp.start_transaction(plan.id_tag, base, at(charger_ts),
                                                          hint))
                started = True
            elif not started:
                continue
            elif item.status == "Faulted":
                reason = "Other"
                _drive(cp.report_fault(item.error_code, at(charger_ts)))
            elif item.status == "Finishing":
                _drive(cp.stop_transaction(base + float(plan.energy_wh[-1]), at(charger_ts),
                                           reason, plan.id_tag))
            elif item.status == "Available":
                _drive(cp.status("Available", at(charger_ts)))
            else:
                _drive(cp.charging_state(item.status, at(charger_ts)))
            if telltale:
                out.labels.append(Label(fault.kind, station.station_id, transaction,
                                        plan.session_id, station.version, charger_ts, link.rx))
        fault_ts = start + fault.start_s if fault is not None else None
        policy = config.policy
        long_stay = (plan.end_s >= policy.max_connected_hours * 3600.0
                     or plan.end_s - plan.charging_end_s >= policy.idle_hours * 3600.0)
        out.transactions[transaction] = (start, start + plan.end_s, fault_ts, long_stay)
        register = base + float(plan.energy_wh[-1])
    last_start, last_plan = station.plans[-1]
    detectors.tick_until(last_start + last_plan.end_s + 3600.0)
    out.frames = link.frames
    return out


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "p90_s": None, "max_s": None}
    array = np.asarray(values, dtype=float)
    return {"median_s": float(np.median(array)), "p90_s": float(np.quantile(array, 0.9)),
            "max_s": float(array.max())}


def score_live_faults(replays: Iterable[StationReplay], kinds: Sequence[str] = FAULT_KINDS
                      ) -> dict[str, Any]:
    """Recall and delay per kind, false alerts per 1,000 charger-hours (module docstring)."""
    labels: dict[tuple[str, str], Label] = {}
    opened: list[LiveAlert] = []
    windows: dict[tuple[str, str], tuple[float, float, float | None, bool]] = {}
    frames = events = 0
    for replay in replays:
        frames, events = frames + replay.frames, events + replay.events
        for label in replay.labels:
            labels[(label.charge_point_id, label.transaction_id)] = label
        opened += [a for a in replay.alerts if a.status == "open"]
        for tx, window in replay.transactions.items():
            windows[(replay.station_id, tx)] = window
    hours = clean_hours = 0.0
    for start, end, fault_ts, _long in windows.values():
        hours += (end - start) / 3600.0
        clean_hours += ((fault_ts if fault_ts is not None else end) - start) / 3600.0
    found: dict[tuple[str, str], LiveAlert] = {}
    false: Counter = Counter()
    in_record: Counter = Counter()  # never_unplugged where the real car did stay that long
    secondary: Counter = Counter()
    false_examples = []
    for alert in sorted(opened, key=lambda a: a.at_ts):
        label = labels.get((alert.charge_point_id, str(alert.transaction_id)))
        if label is not None and alert.at_ts >= label.start_ts - 1e-6:
            if alert.kind == label.kind:
                found.setdefault((alert.charge_point_id, label.transaction_id), alert)
            else:
                secondary[f"{label.kind}->{alert.kind}"] += 1
            continue
        false[alert.kind] += 1
        window = windows.get((alert.charge_point_id, str(alert.transaction_id)))
        if alert.kind == "never_unplugged" and window is not None and window[3]:
            in_record[alert.kind] += 1
        if len(false_examples) < 20:
            false_examples.append({"kind": alert.kind, "charge_point": alert.charge_point_id,
                                   "transaction": alert.transaction_id,
                                   "evidence": alert.evidence})
    per_kind = {}
    for kind in kinds:
        mine = [lab for lab in labels.values() if lab.kind == kind]
        delays = [found[(lab.charge_point_id, lab.transaction_id)].at_ts - lab.start_ts
                  for lab in mine if (lab.charge_point_id, lab.transaction_id) in found]
        per_kind[kind] = {"planted": len(mine), "detected": len(delays),
                          "recall": len(delays) / len(mine) if mine else None,
                          **_quantiles(delays)}
    total_false = sum(false.values())
    return {"kinds": per_kind, "false_alerts": dict(false), "false_total": total_false,
            "false_in_record": sum(in_record.values()),
            "charger_hours": hours, "clean_charger_hours": clean_hours,
            "false_per_1000_charger_hours": (1000.0 * total_false / clean_hours
                                             if clean_hours else None),
            "secondary_alerts": dict(secondary), "false_examples": false_examples,
            "transactions": len(windows), "frames": frames, "events": events}


def evaluate_seed(records: Sequence[Mapping], config: LiveEvalConfig, seed: int,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Plan, replay and score one seed."""
    began = time.perf_counter()
    stations, skipped = plan_fleet(records, config, seed)
    replays = []
    for i, station in enumerate(stations):
        replays.append(replay_station(station, config, seed))
        if progress is not None:
            progress(i + 1, len(stations))
    report = score_live_faults(replays, config.kinds)
    return {"seed": seed, "stations": len(stations), "skipped": dict(skipped), **report,
            "seconds": time.perf_counter() - began}


def evaluate_live_faults(records: Sequence[Mapping], seeds: Sequence[int],
                         config: LiveEvalConfig = LiveEvalConfig(),
                         progress: Callable[[int, int, int], None] | None = None
                         ) -> dict[str, Any]:
    """Every seed, and the pooled figures (detections and hours summed over seeds).

    Args:
        records: ACN sessions (contract §1 shape).
        seeds: one fleet per seed (sampling, versions, faults, plans).
        config: how the fleet is replayed.
        progress: called with (seed, stations done, stations).

    Returns:
        `{"config", "seeds": [per seed], "pooled": {...}}`; the pooled delay quantiles
        are over every detection of every seed.
    """
    if not seeds:
        raise ValueError("give at least one seed")
    runs = []
    for seed in seeds:
        def step(done: int, total: int, seed: int = seed) -> None:
            if progress is not None:
                progress(seed, done, total)
        runs.append(evaluate_seed(records, config, seed, step))
    pooled = _pool(runs, config.kinds)
    settings = asdict(replace(config, policy=None))
    settings["policy"] = asdict(config.policy)
    return {"config": settings, "seeds": runs, "pooled": pooled}


def _pool(runs: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
    per_kind = {}
    for kind in kinds:
        planted = sum(r["kinds"][kind]["planted"] for r in runs)
        detected = sum(r["kinds"][kind]["detected"] for r in runs)
        medians = [r["kinds"][kind]["median_s"] for r in runs
                   if r["kinds"][kind]["median_s"] is not None]
        per_kind[kind] = {"planted": planted, "detected": detected,
                          "recall": detected / planted if planted else None,
                          "median_s": float(np.median(medians)) if medians else None,
                          "worst_max_s": max((r["kinds"][kind]["max_s"] for r in runs
                                              if r["kinds"][kind]["max_s"] is not None),
                                             default=None)}
    false = sum(r["false_total"] for r in runs)
    in_record = sum(r["false_in_record"] for r in runs)
    hours = sum(r["clean_charger_hours"] for r in runs)
    return {"kinds": per_kind, "false_total": false, "false_in_record": in_record,
            "false_per_1000_charger_hours_excluding_in_record":
                1000.0 * (false - in_record) / hours if hours else None,
            "clean_charger_hours": hours,
            "charger_hours": sum(r["charger_hours"] for r in runs),
            "false_per_1000_charger_hours": 1000.0 * false / hours if hours else None,
            "false_alerts": dict(sum((Counter(r["false_alerts"]) for r in runs), Counter()))}
