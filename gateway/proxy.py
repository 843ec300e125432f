"""Proxy mode: each charger accepted by the gateway is relayed to the operator's CSMS, and
every frame is mirrored to Kafka as telemetry.

    proxy = OcppProxy.from_settings(settings)      # starts the Kafka mirror
    proxy.register_metrics(metrics.registry)
    server = GatewayServer(settings, proxy.handle, registry, metrics,   # per charger socket
                           prepare=proxy.prepare)
    ...
    proxy.close()

For each charger the proxy opens `<ocpp_upstream_url>/<charge point id>` while the
charger's handshake is still open (`prepare`), offering the subprotocols the charger
offered (and, when `ocpp_upstream_forward_auth` is on, the charger's own `Authorization`
header), and answers the charger with the one the upstream chose. Then it forwards every
message both ways, in order, unchanged: a text message is re-sent as the same text (the
same UTF-8 bytes), a binary one as the same bytes. WebSocket framing is not kept (a
fragmented message goes on as one frame) and pings are each side's own.

Forwarding never waits for Kafka: a frame is parsed and normalised with the shared
`pipelines.telemetry.ocpp_frames` (one `ConnectionState` per socket for both
directions, so StartTransaction.conf's transaction id is known) before it is sent on, and
its events are handed to the mirror, which only queues them (`gateway.mirror`). A frame
that does not parse is forwarded all the same, and counted.

If the upstream cannot be reached, refuses the charge point, or does not accept its
subprotocol, the charger's socket is closed with 1014 (Bad Gateway) and a reason; the
proxy never answers in the CSMS's place. When either side closes, the other is closed
with the same code and reason (1000 for a close without a code, 1001 when the peer's
connection dropped without a close frame).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import EXTERNAL_CLOSE_CODES, CloseCode

from gateway.kafka_sink import ensure_topic
from gateway.mirror import KafkaMirror, MirrorCollector, mirror_producer_config
from gateway.registry import ChargePointInfo
from gateway.server import RateLimit
from gateway.spool import Spool
from pipelines.contracts.telemetry import TelemetryEvent, encode_telemetry
from pipelines.settings import Settings
from pipelines.telemetry.ocpp_frames import (
    ConnectionState,
    FrameError,
    Sender,
    connection_event,
    normalise,
    parse_frame,
)

log = logging.getLogger("evguard.gateway.proxy")

UPSTREAM_OPEN_TIMEOUT_S = 10.0
MAX_CLOSE_REASON = 120  # bytes; a close frame's reason may take 123


class UpstreamUnavailable(ConnectionError):
    """The upstream CSMS could not be reached, refused the charge point, or did not accept
    its subprotocol. `reason` is the metric label, `str()` the text for people."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


@dataclass
class ProxyStats:
    """What the proxy did (written on its event loop)."""

    connections: int = 0  # open charger <-> upstream pairs
    relayed: int = 0  # pairs opened since start
    frames: collections.Counter = field(default_factory=collections.Counter)  # by sender
    unmirrored: int = 0  # forwarded frames the normaliser cannot read (not OCPP-J, unknown action)
    rate_limited: int = 0  # charger messages held back by the rate limit
    events: int = 0  # telemetry events handed to the mirror
    upstream_failures: collections.Counter = field(default_factory=collections.Counter)


def upstream_url(base: str, charge_point_id: str) -> str:
    """`base` + "/" + the charge point id, percent-encoded as one path segment."""
    if not base.startswith(("ws://", "wss://")):
        raise ValueError(f"the upstream CSMS URL must start with ws:// or wss://, got {base!r}")
    return f"{base.rstrip('/')}/{quote(charge_point_id, safe='')}"


def close_to_forward(connection, lost_reason: str) -> tuple[int, str]:
    """The code and reason to close the other side with, after `connection` closed."""
    received = connection.protocol.close_rcvd
    if received is None:
        return CloseCode.GOING_AWAY, lost_reason
    if received.code == CloseCode.NO_STATUS_RCVD:
        return CloseCode.NORMAL_CLOSURE, ""
    if received.code in EXTERNAL_CLOSE_CODES or 3000 <= received.code < 5000:
        return received.code, _cut(received.reason)
    return CloseCode.GOING_AWAY, _cut(received.reason)


