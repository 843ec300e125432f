"""The OCPP gateway deployment: `evguard ocpp serve` as a long-running Prefect flow.

The flow serves chargers until the run is cancelled (Prefect's SIGTERM makes the gateway
stop accepting, close every charger's socket with 1001 so it reconnects elsewhere, and
flush Kafka), until `max_runtime_minutes`, or until no charger has been connected nor sent
a frame for `idle_exit_seconds`. Several runs need their own ports; chargers pick one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State
from pydantic import BaseModel, Field

from gateway.metrics import GatewayMetrics
from gateway.registry import Registry, registry_path
from gateway.run import Mode, run_gateway, standalone_mode
from pipelines.settings import Settings, load_settings

IDLE_CHECK_S = 0.5


class GatewayParams(BaseModel):
    mode: Literal["standalone", "proxy"] | None = Field(
        None, description="standalone (be the CSMS) or proxy (forward to the upstream CSMS); "
                          "empty = EVGUARD_OCPP_MODE")
    port: int | None = Field(None, ge=0, le=65535,
                             description="WebSocket port; 0 = any free port; empty = setting")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of /metrics and /healthz; empty = setting")
    upstream_url: str | None = Field(
        None, description="Proxy mode: the operator's CSMS (ws:// or wss://); empty = setting")
    allow_unknown: bool | None = Field(
        None, description="Accept charge points missing from the registry; empty = setting")
    ack_timeout_seconds: float = Field(
        10.0, gt=0, description="Standalone: seconds Kafka may take to acknowledge a CALL's "
                                "events before the charger gets CALLERROR InternalError")
    idle_exit_seconds: float = Field(
        0.0, ge=0, description="Stop once no charger is connected and none sent a frame for "
                               "this long; 0 = run until cancelled")
    max_runtime_minutes: float | None = Field(
        None, gt=0, description="Stop after this long; empty = run until cancelled")


def _total(metrics: GatewayMetrics, name: str) -> float:
    """Sum of a metric's samples over all its labels."""
    return sum(sample.value for family in metrics.registry.collect()
               for sample in family.samples if sample.name == name)


def gateway_report(metrics: GatewayMetrics, seconds: float) -> dict:
    """The counters of one run, for the flow's result and its artifact."""
    names = {"connects": "evguard_gateway_connects_total",
             "refused": "evguard_gateway_refused_total",
             "frames": "evguard_gateway_frames_total",
             "call_errors": "evguard_gateway_call_errors_total",
             "unparseable_frames": "evguard_gateway_unparseable_frames_total",
             "rate_limited": "evguard_gateway_rate_limited_total",
             "events": "evguard_gateway_events_total",
             "kafka_produce_failures": "evguard_gateway_kafka_produce_failures_total",
             "handler_errors": "evguard_gateway_handler_errors_total"}
    report = {key: int(_total(metrics, name)) for key, name in names.items()}
    report["seconds"] = round(seconds, 1)
    return report


def _proxy_mode(settings: Settings, metrics: GatewayMetrics) -> Mode:
    """The proxy in front of `ocpp_upstream_url`, as a gateway `Mode`."""
    from gateway.proxy import OcppProxy

    if not settings.ocpp_upstream_url:
        raise ValueError("proxy mode needs upstream_url or EVGUARD_OCPP_UPSTREAM_URL")
    proxy = OcppProxy.from_settings(settings)
    proxy.register_metrics(metrics.registry)

    async def aclose() -> None:
        await asyncio.to_thread(proxy.close)

    return Mode("proxy", proxy.handle, lambda: (True, proxy.health()), aclose)


async def _watch(metrics: GatewayMetrics, stop: asyncio.Event, idle_exit_s: float,
                 max_runtime_s: float | None, reason: list[str]) -> None:
    """Set `stop` after `max_runtime_s`, or once nothing happened for `idle_exit_s`."""
    started = last_activity = time.monotonic()
    last_frames = -1.0
    while not stop.is_set():
        await asyncio.sleep(IDLE_CHECK_S)
        now = time.monotonic()
        frames = _total(metrics, "evguard_gateway_frames_total")
        if frames != last_frames or _total(metrics, "evguard_gateway_connections"):
            last_frames, last_activity = frames, now
        if max_runtime_s and now - started >= max_runtime_s:
            reason.append(f"max runtime {max_runtime_s / 60:g} min reached")
            stop.set()
        elif idle_exit_s and now - last_activity >= idle_exit_s:
            reason.append(f"idle for {idle_exit_s:g}s")
            stop.set()


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """The gateway installs its own SIGTERM/SIGINT handlers on its loop and leaves the
    default ones behind; put back Prefect's afterwards."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


@task(name="publish-gateway-summary", cache_policy=NO_CACHE)
def publish_summary(report: dict, mode: str, message: str) -> None:
    rows = "\n".join(f"| {k} | {v} |" for k, v in report.items())
    create_markdown_artifact(
        f"## OCPP gateway run\n\nmode {mode}; {message}\n\n| counter | value |\n|---|---|\n"
        f"{rows}\n", key="ocpp-gateway-summary", description="Counts of one gateway run")


@flow(name="ocpp_gateway_flow",
      description="OCPP gateway: chargers over WebSocket (1.6J, 2.0.1) -> telemetry on Kafka")
def ocpp_gateway_flow(params: GatewayParams = GatewayParams()) -> dict | State:  # noqa: B008
    """Serve chargers until cancelled; returns the run's counters, as the data of a
    Cancelled state when a signal (a cancelled run) stopped it, so the run ends Cancelled
    rather than staying Cancelling."""
    overrides = {"ocpp_mode": params.mode, "ocpp_port": params.port,
                 "ocpp_metrics_port": params.metrics_port,
                 "ocpp_upstream_url": params.upstream_url,
                 "ocpp_allow_unknown": params.allow_unknown}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    logger = get_run_logger()
    registry = Registry(registry_path(settings), allow_unknown=settings.ocpp_allow_unknown)
    metrics = GatewayMetrics()
    if settings.ocpp_mode == "proxy":
        mode = _proxy_mode(settings, metrics)
    elif settings.ocpp_mode == "standalone":
        mode = standalone_mode(settings, metrics, ack_timeout_s=params.ack_timeout_seconds)
    else:
        raise ValueError(f"unknown ocpp_mode {settings.ocpp_mode!r}; choose standalone or proxy")

    def ready(ws_port: int, metrics_port: int) -> None:
        logger.info("OCPP gateway (%s) at ws://%s:%d/<chargePointId>, %d charge points known%s;"
                    " /metrics and /healthz on port %d; telemetry to %s", mode.name,
                    settings.ocpp_host, ws_port, len(registry),
                    ", unknown ones allowed" if registry.allow_unknown else "", metrics_port,
                    settings.topic_telemetry)

    reason: list[str] = []  # why it stopped by itself; empty: a signal stopped it

    async def serve() -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(
            metrics, stop, params.idle_exit_seconds,
            params.max_runtime_minutes * 60 if params.max_runtime_minutes else None, reason))
        try:
            await run_gateway(settings, mode, metrics, registry, stop=stop, ready=ready)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    started = time.monotonic()
    with _signal_handlers_restored():
        asyncio.run(serve())
    report = gateway_report(metrics, time.monotonic() - started)
    message = f"stopped: {reason[0] if reason else 'signal'}"
    publish_summary(report, mode.name, message)
    logger.info("gateway %s; %s", message, report)
    if not reason:
        return Cancelled(message=f"gateway {message}", data=report)
    return report
