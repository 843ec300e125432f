"""Profiles: robust EW aggregates, shrinkage towards the prior, compact bytes (pure)."""

from __future__ import annotations

import math
from dataclasses import astuple

import pytest

from pipelines.stations.profiles import (
    PRIOR,
    SHRINK_SESSIONS,
    STATION_WINDOW,
    Profile,
    View,
    shrunk,
)

HOUR = 3600.0


def level2(profile: Profile, n: int, kw: float = 6.6, start: float = 0.0) -> Profile:
    """`n` sessions of 4 h charging at `kw`, one a day, folded into `profile`."""
    for day in range(n):
        end = start + day * 24 * HOUR + 8 * HOUR
        profile.observe(math.log10(kw), math.log10(kw * 4), math.log10(8.0), end,
                        math.nan if day == 0 else math.log10(1 + 16.0), STATION_WINDOW)
    return profile


def same(a: Profile, b: Profile) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y))
               for x, y in zip(astuple(a), astuple(b), strict=True))


def test_bytes_round_trip_fresh_and_used() -> None:
    fresh, used = Profile(), level2(Profile(), 12)
    for profile in (fresh, used):
        data = profile.to_bytes()
        assert isinstance(data, bytes) and len(data) == 88
        assert same(Profile.from_bytes(data), profile)
    assert used.count == 12 and used.gap_count == 11 and used.last_end == 11 * 24 * HOUR + 8 * HOUR


def test_one_faulty_session_moves_the_profile_a_bounded_amount() -> None:
    profile = level2(Profile(), 40)
    before = Profile.from_bytes(profile.to_bytes())
    profile.observe(math.log10(500.0), math.log10(0.01), math.log10(200.0), 1e9, 0.0,
                    STATION_WINDOW)
    assert profile.power_high - before.power_high < 0.05  # 500 kW: 12 % at most, not 75x
    assert abs(profile.energy - before.energy) < 0.05
    assert abs(profile.duration - before.duration) < 0.05


def test_profile_follows_a_slow_change() -> None:
    profile = level2(Profile(), 60, kw=6.6)
    level2(profile, 300, kw=3.3, start=60 * 24 * HOUR)
    assert profile.power == pytest.approx(math.log10(3.3), abs=0.02)


def test_power_can_be_left_alone() -> None:
    profile = level2(Profile(), 10)
    power, high = profile.power, profile.power_high
    profile.observe(math.log10(300.0), 1.0, 0.5, 1e9, math.nan, STATION_WINDOW, with_power=False)
    assert (profile.power, profile.power_high, profile.count) == (power, high, 11)


def test_shrinkage_weighs_history_by_n_over_n_plus_k() -> None:
    assert shrunk(None, PRIOR) == PRIOR and shrunk(Profile(), PRIOR) == PRIOR
    prior = View(0.0, 0.5, 1.0, 1.0, 1.0)
    profile = level2(Profile(), 5)
    view = shrunk(profile, prior)
    weight = 5 / (5 + SHRINK_SESSIONS)
    assert view.power == pytest.approx(weight * math.log10(6.6))
    assert view.energy == pytest.approx(weight * profile.energy + (1 - weight) * 1.0)
    many = shrunk(level2(Profile(), 500), prior)
    assert many.power == pytest.approx(math.log10(6.6), abs=0.01)