def _cut(text: str) -> str:
    return text.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


class OcppProxy:
    """Relays charger sockets to the upstream CSMS and mirrors their frames.

    Args:
        upstream: the CSMS base URL (`ocpp_upstream_url`).
        publish: takes each telemetry event; must not block (the mirror's `offer`).
        forward_auth: pass the charger's `Authorization` header upstream.
        gateway: this gateway's name, stamped on every event.
        max_frame_bytes: largest message accepted from the upstream (at least 1 MiB).
        open_timeout_s: how long to wait for the upstream's handshake.
        max_messages_per_s: a charger sending faster is slowed down (its messages are
            read, and forwarded, no faster; bursts of twice this); None = no limit.
        mirror: the mirror behind `publish`, closed by `close`.
    """

    def __init__(self, upstream: str, publish: Callable[[TelemetryEvent], None], *,
                 forward_auth: bool = False, gateway: str = "",
                 max_frame_bytes: int = 1 << 20,
                 open_timeout_s: float = UPSTREAM_OPEN_TIMEOUT_S,
                 max_messages_per_s: float | None = None,
                 mirror: KafkaMirror | None = None) -> None:
        upstream_url(upstream, "x")  # fails now on a bad URL, not at the first charger
        self.upstream, self.publish = upstream, publish
        self.forward_auth, self.gateway = forward_auth, gateway or socket.gethostname()
        self.max_frame_bytes = max(max_frame_bytes, 1 << 20)
        self.open_timeout_s, self.mirror = open_timeout_s, mirror
        self.max_messages_per_s = max_messages_per_s
        self.stats = ProxyStats()
        self._watchers: set[asyncio.Task] = set()

    @classmethod
    def from_settings(cls, settings: Settings, gateway: str = "",
                      mirror_options: dict | None = None) -> OcppProxy:
        """A proxy to `settings.ocpp_upstream_url` whose mirror produces to
        `settings.topic_telemetry` and spools under `<state_dir>/ocpp-spool/` (started).
        `mirror_options` go to `KafkaMirror` (bounds, stall time).

        The telemetry topic is created when missing; a broker that does not answer is
        logged, not fatal: forwarding starts, and events spool until Kafka is back (the
        topic must exist by then, or the broker create it on first use).
        """
        try:
            ensure_topic(settings, settings.topic_telemetry, timeout_s=5.0)
        except ConnectionError as exc:
            log.warning("proxy: %s; forwarding anyway, telemetry spools until Kafka answers",
                        exc)
        mirror = KafkaMirror(mirror_producer_config(settings.kafka_servers),
                             settings.topic_telemetry, spool_for(settings),
                             **(mirror_options or {})).start()
        return cls(settings.ocpp_upstream_url, lambda event: mirror.offer(
                       event.key, encode_telemetry(event)),
                   forward_auth=settings.ocpp_upstream_forward_auth,
                   gateway=gateway or f"{socket.gethostname()}:{settings.ocpp_port}",
                   max_frame_bytes=settings.ocpp_max_frame_bytes,
                   max_messages_per_s=settings.ocpp_max_messages_per_s, mirror=mirror)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Expose the proxy's and its mirror's counters (`ProxyCollector`) on `registry`."""
        registry.register(ProxyCollector(self))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the mirror (what Kafka has not acknowledged stays in the spool)."""
        if self.mirror is not None:
            self.mirror.close(timeout)

    # ---- one charger ---------------------------------------------------------------
    async def handle(self, charger: ServerConnection, charge_point: ChargePointInfo,
                     version: str) -> None:
        """Relay one accepted charger socket until either side closes (the
        `gateway.server` mode handler).

        Args:
            charger: the charger's socket, handshake done, with its OCPP subprotocol.
            charge_point: its identity and site (from the registry).
            version: "1.6" or "2.0.1", as negotiated.
        """
        state = ConnectionState(charge_point.id, version, site_id=charge_point.site,
                                gateway=self.gateway, connection_id=uuid.uuid4().hex[:12])
        try:  # the socket `prepare` opened, else one opened now
            failure = getattr(charger, "evguard_upstream_failure", None)
            if failure is not None:
                raise failure
            upstream = (getattr(charger, "evguard_upstream", None)
                        or await self.connect_upstream(charger, charge_point.id))
        except UpstreamUnavailable as exc:
            self.stats.upstream_failures[exc.reason] += 1
            log.warning("proxy: %s closed: %s", charge_point.id, exc)
            await charger.close(CloseCode.BAD_GATEWAY, _cut(str(exc)))
            return
        self.stats.connections += 1
        self.stats.relayed += 1
        self._publish([connection_event(state, "connected", time.time())])
        reason = ""
        try:
            reason = await self.relay(charger, upstream, state)
        finally:
            self.stats.connections -= 1
            self._publish([connection_event(state, "disconnected", time.time(), reason)])

    __call__ = handle

    def health(self) -> dict:
        """For `/healthz`: forwarding does not depend on Kafka, so this only informs."""
        detail = {"mode": "proxy", "upstream": self.upstream,
                  "connections": self.stats.connections}
        if self.mirror is not None:
            s = self.mirror.stats
            detail.update(kafka_keeping_up=self.mirror.healthy, spool_events=s.spool_events,
                          spool_bytes=s.spool_bytes, dropped_events=sum(s.dropped.values()))
        return detail

    async def prepare(self, charger: ServerConnection, charge_point: ChargePointInfo,
                      offered: list[str]) -> None:
        """Before the charger's handshake is answered (`gateway.server.ModePrepare`): open
        its upstream socket offering the versions the charger offered, so the charger gets
        the one the upstream chose: with only the charger's first choice offered, a charger
        speaking both versions could never reach a CSMS speaking only its second. A failure
        is kept for `handle`, which closes the charger with 1014 as before."""
        try:
            upstream = await self.connect_upstream(charger, charge_point.id, offered)
        except UpstreamUnavailable as exc:
            charger.evguard_upstream_failure = exc  # type: ignore[attr-defined]
            return
        charger.evguard_upstream = upstream  # type: ignore[attr-defined]
        charger.evguard_subprotocol = upstream.subprotocol  # type: ignore[attr-defined]
        # if the charger's handshake fails now, no handler will close the upstream socket
        watcher = asyncio.create_task(self._close_when_gone(charger, upstream))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    @staticmethod
    async def _close_when_gone(charger: ServerConnection, upstream: ClientConnection) -> None:
        await charger.wait_closed()
        await upstream.close()  # a no-op after a relay, which closes it itself

    async def connect_upstream(self, charger: ServerConnection, charge_point_id: str,
                               subprotocols: list[str] | None = None) -> ClientConnection:
        """Open the upstream socket for one charger (offering `subprotocols`, default the
        charger's; its credentials when configured).

        Raises:
            UpstreamUnavailable: unreachable, refused, or none of the subprotocols.
        """
        subprotocols = subprotocols or [charger.subprotocol]
        headers = {}
        authorization = charger.request.headers.get("Authorization") if charger.request else None
        if self.forward_auth and authorization:
            headers["Authorization"] = authorization
        url = upstream_url(self.upstream, charge_point_id)
        try:
            upstream = await connect(url, subprotocols=subprotocols, additional_headers=headers,
                                     open_timeout=self.open_timeout_s, compression=None,
                                     max_size=self.max_frame_bytes)
        except InvalidStatus as exc:
            raise UpstreamUnavailable("refused", f"upstream CSMS refused {charge_point_id}: "
                                                 f"HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise UpstreamUnavailable("unreachable", f"upstream CSMS unreachable: "
                                                     f"{type(exc).__name__}") from exc
        if upstream.subprotocol not in subprotocols:
            await upstream.close()
            raise UpstreamUnavailable("subprotocol", f"upstream CSMS did not accept "
                                                     f"{', '.join(subprotocols)}")
        return upstream

    async def relay(self, charger: ServerConnection, upstream: ClientConnection,
                    state: ConnectionState) -> str:
        """Forward both ways until one side closes; close the other alike. Returns why."""
        pumps = {
            asyncio.create_task(self._pump(charger, upstream, "charger", state)): charger,
            asyncio.create_task(self._pump(upstream, charger, "csms", state)): upstream,
        }
        try:
            done, _pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            closed_by = first.result()
            if closed_by is None:  # its target closed while it was sending
                closed_by = upstream if pumps[first] is charger else charger
            other = upstream if closed_by is charger else charger
            side = "charger" if closed_by is charger else "upstream CSMS"
            code, reason = close_to_forward(closed_by, f"{side} connection lost")
            await other.close(code, reason)
            return f"{side} closed: {code} {reason}".rstrip()
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await upstream.close()  # no-op when closed; else (an error above) not left open

    async def _pump(self, source, target, sender: Sender, state: ConnectionState):
        """Forward `source` to `target`; return `source` when it closed, None when
        `target` did."""
        limit = None
        if sender == "charger" and self.max_messages_per_s:
            limit = RateLimit(self.max_messages_per_s, 2 * self.max_messages_per_s)
        while True:
            try:
                message = await source.recv()
            except ConnectionClosed:
                return source
            received = time.time()
            if limit is not None and not limit.allow():
                # slowed, not refused: answering in the CSMS's place is not the proxy's to do
                self.stats.rate_limited += 1
                while not limit.allow():
                    await asyncio.sleep(1.0 / self.max_messages_per_s)
            self.stats.frames[sender] += 1
            self._mirror(message, sender, state, received)  # before sending: see docstring
            try:
                await target.send(message)
            except ConnectionClosed:
                return None

    def _mirror(self, message: str | bytes, sender: Sender, state: ConnectionState,
                received: float) -> None:
        # the normaliser runs before the frame goes on, so the call is remembered before
        # its answer can come back the other way
        if not isinstance(message, str):
            self.stats.unmirrored += 1  # OCPP-J is text; forwarded all the same
            return
        try:
            frame = parse_frame(message, state.version, validate=False)
        except FrameError:
            self.stats.unmirrored += 1
            return
        try:
            self._publish(normalise(frame, message, sender, state, received))
        except Exception:  # a mirror fault must never stop the forwarding
            log.exception("proxy: mirroring a frame of %s failed", state.charge_point_id)

    def _publish(self, events: list[TelemetryEvent]) -> None:
        for event in events:
            self.publish(event)
            self.stats.events += 1


