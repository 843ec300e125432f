"""Simulated charging, pure: one ACN session -> a timed transaction plan with labelled faults.

`build_plan` turns a session (contract §1 shape) into what its charger would have
measured: samples every `sample_interval_s` seconds from the connection (energy
delivered, power, current, offered current, voltage, temperature, SoC for DC) and the
connector's status changes (Preparing, Charging, SuspendedEV, Finishing, Available).

- Level 2 (average power up to `dc_threshold_w`): the car draws just under the
  offered current, then tapers exponentially over the last 15-40 minutes.
- DC fast: constant current with the pack voltage rising, then constant voltage
  with the current decaying.
- A recorded ACN trace (`ChargingTrace`): its current and pilot, held between points.

In every clean plan the energy integrates to `kWhDelivered` and charging stops at
`doneChargingTime`. A planted fault changes the samples from its start on, never
before; its `start_s` is the first sample that shows it (`silent`: the first frame
never sent; `never_unplugged`: the moment the car should have left). Seeded: the
same session, seed and options give the same plan. Calibration: docs/telemetry.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipelines.contracts.dates import rfc1123_to_epoch
from pipelines.contracts.live_alert import KINDS as FAULT_KINDS

ERROR_CODES = ("GroundFailure", "HighTemperature", "OverCurrentFailure", "PowerMeterFailure",
               "EVCommunicationError")
OCPP16_ONLY = frozenset({"overtemperature"})  # the issue plants it on 1.6 chargers only
TEMPERATURE_LIMIT_C = 70.0  # clean plans stay below 55 °C; an overheating one goes above this
CHARGING_A = 0.5  # below this a car is not drawing
SETTLE_S = 120.0  # a fault during charging starts after the car's first two minutes
OVERCURRENT_MIN_A = 3.0  # an over-drawing car exceeds its pilot by at least this much
_TAPER_MEAN = (1 - math.exp(-3)) / 3  # mean of exp(-3x) over [0, 1]
_IN_CHARGING = frozenset(FAULT_KINDS) - {"silent", "never_unplugged"}


class UnplannableSession(ValueError):
    """A session that cannot be turned into a plan (dates missing or out of order)."""


@dataclass(frozen=True)
class PlanOptions:
    """How plans are drawn. Defaults are measured on the ACN exports (docs/telemetry.md).

    Attributes:
        sample_interval_s: seconds between two meter samples (charger time).
        voltage_v: Level-2 supply voltage (the ACN garages run 208 V).
        max_pilot_a: highest offered current of a Level-2 station.
        min_pilot_a: lowest offered current (J1772 allows no less than 6 A).
        dc_threshold_w: an average power above this is a DC fast charge.
        unplug_delay_s: how much longer a `never_unplugged` car stays connected.
    """

    sample_interval_s: float = 10.0
    voltage_v: float = 208.0
    max_pilot_a: float = 32.0
    min_pilot_a: float = 6.0
    dc_threshold_w: float = 20_000.0
    unplug_delay_s: float = 36 * 3600.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.sample_interval_s <= 3600:
            raise ValueError(f"sample_interval_s must be in [0.1, 3600], got {self.sample_interval_s}")
        if not 0 < self.min_pilot_a <= self.max_pilot_a or self.voltage_v <= 0:
            raise ValueError("need 0 < min_pilot_a <= max_pilot_a and voltage_v > 0")
        if self.unplug_delay_s <= 0 or self.dc_threshold_w <= 0:
            raise ValueError("unplug_delay_s and dc_threshold_w must be positive")


@dataclass(frozen=True)
class ChargingTrace:
    """A session's recorded current and pilot (ACN `sessions/{site}/ts`), in amperes.

    Times are epoch seconds, ascending; the values hold until the next point.
    """

    session_id: str
    current_ts: np.ndarray
    current_a: np.ndarray
    pilot_ts: np.ndarray
    pilot_a: np.ndarray

    def __post_init__(self) -> None:
        if len(self.current_ts) != len(self.current_a) or len(self.pilot_ts) != len(self.pilot_a):
            raise ValueError(f"trace {self.session_id}: timestamps and values differ in length")
        if len(self.current_ts) == 0:
            raise ValueError(f"trace {self.session_id}: no current samples")


def _series(block: Any, values_key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    stamps = block.get("timestamps") if isinstance(block, Mapping) else None
    values = block.get(values_key) if isinstance(block, Mapping) else None
    if not isinstance(stamps, list) or not isinstance(values, list) or len(stamps) != len(values):
        raise ValueError(f"{source}: timestamps and {values_key} must be lists of one length")
    pairs = sorted((t, float(v)) for t, v in ((rfc1123_to_epoch(s), v) for s, v in zip(stamps, values))
                   if t is not None and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v))
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def parse_acn_trace(record: Mapping[str, Any]) -> ChargingTrace | None:
    """The trace of one ACN `ts` item (a session plus `chargingCurrent {timestamps, current}`
    and `pilotSignal {timestamps, pilot}`, RFC 1123 times), or None when it has none.

    Points with an unreadable time or a non-numeric value are left out.

    Raises:
        ValueError: a block of the wrong shape.
    """
    if not record.get("chargingCurrent"):
        return None
    sid = str(record.get("sessionID", "?"))
    current_ts, current = _series(record["chargingCurrent"], "current", f"{sid} chargingCurrent")
    if len(current_ts) == 0:
        return None
    pilot_block = record.get("pilotSignal") or {"timestamps": [], "pilot": []}
    pilot_ts, pilot = _series(pilot_block, "pilot", f"{sid} pilotSignal")
    return ChargingTrace(sid, current_ts, current, pilot_ts, pilot)


@dataclass(frozen=True)
class StatusChange:
    """The connector enters `status` (OCPP 1.6 names) at `t_s` seconds after the connection."""

    t_s: float
    status: str
    error_code: str = "NoError"


@dataclass(frozen=True)
class PlantedFault:
    """Ground truth of one planted fault: `kind` (live_alert.KINDS) from `start_s`."""

    kind: str
    start_s: float
    error_code: str = ""
    detail: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One meter sample; `energy_wh` counts from the transaction's start (may fall below 0
    when the register runs backwards); `soc_pct` is None where the charger cannot know it."""

    t_s: float
    status: str
    energy_wh: float
    power_w: float
    current_a: float
    current_offered_a: float
    voltage_v: float
    temperature_c: float
    soc_pct: float | None


