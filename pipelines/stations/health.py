"""Station health: catch chargers that are silent, failing or degraded (pure).

Three detectors run on each station's own history, kept as a small `StationHealth`
under `health:<stationID>` (and the site's arrival activity under
`healthsite:<siteID>`) in the `MutableMapping` the caller passes in:

- **silent**: no session for longer than the station's arrival profile makes plausible.
  Two expected counts over the silent window must both reach `silent_expected`: one
  from the station's decayed hour-of-week arrival rates (absolute time), one from its
  share of the sessions its site had meanwhile (site-relative time, so a holiday or a
  site-wide gap in the data does not alert every station). A silent station sends
  nothing, so `on_tick` checks it on a timer; at each session the time at which the
  absolute count will reach the threshold is precomputed, so a tick costs two compares.
- **failing**: `fail_k` of the last `fail_n` sessions failed: almost no energy over a long
  connection, or dead-lettered (`on_dead_letter`).
- **degraded**: a one-sided CUSUM on log charging power (kWh over connect to
  doneChargingTime, or over a short stay that has none, as at a DC fast charger)
  against the station's own robust baseline, frozen while an
  excursion builds or an alarm is open.

Each opens one `StationAlert` (event "open") with a sentence of evidence, de-duplicated
while open, and closes it (event "closed") when the station recovers. Time is passed in:
nothing here reads a clock. Thresholds (`HealthPolicy`) are measured in
`evaluation/station_faults.py` on the real exports (docs/stations.md, "Station health").
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np

from pipelines.contracts.dates import date_to_epoch

AlertKind = Literal["silent", "failing", "degraded"]
HOURS_PER_WEEK = 168
WEEK_S = 7 * 86400.0
_MONDAY_OFFSET_H = 72.0  # the epoch fell on a Thursday: hours from a Monday 00:00 UTC
_BITS: dict[AlertKind, int] = {"silent": 1, "failing": 2, "degraded": 4}
_NUMBERS = (int, float)


@dataclass(frozen=True)
class HealthPolicy:
    """Thresholds of the three detectors; defaults measured on the ACN exports.

    Args:
        half_life_days: decay of the arrival counts (recent weeks weigh more).
        prior_sessions: weight of the site's hour-of-week shape in a station's shape.
        silent_expected: alert once this many sessions were expected in the silent window,
            both from the station's own rates and from its share of its site's sessions.
        silent_min_sessions, silent_min_days: history needed before silence is judged.
        silent_lull_ratio: no silent alert while the count expected from the station's own
            rates exceeds this multiple of the count from its share of its site's sessions:
            the whole site is quiet (a holiday, a lockdown), not this station.
        fail_kwh, fail_min_hours: a failed session: less energy over a longer connection.
        fail_k, fail_n: `failing` opens at `fail_k` failures among the last `fail_n` sessions
            and closes after `recover_ok` successes in a row.
        degraded_warmup: sessions with a measurable power before the CUSUM runs.
        cusum_k, cusum_h: reference shift and decision interval, in baseline sigmas.
        z_clip: one session raises the CUSUM by at most this many sigmas.
        z_clip_driver: the same for a session judged relative to its driver's usual power,
            whose spread is far smaller than the station's mixed cars, so one such session is
            stronger evidence.
        z_floor: one session lowers it by at most this many sigmas (before `cusum_k`), so a
            single good car during a degradation does not erase the excursion.
        sigma_floor: smallest baseline spread of log power.
        baseline_alpha: weight of a new session in the baseline's mean and variance.
        min_charge_hours: shorter charging times give no power reading.
        short_stay_hours: a session without doneChargingTime (a DC fast charger reports none)
            reads its power over the whole connection when it lasted at most this long.
        user_min_sessions: sessions of a driver before power is judged relative to theirs.
    """

    half_life_days: float = 28.0
    prior_sessions: float = 10.0
    silent_expected: float = 5.0
    silent_min_sessions: int = 10
    silent_min_days: float = 14.0
    silent_lull_ratio: float = 1.5
    fail_kwh: float = 0.1
    fail_min_hours: float = 1.0
    fail_k: int = 3
    fail_n: int = 5
    recover_ok: int = 2
    degraded_warmup: int = 10
    cusum_k: float = 0.6
    cusum_h: float = 7.0
    z_clip: float = 2.0
    z_clip_driver: float = 3.0
    z_floor: float = 0.7
    sigma_floor: float = 0.1
    baseline_alpha: float = 0.05
    min_charge_hours: float = 0.25
    short_stay_hours: float = 2.0
    user_min_sessions: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.fail_k <= self.fail_n <= 32:
            raise ValueError("need 1 <= fail_k <= fail_n <= 32")
        if min(self.half_life_days, self.silent_expected, self.cusum_h, self.sigma_floor) <= 0:
            raise ValueError("half_life_days, silent_expected, cusum_h and sigma_floor must be > 0")
        if not 0 < self.baseline_alpha < 1:
            raise ValueError("baseline_alpha must be in (0, 1)")

    @cached_property
    def tau_s(self) -> float:
        return self.half_life_days * 86400.0 / math.log(2)


DEFAULT_POLICY = HealthPolicy()


@dataclass(frozen=True)
class StationAlert:
    """One event of a station alert episode: `status` "open" once, then "closed" once."""

    kind: AlertKind
    station_id: str
    site_id: str
    status: Literal["open", "closed"]
    opened_at: float
    at: float
    evidence: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def alert_id(self) -> str:
        return f"{self.station_id}:{self.kind}:{int(self.opened_at)}"


_USER = struct.Struct("<ddI")


@dataclass(slots=True, eq=False)
class UserPower:
    """A driver's usual log charging power (the car sets most of it)."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0

    def to_bytes(self) -> bytes:
        return _USER.pack(self.mean, self.var, self.n)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserPower:
        return cls(*_USER.unpack(data))


