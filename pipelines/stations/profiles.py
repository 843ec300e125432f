"""Profiles of past sessions per station, site and user: small, robust, serialisable (pure).

One `Profile` class serves the three kinds (state keys `profile:<stationID>`,
`site:<siteID>`, `user:<userID>`): a count, the end of the last session, and
exponentially weighted aggregates on log10 scales of the sessions observed so far:

| field                 | what it follows                                                   |
|-----------------------|-------------------------------------------------------------------|
| count                 | sessions observed                                                 |
| last_end              | latest session end (epoch seconds; NaN before the first)          |
| power, power_dev      | EW mean and mean absolute deviation of log10 charging kW          |
| power_high            | EW 0.9-expectile of log10 charging kW: the charger's maximum      |
| energy, energy_dev    | EW mean and deviation of log10 kWh delivered                      |
| duration, duration_dev| EW mean and deviation of log10 connection hours                   |
| gap_count, gap        | EW mean of log10(1 + hours between a station's sessions)          |

The weight of a new session is `max(1/count, 1/window)`: an exact mean while the
history is short, then an exponential decay that follows slow change. Every step
is clipped to `CLIP_DEVS` deviations, so one faulty session (a meter reading
nothing, an impossible 500 kW) moves a profile by a bounded amount. A site's
profile pools the sessions of all its stations; it is the prior a station with
little history is shrunk towards (`shrunk`), and the global `PRIOR` is the one
of a site with none.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import NamedTuple

STATION_WINDOW = 50  # sessions: about a month at a busy post
SITE_WINDOW = 500
USER_WINDOW = 20
CLIP_DEVS = 3.0
MIN_DEV = 0.05  # log10 units (12 %): the clip never collapses to nothing
FIRST_DEV = 0.15  # the deviation assumed after the first session
HIGH_TAU = 0.9  # the expectile that stands for "maximum power"
SHRINK_SESSIONS = 5.0  # a profile with this many sessions weighs as much as its prior


class View(NamedTuple):
    """What a profile says about a session, on log10 scales (see the module table)."""

    power: float
    power_high: float
    energy: float
    duration: float
    gap: float


# A site with no history: typical of ACN Level-2 posts (3.2 kW charging, 6.3 kW maximum,
# 8 kWh, 7 h connected, 15 h between sessions), measured on the 2019-2020 exports.
PRIOR = View(power=0.5, power_high=0.8, energy=0.9, duration=0.84, gap=1.2)

_FORMAT = struct.Struct("<2I10d")


_HIGH_DOWN = (1.0 - HIGH_TAU) / HIGH_TAU  # a step down weighs this much of a step up


def _ew_step(mean: float, dev: float, value: float, rate: float) -> tuple[float, float]:
    """One clipped EW update of a mean and its mean absolute deviation."""
    # a comparison, not min(max()): this runs ~10 times per session in the worker
    limit = CLIP_DEVS * max(MIN_DEV, dev)
    step = value - mean
    if step > limit:
        step = limit
    elif step < -limit:
        step = -limit
    return mean + rate * step, dev + rate * ((step if step > 0 else -step) - dev)


@dataclass(slots=True)
class Profile:
    """EW aggregates of one station's, site's or user's finished sessions."""

    count: int = 0
    gap_count: int = 0
    last_end: float = math.nan
    power: float = math.nan
    power_dev: float = FIRST_DEV
    power_high: float = math.nan
    energy: float = math.nan
    energy_dev: float = FIRST_DEV
    duration: float = math.nan
    duration_dev: float = FIRST_DEV
    gap: float = math.nan
    gap_dev: float = FIRST_DEV

    def observe(self, power: float, energy: float, duration: float, end: float,
                gap: float, window: int, with_power: bool = True) -> None:
        """Fold one finished session in (log10 values; `gap` NaN when there is none).

        `with_power=False` leaves the power aggregates alone: the caller judged the
        session's power an outlier for its station.
        """
        # `_ew_step` written out: this runs three times per session in the worker
        count = self.count = self.count + 1
        rate = 1.0 / min(count, window)
        if count == 1:
            self.energy, self.duration = energy, duration
        else:
            dev = self.energy_dev
            limit = CLIP_DEVS * max(MIN_DEV, dev)
            step = energy - self.energy
            if step > limit:
                step = limit
            elif step < -limit:
                step = -limit
            self.energy += rate * step
            self.energy_dev = dev + rate * ((step if step > 0 else -step) - dev)
            dev = self.duration_dev
            limit = CLIP_DEVS * max(MIN_DEV, dev)
            step = duration - self.duration
            if step > limit:
                step = limit
            elif step < -limit:
                step = -limit
            self.duration += rate * step
            self.duration_dev = dev + rate * ((step if step > 0 else -step) - dev)
        if with_power:
            if math.isnan(self.power):  # the first power seen
                self.power = self.power_high = power
            else:
                dev = self.power_dev
                limit = CLIP_DEVS * max(MIN_DEV, dev)
                step = power - self.power_high
                if step > limit:
                    step = limit
                elif step < -limit:
                    step = -limit
                self.power_high += rate * step * (1.0 if step > 0 else _HIGH_DOWN)
                step = power - self.power
                if step > limit:
                    step = limit
                elif step < -limit:
                    step = -limit
                self.power += rate * step
                self.power_dev = dev + rate * ((step if step > 0 else -step) - dev)
        if not math.isnan(gap):
            self.gap_count += 1
            if self.gap_count == 1:
                self.gap = gap
            else:
                self.gap, self.gap_dev = _ew_step(self.gap, self.gap_dev, gap,
                                                  1.0 / min(self.gap_count, window))
        if not end <= self.last_end:  # also when last_end is NaN
            self.last_end = end

    def to_bytes(self) -> bytes:
        """88 bytes: two uint32 counts and ten float64 (little-endian)."""
        return _FORMAT.pack(*_FIELD_VALUES(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> Profile:
        """Inverse of `to_bytes`."""
        return cls(*_FORMAT.unpack(data))


# the fields in declaration order, read in one call (the changelog encodes every changed profile)
_FIELD_VALUES = attrgetter(*[f.name for f in fields(Profile)])


def shrunk(profile: Profile | None, prior: View) -> View:
    """The profile's view, shrunk towards `prior` by `n / (n + SHRINK_SESSIONS)`.

    No profile, or one without sessions, gives `prior` itself.
    """
    values = shrunk_values(profile, prior)
    return values if values is prior else View(*values)


def shrunk_values(profile: Profile | None, prior: tuple[float, ...]) -> tuple[float, ...]:
    """`shrunk` as a plain tuple in `View` order (no `View` built: the worker's context
    query calls it three times per session); `prior` itself when there is no history."""
    if profile is None:
        return prior
    count = profile.count
    if count == 0:
        return prior
    prior_power, prior_high, prior_energy, prior_duration, prior_gap = prior
    w = count / (count + SHRINK_SESSIONS)
    rest = 1.0 - w
    power = profile.power
    if math.isnan(power):  # no power observed
        power, high = prior_power, prior_high
    else:
        power = w * power + rest * prior_power
        high = w * profile.power_high + rest * prior_high
    gap = prior_gap
    if profile.gap_count:
        w_gap = profile.gap_count / (profile.gap_count + SHRINK_SESSIONS)
        gap = w_gap * profile.gap + (1.0 - w_gap) * prior_gap
    return (power, high, w * profile.energy + rest * prior_energy,
            w * profile.duration + rest * prior_duration, gap)