@dataclass(frozen=True, eq=False)
class TransactionPlan:
    """What one charger measures and says during one session; column arrays, one row per sample.

    Attributes:
        connection_ts: epoch seconds of the connection (t = 0).
        charging_end_s: when the car stopped drawing (doneChargingTime).
        end_s: when the car leaves: the last sample, then Finishing and Available.
        curve: "level2", "dc" or "trace".
        status_changes: ordered; before a sample of the same time.
    """

    session_id: str
    station_id: str
    site_id: str
    connection_ts: float
    charging_end_s: float
    end_s: float
    kwh_delivered: float
    curve: str
    id_tag: str
    t_s: np.ndarray
    status: tuple[str, ...]
    energy_wh: np.ndarray
    power_w: np.ndarray
    current_a: np.ndarray
    current_offered_a: np.ndarray
    voltage_v: np.ndarray
    temperature_c: np.ndarray
    soc_pct: np.ndarray  # NaN = not known
    status_changes: tuple[StatusChange, ...]
    faults: tuple[PlantedFault, ...] = ()

    def __len__(self) -> int:
        return len(self.t_s)

    def sample(self, i: int) -> Sample:
        soc = float(self.soc_pct[i])
        return Sample(float(self.t_s[i]), self.status[i], float(self.energy_wh[i]),
                      float(self.power_w[i]), float(self.current_a[i]),
                      float(self.current_offered_a[i]), float(self.voltage_v[i]),
                      float(self.temperature_c[i]), None if math.isnan(soc) else soc)

    def samples(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(len(self)))

    @property
    def silent_from_s(self) -> float | None:
        """From when the charger sends nothing (a planted `silent` fault), else None."""
        return next((f.start_s for f in self.faults if f.kind == "silent"), None)


def session_rng(session_id: str, seed: int) -> np.random.Generator:
    """A generator that depends only on the seed and the session, not on the order of plans."""
    return np.random.default_rng([seed, zlib.crc32(session_id.encode())])