_REBASE_WEIGHT = 2.0  # counts are rescaled to a recent reference once a new weight exceeds this


def _scaled_add(hours: np.ndarray, ref_s: float, total: float, at_bin: int, born_s: float,
                now_s: float, tau_s: float) -> tuple[float, float]:
    """Add one arrival born at `born_s` to `hours`, counts scaled to `ref_s` (the decayed
    count at time T is `hours * exp(-(T - ref_s) / tau_s)`): one bin changes, and the whole
    array only when the reference moves to `now_s`, about once a half-life. Returns the
    reference and the scaled total."""
    if total <= 0.0:
        ref_s = now_s
    weight = math.exp((born_s - ref_s) / tau_s)
    if weight > _REBASE_WEIGHT:
        factor = math.exp((ref_s - now_s) / tau_s)
        hours *= factor
        total *= factor
        weight *= factor
        ref_s = now_s
    hours[at_bin] += weight
    return ref_s, total + weight


_SITE_HEAD = struct.Struct("<dddQ")


@dataclass(slots=True, eq=False)
class SiteHealth:
    """A site's decayed arrivals by hour of week (scaled to `ref_s`, see `_scaled_add`) and
    its running count of sessions."""

    hours: np.ndarray = field(default_factory=lambda: np.zeros(HOURS_PER_WEEK, np.float32))
    ref_s: float = 0.0
    total: float = 0.0
    decay_s: float = 0.0  # the latest session end: its decayed counts are read at that time
    seen: int = 0

    def total_at_decay(self, tau_s: float) -> float:
        return self.total * math.exp((self.ref_s - self.decay_s) / tau_s)

    def to_bytes(self) -> bytes:
        return (_SITE_HEAD.pack(self.ref_s, self.total, self.decay_s, self.seen)
                + self.hours.astype("<f4").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteHealth:
        ref_s, total, decay_s, seen = _SITE_HEAD.unpack_from(data)
        hours = np.frombuffer(data, "<f4", HOURS_PER_WEEK, _SITE_HEAD.size).astype(np.float32)
        return cls(hours, ref_s, total, decay_s, seen)


_HEAD = struct.Struct("<BBBIIQIII" + "d" * 17)


@dataclass(slots=True, eq=False)
class StationHealth:
    """What the three detectors know of one station (about 400 bytes serialised).

    `hours` are its arrivals by hour of week, decayed and scaled to `ref_s` (`_scaled_add`);
    `silent_due_s` is NaN until the silence timer needs it (`on_tick` solves it then)."""

    station_id: str
    site_id: str
    hours: np.ndarray = field(default_factory=lambda: np.zeros(HOURS_PER_WEEK, np.float16))
    sessions: int = 0
    first_s: float = math.nan
    last_end_s: float = -math.inf
    decay_s: float = 0.0  # the latest session end: its decayed counts are read at that time
    ref_s: float = 0.0
    total: float = 0.0
    share: float = 0.0  # of its site's decayed arrivals, at its last session
    site_seen_at_last: int = 0
    silent_due_s: float = math.inf  # when its own rates expect `silent_expected` sessions
    outcomes: int = 0  # bit i set: the i-th latest session failed
    n_outcomes: int = 0
    cusum: float = 0.0
    base_mean: float = 0.0
    base_var: float = 0.0
    base_n: int = 0
    res_mean: float = 0.0  # log power relative to the driver's usual, when the driver is known
    res_var: float = 0.0
    res_n: int = 0
    run_log_sum: float = 0.0  # log power of the sessions of the current CUSUM excursion
    run_n: int = 0
    open_bits: int = 0
    opened_at: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def is_open(self, kind: AlertKind) -> bool:
        return bool(self.open_bits & _BITS[kind])

    def exposure_weeks(self, tau_s: float) -> float:
        """Decayed weeks of observation since its first session (the rates' denominator)."""
        if self.sessions == 0:
            return 0.0
        return tau_s * -math.expm1((self.first_s - self.decay_s) / tau_s) / WEEK_S

    def total_at_decay(self, tau_s: float) -> float:
        return self.total * math.exp((self.ref_s - self.decay_s) / tau_s)

    def to_bytes(self) -> bytes:
        names = (self.station_id.encode(), self.site_id.encode())
        head = _HEAD.pack(len(names[0]), len(names[1]), self.open_bits, self.outcomes,
                          self.n_outcomes, self.site_seen_at_last, self.base_n, self.res_n,
                          self.run_n, self.sessions, self.first_s, self.last_end_s,
                          self.decay_s, self.ref_s, self.total, self.share, self.silent_due_s,
                          self.cusum, self.base_mean, self.base_var, self.res_mean,
                          self.res_var, self.run_log_sum, *self.opened_at)
        return head + names[0] + names[1] + self.hours.astype("<f2").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> StationHealth:
        (n_station, n_site, open_bits, outcomes, n_outcomes, site_seen, base_n, res_n, run_n,
         sessions, first_s, last_end_s, decay_s, ref_s, total, share, due, cusum, base_mean,
         base_var, res_mean, res_var, run_log_sum, *opened_at) = _HEAD.unpack_from(data)
        at = _HEAD.size
        station = data[at:at + n_station].decode()
        site = data[at + n_station:at + n_station + n_site].decode()
        hours = np.frombuffer(data, "<f2", HOURS_PER_WEEK, at + n_station + n_site)
        return cls(station, site, hours.astype(np.float16), int(sessions), first_s, last_end_s,
                   decay_s, ref_s, total, share, site_seen, due, outcomes, n_outcomes, cusum,
                   base_mean, base_var, base_n, res_mean, res_var, res_n, run_log_sum, run_n,
                   open_bits, list(opened_at))


def station_key(station_id: str) -> str:
    return f"health:{station_id}"


def site_key(site_id: str) -> str:
    return f"healthsite:{site_id}"


def user_key(user_id: str) -> str:
    return f"healthuser:{user_id}"


epoch_seconds = date_to_epoch  # the detectors' name for it; evaluation uses it too


def hour_of_week(t_s: float) -> float:
    """Hours since Monday 00:00 UTC, in [0, 168)."""
    return (t_s / 3600.0 + _MONDAY_OFFSET_H) % HOURS_PER_WEEK


def station_rates(station: StationHealth, site: SiteHealth, policy: HealthPolicy) -> np.ndarray:
    """Expected arrivals in each hour of the week: the station's weekly rate spread over its
    hour-of-week shape, shrunk towards its site's shape while it has few sessions."""
    tau = policy.tau_s
    exposure = station.exposure_weeks(tau)
    own = station.hours.astype(np.float64) * math.exp((station.ref_s - station.decay_s) / tau)
    total = own.sum()
    if total <= 0 or exposure <= 0:
        return np.zeros(HOURS_PER_WEEK)
    site_total = float(site.hours.sum())
    prior = site.hours / site_total if site_total > 0 else np.full(HOURS_PER_WEEK, 1 / 168)
    shape = (own + policy.prior_sessions * prior) / (total + policy.prior_sessions)
    return shape * (total / exposure)


def _cumulative(rates: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(rates)))


