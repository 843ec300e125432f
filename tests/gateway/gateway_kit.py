"""A standalone gateway on a thread of its own, and OCPP clients for the tests.

The gateway runs its own event loop on a background thread, so a test drives chargers
from `asyncio.run` (or hypothesis examples) while the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from ocpp import v16, v201
from websockets.asyncio.client import ClientConnection, connect

from gateway.metrics import GatewayMetrics
from gateway.registry import Registry, registry_path
from gateway.server import GatewayServer
from gateway.standalone import StandaloneCsms
from pipelines.settings import Settings


def new_topic(settings: Settings, prefix: str = "test-gateway") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_servers})
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(15)
    return name


def gateway_settings(kafka: Settings, state_dir: Path, **overrides) -> Settings:
    return kafka.model_copy(update={"state_dir": state_dir,
                                    "ocpp_charge_points": state_dir / "charge_points.json",
                                    **overrides})


@dataclass
class RunningGateway:
    url: str
    metrics: GatewayMetrics
    csms: StandaloneCsms
    server: GatewayServer

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


@contextlib.contextmanager
def running_gateway(settings: Settings, ack_timeout_s: float = 5.0) -> Iterator[RunningGateway]:
    """A standalone gateway on 127.0.0.1 (any free port) until the block ends."""
    metrics = GatewayMetrics()
    csms = StandaloneCsms.from_settings(settings, metrics, gateway_name="gw-test",
                                        ack_timeout_s=ack_timeout_s)
    registry = Registry(registry_path(settings), allow_unknown=settings.ocpp_allow_unknown)
    server = GatewayServer(settings, csms.handle, registry, metrics)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    port: list[int] = []
    failure: list[BaseException] = []

    async def main() -> None:
        async with server.serve("127.0.0.1", 0) as ws_server:
            port.append(next(iter(ws_server.sockets)).getsockname()[1])
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except Exception as exc:  # noqa: BLE001 - surfaced to the test below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="test-gateway", daemon=True)
    thread.start()
    assert started.wait(20), "the gateway did not start"
    if failure:
        raise failure[0]
    try:
        yield RunningGateway(f"ws://127.0.0.1:{port[0]}", metrics, csms, server)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        csms.close()
        loop.close()


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def raw_client(url: str, charge_point_id: str, version: str = "1.6",
                     password: str | None = None) -> AsyncIterator[ClientConnection]:
    headers = basic_auth(charge_point_id, password) if password is not None else {}
    async with connect(f"{url}/{charge_point_id}", subprotocols=[f"ocpp{version}"],
                       additional_headers=headers, open_timeout=10) as ws:
        yield ws


@contextlib.asynccontextmanager
async def ocpp_charger(url: str, charge_point_id: str, version: str = "1.6",
                       password: str | None = None) -> AsyncIterator[v16.ChargePoint]:
    """The `ocpp` package's charge point side, connected and reading."""
    async with raw_client(url, charge_point_id, version, password) as ws:
        kind = v16.ChargePoint if version == "1.6" else v201.ChargePoint
        charger = kind(charge_point_id, ws, response_timeout=15)
        reader = asyncio.create_task(charger.start())
        try:
            yield charger
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
