"""The live detectors, pure: each kind fires on its telltale samples, and not on healthy
charging, a taper, SuspendedEV or a 1.6 charger without Current.Offered."""

from __future__ import annotations

import math

import pytest

from pipelines.contracts.live_alert import KINDS, parse_live_alert
from pipelines.contracts.live_alert import encode_live_alert as encode_alert
from pipelines.telemetry.detectors import (
    CONNECTOR_STATE_CODEC,
    DEFAULT_POLICY,
    DUPLICATE,
    ConnectorState,
    LivePolicy,
    connector_key,
    connector_status,
    on_event,
    on_tick,
)
from tests.telemetry.kit import T0, event, level2, status, transaction


def run(events, state=None, policy=DEFAULT_POLICY):
    state = {} if state is None else state
    alerts, summaries = [], []
    for e in events:
        result = on_event(state, e, policy)
        alerts += result.alerts
        if result.summary is not None:
            summaries.append(result.summary)
    return state, alerts, summaries


def opened(alerts, kind=None):
    return [a for a in alerts if a.status == "open" and (kind is None or a.kind == kind)]


def test_healthy_level2_with_taper_and_suspended_ev_raises_nothing():
    _state, alerts, summaries = run(transaction(level2(taper_from=30), samples=80))
    assert alerts == []
    assert len(summaries) == 1
    assert summaries[0].kwh_delivered == pytest.approx((summaries[0].end_wh - 1000.0) / 1000)
    assert summaries[0].kwh_delivered > 0.5


def test_16_charger_without_offered_current_tapering_while_charging_raises_nothing():
    def profile(i):  # no Current.Offered, status stays Charging through the taper
        return (30.0 if i < 30 else max(0.0, 30.0 * 0.6 ** (i - 29))), None, "Charging"
    _state, alerts, _ = run(transaction(profile, samples=70))
    assert alerts == []


@pytest.mark.parametrize(("samples", "lasting"), [(1, ""), (2, " for 10 s")])
def test_no_current_fires_on_its_nth_zero_sample_and_closes_at_the_end(samples, lasting):
    def profile(i):
        return (30.0 if i < 20 else 0.0), 32.0, "Charging"
    events = transaction(profile, samples=40)
    _state, alerts, _ = run(events, policy=LivePolicy(samples=samples))
    [alert] = opened(alerts)
    first_zero = next(e for e in events if e.kind == "meter" and e.measurands["current_a"] == 0)
    assert alert.kind == "no_current"
    assert alert.first_sample_ts == first_zero.charger_ts
    assert alert.first_received_ts == first_zero.received_ts
    assert alert.at_ts == first_zero.charger_ts + 10 * (samples - 1)
    assert f"current 0.0 A{lasting} while Charging, offered 32 A" == alert.evidence
    closed = [a for a in alerts if a.status == "closed"]
    assert [a.alert_id for a in closed] == [alert.alert_id]


def test_no_current_from_the_start_counts_after_the_grace_period():
    events = transaction(lambda i: (0.0, 32.0, "Charging"), samples=12)
    _state, alerts, _ = run(events)
    [alert] = opened(alerts)
    assert alert.kind == "no_current" and alert.first_sample_ts >= T0 + 60


def test_suspended_ev_or_a_low_offer_with_zero_current_is_not_no_current():
    def suspended(i):
        return (30.0, 32.0, "Charging") if i < 20 else (0.0, 32.0, "SuspendedEV")

    def pilot_off(i):
        return (30.0, 32.0, "Charging") if i < 20 else (0.0, 0.0, "Charging")
    for profile in (suspended, pilot_off):
        assert run(transaction(profile, samples=40))[1] == []


def test_overcurrent_fires_above_the_offer_not_while_the_car_follows_a_lowered_offer():
    def over(i):
        return (30.0, 32.0, "Charging") if i < 20 else (42.0, 32.0, "Charging")
    [alert] = opened(run(transaction(over, samples=30))[1])
    assert alert.kind == "overcurrent" and "above the offered 32 A by 10.0 A" in alert.evidence

    def lowered(i):  # pilot 32 -> 16: the car takes one sample to follow
        if i < 20:
            return 30.0, 32.0, "Charging"
        return (30.0 if i == 20 else 15.5), 16.0, "Charging"
    assert run(transaction(lowered, samples=30))[1] == []


def test_overcurrent_without_offer_uses_the_learned_usual_maximum():
    def profile(i):
        return (30.0 if i < 50 else 45.0), None, "Charging"
    [alert] = opened(run(transaction(profile, samples=60))[1])
    assert alert.kind == "overcurrent" and "usual maximum" in alert.evidence