def _expected_until(cum: np.ndarray, rates: np.ndarray, t_s: float) -> float:
    """Arrivals expected from a fixed Monday 00:00 UTC up to `t_s`."""
    hours = t_s / 3600.0 + _MONDAY_OFFSET_H
    weeks = math.floor(hours / HOURS_PER_WEEK)
    x = hours - weeks * HOURS_PER_WEEK
    i = min(int(x), HOURS_PER_WEEK - 1)
    return weeks * cum[-1] + cum[i] + rates[i] * (x - i)


def expected_sessions(rates: np.ndarray, start_s: float, end_s: float) -> float:
    """Arrivals expected between `start_s` and `end_s` at hour-of-week `rates`."""
    cum = _cumulative(rates)
    return _expected_until(cum, rates, end_s) - _expected_until(cum, rates, start_s)


def time_to_expect(rates: np.ndarray, start_s: float, count: float) -> float:
    """The time at which `count` arrivals are expected since `start_s` (inf for no rate)."""
    cum = _cumulative(rates)
    if cum[-1] <= 0:
        return math.inf
    goal = _expected_until(cum, rates, start_s) + count
    weeks = math.floor(goal / cum[-1])
    rest = goal - weeks * cum[-1]
    i = min(int(np.searchsorted(cum, rest, side="right")) - 1, HOURS_PER_WEEK - 1)
    x = i + ((rest - cum[i]) / rates[i] if rates[i] > 0 else 0.0)
    return (weeks * HOURS_PER_WEEK + x - _MONDAY_OFFSET_H) * 3600.0


