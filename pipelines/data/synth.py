"""Seeded synthetic ACN sessions, calibrated to the real exports, with labelled anomalies.

`generate_sessions` writes sessions in the exact ACN-Data format for the sites
caltech, jpl and office001. Distributions were measured in the real exports
(`../shared/acn`, see `docs/data.md` for the calibration table real vs synthetic):
morning weekday arrivals (caltech 8-10 am, jpl 6-8 am local), lognormal energy
capped by what a 6-7 kW level-2 station can deliver in the stay, a workday stay
mode around 9 h plus short visits and a rare overnight tail, 1-32 edits of the
request with `kWhRequested = milesRequested * WhPerMile / 1000`, and one DC fast
charger at caltech (15-45 kW, null doneChargingTime, no user inputs). Normal
sessions stay below 48 h so that `stuck_session` labels are unambiguous.

Anomalies are injected by `pipelines.data.anomalies.inject_anomalies`, the same
function the evaluation applies to real sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from pipelines.contracts.dates import format_rfc1123
from pipelines.data.anomalies import inject_anomalies

DEFAULT_START = datetime(2019, 1, 7, 8, 0, tzinfo=UTC)  # a Monday, 00:00 in California
MAX_NORMAL_CONNECTION_H = 47.0
_PACIFIC = ZoneInfo("America/Los_Angeles")
_WH_PER_MILE = np.array([250, 280, 300, 333, 350, 375, 400, 450, 500, 600])
_WH_PER_MILE_P = np.array([6, 4, 14, 4, 8, 6, 30, 6, 6, 16], dtype=float) / 100


def _pmf(pairs: dict[int, float]) -> np.ndarray:
    pmf = np.array([pairs.get(h, 0.0005) for h in range(24)])
    return pmf / pmf.sum()


@dataclass(frozen=True)
class SiteProfile:
    """Per-site parameters of the generator (measured where a real export exists)."""

    name: str
    site_id: str
    cluster_id: str
    station_prefix: str
    space_prefix: str
    n_stations: int
    share: float  # fraction of all generated sessions
    weekday_hour_pmf: np.ndarray = field(repr=False)
    weekend_day_weight: float  # sessions on a weekend day relative to a weekday
    energy_median_kwh: float
    energy_sigma: float
    workday_mean_h: float
    workday_sd_h: float
    short_median_h: float
    long_rate: float  # overnight and multi-day stays
    null_inputs_rate: float
    null_done_rate: float
    dc_share: float = 0.0  # fraction of this site's sessions at its DC fast charger
    n_users: int = 200

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1 or not 0 <= self.dc_share < 1:
            raise ValueError(f"{self.name}: shares must be fractions")


_WEEKEND_HOURS = _pmf({8: 4, 9: 6, 10: 8, 11: 9, 12: 9, 13: 8, 14: 7, 15: 6, 16: 5, 17: 5,
                       18: 4, 19: 3, 20: 2, 21: 1})
SITES: dict[str, SiteProfile] = {
    "caltech": SiteProfile(
        "caltech", "0002", "0039", "2-39", "CA-", 54, 0.40,
        _pmf({0: .002, 1: .001, 5: .005, 6: .013, 7: .052, 8: .20, 9: .169, 10: .117, 11: .054,
              12: .073, 13: .069, 14: .034, 15: .028, 16: .033, 17: .033, 18: .042, 19: .034,
              20: .022, 21: .011, 22: .006}),
        weekend_day_weight=0.37, energy_median_kwh=9.0, energy_sigma=1.0, workday_mean_h=8.6,
        workday_sd_h=1.6, short_median_h=2.2, long_rate=0.03, null_inputs_rate=0.14,
        null_done_rate=0.02, dc_share=0.04, n_users=180),
    "jpl": SiteProfile(
        "jpl", "0001", "0001", "1-1", "AG-", 52, 0.45,
        _pmf({4: .004, 5: .068, 6: .245, 7: .365, 8: .037, 9: .021, 10: .019, 11: .038, 12: .038,
              13: .024, 14: .034, 15: .043, 16: .036, 17: .014, 18: .004, 19: .003, 20: .002}),
        weekend_day_weight=0.05, energy_median_kwh=14.0, energy_sigma=0.85, workday_mean_h=9.3,
        workday_sd_h=1.1, short_median_h=3.0, long_rate=0.002, null_inputs_rate=0.04,
        null_done_rate=0.002, n_users=220),
    # no office001 export here: an office pattern like jpl, smaller; siteID assumed
    "office001": SiteProfile(
        "office001", "0019", "0019", "19-1", "OF-", 8, 0.15,
        _pmf({6: .08, 7: .22, 8: .30, 9: .15, 10: .06, 11: .04, 12: .05, 13: .04, 14: .03,
              15: .02, 16: .01}),
        weekend_day_weight=0.03, energy_median_kwh=10.0, energy_sigma=0.85, workday_mean_h=8.8,
        workday_sd_h=1.3, short_median_h=2.5, long_rate=0.005, null_inputs_rate=0.08,
        null_done_rate=0.01, n_users=40),
}


def _stations(profile: SiteProfile) -> list[tuple[str, str]]:
    """The site's fixed (stationID, spaceID) pairs: the same for every seed."""
    rng = np.random.default_rng(int(profile.site_id))
    ids = [(f"{profile.station_prefix}-{rng.integers(78, 200)}-{rng.integers(10, 900)}",
            f"{profile.space_prefix}{rng.integers(100, 700)}") for _ in range(profile.n_stations)]
    return list(dict.fromkeys(ids))