def _times(session: Mapping[str, Any]) -> tuple[float, float, float | None]:
    connect = rfc1123_to_epoch(session.get("connectionTime"))
    leave = rfc1123_to_epoch(session.get("disconnectTime"))
    if connect is None or leave is None:
        raise UnplannableSession(f"session {session.get('sessionID')}: connectionTime and "
                                 "disconnectTime must be RFC 1123 dates")
    if leave < connect:
        raise UnplannableSession(f"session {session.get('sessionID')}: disconnects before it "
                                 "connects")
    return connect, leave, rfc1123_to_epoch(session.get("doneChargingTime"))


def _grid(end_s: float, interval: float, extra: Sequence[float]) -> np.ndarray:
    base = np.arange(0.0, end_s, interval)
    return np.unique(np.concatenate([base, np.asarray(extra, dtype=float)]).clip(0.0, end_s))


def _integrate_wh(t: np.ndarray, power_w: np.ndarray) -> np.ndarray:
    steps = np.diff(t) * (power_w[1:] + power_w[:-1]) / 2 / 3600.0
    return np.concatenate([[0.0], np.cumsum(steps)])


def _level2(t, charging_s, energy_wh, rng, opts):
    taper_s = min(0.3 * charging_s, float(rng.uniform(900, 2400)))
    volts, cap_a = opts.voltage_v, 0.98 * opts.max_pilot_a
    plateau_a = energy_wh * 3600 / volts / (charging_s - taper_s * (1 - _TAPER_MEAN))
    if plateau_a > cap_a:  # a fast session: a shorter taper, then a higher supply voltage
        taper_s = max(0.0, (charging_s - energy_wh * 3600 / (volts * cap_a)) / (1 - _TAPER_MEAN))
        plateau_a = energy_wh * 3600 / volts / (charging_s - taper_s * (1 - _TAPER_MEAN))
        volts = min(240.0, volts * max(1.0, plateau_a / cap_a))
        plateau_a = energy_wh * 3600 / volts / (charging_s - taper_s * (1 - _TAPER_MEAN))
    voltage = volts + rng.normal(0, 0.8, len(t))
    nan = np.full(len(t), np.nan)
    if plateau_a < 0.9 * opts.min_pilot_a:
        # too little energy for a steady draw: the site's scheduler pauses the pilot in turns
        burst = float(rng.uniform(opts.min_pilot_a, max(opts.min_pilot_a, 0.6 * opts.max_pilot_a)))
        on_s = max(plateau_a / burst * 900.0, 3 * opts.sample_interval_s)
        period = on_s * burst / max(plateau_a, 1e-9)
        on = np.mod(t, period) < on_s
        offered = np.where(on, float(math.ceil(burst / 0.97)), 0.0)
        return np.where(on, burst, 0.0) * (1 + rng.normal(0, 0.005, len(t))), offered, voltage, nan
    draw = float(rng.uniform(0.95, 0.99))
    offered = float(np.clip(math.ceil(plateau_a / draw), opts.min_pilot_a, opts.max_pilot_a))
    if plateau_a > 0.995 * offered:  # beyond a Level-2 pilot: the record says it drew more
        offered = float(math.ceil(plateau_a / 0.99))
    current = plateau_a * (1 + rng.normal(0, 0.005, len(t)))
    in_taper = (t >= charging_s - taper_s) & (taper_s > 0)
    current[in_taper] = plateau_a * np.exp(-3 * (t[in_taper] - (charging_s - taper_s)) / taper_s)
    current = np.minimum(current, offered * 0.995)
    return current, np.full(len(t), offered), voltage, nan


def _dc(t, charging_s, energy_wh, rng, opts):
    cc_s = charging_s * float(rng.uniform(0.55, 0.75))
    v_low, v_high = float(rng.uniform(340, 370)), float(rng.uniform(390, 410))
    shape = np.where(t < cc_s, 1.0, np.exp(-2.5 * (t - cc_s) / max(charging_s - cc_s, 1.0)))
    voltage = np.where(t < cc_s, v_low + (v_high - v_low) * t / max(cc_s, 1.0), v_high)
    area = float(np.sum(np.diff(t) * ((voltage * shape)[1:] + (voltage * shape)[:-1]) / 2
                        * (t[1:] <= charging_s)))
    cc_a = energy_wh * 3600 / area if area > 0 else 0.0
    offered = float(math.ceil(cc_a / 0.97))
    soc0 = float(rng.uniform(15, 45))
    capacity_wh = max(float(rng.uniform(40e3, 80e3)), energy_wh / ((97 - soc0) / 100))
    return cc_a * shape, np.full(len(t), offered), voltage, np.full(len(t), soc0), capacity_wh