def _open(station: StationHealth, kind: AlertKind, at: float, evidence: str,
          metrics: dict[str, float]) -> StationAlert:
    station.open_bits |= _BITS[kind]
    station.opened_at[_BITS[kind].bit_length() - 1] = at
    return StationAlert(kind, station.station_id, station.site_id, "open", at, at, evidence,
                        metrics)


def _close(station: StationHealth, kind: AlertKind, at: float, evidence: str,
           metrics: dict[str, float]) -> StationAlert:
    """The closing event; a late session processed before the alert opened closes it at
    the opening time (an event never ends before it began)."""
    station.open_bits &= ~_BITS[kind]
    opened = station.opened_at[_BITS[kind].bit_length() - 1]
    return StationAlert(kind, station.station_id, station.site_id, "closed", opened,
                        max(at, opened), evidence, metrics)


def _states(state: MutableMapping[str, object], station_id: str,
            site_id: str) -> tuple[StationHealth, SiteHealth]:
    station = state.get(station_key(station_id))
    if not isinstance(station, StationHealth):
        station = StationHealth(station_id, site_id)
    site = state.get(site_key(site_id))
    if not isinstance(site, SiteHealth):
        site = SiteHealth()
    return station, site


def _count_arrival(station: StationHealth, site: SiteHealth, connect_s: float, end_s: float,
                   policy: HealthPolicy) -> None:
    """One arrival at the connection's hour of week, born at the session's end. The silent
    deadline is only marked as stale (NaN): `on_tick` solves it when it may be due."""
    tau = policy.tau_s
    at_bin = int((connect_s / 3600.0 + _MONDAY_OFFSET_H) % HOURS_PER_WEEK)
    site.decay_s = max(site.decay_s, end_s)
    site.ref_s, site.total = _scaled_add(site.hours, site.ref_s, site.total, at_bin, end_s,
                                         site.decay_s, tau)
    site.seen += 1
    if station.sessions == 0:
        station.first_s = station.decay_s = connect_s
    station.decay_s = max(station.decay_s, end_s)
    station.ref_s, station.total = _scaled_add(station.hours, station.ref_s, station.total,
                                               at_bin, end_s, station.decay_s, tau)
    station.sessions += 1
    station.last_end_s = max(station.last_end_s, end_s)
    # both decayed to their own latest session end, as the share was defined
    station.share = min(1.0, station.total / site.total * math.exp(
        (station.ref_s - station.decay_s - site.ref_s + site.decay_s) / tau))
    station.site_seen_at_last = site.seen
    old_enough = station.last_end_s - station.first_s >= policy.silent_min_days * 86400
    station.silent_due_s = (math.nan if station.sessions >= policy.silent_min_sessions
                            and old_enough else math.inf)


