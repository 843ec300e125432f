"""Proxy mode over real WebSockets and the real broker.

A charger (the `ocpp` package's charge-point side) talks to a proxy gateway, which relays
to a second gateway in standalone mode playing the operator's CSMS. Between the two sits
a byte-recording tap, so the test sees exactly what the upstream received and sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from ocpp import v16, v201
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from evguard.services.process import free_port
from gateway.metrics import GatewayMetrics
from gateway.proxy import OcppProxy
from gateway.registry import Registry, add_charger, registry_path
from gateway.run import standalone_mode
from gateway.server import GatewayServer
from pipelines.contracts.telemetry import parse_telemetry
from pipelines.settings import Settings
from tests.support.brokers import delete_topics, private_kafka_broker
from tests.support.faultkit import read_topic

SUBPROTOCOLS = ["ocpp1.6", "ocpp2.0.1"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_topic(settings: Settings) -> str:
    name = f"test-proxy-telemetry-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_servers})
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(15)
    return name


# ---- the upstream CSMS: a standalone gateway ------------------------------------------
@contextlib.asynccontextmanager
async def standalone_gateway(settings: Settings, port: int) -> AsyncIterator[None]:
    metrics = GatewayMetrics()
    mode = standalone_mode(settings, metrics)
    registry = Registry(registry_path(settings), allow_unknown=settings.ocpp_allow_unknown)
    try:
        async with GatewayServer(settings, mode.handler, registry, metrics).serve(
                "127.0.0.1", port):
            yield
    finally:
        await mode.aclose()


# ---- the tap: records the bytes between the proxy and the upstream ---------------------
@dataclass
class Tap:
    """Per charge point, the messages the upstream received from the proxy and sent back."""

    upstream: str
    received: dict[str, list[bytes]] = field(default_factory=dict)
    sent: dict[str, list[bytes]] = field(default_factory=dict)

    async def handle(self, proxy_side: ServerConnection) -> None:
        charge_point_id = proxy_side.request.path.rsplit("/", 1)[-1]
        received = self.received.setdefault(charge_point_id, [])
        sent = self.sent.setdefault(charge_point_id, [])
        async with connect(f"{self.upstream}/{charge_point_id}",
                           subprotocols=[proxy_side.subprotocol]) as upstream:
            async def copy(source, target, record: list[bytes]) -> None:
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        data = await source.recv(decode=False)  # the bytes as they came
                        record.append(data)
                        await target.send(data, text=True)

            tasks = [asyncio.create_task(copy(proxy_side, upstream, received)),
                     asyncio.create_task(copy(upstream, proxy_side, sent))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
        await proxy_side.close()


# ---- the charger: the ocpp package's charge-point side, recording its frames -----------
class Recorded:
    """A client socket that keeps every message the charger sent and received."""

    def __init__(self, connection) -> None:
        self.connection, self.sent, self.received = connection, [], []

    async def send(self, message: str) -> None:
        self.sent.append(message)
        await self.connection.send(message)

    async def recv(self) -> str:
        message = await self.connection.recv()
        self.received.append(message)
        return message


@dataclass
class ChargerRun:
    charge_point_id: str
    version: str
    socket: Recorded | None = None
    transaction_id: str = ""
    meter_calls: int = 0
    answered_during: list[float] = field(default_factory=list)  # when each meter CALL was answered


def meter_16(i: int) -> list[dict]:
    return [{"timestamp": now_iso(), "sampledValue": [
        {"value": str(100 * i), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "29.5", "measurand": "Current.Import", "unit": "A"}]}]


def meter_201(i: int) -> list[dict]:
    return [{"timestamp": now_iso(), "sampled_value": [
        {"value": 100.0 * i, "measurand": "Energy.Active.Import.Register",
         "unit_of_measure": {"unit": "Wh"}},
        {"value": 7000.0, "measurand": "Power.Active.Import"}]}]


async def transaction_16(cp: v16.ChargePoint, run: ChargerRun, meters: int,
                         interval_s: float) -> None:
    await cp.call(v16.call.BootNotification(charge_point_model="EVG-1",
                                            charge_point_vendor="evguard-tests"))
    await cp.call(v16.call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Preparing"))
    await cp.call(v16.call.Authorize(id_tag="TAG-1"))
    started = await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="TAG-1",
                                                      meter_start=0, timestamp=now_iso()))
    run.transaction_id = str(started.transaction_id)
    for i in range(1, meters + 1):
        await cp.call(v16.call.MeterValues(connector_id=1, meter_value=meter_16(i),
                                           transaction_id=started.transaction_id))
        run.meter_calls += 1
        run.answered_during.append(time.monotonic())
        await asyncio.sleep(interval_s)
    await cp.call(v16.call.StopTransaction(meter_stop=100 * meters, timestamp=now_iso(),
                                           transaction_id=started.transaction_id,
                                           reason="EVDisconnected"))


async def transaction_201(cp: v201.ChargePoint, run: ChargerRun, meters: int,
                          interval_s: float) -> None:
    run.transaction_id = f"tx-{uuid.uuid4().hex[:8]}"
    await cp.call(v201.call.BootNotification(
        charging_station={"model": "EVG-2", "vendor_name": "evguard-tests"}, reason="PowerUp"))
    await cp.call(v201.call.StatusNotification(timestamp=now_iso(), connector_status="Occupied",
                                               evse_id=1, connector_id=1))
    info = {"transaction_id": run.transaction_id}
    await cp.call(v201.call.TransactionEvent(
        event_type="Started", timestamp=now_iso(), trigger_reason="CablePluggedIn", seq_no=0,
        transaction_info=info, evse={"id": 1, "connector_id": 1}, meter_value=meter_201(0)))
    for i in range(1, meters + 1):
        await cp.call(v201.call.TransactionEvent(
            event_type="Updated", timestamp=now_iso(), trigger_reason="MeterValuePeriodic",
            seq_no=i, transaction_info=info, meter_value=meter_201(i)))
        run.meter_calls += 1
        run.answered_during.append(time.monotonic())
        await asyncio.sleep(interval_s)
    await cp.call(v201.call.TransactionEvent(
        event_type="Ended", timestamp=now_iso(), trigger_reason="EVCommunicationLost",
        seq_no=meters + 1, transaction_info={**info, "stopped_reason": "EVDisconnected"},
        meter_value=meter_201(meters)))


async def run_charger(url: str, run: ChargerRun, meters: int = 4,
                      interval_s: float = 0.0) -> None:
    subprotocol = f"ocpp{run.version}"
    async with connect(f"{url}/{run.charge_point_id}", subprotocols=[subprotocol]) as ws:
        run.socket = Recorded(ws)
        if run.version == "1.6":
            cp = v16.ChargePoint(run.charge_point_id, run.socket, response_timeout=10)
            script = transaction_16(cp, run, meters, interval_s)
        else:
            cp = v201.ChargePoint(run.charge_point_id, run.socket, response_timeout=10)
            script = transaction_201(cp, run, meters, interval_s)
        listener = asyncio.create_task(cp.start())
        try:
            await script
        finally:
            listener.cancel()


# ---- the proxy under test --------------------------------------------------------------
def gateway_settings(base: Settings, state_dir: Path, **update) -> Settings:
    return base.model_copy(update={"state_dir": state_dir, "ocpp_allow_unknown": True,
                                   "ocpp_charge_points": state_dir / "charge_points.json",
                                   **update})


@contextlib.asynccontextmanager
async def proxy_gateway(settings: Settings, port: int, **mirror_options):
    proxy = OcppProxy.from_settings(settings, mirror_options=mirror_options)
    metrics = GatewayMetrics()
    proxy.register_metrics(metrics.registry)
    registry = Registry(registry_path(settings), allow_unknown=settings.ocpp_allow_unknown)
    server = GatewayServer(settings, proxy.handle, registry, metrics)
    try:
        async with server.serve("127.0.0.1", port):
            yield proxy, metrics
    finally:
        await asyncio.to_thread(proxy.close, 10.0)


def events_of(messages, charge_point_id: str) -> list:
    return [parse_telemetry(m.value()) for m in messages
            if m.key() == charge_point_id.encode()]


def test_chargers_complete_transactions_through_the_proxy_and_frames_pass_unchanged(
        kafka_settings, tmp_path):
    topic, upstream_topic = new_topic(kafka_settings), new_topic(kafka_settings)
    upstream_port, tap_port, proxy_port = free_port(), free_port(), free_port()
    upstream_settings = gateway_settings(kafka_settings, tmp_path / "upstream",
                                         topic_telemetry=upstream_topic)
    tap = Tap(f"ws://127.0.0.1:{upstream_port}")
    proxy_settings = gateway_settings(kafka_settings, tmp_path / "proxy", topic_telemetry=topic,
                                      ocpp_upstream_url=f"ws://127.0.0.1:{tap_port}")
    runs = [ChargerRun(f"CP16-{uuid.uuid4().hex[:6]}", "1.6"),
            ChargerRun(f"CP201-{uuid.uuid4().hex[:6]}", "2.0.1")]

    async def scenario():
        async with standalone_gateway(upstream_settings, upstream_port), \
                serve(tap.handle, "127.0.0.1", tap_port, subprotocols=SUBPROTOCOLS), \
                proxy_gateway(proxy_settings, proxy_port) as (proxy, metrics):
            await asyncio.wait_for(asyncio.gather(
                *(run_charger(f"ws://127.0.0.1:{proxy_port}", run) for run in runs)), 30)
            deadline = time.monotonic() + 10
            while proxy.stats.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return proxy.stats, metrics.render().decode()

    try:
        stats, exposition = asyncio.run(scenario())
        for run in runs:
            assert run.meter_calls == 4
            sent = [m.encode() for m in run.socket.sent]
            got = [m.encode() for m in run.socket.received]
            assert tap.received[run.charge_point_id] == sent, "changed on the way up"
            assert tap.sent[run.charge_point_id] == got, "changed on the way down"
        assert stats.upstream_failures == {} and stats.unmirrored == 0
        assert "evguard_ocpp_proxy_frames_total" in exposition

        messages = read_topic(kafka_settings, topic, stats.events, quiet_s=0.5)
        for run in runs:
            events = events_of(messages, run.charge_point_id)
            kinds = [e.kind for e in events]
            assert kinds[0] == "connected" and kinds[-1] == "disconnected", kinds
            for kind in ("boot", "status", "transaction_started", "transaction_ended"):
                assert kind in kinds, (run.version, kinds)
            meters = [e for e in events if e.kind == "meter"]
            assert len(meters) >= run.meter_calls
            # the transaction id known from the CSMS's answer (1.6) or the charger (2.0.1)
            assert {e.transaction_id for e in meters} == {run.transaction_id}
            assert max(e.measurands["energy_wh"] for e in meters) == 100.0 * run.meter_calls
            assert all(e.ocpp_version == run.version and e.raw for e in meters)
    finally:
        delete_topics(kafka_settings, [topic, upstream_topic])


def test_an_unreachable_upstream_closes_the_charger_with_bad_gateway(kafka_settings, tmp_path):
    proxy_port = free_port()
    settings = gateway_settings(kafka_settings, tmp_path / "proxy",
                                ocpp_upstream_url=f"ws://127.0.0.1:{free_port()}")

    async def scenario():
        async with proxy_gateway(settings, proxy_port) as (proxy, metrics):
            async with connect(f"ws://127.0.0.1:{proxy_port}/CP-lonely",
                               subprotocols=["ocpp1.6"]) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 15)
            return closed.value, proxy.stats, metrics.render().decode()

    closed, stats, exposition = asyncio.run(scenario())
    assert closed.rcvd.code == 1014 and "unreachable" in closed.rcvd.reason
    assert stats.upstream_failures["unreachable"] == 1 and stats.relayed == 0
    assert 'evguard_ocpp_proxy_upstream_failures_total{reason="unreachable"} 1.0' in exposition


def test_nothing_is_lost_when_kafka_restarts_under_the_proxy(kafka_settings, tmp_path):
    """The mirror's broker stops while a charger keeps sending meter values; forwarding
    goes on (the upstream, on another broker, keeps answering), and once the broker is
    back every event the proxy mirrored is on the topic."""
    with private_kafka_broker(kafka_settings, tmp_path / "kafka") as (private, stack):
        topic = new_topic(private)
        upstream_port, proxy_port = free_port(), free_port()
        upstream_topic = new_topic(kafka_settings)
        upstream_settings = gateway_settings(kafka_settings, tmp_path / "upstream",
                                             topic_telemetry=upstream_topic)
        proxy_settings = gateway_settings(
            private, tmp_path / "proxy", topic_telemetry=topic,
            ocpp_upstream_url=f"ws://127.0.0.1:{upstream_port}")
        run = ChargerRun(f"CP-{uuid.uuid4().hex[:6]}", "1.6")
        outage: list[float] = []

        async def restart_kafka() -> None:
            await asyncio.sleep(1.0)
            kafka = stack.kafka_process()
            outage.append(time.monotonic())
            assert await asyncio.to_thread(kafka.stop)
            await asyncio.sleep(2.5)
            outage.append(time.monotonic())
            assert await asyncio.to_thread(kafka.start)

        async def scenario():
            async with standalone_gateway(upstream_settings, upstream_port), \
                    proxy_gateway(proxy_settings, proxy_port, stall_s=0.5) as (proxy, _m):
                published: list[str] = []
                offer = proxy.publish
                proxy.publish = lambda event: (published.append(event.event_id), offer(event))
                await asyncio.wait_for(asyncio.gather(
                    run_charger(f"ws://127.0.0.1:{proxy_port}", run, meters=150,
                                interval_s=0.03),
                    restart_kafka()), 60)
                deadline = time.monotonic() + 20
                mirror = proxy.mirror
                while (mirror.stats.spool_events or mirror.stats.in_flight
                       or proxy.stats.connections) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                return published, mirror.stats

        try:
            published, mirror_stats = asyncio.run(scenario())
        finally:
            delete_topics(kafka_settings, [upstream_topic])
        down_from, down_to = outage
        assert any(down_from < t < down_to for t in run.answered_during), \
            "no meter value was answered while Kafka was down"
        assert mirror_stats.spooled > 0 and mirror_stats.replayed > 0
        assert not mirror_stats.dropped and mirror_stats.spool_events == 0

        messages = read_topic(private, topic, len(published), quiet_s=0.5)
        on_topic = {parse_telemetry(m.value()).event_id for m in messages}
        missing = [e for e in published if e not in on_topic]
        assert not missing, f"{len(missing)} of {len(published)} lost, first {missing[:3]}"
        meters = [e for e in events_of(messages, run.charge_point_id) if e.kind == "meter"]
        assert len({e.event_id for e in meters}) == run.meter_calls == 150


def test_basic_credentials_reach_the_upstream_only_when_configured(kafka_settings, tmp_path):
    """Security profile 1 at the operator's CSMS: it sees the charger's own password when
    `ocpp_upstream_forward_auth` is on, and refuses the charger when it is off."""
    charger, password = f"CP-auth-{uuid.uuid4().hex[:6]}", "s3cret-pass"
    upstream_topic = new_topic(kafka_settings)
    upstream_port, forwarding_port, plain_port = free_port(), free_port(), free_port()
    upstream_settings = gateway_settings(kafka_settings, tmp_path / "upstream",
                                         topic_telemetry=upstream_topic,
                                         ocpp_allow_unknown=False)
    add_charger(registry_path(upstream_settings), charger, "site-a", password)
    proxies = {}
    for name, port, forward in (("forwarding", forwarding_port, True),
                                ("plain", plain_port, False)):
        proxies[name] = gateway_settings(
            kafka_settings, tmp_path / name, topic_telemetry=upstream_topic,
            ocpp_upstream_url=f"ws://127.0.0.1:{upstream_port}",
            ocpp_upstream_forward_auth=forward, ocpp_allow_unknown=False)
        add_charger(registry_path(proxies[name]), charger, "site-a", password)
    authorization = "Basic " + base64.b64encode(f"{charger}:{password}".encode()).decode()

    async def boot(port: int):
        async with connect(f"ws://127.0.0.1:{port}/{charger}", subprotocols=["ocpp1.6"],
                           additional_headers={"Authorization": authorization}) as ws:
            cp = v16.ChargePoint(charger, ws, response_timeout=10)
            listener = asyncio.create_task(cp.start())
            try:
                return await cp.call(v16.call.BootNotification(
                    charge_point_model="EVG-1", charge_point_vendor="evguard-tests"))
            finally:
                listener.cancel()

    async def scenario():
        async with standalone_gateway(upstream_settings, upstream_port), \
                proxy_gateway(proxies["forwarding"], forwarding_port) as (forwarding, _m1), \
                proxy_gateway(proxies["plain"], plain_port) as (plain, _m2):
            accepted = await asyncio.wait_for(boot(forwarding_port), 15)
            async with connect(f"ws://127.0.0.1:{plain_port}/{charger}",
                               subprotocols=["ocpp1.6"],
                               additional_headers={"Authorization": authorization}) as ws:
                with pytest.raises(ConnectionClosed) as refused:
                    await asyncio.wait_for(ws.recv(), 15)
            return accepted, refused.value, forwarding.stats, plain.stats

    try:
        accepted, refused, forwarding, plain = asyncio.run(scenario())
    finally:
        delete_topics(kafka_settings, [upstream_topic])
    assert accepted.status == "Accepted" and forwarding.relayed == 1
    assert refused.rcvd.code == 1014 and "HTTP 401" in refused.rcvd.reason
    assert plain.upstream_failures["refused"] == 1 and plain.relayed == 0


def test_close_codes_and_binary_messages_pass_through(kafka_settings, tmp_path):
    """Either side's close reaches the other with its code and reason; a binary message
    (not OCPP-J, so not mirrored) is forwarded as the same bytes."""
    upstream_port, proxy_port = free_port(), free_port()
    settings = gateway_settings(kafka_settings, tmp_path / "proxy",
                                ocpp_upstream_url=f"ws://127.0.0.1:{upstream_port}")
    seen: dict[str, list] = {}

    async def upstream(connection: ServerConnection) -> None:
        charger = connection.request.path.rsplit("/", 1)[-1]
        received = seen.setdefault(charger, [])
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                received.append(message)
                if message == '[2,"bye","Heartbeat",{}]':
                    await connection.close(4001, "bye from the CSMS")
        close = connection.protocol.close_rcvd
        received.append((close.code, close.reason) if close else None)

    async def scenario():
        async with serve(upstream, "127.0.0.1", upstream_port, subprotocols=["ocpp1.6"]), \
                proxy_gateway(settings, proxy_port) as (proxy, _m):
            url = f"ws://127.0.0.1:{proxy_port}"
            async with connect(f"{url}/CP-leaves", subprotocols=["ocpp1.6"]) as ws:
                await ws.send(b"\x00\x01binary\xff")
                await ws.send('[2,"1","Heartbeat",{}]')
                await ws.close(4002, "charger done")
            async with connect(f"{url}/CP-dismissed", subprotocols=["ocpp1.6"]) as ws:
                await ws.send('[2,"bye","Heartbeat",{}]')
                with pytest.raises(ConnectionClosed) as dismissed:
                    await asyncio.wait_for(ws.recv(), 10)
            deadline = time.monotonic() + 10
            while proxy.stats.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return dismissed.value, proxy.stats

    dismissed, stats = asyncio.run(scenario())
    assert seen["CP-leaves"] == [b"\x00\x01binary\xff", '[2,"1","Heartbeat",{}]',
                                 (4002, "charger done")]
    assert dismissed.rcvd.code == 4001 and dismissed.rcvd.reason == "bye from the CSMS"
    assert stats.unmirrored == 1 and stats.relayed == 2
