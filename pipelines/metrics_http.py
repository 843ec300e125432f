"""`/metrics` and `/healthz` over HTTP, for every long-running process of evguard.

The scoring worker, the telemetry processor and the OCPP gateway each serve their own
Prometheus registry and liveness check through this one server, so the endpoints behave
the same everywhere (a probe or a scraper needs to know them once).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("evguard.metrics")


class Renders(Protocol):
    def render(self) -> bytes: ...


class MetricsServer:
    """`/metrics` (Prometheus text) and `/healthz` (JSON, 503 when not live) on a daemon
    thread. When the port is taken (a second process on this host) it takes a free one
    and says so: scale-out must still start."""

    def __init__(self, metrics: Renders, liveness: Callable[[], tuple[bool, dict]],
                 host: str, port: int, thread_name: str = "metrics-http") -> None:
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
        except OSError as exc:
            self._server = ThreadingHTTPServer((host, 0), Handler)
            log.warning("metrics port %s:%d is taken (%s); serving /metrics on port %d instead",
                        host, port, exc.strerror, self._server.server_address[1])
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=thread_name,
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Heartbeat:
    """When a process's loop last turned; `/healthz` fails when it is stuck."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last