def silent_due(station: StationHealth, site: SiteHealth,
               policy: HealthPolicy = DEFAULT_POLICY) -> float:
    """When the station's own rates expect `silent_expected` sessions since its last one
    (solved once per session, when first asked, then kept in `silent_due_s`)."""
    if math.isnan(station.silent_due_s):
        station.silent_due_s = time_to_expect(station_rates(station, site, policy),
                                              station.last_end_s, policy.silent_expected)
    return station.silent_due_s


def silence_metrics(station: StationHealth, site: SiteHealth, now_s: float,
                    policy: HealthPolicy = DEFAULT_POLICY) -> dict[str, float]:
    """How silent a station is at `now_s`: hours, and the sessions expected meanwhile from
    its own hour-of-week rates and from its share of its site's sessions."""
    rates = station_rates(station, site, policy)
    site_sessions = site.seen - station.site_seen_at_last
    return {"hours_silent": (now_s - station.last_end_s) / 3600.0,
            "expected": expected_sessions(rates, station.last_end_s, now_s),
            "expected_from_site": station.share * site_sessions,
            "site_sessions": float(site_sessions), "share": station.share,
            "sessions_per_week": float(rates.sum())}


def _silence_evidence(m: dict[str, float]) -> str:
    return (f"no session for {m['hours_silent']:.0f} h; {m['expected']:.1f} expected in that "
            f"window, {m['expected_from_site']:.1f} from its {m['share']:.1%} share of the "
            f"{m['site_sessions']:.0f} sessions its site had meanwhile")


def _failed(kwh: float | None, connect_s: float, disconnect_s: float,
            policy: HealthPolicy) -> bool:
    return (kwh is not None and kwh < policy.fail_kwh
            and disconnect_s - connect_s > policy.fail_min_hours * 3600)


def _record_outcome(station: StationHealth, failed: bool, at: float, detail: str | None,
                    policy: HealthPolicy) -> list[StationAlert]:
    """`detail` describes the latest failure (None when it did not fail)."""
    station.outcomes = ((station.outcomes << 1) | failed) & ((1 << policy.fail_n) - 1)
    if station.n_outcomes < policy.fail_n:
        station.n_outcomes += 1
    is_open = station.open_bits & _BITS["failing"]
    if not is_open and not failed:
        return []
    failures = station.outcomes.bit_count()
    if not is_open and failures >= policy.fail_k:
        metrics = {"failures": float(failures), "of_sessions": float(station.n_outcomes)}
        return [_open(station, "failing", at, f"{failures} of its last {station.n_outcomes} "
                      f"sessions failed ({detail} at the latest)", metrics)]
    if is_open and not station.outcomes & ((1 << policy.recover_ok) - 1):
        metrics = {"failures": float(failures), "of_sessions": float(station.n_outcomes)}
        return [_close(station, "failing", at, f"its last {policy.recover_ok} sessions "
                       "delivered energy", metrics)]
    return []


def charging_power_kw(kwh: float | None, connect_s: float, done_s: float | None,
                      policy: HealthPolicy = DEFAULT_POLICY) -> float | None:
    """Average power while charging (kWh over connect to doneChargingTime), or None when
    the session gives no reading: no doneChargingTime, too short, or no energy."""
    if kwh is None or done_s is None or kwh <= 0:
        return None
    hours = (done_s - connect_s) / 3600.0
    return kwh / hours if hours >= policy.min_charge_hours else None


def _baseline_step(mean: float, var: float, n: int, x: float, warmup: int, alpha: float,
                   ) -> tuple[float, float, int]:
    """Running mean and variance (Welford) for `warmup` values, exponentially weighted after,
    with each step limited to two standard deviations."""
    if n < warmup:
        n += 1
        delta = x - mean
        mean += delta / n
        return mean, var + (delta * (x - mean) - var) / n, n
    sd = math.sqrt(var)
    delta = max(-2 * sd, min(2 * sd, x - mean)) if sd > 0 else x - mean
    return mean + alpha * delta, (1 - alpha) * (var + alpha * delta * delta), n + 1


