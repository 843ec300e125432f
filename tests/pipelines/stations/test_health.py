"""Station health detectors: silent on the timer, failing at k of n, degraded by CUSUM."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.contracts.dates import format_rfc1123
from pipelines.stations.health import (
    HealthPolicy,
    SiteHealth,
    StationHealth,
    UserPower,
    expected_sessions,
    on_dead_letter,
    on_session,
    on_tick,
    silent_due,
    site_key,
    station_key,
    time_to_expect,
)

HOUR = 3600.0
DAY = 86400.0
MONDAY = 1546819200.0  # Mon 2019-01-07 00:00 UTC
POLICY = HealthPolicy()


def session(station: str, connect_s: float, hours: float = 4.0, kwh: float = 10.0,
            charge_h: float | None = 2.0, user: str | None = None, site: str = "0001") -> dict:
    return {"stationID": station, "siteID": site, "userID": user,
            "connectionTime": format_rfc1123(connect_s),
            "disconnectTime": format_rfc1123(connect_s + hours * HOUR),
            "doneChargingTime": None if charge_h is None
            else format_rfc1123(connect_s + charge_h * HOUR),
            "kWhDelivered": kwh}


def weekday_history(state: dict, stations: list[str], weeks: int, **kwargs) -> float:
    """Every station gets one session at 16:00 UTC each weekday; returns the last end."""
    end = 0.0
    for week in range(weeks):
        for day in range(5):
            t = MONDAY + week * 7 * DAY + day * DAY + 16 * HOUR
            for s in stations:
                on_session(state, session(s, t, **kwargs))
                end = t + 4 * HOUR
    return end


def opened(alerts, kind):
    return [a for a in alerts if a.kind == kind and a.status == "open"]


def test_silent_fires_on_a_tick_once_the_silence_is_implausible_and_not_before():
    state: dict = {}
    stations = [f"s{i}" for i in range(5)]
    last_end = weekday_history(state, stations, weeks=4)
    # the others keep charging; s0 goes quiet
    assert np.isnan(state[station_key("s0")].silent_due_s)  # solved only when asked
    due = silent_due(state[station_key("s0")], state[site_key("0001")])
    assert due > last_end
    fired_at = None
    for hour in range(1, 24 * 14):
        now = last_end + hour * HOUR
        if hour % 24 == 0 and (now // DAY + 3) % 7 < 5:
            for s in stations[1:]:
                on_session(state, session(s, now - 6 * HOUR))
        _, alerts = on_tick(state, now)
        if opened(alerts, "silent"):
            assert fired_at is None, "a second open event while the alert is open"
            fired_at = now
            alert = opened(alerts, "silent")[0]
            assert alert.station_id == "s0"
            assert alert.metrics["expected"] >= POLICY.silent_expected
            assert alert.metrics["expected_from_site"] >= POLICY.silent_expected
            assert "no session for" in alert.evidence and "expected" in alert.evidence
    assert fired_at is not None and fired_at >= due
    assert (fired_at - last_end) / HOUR < 24 * 9


def test_silent_does_not_fire_when_the_whole_site_is_quiet():
    state: dict = {}
    last_end = weekday_history(state, ["a", "b", "c"], weeks=4)
    alerts = [a for h in range(1, 24 * 21) for a in on_tick(state, last_end + h * HOUR)[1]]
    assert alerts == []


def test_silent_closes_when_a_session_arrives():
    state: dict = {}
    last_end = weekday_history(state, ["s0", "s1"], weeks=4)
    for day in range(1, 15):
        on_session(state, session("s1", last_end + day * DAY))
    _, alerts = on_tick(state, last_end + 15 * DAY)
    [alert] = opened(alerts, "silent")
    _, events = on_session(state, session("s0", last_end + 16 * DAY))
    [closed] = [e for e in events if e.kind == "silent"]
    assert closed.status == "closed" and closed.alert_id == alert.alert_id
    assert not state[station_key("s0")].is_open("silent")


def test_failing_fires_at_k_of_n_and_not_at_k_minus_one():
    policy = HealthPolicy(fail_k=3, fail_n=5)
    state: dict = {}
    t = MONDAY
    for i in range(6):
        on_session(state, session("s", t + i * DAY), policy=policy)
    events = []
    for i, failed in enumerate([True, False, True]):
        kwh = 0.02 if failed else 9.0
        events += on_session(state, session("s", t + (10 + i) * DAY, hours=5, kwh=kwh),
                             policy=policy)[1]
    assert opened(events, "failing") == []  # 2 failures of the last 5
    _, events = on_session(state, session("s", t + 20 * DAY, hours=5, kwh=0.01), policy=policy)
    [alert] = opened(events, "failing")
    assert "3 of its last 5 sessions failed" in alert.evidence
    _, again = on_session(state, session("s", t + 21 * DAY, hours=5, kwh=0.0), policy=policy)
    assert opened(again, "failing") == []  # de-duplicated while open
    on_session(state, session("s", t + 22 * DAY), policy=policy)
    _, recovered = on_session(state, session("s", t + 23 * DAY), policy=policy)
    assert [(e.kind, e.status) for e in recovered] == [("failing", "closed")]


def test_a_short_low_energy_session_is_not_a_failure():
    state: dict = {}
    events = [a for i in range(5) for a in
              on_session(state, session("s", MONDAY + i * DAY, hours=0.5, kwh=0.05))[1]]
    assert opened(events, "failing") == []


def test_dead_letters_count_as_failures():
    state: dict = {}
    on_session(state, session("s", MONDAY))
    events = [a for i in range(3) for a in on_dead_letter(state, "s", "0001", MONDAY + i)[1]]
    assert len(opened(events, "failing")) == 1


@pytest.mark.parametrize("with_user", [False, True])
def test_degraded_fires_after_a_power_drop_and_not_on_a_stable_station(with_user):
    state: dict = {}
    user = "u1" if with_user else None
    t = MONDAY
    stable_alerts = []
    for i in range(40):  # 4.6-5.4 kW, a little noise
        kwh = 10.0 * (0.92 + 0.16 * ((i * 7) % 11) / 10)
        stable_alerts += on_session(state, session("s", t + i * DAY, kwh=kwh, user=user))[1]
    assert opened(stable_alerts, "degraded") == []
    drop = []
    for i in range(40, 50):
        drop.append(on_session(state, session("s", t + i * DAY, kwh=4.0, user=user))[1])
    first = next(i for i, events in enumerate(drop) if opened(events, "degraded"))
    assert first < 10
    assert sum(len(opened(events, "degraded")) for events in drop) == 1
    alert = opened(drop[first], "degraded")[0]
    assert alert.metrics["recent_kw"] < alert.metrics["usual_kw"] / 2


def test_a_drop_relative_to_known_drivers_is_trusted_sooner():
    """A session judged against its driver's usual power may add more to the CUSUM
    (`z_clip_driver`) than one judged against the station's mixed cars (`z_clip`)."""
    def sessions_to_alert(user: str | None) -> int:
        state: dict = {}
        for i in range(40):
            kwh = 10.0 * (0.92 + 0.16 * ((i * 7) % 11) / 10)
            on_session(state, session("s", MONDAY + i * DAY, kwh=kwh, user=user))
        for n in range(1, 20):
            if opened(on_session(state, session("s", MONDAY + (40 + n) * DAY, kwh=3.0,
                                                user=user))[1], "degraded"):
                return n
        raise AssertionError("never alerted")

    assert POLICY.z_clip_driver > POLICY.z_clip
    assert sessions_to_alert("u1") < sessions_to_alert(None)


