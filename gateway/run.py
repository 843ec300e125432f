"""Running a gateway: the WebSocket server, `/metrics` and `/healthz`, and a clean stop.

    mode = standalone_mode(settings, metrics)        # or a proxy wrapped in a `Mode`
    run_loop(run_gateway(settings, mode, metrics, Registry(...)))

`run_loop` is `asyncio.run` on uvloop's event loop (libuv; the socket reads and writes,
timers and wake-ups of 5,000 connections cost less CPU there than in the selector loop),
or on asyncio's own when uvloop is not installed.

SIGTERM and Ctrl-C only set the stop event. The server then stops accepting, closes every
charger's socket (1001 going away: chargers reconnect to the next gateway), and the mode
flushes what it queued for Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.metrics import GatewayMetrics
from gateway.registry import Registry
from gateway.server import GatewayServer, ModeHandler, ModePrepare
from gateway.standalone import ACK_TIMEOUT_S, StandaloneCsms
from pipelines.metrics_http import MetricsServer
from pipelines.settings import Settings

log = logging.getLogger("evguard.gateway")

LOOP_STUCK_S = 10.0
T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the gateway's event loop (`loop_factory`)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


@dataclass(frozen=True)
class Mode:
    """A gateway mode: its connection handler, its health, and how it stops."""

    name: str
    handler: ModeHandler
    health: Callable[[], tuple[bool, dict]]
    aclose: Callable[[], Awaitable[None]]
    prepare: ModePrepare | None = None  # during the handshake (`gateway.server.ModePrepare`)


def standalone_mode(settings: Settings, metrics: GatewayMetrics, gateway_name: str = "",
                    ack_timeout_s: float = ACK_TIMEOUT_S) -> Mode:
    """The standalone CSMS as a `Mode`.

    Raises:
        ConnectionError: Kafka does not answer.
    """
    csms = StandaloneCsms.from_settings(settings, metrics, gateway_name, ack_timeout_s)
    return Mode("standalone", csms.handle, csms.health, csms.aclose)


async def _beat(clock: list[float]) -> None:
    while True:
        clock[0] = time.monotonic()
        await asyncio.sleep(1.0)


async def run_gateway(settings: Settings, mode: Mode, metrics: GatewayMetrics,
                      registry: Registry, *, port: int | None = None,
                      stop: asyncio.Event | None = None,
                      ready: Callable[[int, int], None] | None = None) -> None:
    """Serve chargers until `stop` is set (or SIGTERM / SIGINT arrives).

    Args:
        settings: host, port, limits, TLS, metrics port.
        mode: what to do with each accepted charger.
        metrics: the gateway's metrics.
        registry: the charge points allowed in.
        port: the WebSocket port (default `settings.ocpp_port`; 0 = any free port).
        stop: set it to stop; a fresh one when None.
        ready: called with (WebSocket port, metrics port) once both listen.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)
    beat = [time.monotonic()]
    beater = asyncio.create_task(_beat(beat))
    server = GatewayServer(settings, mode.handler, registry, metrics, mode.prepare)

    def health() -> tuple[bool, dict]:
        alive = time.monotonic() - beat[0] < LOOP_STUCK_S
        ok, detail = mode.health()
        return alive and ok, {**detail, "loop": "ok" if alive else "stuck",
                              "chargers": len(server.active)}

    metrics_server = MetricsServer(metrics, health, settings.ocpp_host,
                                   settings.ocpp_metrics_port, "gateway-metrics-http").start()
    try:
        async with server.serve(port=port) as ws_server:
            ws_port = next(iter(ws_server.sockets)).getsockname()[1]
            log.info("OCPP gateway (%s) on %s:%d, metrics on :%d, %d charge points known%s",
                     mode.name, settings.ocpp_host, ws_port, metrics_server.port, len(registry),
                     ", unknown ones allowed" if registry.allow_unknown else "")
            if ready is not None:
                ready(ws_port, metrics_server.port)
            # the modules loaded so far live as long as the process: keep the collector from
            # re-scanning them in every full collection (a pause of every connection's answer)
            gc.freeze()
            await stop.wait()
            log.info("stopping: closing %d charger connections", len(server.active))
    finally:
        beater.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, NotImplementedError):
                loop.remove_signal_handler(signum)
        await mode.aclose()
        metrics_server.stop()
        log.info("gateway stopped")