def _hold(at: np.ndarray, stamps: np.ndarray, values: np.ndarray, default: float) -> np.ndarray:
    """The value in force at each time of `at` (the last point at or before it)."""
    if len(stamps) == 0:
        return np.full(len(at), default)
    idx = np.searchsorted(stamps, at, side="right") - 1
    return np.where(idx >= 0, values[idx.clip(0)], default)


def _trace_curve(t, connect, energy_wh, trace: ChargingTrace, opts):
    current = _hold(connect + t, trace.current_ts, trace.current_a, 0.0).clip(0.0)
    current[connect + t > trace.current_ts[-1]] = 0.0
    pilot = _hold(connect + t, trace.pilot_ts, trace.pilot_a, opts.max_pilot_a)
    # the register integrates the trace itself (3-10 s points), not the coarser samples
    points = trace.current_ts - connect
    amp_seconds = np.concatenate([[0.0], np.cumsum(np.diff(points) * trace.current_a[:-1].clip(0))])
    total = amp_seconds[-1]
    volts = energy_wh * 3600 / total if total > 0 else opts.voltage_v
    if not 150 <= volts <= 280:  # the trace and kWhDelivered disagree: keep the voltage real
        volts = opts.voltage_v
    scale = energy_wh * 3600 / (total * volts) if total > 0 else 0.0
    delivered = np.interp(t, points, amp_seconds, left=0.0, right=total) * volts * scale / 3600
    return current, pilot, np.full(len(t), volts), delivered


def _temperature(rng, current, offered, dc: bool) -> np.ndarray:
    ambient = float(rng.uniform(15, 28))
    load = np.divide(current, offered, out=np.zeros_like(current), where=offered > 0).clip(0, 1)
    return ambient + (25 if dc else 15) * load ** 2 + rng.normal(0, 0.3, len(current))


def _statuses(t, current, offered, charging_s, curve) -> list[str]:
    """Charging while drawing; SuspendedEVSE while the pilot is off; SuspendedEV when the car
    takes nothing (a synthetic car is done after `charging_s`, a trace's when it stops)."""
    synthetic = curve != "trace"
    return ["SuspendedEV" if synthetic and x >= charging_s
            else "SuspendedEVSE" if o < CHARGING_A
            else "Charging" if synthetic or c >= CHARGING_A
            else "SuspendedEV" for x, c, o in zip(t, current, offered)]


def plantable_kinds(session: Mapping[str, Any], options: PlanOptions = PlanOptions()
                    ) -> frozenset[str]:
    """The fault kinds `build_plan` can plant in this session: the in-charging kinds need
    eight samples and five minutes of charging, `silent` six samples of transaction."""
    try:
        connect, leave, done = _times(session)
    except UnplannableSession:
        return frozenset()
    steps = options.sample_interval_s
    charging = (min(done, leave) - connect) if done is not None else (leave - connect) / 2
    kinds = {"never_unplugged"}
    if leave - connect >= 6 * steps:
        kinds.add("silent")
    if charging >= max(8 * steps, 2.5 * SETTLE_S) and float(session.get("kWhDelivered") or 0) > 0:
        kinds |= _IN_CHARGING
    return frozenset(kinds)


