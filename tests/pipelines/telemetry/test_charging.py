"""Transaction plans, pure: energy, limits, statuses, every planted fault at its start, seeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pipelines.contracts.dates import format_rfc1123
from pipelines.contracts.live_alert import KINDS
from pipelines.contracts.telemetry import TelemetryEvent
from pipelines.data.exports import load_exports
from pipelines.data.synth import generate_sessions
from pipelines.telemetry.charging import (
    CHARGING_A,
    ERROR_CODES,
    FAULT_KINDS,
    OVERCURRENT_MIN_A,
    SETTLE_S,
    TEMPERATURE_LIMIT_C,
    PlanOptions,
    UnplannableSession,
    build_plan,
    parse_acn_trace,
    plantable_kinds,
)
from pipelines.telemetry.detectors import on_event, on_tick
from tests.conftest import SHARED_ACN

START = datetime(2019, 3, 4, 16, 0, tzinfo=UTC)


def session(kwh: float, charge_h: float | None, stay_h: float, sid: str = "s-1", **extra) -> dict:
    record = {
        "sessionID": sid, "stationID": "2-39-78-360", "siteID": "0002",
        "connectionTime": format_rfc1123(START),
        "disconnectTime": format_rfc1123(START + timedelta(hours=stay_h)),
        "doneChargingTime": None if charge_h is None
        else format_rfc1123(START + timedelta(hours=charge_h)),
        "kWhDelivered": kwh, "userID": "000004321", "userInputs": None,
    }
    return {**record, **extra}


def integrated_wh(plan) -> float:
    return float(np.sum(np.diff(plan.t_s) * (plan.power_w[1:] + plan.power_w[:-1]) / 2) / 3600)


@pytest.fixture(scope="module")
def synthetic() -> list[dict]:
    return generate_sessions(120, seed=11)[0]


def test_clean_plans_deliver_the_recorded_energy_within_the_offered_current(synthetic):
    for record in synthetic:
        plan = build_plan(record, seed=2)
        target = record["kWhDelivered"] * 1000
        assert plan.energy_wh[0] == 0
        assert plan.energy_wh[-1] == pytest.approx(target, rel=1e-6, abs=0.5)
        assert integrated_wh(plan) == pytest.approx(plan.energy_wh[-1], rel=0.02, abs=5)
        assert np.all(np.diff(plan.energy_wh) >= -1e-9)
        assert np.all(plan.current_a <= plan.current_offered_a + 1e-9)
        assert plan.temperature_c.max() < TEMPERATURE_LIMIT_C
        assert not plan.faults


def test_level2_draws_at_the_pilot_then_tapers_and_stops_when_done():
    plan = build_plan(session(kwh=20.0, charge_h=3.5, stay_h=8.0), seed=1)
    assert plan.curve == "level2"
    assert 6 <= plan.current_offered_a.max() <= 32
    charging = plan.t_s < plan.charging_end_s
    plateau = plan.current_a[charging & (plan.t_s < 3600)]
    assert plateau.min() >= 0.9 * plan.current_offered_a[0]
    last = plan.current_a[charging][-10:]
    assert last[-1] < 0.3 * plateau.mean() and np.all(np.diff(last) < 0.2)
    assert plan.charging_end_s == pytest.approx(3.5 * 3600)
    after = plan.t_s >= plan.charging_end_s
    assert np.all(plan.current_a[after] == 0)
    assert {plan.status[i] for i in np.nonzero(after)[0]} == {"SuspendedEV"}
    assert plan.end_s == pytest.approx(8 * 3600)
    assert [c.status for c in plan.status_changes] == [
        "Preparing", "Charging", "SuspendedEV", "Finishing", "Available"]
    assert plan.sample(0).soc_pct is None


def test_little_energy_over_a_long_charge_is_paused_by_the_pilot_not_trickled():
    plan = build_plan(session(kwh=2.0, charge_h=6.0, stay_h=7.0), seed=4)
    drawing = plan.current_a[plan.current_a >= CHARGING_A]
    assert drawing.min() >= 5.5
    assert "SuspendedEVSE" in plan.status
    assert plan.energy_wh[-1] == pytest.approx(2000, abs=0.5)


def test_dc_fast_charge_runs_constant_current_then_constant_voltage():
    plan = build_plan(session(kwh=30.0, charge_h=0.75, stay_h=1.0), seed=3)
    assert plan.curve == "dc"
    charging = plan.t_s < plan.charging_end_s
    current, voltage = plan.current_a[charging], plan.voltage_v[charging]
    head = slice(0, len(current) // 3)
    assert np.ptp(current[head]) < 1e-6 and np.all(np.diff(voltage[head]) > 0)
    tail = slice(-len(current) // 5, None)
    assert np.ptp(voltage[tail]) < 1e-6 and np.all(np.diff(current[tail]) < 0)
    soc = plan.soc_pct[~np.isnan(plan.soc_pct)]
    assert len(soc) == len(plan) and np.all(np.diff(soc) >= 0) and soc[-1] <= 100
    assert plan.energy_wh[-1] == pytest.approx(30_000, abs=0.5)


def test_a_missing_done_time_charges_at_the_station_rate():
    plan = build_plan(session(kwh=6.0, charge_h=None, stay_h=5.0), seed=1)
    assert 0.9 * 3600 < plan.charging_end_s < 1.1 * 3600
    assert plan.energy_wh[-1] == pytest.approx(6000, abs=0.5)


def first_fault(plan):
    (fault,) = plan.faults
    index = int(np.searchsorted(plan.t_s, fault.start_s))
    assert plan.t_s[index] == fault.start_s
    return fault, index


def test_kinds_are_the_live_alert_kinds():
    assert FAULT_KINDS == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_each_fault_shows_at_its_start_and_not_before(kind, synthetic):
    record = session(kwh=18.0, charge_h=3.0, stay_h=9.0, sid=f"fault-{kind}")
    clean = build_plan(record, seed=5)
    plan = build_plan(record, seed=5, fault=kind)
    fault, i = first_fault(plan)
    assert fault.kind == kind
    before = slice(0, i)
    for name in ("energy_wh", "current_a", "current_offered_a", "temperature_c"):
        assert np.array_equal(getattr(plan, name)[before], getattr(clean, name)[before]), name
    assert plan.status[:i] == clean.status[:i]
    charging = plan.status[i] == "Charging" and plan.current_offered_a[i] > 0
    if kind == "no_current":
        assert charging and plan.current_a[i] == 0
    elif kind == "overcurrent":
        offered = plan.current_offered_a[i]
        assert plan.current_a[i] >= max(1.2 * offered, offered + OVERCURRENT_MIN_A) - 1e-9
        assert np.all(plan.current_a[:i] <= plan.current_offered_a[:i])
    elif kind == "meter_frozen":
        assert plan.power_w[i] > 0 and plan.energy_wh[i] == plan.energy_wh[i - 1]
        assert np.all(np.diff(plan.energy_wh[:i]) > 0)
    elif kind == "meter_backwards":
        assert plan.energy_wh[i] < plan.energy_wh[i - 1]
        assert np.all(np.diff(plan.energy_wh[:i]) >= 0)
    elif kind == "overtemperature":
        assert plan.temperature_c[i] > TEMPERATURE_LIMIT_C > plan.temperature_c[:i].max()
    elif kind == "faulted":
        assert plan.status[i] == "Faulted" and "Faulted" not in plan.status[:i]
        change = next(c for c in plan.status_changes if c.status == "Faulted")
        assert change.t_s == fault.start_s and change.error_code in ERROR_CODES
        assert fault.error_code == change.error_code
    elif kind == "silent":
        assert plan.silent_from_s == fault.start_s and 0 < fault.start_s < plan.end_s
    elif kind == "never_unplugged":
        assert fault.start_s == clean.end_s
        assert plan.end_s >= clean.end_s + PlanOptions().unplug_delay_s
        assert set(plan.status[i:]) == {"SuspendedEV"} and np.all(plan.current_a[i:] == 0)
    if kind in ("no_current", "overcurrent", "meter_frozen", "meter_backwards",
                "overtemperature", "faulted"):
        assert SETTLE_S <= fault.start_s < plan.charging_end_s


def test_faults_are_planted_only_where_the_session_can_show_them():
    short = session(kwh=0.6, charge_h=0.01, stay_h=0.015)
    assert plantable_kinds(short) == {"never_unplugged"}
    with pytest.raises(ValueError, match="too short"):
        build_plan(short, fault="no_current")
    with pytest.raises(ValueError, match="fault must be one of"):
        build_plan(session(10, 2, 4), fault="melted")
    with pytest.raises(UnplannableSession, match="disconnects before"):
        build_plan(session(10, 2, -1))


def test_the_same_seed_gives_the_same_plan_and_another_seed_another(synthetic):
    record = synthetic[7]
    kind = min(plantable_kinds(record))
    a, b = build_plan(record, seed=9, fault=kind), build_plan(record, seed=9, fault=kind)
    other = build_plan(record, seed=10, fault=kind)
    for name in ("t_s", "energy_wh", "current_a", "voltage_v", "temperature_c"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.faults == b.faults and a.status_changes == b.status_changes
    assert not np.array_equal(a.temperature_c, other.temperature_c)


def trace_record(kwh: float = 5.0) -> dict:
    """A 2-hour session whose ACN trace: 30 A for an hour, pilot cut to 0 for 10 min, 16 A."""
    record = session(kwh=kwh, charge_h=1.75, stay_h=2.0, sid="traced")
    stamps, current, pilot = [], [], []
    for second in range(0, 6300, 7):
        when = format_rfc1123(START + timedelta(seconds=second))
        amps = 30.0 if second < 3600 else 0.0 if second < 4200 else 16.0
        stamps.append(when)
        current.append(amps)
        pilot.append(32.0 if second < 3600 else 0.0 if second < 4200 else 16.0)
    stamps.append("not a date")
    current.append(99.0)
    pilot.append(99.0)
    return {**record, "chargingCurrent": {"timestamps": stamps, "current": current},
            "pilotSignal": {"timestamps": stamps, "pilot": pilot}}


def test_a_recorded_trace_is_replayed_instead_of_a_curve():
    record = trace_record()
    trace = parse_acn_trace(record)
    assert trace is not None and len(trace.current_a) == 900 and trace.current_a.max() == 30.0
    plan = build_plan(record, seed=0, trace=trace)
    assert plan.curve == "trace"
    at = {int(t): i for i, t in enumerate(plan.t_s)}
    assert plan.current_a[at[600]] == 30.0 and plan.current_offered_a[at[600]] == 32.0
    assert plan.current_a[at[3900]] == 0.0 and plan.status[at[3900]] == "SuspendedEVSE"
    assert plan.current_a[at[5000]] == 16.0 and plan.status[at[5000]] == "Charging"
    assert plan.status[-1] == "SuspendedEV"
    assert plan.energy_wh[-1] == pytest.approx(5000, abs=0.5)
    assert 150 <= plan.voltage_v[0] <= 280
    assert parse_acn_trace(session(1, 1, 2)) is None


def test_a_trace_can_carry_a_planted_fault():
    record = trace_record()
    plan = build_plan(record, seed=0, trace=parse_acn_trace(record), fault="no_current")
    fault, i = first_fault(plan)
    assert fault.kind == "no_current"
    assert plan.current_a[i] == 0 and plan.status[i] == "Charging" and plan.current_offered_a[i] > 0


@pytest.mark.skipif(not SHARED_ACN.exists(), reason="the real ACN exports are not here")
def test_real_exports_make_plausible_plans():
    records = load_exports(sorted(SHARED_ACN.glob("*.json")))[::20]
    options = PlanOptions(sample_interval_s=60)
    within_pilot = 0
    for record in records:
        plan = build_plan(record, seed=0, options=options)
        assert plan.energy_wh[-1] == pytest.approx(record["kWhDelivered"] * 1000, abs=1)
        assert np.all(plan.current_a <= plan.current_offered_a + 1e-9)
        within_pilot += plan.curve == "dc" or plan.current_offered_a.max() <= 32
    assert within_pilot >= 0.98 * len(records)


def detector_alerts(plan, cp: str = "CP-X") -> list:
    """Feed a plan to the live detectors as a 1.6 charger's events, one tick per sample;
    a silent charger sends nothing more and the timer runs on."""
    state, seq, alerts = {}, 0, []

    def apply(kind, t, **fields):
        nonlocal seq
        seq += 1
        event = TelemetryEvent(f"{cp}:{seq}:0", kind, cp, 1, fields.pop("tx", "tx-1"),
                               plan.connection_ts + t, plan.connection_ts + t, "1.6", **fields)
        alerts.extend(on_event(state, event).alerts)

    events = sorted([(c.t_s, 2 if c.status in ("Finishing", "Available") else 0, c)
                     for c in plan.status_changes]
                    + [(float(t), 1, i) for i, t in enumerate(plan.t_s)], key=lambda e: e[:2])
    for t, order, item in events:
        if plan.silent_from_s is not None and t >= plan.silent_from_s:
            for quiet in np.arange(t, plan.end_s, 10.0):
                for _key, more in on_tick(state, plan.connection_ts + quiet):
                    alerts.extend(more)
            break
        if order == 1:
            s = plan.sample(item)
            apply("meter", t, measurands={
                "energy_wh": 1e6 + s.energy_wh, "power_w": s.power_w, "current_a": s.current_a,
                "current_offered_a": s.current_offered_a, "voltage_v": s.voltage_v,
                "temperature_c": s.temperature_c})
            for _key, more in on_tick(state, plan.connection_ts + t):
                alerts.extend(more)
        elif item.status == "Preparing":
            apply("transaction_started", t, measurands={"energy_wh": 1e6})
        elif item.status == "Finishing":
            apply("transaction_ended", t, measurands={"energy_wh": 1e6 + plan.energy_wh[-1]})
        elif item.status != "Available":
            apply("status", t, status=item.status,
                  error_code=item.error_code if item.status == "Faulted" else "")
    return [a for a in alerts if a.status == "open"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_live_detectors_catch_each_planted_kind_and_nothing_in_clean_plans(kind, synthetic):
    """The plans and the processor's detectors agree on what each fault looks like."""
    for record in [r for r in synthetic if kind in plantable_kinds(r)][:3]:
        assert detector_alerts(build_plan(record, seed=6)) == []
        plan = build_plan(record, seed=6, fault=kind)
        opened = detector_alerts(plan)
        assert [a.kind for a in opened] == [kind]
        assert opened[0].at_ts >= plan.connection_ts + plan.faults[0].start_s