def test_meter_frozen_fires_while_power_flows_not_after_charging_stopped():
    def freeze(i, m):
        if i >= 20:
            m["energy_wh"] = 1000.0 + 30 * 208 * 10 / 3600 * 20
    [alert] = opened(run(transaction(lambda i: (30.0, 32.0, "Charging"), samples=30,
                                     mutate=freeze))[1])
    assert alert.kind == "meter_frozen" and "stuck at" in alert.evidence
    assert run(transaction(level2(taper_from=10), samples=60))[1] == []  # 0 W, register still


def test_meter_frozen_waits_for_more_than_a_coarse_registers_step():
    def coarse(i, m):  # a register in 0.1 kWh steps
        m["energy_wh"] = math.floor(m["energy_wh"] / 100) * 100
    assert run(transaction(lambda i: (30.0, 32.0, "Charging"), samples=60, mutate=coarse))[1] == []


def test_meter_backwards_fires_on_the_first_lower_register():
    def back(i, m):
        if i >= 15:
            m["energy_wh"] -= 500
    events = transaction(lambda i: (30.0, 32.0, "Charging"), samples=25, mutate=back)
    [alert] = opened(run(events)[1])
    assert alert.kind == "meter_backwards" and "went back" in alert.evidence
    assert alert.first_sample_ts == T0 + 16 * 10


def test_overtemperature_fires_above_the_limit():
    def hot(i, m):
        if i >= 10:
            m["temperature_c"] = 80.0 + i
    [alert] = opened(run(transaction(lambda i: (30.0, 32.0, "Charging"), samples=20,
                                     mutate=hot))[1])
    assert alert.kind == "overtemperature" and "above the 65 °C limit" in alert.evidence


def test_faulted_carries_the_error_code_and_closes_when_available():
    events = transaction(lambda i: (30.0, 32.0, "Charging"), samples=5, end=False)
    events += [status(T0 + 100, "Faulted", "GroundFailure"), status(T0 + 200, "Available")]
    _state, alerts, _ = run(events)
    assert [(a.kind, a.status) for a in alerts] == [("faulted", "open"), ("faulted", "closed")]
    assert "GroundFailure" in alerts[0].evidence


def test_silent_fires_on_the_timer_after_k_own_intervals_and_closes_on_the_next_message():
    events = transaction(lambda i: (30.0, 32.0, "Charging"), samples=10, end=False)
    state, _alerts, _ = run(events)
    last_rx = events[-1].received_ts
    limit = DEFAULT_POLICY.silent_factor * 10.0  # its own interval: a sample every 10 s
    assert on_tick(state, last_rx + limit - 1) == []
    [(key, [alert])] = on_tick(state, last_rx + limit + 1)
    assert key == connector_key("CP-1", 1) and alert.kind == "silent"
    assert alert.first_received_ts == pytest.approx(last_rx + 10)
    assert on_tick(state, last_rx + 100) == []  # open once
    back = on_event(state, event("meter", ts=T0 + 300, measurands={"current_a": 30.0}))
    assert [(a.kind, a.status) for a in back.alerts] == [("silent", "closed")]


def test_a_disconnect_mid_transaction_is_silent_at_once():
    state, _, _ = run(transaction(lambda i: (30.0, 32.0, "Charging"), samples=5, end=False))
    result = on_event(state, event("disconnected", connector=0, tx=None, ts=T0 + 70))
    assert [(a.kind, a.connector_id) for a in result.alerts] == [("silent", 1)]


def test_never_unplugged_after_idle_hours():
    def profile(i):
        return (30.0, 32.0, "Charging") if i < 5 else (0.0, 32.0, "SuspendedEV")
    events = transaction(profile, samples=30, interval=3600.0)  # one sample an hour, 30 h
    [alert] = opened(run(events)[1])
    assert alert.kind == "never_unplugged" and "after it last drew power" in alert.evidence


def test_each_kind_opens_once_per_episode():
    def profile(i):
        return (30.0 if i < 10 else 0.0), 32.0, "Charging"
    alerts = run(transaction(profile, samples=100))[1]
    assert len(opened(alerts)) == 1


def test_a_redelivered_event_counts_nothing():
    def profile(i):
        return (30.0 if i < 20 else 0.0), 32.0, "Charging"
    events = transaction(profile, samples=30, end=False)
    state, alerts, _ = run(events)
    assert len(opened(alerts)) == 1
    assert on_event(state, events[-1]) is DUPLICATE
    _s, again, _ = run(events, state)  # the whole stream again: old ids or stale samples
    assert again == []