def build_plan(session: Mapping[str, Any], *, seed: int = 0, fault: str | None = None,
               trace: ChargingTrace | None = None,
               options: PlanOptions = PlanOptions()) -> TransactionPlan:
    """The transaction plan of one session, with at most one planted fault.

    Args:
        session: an ACN session (stationID, connectionTime, disconnectTime, doneChargingTime,
            kWhDelivered, userInputs...).
        seed: with the sessionID, decides every random draw.
        fault: a kind of `FAULT_KINDS` to plant, or None.
        trace: the session's recorded current and pilot, replayed instead of a curve.
        options: sampling and electrical parameters.

    Returns:
        The plan.

    Raises:
        UnplannableSession: dates missing or out of order.
        ValueError: an unknown fault kind, or one this session cannot show
            (`plantable_kinds`).
    """
    if fault is not None and fault not in FAULT_KINDS:
        raise ValueError(f"fault must be one of {FAULT_KINDS}, got {fault!r}")
    if fault is not None and fault not in plantable_kinds(session, options):
        raise ValueError(f"session {session.get('sessionID')} is too short to show {fault}")
    connect, leave, done = _times(session)
    sid = str(session.get("sessionID") or f"{session.get('stationID')}@{connect:.0f}")
    rng = session_rng(sid, seed)
    energy_wh = max(float(session.get("kWhDelivered") or 0.0), 0.0) * 1000
    step = options.sample_interval_s
    stay_s = max(leave - connect, step)
    if done is None or done <= connect:  # no record of when it stopped: at the station's rate
        done = connect + energy_wh * 3600 / (options.voltage_v * options.max_pilot_a * 0.95)
    charging_s = min(max(done - connect, step), stay_s)
    curve = ("trace" if trace is not None else
             "dc" if energy_wh * 3600 / charging_s > options.dc_threshold_w else "level2")
    t = _grid(stay_s, options.sample_interval_s, [charging_s, stay_s])
    soc, capacity_wh = np.full(len(t), np.nan), 0.0
    if curve == "trace":
        current, offered, voltage, delivered = _trace_curve(t, connect, energy_wh, trace, options)
        charging_s = float(t[np.nonzero(current >= CHARGING_A)[0][-1]]) if (
            current >= CHARGING_A).any() else 0.0
    else:
        if curve == "level2":
            current, offered, voltage, soc = _level2(t, charging_s, energy_wh, rng, options)
        else:
            current, offered, voltage, soc, capacity_wh = _dc(t, charging_s, energy_wh, rng, options)
        current = np.where(t < charging_s, current, 0.0)
        delivered = None
    temperature = _temperature(rng, current, offered, curve == "dc")
    status = _statuses(t, current, offered, charging_s, curve)
    arrays = {"current_a": current, "current_offered_a": offered, "voltage_v": voltage,
              "temperature_c": temperature}
    if delivered is None:
        power = voltage * current
        clean = _integrate_wh(t, power)
        scale = energy_wh / clean[-1] if clean[-1] > 0 else 0.0
    else:
        power, scale = voltage * current, None
    planted: tuple[PlantedFault, ...] = ()
    if fault is not None:
        t, status, arrays, planted = _plant(fault, t, status, arrays, charging_s, rng, options,
                                            stay_s)
        current, offered, voltage = (arrays["current_a"], arrays["current_offered_a"],
                                     arrays["voltage_v"])
        power = voltage * current
        soc = np.concatenate([soc, np.full(len(t) - len(soc), soc[-1] if len(soc) else np.nan)])
    if scale is not None:
        energy = _integrate_wh(t, power) * scale
    else:
        energy = np.concatenate([delivered, np.full(len(t) - len(delivered), delivered[-1])])
        if fault in ("no_current", "overcurrent", "faulted"):  # the trace no longer says it
            energy = _integrate_wh(t, power) * (energy_wh / max(delivered[-1], 1e-9)
                                                if delivered[-1] > 0 else 1.0)
    energy, planted = _plant_register(planted, t, energy, rng)
    if capacity_wh:
        soc = soc + energy.clip(0) / capacity_wh * 100
    end_s = float(t[-1])
    changes = [StatusChange(0.0, "Preparing")]
    for i, s in enumerate(status):
        if i == 0 or s != status[i - 1]:
            code = next((f.error_code for f in planted if f.kind == "faulted"), "") \
                if s == "Faulted" else "NoError"
            changes.append(StatusChange(float(t[i]), s, code))
    changes += [StatusChange(end_s, "Finishing"), StatusChange(end_s, "Available")]
    inputs = session.get("userInputs") or []
    user = inputs[-1].get("userID") if inputs and isinstance(inputs[-1], Mapping) else None
    id_tag = str(session.get("userID") or user or "ANONYMOUS")[:20]
    return TransactionPlan(
        session_id=sid, station_id=str(session.get("stationID")), site_id=str(
            session.get("siteID") or ""), connection_ts=connect, charging_end_s=float(charging_s),
        end_s=end_s, kwh_delivered=energy_wh / 1000, curve=curve, id_tag=id_tag, t_s=t,
        status=tuple(status), energy_wh=energy, power_w=power, current_a=current,
        current_offered_a=offered, voltage_v=voltage, temperature_c=arrays["temperature_c"],
        soc_pct=soc, status_changes=tuple(changes), faults=planted)