def _record_power(station: StationHealth, power_kw: float, user: UserPower | None, at: float,
                  policy: HealthPolicy) -> list[StationAlert]:
    """CUSUM step on log power. Power depends mostly on the car: when the driver is known, the
    station is judged on the session's power relative to that driver's usual power."""
    x = math.log(power_kw)
    warm = policy.degraded_warmup
    residual = x - user.mean if user is not None and user.n >= policy.user_min_sessions else None
    if user is not None:
        user.mean, user.var, user.n = _baseline_step(user.mean, user.var, user.n, x, warm,
                                                     policy.baseline_alpha)
    clip = policy.z_clip
    if residual is not None and station.res_n >= warm:
        z = (station.res_mean - residual) / max(math.sqrt(station.res_var), policy.sigma_floor)
        clip = policy.z_clip_driver
    elif station.base_n >= warm:
        z = (station.base_mean - x) / max(math.sqrt(station.base_var), policy.sigma_floor)
    else:
        z = None
    building = station.cusum > 0 or station.is_open("degraded")
    if not building:  # frozen while an excursion builds or an alarm is open
        station.base_mean, station.base_var, station.base_n = _baseline_step(
            station.base_mean, station.base_var, station.base_n, x, warm, policy.baseline_alpha)
        if residual is not None:
            station.res_mean, station.res_var, station.res_n = _baseline_step(
                station.res_mean, station.res_var, station.res_n, residual, warm,
                policy.baseline_alpha)
    if z is None:
        return []
    station.cusum = max(0.0, station.cusum + max(-policy.z_floor, min(clip, z)) - policy.cusum_k)
    if station.cusum > 0:
        station.run_log_sum += x
        station.run_n += 1
    else:
        station.run_log_sum, station.run_n = 0.0, 0
    is_open = station.open_bits & _BITS["degraded"]
    if not (is_open and station.cusum == 0 or not is_open and station.cusum >= policy.cusum_h):
        return []
    usual = math.exp(station.base_mean)
    metrics = {"cusum": station.cusum, "usual_kw": usual, "latest_kw": power_kw}
    if not is_open:
        recent = math.exp(station.run_log_sum / station.run_n)
        metrics |= {"recent_kw": recent, "recent_sessions": float(station.run_n)}
        return [_open(station, "degraded", at, f"delivered power {recent:.1f} kW over its last "
                      f"{station.run_n} sessions against {usual:.1f} kW usual (CUSUM "
                      f"{station.cusum:.1f} >= {policy.cusum_h:g})", metrics)]
    return [_close(station, "degraded", at, f"delivered power back to {power_kw:.1f} kW "
                   f"(usual {usual:.1f} kW)", metrics)]


def on_session(state: MutableMapping[str, object], record: dict, now_s: float | None = None,
               policy: HealthPolicy = DEFAULT_POLICY) -> tuple[list[str], list[StationAlert]]:
    """Update a station's health with one finished session.

    Args:
        state: the keyed state; `health:<stationID>`, `healthsite:<siteID>` and, when the
            session names its driver, `healthuser:<userID>` are updated.
        record: an ACN session (stationID, siteID, connectionTime, disconnectTime,
            doneChargingTime, kWhDelivered).
        now_s: when the session is processed (epoch s); default its disconnectTime. Alerts
            carry it as `at`.
        policy: the thresholds.

    Returns:
        `(changed keys, alert events)`; nothing when the session has no readable
        stationID, connectionTime or disconnectTime.
    """
    station_id, site_id = record.get("stationID"), record.get("siteID")
    connect_s = epoch_seconds(record.get("connectionTime"))
    end_s = epoch_seconds(record.get("disconnectTime"))
    if not station_id or connect_s is None or end_s is None:
        return [], []
    station_id, site_id = str(station_id), str(site_id or "")
    keys = [station_key(station_id), site_key(site_id)]
    station, site = state.get(keys[0]), state.get(keys[1])
    if type(station) is not StationHealth:
        station = StationHealth(station_id, site_id)
    if type(site) is not SiteHealth:
        site = SiteHealth()
    at = end_s if now_s is None else now_s
    alerts: list[StationAlert] = []
    if station.open_bits & 1:  # silent
        hours = (connect_s - station.last_end_s) / 3600.0
        alerts.append(_close(station, "silent", at, f"a session arrived after {hours:.0f} h",
                             {"hours_silent": hours}))
    _count_arrival(station, site, connect_s, end_s, policy)
    raw_kwh: Any = record.get("kWhDelivered")
    kwh = float(raw_kwh) if type(raw_kwh) in _NUMBERS else None
    failed = _failed(kwh, connect_s, end_s, policy)
    detail = f"{kwh or 0:.2f} kWh over {(end_s - connect_s) / 3600:.1f} h" if failed else None
    if failed or station.outcomes or station.open_bits & 2:
        alerts += _record_outcome(station, failed, at, detail, policy)
    elif station.n_outcomes < policy.fail_n:
        station.n_outcomes += 1
    done_s = epoch_seconds(record.get("doneChargingTime"))
    # a short stay is nearly all charging; a driver's usual power is their car's AC rate, so a
    # reading over the whole connection is judged against the station's own history only
    whole_stay = done_s is None and end_s - connect_s <= policy.short_stay_hours * 3600
    power = None if failed else charging_power_kw(
        kwh, connect_s, end_s if whole_stay else done_s, policy)
    changed = keys
    if power is not None:
        user_id: Any = None if whole_stay else record.get("userID")
        found = state.get(user_key(user_id)) if user_id else None
        user = found if isinstance(found, UserPower) else UserPower() if user_id else None
        alerts += _record_power(station, power, user, at, policy)
        if user is not None:
            state[user_key(user_id)] = user
            changed.append(user_key(user_id))
    state[changed[0]] = station
    state[changed[1]] = site
    return changed, alerts


