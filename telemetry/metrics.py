"""The telemetry processor's Prometheus metrics and its HTTP endpoint (`/metrics`, `/healthz`)."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("evguard.telemetry.metrics")


class ProcessorMetrics:
    """Every metric of one processor, in its own registry (tests may run several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "evguard_telemetry"
        self.consumed = Counter(f"{p}_consumed", "Telemetry messages consumed", registry=r)
        self.applied = Counter(f"{p}_applied", "Events applied to connector state", ["kind"],
                               registry=r)
        self.redelivered = Counter(f"{p}_redelivered", "Events already applied (skipped)",
                                   registry=r)
        self.dead_lettered = Counter(f"{p}_dead_lettered", "Messages written to the DLQ",
                                     registry=r)
        self.live_alerts = Counter(f"{p}_live_alerts", "Live alert events published",
                                   ["kind", "status"], registry=r)
        self.sessions = Counter(f"{p}_sessions_handed_off", "Sessions produced for scoring",
                                registry=r)
        self.snapshots = Counter(f"{p}_status_snapshots", "Connector snapshots published",
                                 registry=r)
        self.committed = Counter(f"{p}_committed_batches", "Batches whose offsets were committed",
                                 registry=r)
        self.batch_seconds = Histogram(
            f"{p}_batch_seconds", "Consumed to committable (confirms, acks, state written)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.connectors = Gauge(f"{p}_connectors", "Connectors in the state of owned partitions",
                                registry=r)
        self.inflight = Gauge(f"{p}_inflight_batches", "Batches awaiting confirms and acks",
                              registry=r)
        self.rabbitmq_connected = Gauge(f"{p}_rabbitmq_connected", "1 while RabbitMQ is usable",
                                        registry=r)
        self.consumer_lag = Gauge(f"{p}_consumer_lag", "Messages behind the partition end",
                                  ["partition"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
