"""Prometheus metrics of the gateway and its HTTP endpoint (`/metrics`, `/healthz`)."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("evguard.gateway.metrics")

# fine below 50 ms, where the acknowledgement objective (p99 <= 50 ms) sits
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
               0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Every metric of one gateway, in its own registry (so tests can run several).

    The proxy mode registers its own metrics (spool) in `registry` too.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "evguard_gateway"
        self.connections = Gauge(f"{p}_connections", "Charge points connected now",
                                 ["version"], registry=r)
        self.connects = Counter(f"{p}_connects", "Accepted WebSocket connections",
                                ["version"], registry=r)
        self.refused = Counter(f"{p}_refused", "Refused connection attempts", ["reason"],
                               registry=r)
        self.frames = Counter(f"{p}_frames", "OCPP frames received, by action (CALLs) or "
                              "message type", ["direction", "action"], registry=r)
        self.call_errors = Counter(f"{p}_call_errors", "CALLERRORs sent, by error code",
                                   ["code"], registry=r)
        self.unparseable = Counter(f"{p}_unparseable_frames", "Frames without a readable "
                                   "message id (logged, not answered in 1.6)", registry=r)
        self.rate_limited = Counter(f"{p}_rate_limited", "CALLs refused by the per-connection "
                                    "rate limit", registry=r)
        self.events = Counter(f"{p}_events", "Telemetry events acknowledged by Kafka",
                              ["kind"], registry=r)
        self.produce_failures = Counter(f"{p}_kafka_produce_failures", "Telemetry events "
                                        "Kafka did not acknowledge in time or refused",
                                        registry=r)
        self.ack_seconds = Histogram(f"{p}_ack_seconds", "A CALL's arrival to its CALLRESULT "
                                     "sent (Kafka acknowledged its events)",
                                     buckets=ACK_BUCKETS, registry=r)
        self.handler_errors = Counter(f"{p}_handler_errors", "Connections ended by an "
                                      "unexpected error in a mode handler", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