def _fault_start(t: np.ndarray, eligible: np.ndarray, interval: float,
                 rng: np.random.Generator, kind: str) -> int:
    """A sample index among `eligible`, on the regular grid when possible, with samples
    before it.

    Raises:
        ValueError: no sample qualifies.
    """
    eligible = eligible & (t >= interval)
    grid = np.nonzero(eligible & np.isclose(np.mod(t, interval), 0.0) & (t >= 2 * interval))[0]
    if len(grid) == 0:
        grid = np.nonzero(eligible)[0]
    if len(grid) == 0:
        raise ValueError(f"no sample of this session can show {kind}")
    return int(rng.choice(grid))


def _plant(kind, t, status, arrays, charging_s, rng, opts, stay_s):
    """Change the arrays from the fault's start on; return them with the label."""
    step = opts.sample_interval_s
    status = list(status)
    arrays = {k: v.copy() for k, v in arrays.items()}
    if kind == "never_unplugged":
        start = float(t[-1])
        more = np.arange(start + step, start + opts.unplug_delay_s + step / 2, step)
        t = np.concatenate([t, more])
        for name, values in arrays.items():
            fill = 0.0 if name == "current_a" else values[-1]
            arrays[name] = np.concatenate([values, np.full(len(more), fill)])
        status += ["SuspendedEV"] * len(more)
        return t, status, arrays, (PlantedFault(kind, start, detail={
            "extra_s": float(more[-1] - start)}),)
    if kind == "silent":
        i = _fault_start(t, (t >= 0.1 * stay_s) & (t <= 0.8 * stay_s), step, rng, kind)
        return t, status, arrays, (PlantedFault(kind, float(t[i])),)
    drawing = arrays["current_a"] >= CHARGING_A
    i = _fault_start(t, drawing & (t >= max(0.1 * charging_s, SETTLE_S))
                     & (t <= 0.7 * charging_s), step, rng, kind)
    during = np.arange(len(t)) >= i
    charging = during & (t < charging_s)
    current, offered = arrays["current_a"], arrays["current_offered_a"]
    detail: dict[str, float] = {}
    error_code = ""
    if kind == "no_current":
        current[charging] = 0.0
        offered[charging] = offered.max()
        for j in np.nonzero(charging)[0]:
            status[j] = "Charging"
    elif kind == "overcurrent":
        ratio = float(rng.uniform(1.2, 1.5))
        until = float(t[i]) + float(rng.uniform(600, 1800))
        hot = during & (t < min(until, charging_s))
        hot[i] = True
        current[hot] = np.maximum(offered[hot] * ratio, offered[hot] + OVERCURRENT_MIN_A)
        detail = {"ratio": ratio}
    elif kind == "overtemperature":
        over = float(rng.uniform(5, 15))
        hot = charging.copy()
        hot[i] = True
        arrays["temperature_c"][hot] = (TEMPERATURE_LIMIT_C + over
                                        + np.linspace(0, 10, int(hot.sum())))
        detail = {"limit_c": TEMPERATURE_LIMIT_C}
    elif kind == "faulted":
        error_code = str(rng.choice(ERROR_CODES))
        current[during], offered[during] = 0.0, 0.0
        for j in np.nonzero(during)[0]:
            status[j] = "Faulted"
    elif kind in ("meter_frozen", "meter_backwards"):
        pass  # the register is changed after integration (_plant_register)
    return t, status, arrays, (PlantedFault(kind, float(t[i]), error_code, detail),)


def _plant_register(faults, t, energy, rng):
    """The register frozen or knocked back from the fault's start; the labels with the drop."""
    labelled = []
    for f in faults:
        i = int(np.searchsorted(t, f.start_s))
        if f.kind == "meter_frozen":
            energy = energy.copy()
            energy[i:] = energy[i - 1]
        elif f.kind == "meter_backwards":
            energy = energy.copy()
            drop = float(energy[i] - energy[i - 1]) + float(rng.uniform(100, 1000))
            energy[i:] -= drop
            f = replace(f, detail={**f.detail, "drop_wh": drop})
        labelled.append(f)
    return energy, tuple(labelled)
