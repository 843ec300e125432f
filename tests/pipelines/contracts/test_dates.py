"""The date codec: RFC 1123 as ACN writes it, and ISO 8601."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.contracts.dates import (
    date_to_epoch,
    format_rfc1123,
    is_rfc1123,
    iso_to_epoch,
    parse_dates,
    parse_rfc1123,
    rfc1123_to_epoch,
    rfc1123_to_iso,
)

MOMENTS = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1),
                       timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))


def test_rfc1123_dates_convert_to_iso_utc():
    assert rfc1123_to_iso("Wed, 02 Jan 2019 14:55:53 GMT") == "2019-01-02T14:55:53+00:00"
    assert rfc1123_to_iso(None) is None


@given(MOMENTS)
def test_every_form_of_a_moment_reads_back_as_the_same_moment(moment):
    text = format_rfc1123(moment)
    assert is_rfc1123(text) and parse_rfc1123(text) == moment
    assert format_rfc1123(moment.timestamp()) == text
    assert iso_to_epoch(rfc1123_to_iso(text)) == moment.timestamp()
    assert parse_dates([text])[0] == pd.Timestamp(moment)


def test_what_is_not_a_date_is_none_or_nat_never_an_error():
    odd = [None, "", "yesterday", "Wed, 31 Feb 2019 10:00:00 GMT", 17, "2019-05-01T10:00:00Z"]
    assert [parse_rfc1123(v) for v in odd] == [None] * len(odd)
    assert [rfc1123_to_iso(v) for v in (None, "", "yesterday", 17)] == [None] * 4
    parsed = parse_dates(odd)
    assert parsed[:5].isna().all()  # the impossible 31 February too
    assert parsed[5] == pd.Timestamp("2019-05-01T10:00:00Z")  # ISO 8601 is read as well


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31)))
def test_rfc1123_to_epoch_agrees_with_datetime(when):
    text = format_rfc1123(when.replace(microsecond=0, tzinfo=UTC))
    assert rfc1123_to_epoch(text) == parse_rfc1123(text).timestamp()


@pytest.mark.parametrize("text", ["Thu, 29 Feb 2019 10:00:00 GMT", "Mon, 31 Apr 2019 10:00:00 GMT",
                                  "Wed, 02 Jan 2019 24:00:00 GMT", "Wed, 02 Jan 2019 14:55:53 UTC",
                                  "Wed, 02 Foo 2019 14:55:53 GMT", "", None, 17.0])
def test_rfc1123_to_epoch_refuses_what_is_not_a_calendar_date(text):
    assert rfc1123_to_epoch(text) is None


@pytest.mark.parametrize("value", ["Wed, 02 Jan 2019 14:55:53 GMT", "2019-01-02T14:55:53+00:00",
                                   "2019-01-02T14:55:53", datetime(2019, 1, 2, 14, 55, 53),
                                   pd.Timestamp("2019-01-02 14:55:53", tz="UTC")])
def test_date_to_epoch_reads_every_form_a_session_date_comes_in(value):
    assert date_to_epoch(value) == parse_rfc1123("Wed, 02 Jan 2019 14:55:53 GMT").timestamp()


@pytest.mark.parametrize("value", [None, pd.NaT, "not a date", 17.0, ["x"]])
def test_date_to_epoch_is_none_for_what_is_not_a_date(value):
    assert date_to_epoch(value) is None
