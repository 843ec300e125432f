"""Kafka's micro-batch read, shared by every process that consumes in micro-batches (the
scoring worker, the telemetry processor)."""

from __future__ import annotations

from typing import Any


def consume_micro_batch(consumer: Any, limit: int, first_wait_s: float,
                        linger_s: float) -> list:
    """A micro-batch of at most `limit` messages from a confluent-kafka `Consumer`: wait up
    to `first_wait_s` for one message, then up to `linger_s` for the rest (returning as soon
    as `limit` are there).

    Waiting for a full batch would add the whole wait to every session at low rates. Taking
    only what had arrived (no linger) made batches of ~4 sessions at 1,000 sessions/s, and
    their fixed cost per batch kept the worker's CPU, and so the latency tail, high
    (`benchmarks/serving_throughput.py --parts latency`, docs/benchmarks.md); a few
    milliseconds of linger let a batch gather what arrives meanwhile.
    """
    first = consumer.consume(1, first_wait_s)
    if not first or limit == 1:
        return first
    return first + consumer.consume(limit - 1, linger_s)
