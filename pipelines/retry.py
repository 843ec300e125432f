"""The one retry policy: exponential backoff, capped, optionally limited in attempts.

Used wherever evguard waits before trying again: the ACN-Data client, the
RabbitMQ publisher's reconnects, alert delivery and the consumers' reconnects.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Wait `initial_s`, then `multiplier` times longer after each failure, at most `max_s`.

    Args:
        initial_s: the first delay, in seconds.
        max_s: the longest delay.
        multiplier: growth per attempt (2 = doubling).
        max_retries: retries after the first attempt; None = retry for ever.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0
    max_retries: int | None = None

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s or self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 or None, got {self.max_retries}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        return min(self.max_s, self.initial_s * self.multiplier ** retry)


BROKER_RECONNECT = RetryPolicy(initial_s=1.0, max_s=30.0)
