"""The one date codec of evguard: RFC 1123 in GMT (what ACN writes) and ISO 8601.

ACN-Data writes every date as `Wed, 02 Jan 2019 14:55:53 GMT`; the score results
and the monitoring store use ISO 8601 and epoch seconds. Everything that reads or
writes a date goes through here. The string-slicing converters avoid `datetime`
on the hot path, where they run once per message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

RFC1123 = "%a, %d %b %Y %H:%M:%S GMT"
RFC1123_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"(\d{4}) (\d\d):(\d\d):(\d\d) GMT")
_MONTHS = {m: f"{i:02d}" for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def is_rfc1123(value: Any) -> bool:
    """True for a string in ACN's RFC 1123 GMT form (checks the shape, not the calendar)."""
    return type(value) is str and RFC1123_RE.fullmatch(value) is not None


def format_rfc1123(when: datetime | float) -> str:
    """RFC 1123 GMT text of an aware or naive-UTC datetime, or of epoch seconds."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(float(when), UTC)
    elif when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime(RFC1123)


def parse_rfc1123(value: Any) -> datetime | None:
    """The aware UTC datetime of an RFC 1123 GMT string; None for anything else."""
    try:
        return datetime.strptime(value, RFC1123).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


_MONTH_NUMBERS = {m: int(n) for m, n in _MONTHS.items()}
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


_recent_epochs: dict[str, float | None] = {}
_RECENT_EPOCHS = 16384  # a batch of 1,000 sessions has ~4,000 dates, each read ~4 times


def rfc1123_to_epoch(value: Any) -> float | None:
    """Epoch seconds of an RFC 1123 GMT string, by arithmetic; None for anything else.

    The worker's context, profiles, health detectors and features each read the same
    dates of every session, so the last few batches' answers are kept.
    """
    if type(value) is not str:
        return None
    try:
        return _recent_epochs[value]
    except KeyError:
        pass
    if len(_recent_epochs) >= _RECENT_EPOCHS:
        _recent_epochs.clear()
    seconds = _rfc1123_seconds(value)
    _recent_epochs[value] = seconds
    return seconds


_day_starts: dict[str, int | None] = {}  # "02 Jan 2019" -> epoch seconds of its midnight


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _day_start(day: str) -> int | None:
    """`02 Jan 2019` -> epoch seconds of that midnight; None for a date not in the calendar."""
    month = _MONTH_NUMBERS.get(day[3:6])
    if month is None or not (_ascii_digits(day[:2]) and _ascii_digits(day[7:])):
        return None
    number, year = int(day[:2]), int(day[7:])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= number <= _MONTH_DAYS[month] - (month == 2 and not leap):
        return None
    return _days_from_civil(year, month, number) * 86400


def _rfc1123_seconds(value: str) -> float | None:
    """Strict: two ASCII digits per day, hour, minute and second, four per year (what
    `parse_dates` reads the same way), a real calendar day and clock time."""
    if len(value) != 29 or not value.endswith(" GMT") or value[19] != ":" or value[22] != ":":
        return None
    day = value[5:16]
    try:
        start = _day_starts[day]
    except KeyError:
        if len(_day_starts) >= 4096:
            _day_starts.clear()
        start = _day_starts[day] = _day_start(day)
    clock = value[17:19] + value[20:22] + value[23:25]
    if start is None or not _ascii_digits(clock):
        return None
    hour, minute, second = int(clock[:2]), int(clock[2:4]), int(clock[4:])
    if hour > 23 or minute > 59 or second > 59:
        return None
    return float(start + hour * 3600 + minute * 60 + second)


# the three bytes of "Jan", ... as one number, sorted, and the month each stands for
_MONTH_KEYS, _MONTH_OF_KEY = (np.array(column) for column in zip(*sorted(
    ((ord(name[0]) << 16) | (ord(name[1]) << 8) | ord(name[2]), number)
    for name, number in _MONTH_NUMBERS.items())))
_DIGITS = np.array([5, 6, 12, 13, 14, 15, 17, 18, 20, 21, 23, 24])  # DD YYYY HH MM SS
_CUMULATIVE_DAYS = np.array([0, 306, 337, 0, 31, 61, 92, 122, 153, 184, 214, 245, 275])


def read_rfc1123(values: Sequence[Any]) -> None:
    """Read many dates at once into the cache `rfc1123_to_epoch` answers from.

    The worker's context step hands it a batch's session dates before reading them one by
    one: the arithmetic then runs once per batch in numpy rather than once per date in
    Python. Strings it does not read with certainty (any doubt: not ASCII, a non-digit,
    a day not in the calendar) are left to `rfc1123_to_epoch`, so the answers are the same.
    """
    fresh = [v for v in dict.fromkeys(v for v in values if type(v) is str)
             if len(v) == 29 and v.isascii() and v not in _recent_epochs]
    if not fresh:
        return
    raw = np.array(fresh, dtype="S29")
    chars = raw.view(np.uint8).reshape(len(fresh), 29).astype(np.int64)
    digits = chars[:, _DIGITS] - 48
    key = (chars[:, 8] << 16) | (chars[:, 9] << 8) | chars[:, 10]
    at = np.minimum(np.searchsorted(_MONTH_KEYS, key), len(_MONTH_KEYS) - 1)
    month = np.where(_MONTH_KEYS[at] == key, _MONTH_OF_KEY[at], 0)
    day, hour = digits[:, 0] * 10 + digits[:, 1], digits[:, 6] * 10 + digits[:, 7]
    minute, second = digits[:, 8] * 10 + digits[:, 9], digits[:, 10] * 10 + digits[:, 11]
    year = digits[:, 2] * 1000 + digits[:, 3] * 100 + digits[:, 4] * 10 + digits[:, 5]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = np.array(_MONTH_DAYS)[month] - ((month == 2) & ~leap)
    sure = ((digits >= 0) & (digits <= 9)).all(axis=1) & (month > 0) & (day >= 1) \
        & (day <= month_days) & (hour < 24) & (minute < 60) & (second < 60) \
        & (chars[:, 19] == 58) & (chars[:, 22] == 58) & (chars[:, 25:] == (32, 71, 77, 84)).all(
            axis=1)
    # days_from_civil, vectorised: years start in March
    shifted = year - (month <= 2)
    era = np.floor_divide(shifted, 400)
    year_of_era = shifted - era * 400
    day_of_year = _CUMULATIVE_DAYS[month] + day - 1
    days = era * 146097 + year_of_era * 365 + year_of_era // 4 - year_of_era // 100 \
        + day_of_year - 719468
    seconds = (days * 86400 + hour * 3600 + minute * 60 + second).astype(np.float64)
    if len(_recent_epochs) + len(fresh) >= _RECENT_EPOCHS:
        _recent_epochs.clear()
    for value, ok, epoch in zip(fresh, sure.tolist(), seconds.tolist(), strict=True):
        _recent_epochs[value] = epoch if ok else _rfc1123_seconds(value)


def rfc1123_to_iso(value: Any, utc_offset: bool = True) -> str | None:
    """`Wed, 02 Jan 2019 14:55:53 GMT` -> `2019-01-02T14:55:53+00:00` (without the offset when
    `utc_offset` is False); None when `value` is not RFC 1123. No datetime is built."""
    if type(value) is not str or len(value) != 29 or not value.endswith(" GMT"):
        return None
    month = _MONTHS.get(value[8:11])
    if month is None:
        return None
    iso = f"{value[12:16]}-{month}-{value[5:7]}T{value[17:25]}"
    return iso + "+00:00" if utc_offset else iso


def parse_dates(values: Sequence[Any]) -> pd.DatetimeIndex:
    """Parse RFC 1123 GMT (fast path) or ISO 8601 strings to tz-aware UTC timestamps.

    Args:
        values: strings such as ``"Wed, 01 May 2019 00:00:00 GMT"``, or None.

    Returns:
        A UTC `DatetimeIndex` (nanosecond unit) of the same length; NaT where a value
        is missing or unparseable.
    """
    values = list(values)
    try:
        parsed = np.array([rfc1123_to_iso(v, utc_offset=False) or "NaT" for v in values],
                          dtype="datetime64[s]")
    except ValueError:  # e.g. "Wed, 31 Feb 2019 ...": fall back to the per-value path
        parsed = np.array(["NaT"] * len(values), dtype="datetime64[s]")
    as_ns = parsed.astype("datetime64[ns]")
    retry = np.isnat(parsed) & ~pd.isna(np.array(values + [None], dtype=object)[:-1])
    if retry.any():
        fixed = pd.to_datetime(pd.Series([str(v) for v, r in zip(values, retry) if r], dtype=object),
                               format="mixed", utc=True, errors="coerce")
        as_ns[retry] = fixed.dt.tz_convert(None).to_numpy("datetime64[ns]")
    return pd.DatetimeIndex(as_ns).tz_localize("UTC")


def format_date(ts: Any) -> str | None:
    """A pandas/numpy/datetime timestamp as RFC 1123 GMT text (None for NaT or None)."""
    if ts is None or pd.isna(ts):
        return None
    ts = pd.Timestamp(ts)
    return (ts.tz_convert("UTC") if ts.tzinfo else ts).strftime(RFC1123)


def date_to_epoch(value: Any) -> float | None:
    """Epoch seconds of a date as sessions carry it: RFC 1123 GMT (by arithmetic, the hot
    path), ISO 8601 or another form `parse_dates` reads, or a datetime; None when absent or
    unreadable. The one reader of session dates for the stations' state and detectors."""
    seconds = rfc1123_to_epoch(value)
    if seconds is not None or value is None or value is pd.NaT:
        return seconds
    if isinstance(value, datetime):  # a parsed frame's Timestamp
        return value.timestamp() if value.tzinfo else value.replace(tzinfo=UTC).timestamp()
    if not isinstance(value, str):
        return None
    try:
        return iso_to_epoch(value)
    except ValueError:
        parsed = parse_dates([value])[0]
        return None if parsed is pd.NaT else parsed.timestamp()


def iso_to_epoch(value: Any) -> float:
    """Epoch seconds of an ISO 8601 string; a naive time is taken as UTC.

    Raises:
        TypeError: `value` is not a string.
        ValueError: `value` is not ISO 8601.
    """
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 string, got {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def epoch_to_iso(ts: float) -> str:
    """ISO 8601 text (UTC, with offset) of epoch seconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def readable_utc(ts: float, seconds: bool = True) -> str:
    """Epoch seconds as people read them in emails and reports: `2019-05-01 14:30:05 UTC`."""
    return datetime.fromtimestamp(ts, UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")