def test_state_round_trips_through_bytes():
    state: dict = {}
    weekday_history(state, ["s0", "s1"], weeks=3, user="u7")
    on_session(state, session("s0", MONDAY + 30 * DAY, hours=5, kwh=0.01))
    for key, value in state.items():
        data = value.to_bytes()
        again = type(value).from_bytes(data)
        assert again.to_bytes() == data, key
    station = state[station_key("s0")]
    assert len(station.to_bytes()) < 1024
    site = state[site_key("0001")]
    assert silent_due(StationHealth.from_bytes(station.to_bytes()), site) == silent_due(
        station, site)
    assert isinstance(state["healthsite:0001"], SiteHealth)
    assert isinstance(state["healthuser:u7"], UserPower)


def test_expected_sessions_and_time_to_expect_are_inverse():
    rates = np.zeros(168)
    rates[[day * 24 + 16 for day in range(5)]] = 1.0
    start = MONDAY + 17 * HOUR
    due = time_to_expect(rates, start, 5.0)
    assert expected_sessions(rates, start, due) == pytest.approx(5.0)
    assert expected_sessions(rates, start, MONDAY + 7 * DAY) == pytest.approx(4.0)


def test_a_late_session_never_closes_an_alert_before_it_opened():
    state: dict = {}
    last_end = weekday_history(state, ["s0", "s1"], weeks=4)
    for day in range(1, 15):
        on_session(state, session("s1", last_end + day * DAY))
    _, alerts = on_tick(state, last_end + 15 * DAY)
    [alert] = opened(alerts, "silent")
    # a session of s0 that ended before the alert opened arrives only now, out of order
    _, events = on_session(state, session("s0", last_end + 2 * DAY))
    [closed] = [e for e in events if e.kind == "silent"]
    assert closed.status == "closed" and closed.at >= closed.opened_at == alert.opened_at