def _arrivals(rng: np.random.Generator, profile: SiteProfile, n: int, start: float,
              days: int) -> np.ndarray:
    """Connection times (epoch seconds) with the site's weekday/weekend and hourly shape."""
    first_weekday = datetime.fromtimestamp(start, UTC).weekday()
    weekend = ((first_weekday + np.arange(days)) % 7) >= 5
    weights = np.where(weekend, profile.weekend_day_weight, 1.0)
    day = rng.choice(days, size=n, p=weights / weights.sum())
    is_weekend = weekend[day]
    hour = np.where(is_weekend, rng.choice(24, size=n, p=_WEEKEND_HOURS),
                    rng.choice(24, size=n, p=profile.weekday_hour_pmf))
    local_midnight = start + np.arange(days) * 86400.0
    offset = np.array([_PACIFIC.utcoffset(datetime.fromtimestamp(t + 12 * 3600, UTC)
                                          .replace(tzinfo=None)).total_seconds()
                       for t in local_midnight])  # -8 h, or -7 h in daylight saving time
    return local_midnight[day] - (offset[day] + 8 * 3600) + (hour + rng.random(n)) * 3600.0


def _stays(rng: np.random.Generator, profile: SiteProfile, local_hour: np.ndarray) -> np.ndarray:
    n = len(local_hour)
    workday_p = np.where((local_hour >= 5) & (local_hour < 11), 0.8, 0.15)
    kind = rng.random(n)
    short = rng.lognormal(np.log(profile.short_median_h), 0.75, n)
    workday = rng.normal(profile.workday_mean_h, profile.workday_sd_h, n)
    long = rng.lognormal(np.log(20.0), 0.5, n)
    hours = np.where(kind < workday_p, workday, short)
    hours = np.where(rng.random(n) < profile.long_rate, long, hours)
    return np.clip(hours, 0.1, MAX_NORMAL_CONNECTION_H)


def _user_inputs(rng: np.random.Generator, connect: float, disconnect: float, delivered: float,
                 user: int) -> list[dict]:
    """1..32 edits; the last one is the request in force, consistent with the session."""
    n_edits = 1 if rng.random() < 0.85 else int(min(32, 1 + rng.geometric(0.55)))
    if rng.random() < 0.002:  # the rare user who edits the request all day
        n_edits = int(rng.integers(10, 33))
    ratio = rng.uniform(1.0, 1.3) if rng.random() < 0.01 else rng.beta(3.0, 2.0)
    wh_per_mile = int(rng.choice(_WH_PER_MILE, p=_WH_PER_MILE_P))
    miles = max(10, round(delivered / max(ratio, 0.05) * 1000 / wh_per_mile / 10) * 10)
    miles = min(miles, 300)
    gap_h = rng.gumbel(0.1, 1.5)  # right-skewed: people leave late more often than early
    minutes = int(np.clip((disconnect - connect) / 60 - gap_h * 60, 15, 1440))
    stay_s = disconnect - connect
    edit_times = np.sort(connect + np.concatenate(
        [[rng.uniform(5, 300)], rng.uniform(0.05, 0.95, n_edits - 1) * stay_s]))
    edits = []
    for i, at in enumerate(edit_times):
        final = i == n_edits - 1
        m = miles if final else max(10, miles + int(rng.integers(-4, 5)) * 10)
        mins = minutes if final else int(np.clip(minutes + rng.integers(-120, 121), 15, 1440))
        edits.append({"WhPerMile": wh_per_mile, "kWhRequested": round(m * wh_per_mile / 1000, 2),
                      "milesRequested": m, "minutesAvailable": mins, "modifiedAt": format_rfc1123(at),
                      "paymentRequired": True, "requestedDeparture": format_rfc1123(connect + mins * 60),
                      "userID": user})
    return edits