def test_state_restored_from_bytes_continues_like_an_uninterrupted_run():
    def profile(i):
        return (30.0 if i < 30 else 0.0), 32.0, "Charging"
    events = transaction(profile, samples=50)
    _s, reference, ref_summaries = run(events)
    state, first, _ = run(events[:25])
    sizes = []
    restored = {}
    for key, value in state.items():
        data = CONNECTOR_STATE_CODEC.encode(key, value)
        sizes.append(len(data))
        restored[key] = CONNECTOR_STATE_CODEC.decode(key, data)
    assert max(sizes) <= 1024
    _s, rest, summaries = run(events[25:], restored)
    assert [a.alert_id for a in first + rest] == [a.alert_id for a in reference]
    assert repr(summaries) == repr(ref_summaries)  # NaN fields: compare their text


def test_every_alert_passes_the_live_alert_contract():
    def profile(i):
        return (30.0 if i < 20 else 0.0), 32.0, "Charging"
    for alert in run(transaction(profile, samples=30))[1]:
        body = parse_live_alert(encode_alert(alert.message(T0 + 1000, "p")))
        assert body.kind in KINDS and body.alert_id == alert.alert_id


def test_connector_status_reflects_the_transaction_and_open_alerts():
    def profile(i):
        return (30.0 if i < 20 else 0.0), 32.0, "Charging"
    state, _, _ = run(transaction(profile, samples=30, end=False))
    snapshot = connector_status(state[connector_key("CP-1", 1)], T0 + 1000)
    assert snapshot.state == "Charging" and snapshot.transaction_id == "T1"
    assert snapshot.open_alerts == ("no_current",) and snapshot.energy_wh > 0


def test_the_policy_refuses_nonsense():
    with pytest.raises(ValueError):
        LivePolicy(samples=0)
    with pytest.raises(ValueError):
        LivePolicy(idle_hours=50, max_connected_hours=48)


def test_the_state_keeps_every_field_through_bytes():
    conn = ConnectorState("CP-é", 300, "jpl", "tx-9", "SuspendedEV", "HighTemperature", "u1",
                          open_bits=5, charging_samples=7)
    conn.interval_s, conn.first_ts[2] = 9.5, 123.0
    back = ConnectorState.from_bytes(conn.to_bytes())
    assert (back.charge_point_id, back.connector_id, back.site_id, back.transaction_id,
            back.status, back.error_code, back.user_id, back.open_bits, back.charging_samples,
            back.interval_s, back.first_ts[2]) == ("CP-é", 300, "jpl", "tx-9", "SuspendedEV",
                                                   "HighTemperature", "u1", 5, 7, 9.5, 123.0)


def test_with_fast_samples_a_car_has_five_seconds_to_follow_a_lowered_offer():
    def follows_in_4_s(i):  # a sample a second; the pilot falls 32 -> 16 A at sample 20
        if i < 20:
            return 30.0, 32.0, "Charging"
        return (30.0 if i < 24 else 15.5), 16.0, "Charging"

    def never_follows(i):
        return (30.0, 32.0 if i < 20 else 16.0, "Charging")
    assert run(transaction(follows_in_4_s, samples=40, interval=1.0))[1] == []
    [alert] = opened(run(transaction(never_follows, samples=40, interval=1.0))[1])
    assert alert.kind == "overcurrent" and alert.first_sample_ts > T0 + 21 + 5


def test_a_201_start_without_a_register_takes_its_first_sample_as_the_start():
    events = transaction(level2(), samples=30, start_wh=5000.0)
    events[0] = event("transaction_started", ts=events[0].charger_ts, version="2.0.1")
    _state, _alerts, [summary] = run(events)
    first = next(e for e in events if e.kind == "meter").measurands["energy_wh"]
    assert summary.start_wh == first
    assert summary.kwh_delivered == pytest.approx((summary.end_wh - first) / 1000)
    assert 0 < summary.kwh_delivered < summary.end_wh / 1000


def test_an_end_on_connector_0_after_a_reconnect_ends_the_transaction_of_its_connector():
    events = transaction(level2(), samples=20, connector=2, end=False)
    last = events[-1].charger_ts
    stop = event("transaction_ended", connector=0, tx="T1", ts=last + 10,
                 measurands={"energy_wh": 3000.0}, details={"stop_reason": "PowerLoss"})
    state, _alerts, [summary] = run([*events, stop])
    assert summary.connector_id == 2 and summary.end_wh == 3000.0
    assert state[connector_key("CP-1", 2)].transaction_id == ""
    assert connector_key("CP-1", 0) not in state
