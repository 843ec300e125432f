"""The telemetry processor's Prometheus metrics and its HTTP endpoint (`/metrics`, `/healthz`)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
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


class MetricsServer:
    """`/metrics` (Prometheus text) and `/healthz` (JSON) on a daemon thread."""

    def __init__(self, metrics: ProcessorMetrics, liveness: Callable[[], tuple[bool, dict]],
                 host: str, port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, CONTENT_TYPE_LATEST, outer.metrics.render())
                elif self.path.startswith("/healthz"):
                    ok, detail = outer.liveness()
                    self._send(200 if ok else 503, "application/json",
                               json.dumps(detail).encode())
                else:
                    self._send(404, "text/plain", b"try /metrics or /healthz\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.metrics = metrics
        self.liveness = liveness
        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # a second processor on this host: scale-out must still work
            self._server = ThreadingHTTPServer((host, 0), Handler)
            log.warning("metrics port %s:%d is taken (%s); serving /metrics on port %d instead",
                        host, port, exc.strerror, self._server.server_address[1])
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="telemetry-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Heartbeat:
    """When the consumer loop last turned; `/healthz` fails when it is stuck."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last