def _site_sessions(rng: np.random.Generator, profile: SiteProfile, n: int, start: float,
                   days: int) -> list[dict]:
    stations = _stations(profile)
    dc_station = stations[0] if profile.dc_share else None
    connect = _arrivals(rng, profile, n, start, days)
    local_hour = ((connect - start) / 3600.0) % 24
    stay_h = _stays(rng, profile, local_hour)
    # about half the cars take 3.3 kW on board, the rest 6-7 kW
    power = np.where(rng.random(n) < 0.5, rng.uniform(2.8, 3.6, n), rng.uniform(5.0, 6.9, n))
    need = rng.lognormal(np.log(profile.energy_median_kwh), profile.energy_sigma, n)
    delivered = np.clip(np.minimum(need, power * stay_h * rng.uniform(0.85, 1.0, n)), 0.5, 78.0)
    is_dc = rng.random(n) < profile.dc_share
    dc_stay = np.clip(rng.lognormal(np.log(0.6), 0.5, n), 0.1, 3.0)
    dc_kwh = np.clip(rng.lognormal(np.log(13.0), 0.6, n), 2.0, 60.0)
    stay_h = np.where(is_dc, dc_stay, stay_h)
    delivered = np.where(is_dc, np.minimum(dc_kwh, rng.uniform(15, 45, n) * dc_stay), delivered)
    charging_h = np.minimum(delivered / power, stay_h)
    users = rng.integers(1, 3000, profile.n_users)
    records = []
    for i in range(n):
        station, space = dc_station if is_dc[i] else stations[1 + rng.integers(len(stations) - 1)]
        t_connect = float(np.floor(connect[i])) + 0.0
        t_disconnect = t_connect + round(stay_h[i] * 3600)
        done = None
        if not is_dc[i] and rng.random() >= profile.null_done_rate:
            done = format_rfc1123(min(t_disconnect, t_connect + round(charging_h[i] * 3600)))
        has_inputs = not is_dc[i] and rng.random() >= profile.null_inputs_rate
        user = int(users[rng.integers(len(users))])
        stamp = datetime.fromtimestamp(t_connect, UTC).strftime("%Y-%m-%d %H:%M:%S")
        records.append({
            "_id": rng.bytes(12).hex(),
            "clusterID": profile.cluster_id,
            "connectionTime": format_rfc1123(t_connect),
            "disconnectTime": format_rfc1123(t_disconnect),
            "doneChargingTime": done,
            "kWhDelivered": round(float(delivered[i]), 3),
            "sessionID": f"{station.replace('-', '_')}_{stamp}.{rng.integers(1_000_000):06d}",
            "siteID": profile.site_id,
            "spaceID": space,
            "stationID": station,
            "timezone": "America/Los_Angeles",
            "userID": f"{user:09d}" if has_inputs else None,
            "userInputs": _user_inputs(rng, t_connect, t_disconnect, float(delivered[i]), user)
            if has_inputs else None,
        })
    return records


def generate_sessions(n: int, seed: int, anomaly_rate: float = 0.0,
                      start: datetime | None = None,
                      sites: Sequence[str] = ("caltech", "jpl", "office001"),
                      ) -> tuple[list[dict], dict[str, str]]:
    """Generate `n` synthetic ACN sessions, sorted by connectionTime, with labelled anomalies.

    Args:
        n: number of sessions (anomalies included).
        seed: the same seed gives the same sessions and labels.
        anomaly_rate: fraction of sessions turned into anomalies (0..1).
        start: first day; sessions begin at its local midnight in California (08:00 UTC).
            Default Monday 2019-01-07.
        sites: subset of `SITES`; their shares are renormalised.

    Returns:
        `(records, labels)`: session dicts in ACN format and `sessionID -> anomaly type`.
    """
    if n < 0 or not 0 <= anomaly_rate <= 1:
        raise ValueError("n must be >= 0 and anomaly_rate within [0, 1]")
    unknown = set(sites) - set(SITES)
    if unknown or not sites:
        raise ValueError(f"unknown sites {sorted(unknown)}; choose from {sorted(SITES)}")
    rng = np.random.default_rng(seed)
    profiles = [SITES[s] for s in sites]
    shares = np.array([p.share for p in profiles])
    counts = rng.multinomial(n, shares / shares.sum())
    first = start or DEFAULT_START
    start_s = datetime(first.year, first.month, first.day, 8, tzinfo=UTC).timestamp()
    days = max(1, int(np.ceil(n / 90.0)))  # about 90 sessions a day across the three sites
    records: list[dict] = []
    for profile, count in zip(profiles, counts):
        records.extend(_site_sessions(rng, profile, int(count), start_s, days))
    # "%a, %d %b %Y %H:%M:%S GMT" does not sort as text: sort on the sessionID's UTC stamp
    records.sort(key=lambda r: (r["sessionID"].rsplit("_", 1)[1], r["sessionID"]))
    return inject_anomalies(records, anomaly_rate, seed=int(rng.integers(2**31)))