def test_counts_kept_scaled_equal_counts_decayed_at_every_session():
    """The scaled hour-of-week counts (one bin written per session) read back as the
    counts decayed to the station's latest session end, over many half-lives."""
    policy = HealthPolicy(half_life_days=7.0)
    state: dict = {}
    decayed = np.zeros(168)
    last = None
    for i in range(120):
        connect = MONDAY + i * 1.7 * DAY + (i % 5) * HOUR
        on_session(state, session("s", connect), policy=policy)
        end = connect + 4 * HOUR
        if last is not None:
            decayed *= np.exp(-(end - last) / policy.tau_s)
        decayed[int(((connect / HOUR) + 72) % 168)] += 1.0
        last = end
    station = state[station_key("s")]
    got = station.hours.astype(float) * np.exp((station.ref_s - station.decay_s) / policy.tau_s)
    assert got == pytest.approx(decayed, abs=2e-3 * decayed.max())
    assert station.total_at_decay(policy.tau_s) == pytest.approx(decayed.sum(), rel=1e-9)


def test_a_dc_charger_without_done_times_is_judged_on_its_short_stays():
    """DC fast chargers report no doneChargingTime: a short stay is read whole, and the
    driver's usual (AC) power is neither used nor changed by it; a long stay with no
    doneChargingTime gives no reading."""
    state: dict = {}
    on_session(state, session("ac", MONDAY, user="u1"))
    user_before = state["healthuser:u1"].to_bytes()
    events = []
    for i in range(30):  # ~40 kW over half-hour stays, then the charger delivers a third
        kwh = 20.0 * (0.9 + 0.2 * ((i * 7) % 11) / 10) * (1 / 3 if i >= 20 else 1)
        events.append(on_session(state, session("dc", MONDAY + DAY + i * DAY, hours=0.5,
                                                kwh=kwh, charge_h=None, user="u1"))[1])
    assert state["healthuser:u1"].to_bytes() == user_before
    assert not any(opened(e, "degraded") for e in events[:20])
    [alert] = [a for e in events[20:] for a in opened(e, "degraded")]
    assert alert.metrics["usual_kw"] > 30 and alert.metrics["recent_kw"] < 20
    long_stays: dict = {}
    for i in range(30):
        on_session(long_stays, session("dc", MONDAY + i * DAY, hours=3.0, charge_h=None))
    assert long_stays[station_key("dc")].base_n == 0


def test_one_good_session_does_not_erase_a_building_degradation():
    state: dict = {}
    for i in range(30):
        on_session(state, session("s", MONDAY + i * DAY, kwh=10.0 * (0.95 + 0.01 * (i % 10))))
    t = MONDAY + 30 * DAY
    on_session(state, session("s", t, kwh=4.0))
    on_session(state, session("s", t + DAY, kwh=4.0))
    building = state[station_key("s")].cusum
    on_session(state, session("s", t + 2 * DAY, kwh=14.0))  # one strong car in between
    assert state[station_key("s")].cusum >= building - POLICY.z_floor - POLICY.cusum_k > 0
