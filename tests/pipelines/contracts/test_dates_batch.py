"""`read_rfc1123` reads a batch of dates with numpy into the cache `rfc1123_to_epoch` answers
from; every answer must be the one the date-by-date arithmetic gives."""

from __future__ import annotations

import random

import pytest

from pipelines.contracts import dates
from pipelines.contracts.dates import format_rfc1123, read_rfc1123, rfc1123_to_epoch

EDGES = ["Wed, 29 Feb 2019 10:00:00 GMT", "Thu, 29 Feb 2024 10:00:00 GMT",
         "Mon, 29 Feb 1900 00:00:00 GMT", "Tue, 29 Feb 2000 00:00:00 GMT",
         "Wed, 31 Apr 2019 10:00:00 GMT", "Wed, 00 Jan 2019 10:00:00 GMT",
         "Wed, 02 Jan 2019 24:00:00 GMT", "Wed, 02 jan 2019 10:00:00 GMT",
         "Wed, 02 Jan 0000 10:00:00 GMT", "Wed, 02 Jan 2019 10:00:00 UTC",
         "Wed, 02 Jan 2019 10:00:00 GMT ", "Wed, 0\u0662 Jan 2019 10:00:00 GMT", None, 7,
         ["Wed, 02 Jan 2019 10:00:00 GMT"], {"date": 1}]  # unhashable: read one by one


def _dates(seed: int) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(5000):
        value = format_rfc1123(rng.uniform(-3e9, 5e9))
        if rng.random() < 0.4:  # one character changed
            i = rng.randrange(len(value))
            value = value[:i] + rng.choice("0123456789: GMTJanFebjanX+-/\u0663") + value[i + 1:]
        out.append(value)
    return out + EDGES


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_read_answers_as_the_date_by_date_arithmetic(seed):
    values = _dates(seed)
    dates._recent_epochs.clear()
    expected = [rfc1123_to_epoch(v) for v in values]
    dates._recent_epochs.clear()

    read_rfc1123(values)
    cached = sum(isinstance(v, str) and v in dates._recent_epochs for v in values)
    assert [rfc1123_to_epoch(v) for v in values] == expected
    assert cached > len(values) // 2  # the batch read did the work
    assert sum(e is None for e in expected) > 100 and sum(e is not None for e in expected) > 100
