"""The gateway's WebSocket server: accept a charge point, then hand it to a mode handler.

Chargers connect to `ws[s]://host:port/<chargePointId>`. Before any handler runs, the
server has checked, in the opening handshake:
- the path names a charge point (404 otherwise, and for a charger missing from the
  registry unless `settings.ocpp_allow_unknown`);
- HTTP Basic (OCPP security profile 1) with the charger's id as user name and its
  password, when the registry holds a password for it (401 otherwise); TLS (profile 2)
  when `settings.ocpp_tls_cert` / `ocpp_tls_key` are set;
- one of the subprotocols `ocpp1.6` / `ocpp2.0.1` was offered (400 otherwise); the
  charger's first choice of them is taken, unless the mode's `prepare` fixes another;
- frames above `settings.ocpp_max_frame_bytes` close the connection (1009).

The interface a mode (standalone, proxy) implements:

    async def handler(connection: ServerConnection, charge_point: ChargePointInfo,
                      version: str) -> None

`connection` is the `websockets.asyncio.server.ServerConnection` (read with
`async for text in connection`, write with `await connection.send(text)`); `version` is
"1.6" or "2.0.1"; `charge_point` is `gateway.registry.ChargePointInfo` (id, site, known).
The handler owns the socket until it returns. An exception escaping it is logged and
counted (`evguard_gateway_handler_errors`), and closes that connection only. A second
connection of the same charger replaces the first, which is closed (1000, "replaced").

    server = GatewayServer(settings, handler, registry, metrics)
    async with server.serve(host, port) as ws_server: ...

`RateLimit` is the per-connection message budget both modes apply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.metrics import GatewayMetrics
from gateway.registry import ChargePointInfo, Registry, RegistryError, check_charge_point_id
from pipelines.settings import Settings
from pipelines.telemetry.ocpp_schemas import SUBPROTOCOLS

log = logging.getLogger("evguard.gateway")

ModeHandler = Callable[[ServerConnection, ChargePointInfo, str], Awaitable[None]]
# Optional, before the handshake is answered: (connection, charge point, the subprotocols it
# offered that the gateway speaks, in its order of preference). A mode may then fix the
# subprotocol by setting `connection.evguard_subprotocol` (the proxy: the upstream's choice).
ModePrepare = Callable[[ServerConnection, ChargePointInfo, list[str]], Awaitable[None]]


class RateLimit:
    """A token bucket: `rate` messages per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def charge_point_id_from_path(path: str) -> str:
    """The last non-empty segment of the request path, URL-decoded.

    Raises:
        RegistryError: no segment, or one OCPP does not allow.
    """
    segments = [s for s in urlsplit(path).path.split("/") if s]
    if not segments:
        raise RegistryError("the URL names no charge point: connect to /<chargePointId>")
    return check_charge_point_id(unquote(segments[-1]))


def basic_credentials(headers: Headers) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, or None."""
    value = headers.get("Authorization")
    if not value or value[:6].lower() != "basic ":
        return None
    try:
        user, _, password = base64.b64decode(value[6:].strip(), validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def offered_subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",") if p.strip()]


def charger_choices(headers: Headers) -> list[str]:
    """The offered subprotocols the gateway speaks, in the charger's order of preference."""
    return [p for p in offered_subprotocols(headers) if p in SUBPROTOCOLS]


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for security profile 2, or None for plain ws:// when no certificate is set."""
    cert, key = str(settings.ocpp_tls_cert), str(settings.ocpp_tls_key)
    if cert in ("", "."):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(Path(cert), Path(key) if key not in ("", ".") else None)
    return context


class GatewayServer:
    """Accepts charge points and runs `handler` for each (see the module doc)."""

    def __init__(self, settings: Settings, handler: ModeHandler, registry: Registry,
                 metrics: GatewayMetrics, prepare: ModePrepare | None = None) -> None:
        self.settings = settings
        self.handler = handler
        self.prepare = prepare
        self.registry = registry
        self.metrics = metrics
        self.active: dict[str, ServerConnection] = {}

    def serve(self, host: str | None = None, port: int | None = None) -> serve:
        """The websockets server (an async context manager; `await` it to start it)."""
        return serve(self._run, host or self.settings.ocpp_host,
                     self.settings.ocpp_port if port is None else port,
                     subprotocols=list(SUBPROTOCOLS), process_request=self._check_request,
                     select_subprotocol=self._select_subprotocol,
                     max_size=self.settings.ocpp_max_frame_bytes, compression=None,
                     ssl=tls_context(self.settings), server_header="evguard-ocpp",
                     logger=logging.getLogger("evguard.gateway.websockets"))

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, reason: str,
                text: str) -> Response:
        self.metrics.refused.labels(reason).inc()
        log.info("refused %s (%s): %s", connection.remote_address, reason, text)
        response = connection.respond(status, text + "\n")
        if status == HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="evguard-ocpp", charset="UTF-8"'
        return response

    async def _check_request(self, connection: ServerConnection,
                             request: Request) -> Response | None:
        try:
            charge_point_id = charge_point_id_from_path(request.path)
        except RegistryError as exc:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "bad_path", str(exc))
        if not set(offered_subprotocols(request.headers)) & set(SUBPROTOCOLS):
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, "no_subprotocol",
                                f"offer one of the subprotocols {', '.join(SUBPROTOCOLS)}")
        self.registry.reload()
        credentials = basic_credentials(request.headers)
        entry = self.registry.lookup(charge_point_id)
        if entry is None and not self.registry.allow_unknown:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "unknown",
                                f"unknown charge point {charge_point_id!r}")
        password = None
        if credentials is not None:
            user, password = credentials
            if user != charge_point_id:
                return self._refuse(connection, HTTPStatus.UNAUTHORIZED, "bad_credentials",
                                    "the Basic user name must be the charge point id")
        info = await asyncio.to_thread(self.registry.authenticate, charge_point_id, password)
        if info is None:
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, "bad_credentials",
                                f"wrong or missing password for {charge_point_id!r}")
        connection.evguard_charge_point = info  # type: ignore[attr-defined]  # for _run
        if self.prepare is not None:
            await self.prepare(connection, info, charger_choices(request.headers))
        return None

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Sequence[str]) -> str | None:
        """The mode's choice, else the charger's first choice among the versions spoken here
        (OCPP-J: a charger lists its versions in its order of preference)."""
        chosen = getattr(connection, "evguard_subprotocol", None)
        if chosen is not None:
            return chosen
        return next((p for p in offered if p in SUBPROTOCOLS), None)

    async def _run(self, connection: ServerConnection) -> None:
        info: ChargePointInfo | None = getattr(connection, "evguard_charge_point", None)
        version = SUBPROTOCOLS.get(connection.subprotocol or "")
        if info is None or version is None:  # cannot happen after _check_request
            await connection.close(1011, "not accepted")
            return
        previous = self.active.get(info.id)
        if previous is not None:
            log.info("%s connected again: closing its previous connection", info.id)
            await previous.close(1000, "replaced by a new connection")
        self.active[info.id] = connection
        self.metrics.connects.labels(version).inc()
        self.metrics.connections.labels(version).inc()
        try:
            await self.handler(connection, info, version)
        except Exception:
            self.metrics.handler_errors.inc()
            log.exception("%s: the %s handler failed; closing this connection only", info.id,
                          version)
            await connection.close(1011, "internal error")
        finally:
            self.metrics.connections.labels(version).dec()
            if self.active.get(info.id) is connection:
                del self.active[info.id]
