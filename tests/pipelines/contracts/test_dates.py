"""The date codec: RFC 1123 as ACN writes it, and ISO 8601."""

from __future__ import annotations

from pipelines.contracts.dates import rfc1123_to_iso


def test_rfc1123_dates_convert_to_iso_utc():
    assert rfc1123_to_iso("Wed, 02 Jan 2019 14:55:53 GMT") == "2019-01-02T14:55:53+00:00"
    assert rfc1123_to_iso(None) is None