def spool_for(settings: Settings) -> Spool:
    """The gateway's spool: `<state_dir>/ocpp-spool/`, at most `ocpp_spool_max_bytes`."""
    return Spool(Path(settings.state_path) / "ocpp-spool", settings.ocpp_spool_max_bytes)


class ProxyCollector:
    """Prometheus view of a proxy and its mirror (register it on a registry)."""

    def __init__(self, proxy: OcppProxy) -> None:
        self.proxy = proxy
        self._mirror = MirrorCollector(proxy.mirror) if proxy.mirror is not None else None

    def collect(self) -> Iterator:
        s = self.proxy.stats
        yield GaugeMetricFamily("evguard_ocpp_proxy_connections",
                                "Charger sockets relayed to the upstream CSMS now",
                                value=s.connections)
        yield CounterMetricFamily("evguard_ocpp_proxy_relayed_connections",
                                  "Charger sockets relayed since start", value=s.relayed)
        frames = CounterMetricFamily("evguard_ocpp_proxy_frames",
                                     "Messages forwarded, by sender", labels=["sender"])
        for sender in ("charger", "csms"):
            frames.add_metric([sender], s.frames[sender])
        yield frames
        yield CounterMetricFamily("evguard_ocpp_proxy_unmirrored_frames",
                                  "Forwarded messages the normaliser cannot read (not OCPP-J, "
                                  "an unknown action): not mirrored", value=s.unmirrored)
        yield CounterMetricFamily("evguard_ocpp_proxy_rate_limited",
                                  "Charger messages held back by the per-connection rate limit",
                                  value=s.rate_limited)
        yield CounterMetricFamily("evguard_ocpp_proxy_events",
                                  "Telemetry events handed to the mirror", value=s.events)
        failures = CounterMetricFamily("evguard_ocpp_proxy_upstream_failures",
                                       "Charger sockets closed because the upstream CSMS "
                                       "was unreachable or refused", labels=["reason"])
        for reason in ("unreachable", "refused", "subprotocol"):
            failures.add_metric([reason], s.upstream_failures[reason])
        yield failures
        if self._mirror is not None:
            yield from self._mirror.collect()
