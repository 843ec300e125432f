"""The one retry policy: exponential, capped, and refusing nonsense."""

from __future__ import annotations

import pytest

from pipelines.retry import RetryPolicy


def test_delays_grow_by_the_multiplier_up_to_the_cap():
    policy = RetryPolicy(initial_s=0.5, max_s=3.0, multiplier=3.0)
    assert [policy.delay(retry) for retry in range(4)] == [0.5, 1.5, 3.0, 3.0]
    assert RetryPolicy(initial_s=0.0, max_s=0.0).delay(5) == 0.0  # retry at once


@pytest.mark.parametrize("bad", [{"initial_s": -1.0}, {"initial_s": 2.0, "max_s": 1.0},
                                 {"multiplier": 0.5}, {"max_retries": -1}])
def test_an_impossible_policy_is_refused(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)