def on_dead_letter(state: MutableMapping[str, object], station_id: str, site_id: str,
                   at_s: float, policy: HealthPolicy = DEFAULT_POLICY,
                   ) -> tuple[list[str], list[StationAlert]]:
    """Count a dead-lettered session of `station_id` as failed (`failing` only: it is not an
    arrival the silence detector can trust)."""
    station, _ = _states(state, station_id, site_id)
    alerts = _record_outcome(station, True, at_s, "a dead-lettered session", policy)
    state[station_key(station_id)] = station
    return [station_key(station_id)], alerts


def _stations(state: MutableMapping[str, object], station_ids: Iterable[str] | None,
              ) -> list[StationHealth]:
    if station_ids is None:
        return [v for v in state.values() if type(v) is StationHealth]
    found = [state.get(station_key(s)) for s in station_ids]
    return [v for v in found if type(v) is StationHealth]


def on_tick(state: MutableMapping[str, object], now_s: float,
            station_ids: Iterable[str] | None = None, policy: HealthPolicy = DEFAULT_POLICY,
            ) -> tuple[list[str], list[StationAlert]]:
    """The silence timer: open `silent` for every station that has been quiet for too long.

    Args:
        state: the keyed state.
        now_s: stream or wall time (epoch s); a station is silent since its last session end.
        station_ids: the stations to check (default every `health:` key in `state`).
        policy: the thresholds.

    Returns:
        `(changed keys, alert events)`. Cheap: two comparisons per station that is not due;
        a station's deadline is solved once after each of its sessions, when its share of
        the site's sessions since says it may be due.
    """
    changed: list[str] = []
    alerts: list[StationAlert] = []
    sites: dict[str, SiteHealth | None] = {}
    unknown = SiteHealth()  # a site not looked up yet
    goal = policy.silent_expected
    for station in _stations(state, station_ids):
        due = station.silent_due_s
        if due > now_s or station.open_bits & 1:  # a stale (NaN) deadline goes on
            continue
        site = sites.get(station.site_id, unknown)
        if site is unknown:
            found = state.get(site_key(station.site_id))
            site = sites[station.site_id] = found if isinstance(found, SiteHealth) else None
        if site is None or (site.seen - station.site_seen_at_last) * station.share < goal:
            continue
        key = station_key(station.station_id)
        if math.isnan(due):  # solved now that the site-relative count says it may be due
            changed.append(key)
            state[key] = station
            if silent_due(station, site, policy) > now_s:
                continue
        metrics = silence_metrics(station, site, now_s, policy)
        if metrics["expected"] > policy.silent_lull_ratio * metrics["expected_from_site"]:
            continue  # a lull of the whole site
        alerts.append(_open(station, "silent", now_s, _silence_evidence(metrics), metrics))
        state[key] = station
        if key not in changed[-1:]:
            changed.append(key)
    return changed, alerts
