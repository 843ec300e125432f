"""A small CSMS for the fleet tests, built on the `ocpp` package's central-system side.

It accepts `ocpp1.6` and `ocpp2.0.1`, checks HTTP Basic credentials, answers the
calls a charger sends in a transaction, hands out 1.6 transaction ids, and records
every frame it receives with its arrival time, and when each connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Central16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Central201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import basic_auth, serve
from websockets.exceptions import ConnectionClosed


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Frame:
    """A CALL a charger sent: when it arrived, its action and payload."""

    received_ts: float
    action: str
    payload: dict


@dataclass
class Link:
    """One WebSocket connection of one charge point."""

    cp_id: str
    version: str
    frames: list[Frame] = field(default_factory=list)
    closed_ts: float | None = None
    close_code: int | None = None


class _Recording:
    link: Link

    async def route_message(self, raw_msg):
        message = json.loads(raw_msg)
        if message[0] == 2:
            self.link.frames.append(Frame(time.time(), message[2], message[3]))
        await super().route_message(raw_msg)


_transaction_ids = itertools.count(1000)


class Central16Recorder(_Recording, Central16):
    @on("BootNotification")
    def boot(self, **_):
        return result16.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self, **_):
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **_):
        return result16.StatusNotification()

    @on("Authorize")
    def authorize(self, **_):
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")
    def start_transaction(self, **_):
        return result16.StartTransaction(transaction_id=next(_transaction_ids),
                                         id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    def meter(self, **_):
        return result16.MeterValues()

    @on("StopTransaction")
    def stop_transaction(self, **_):
        return result16.StopTransaction()


class Central201Recorder(_Recording, Central201):
    @on("BootNotification")
    def boot(self, **_):
        return result201.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self, **_):
        return result201.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **_):
        return result201.StatusNotification()

    @on("TransactionEvent")
    def transaction(self, **_):
        return result201.TransactionEvent()

    @on("NotifyEvent")
    def notify(self, **_):
        return result201.NotifyEvent()


class TestCsms:
    """`async with TestCsms(port, passwords) as csms:` serves until the block ends."""

    __test__ = False

    def __init__(self, port: int, passwords: dict[str, str]):
        self.port, self.passwords = port, passwords
        self.links: list[Link] = []
        self._server = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def links_of(self, cp_id: str) -> list[Link]:
        return [link for link in self.links if link.cp_id == cp_id]

    def frames_of(self, cp_id: str) -> list[Frame]:
        return [frame for link in self.links_of(cp_id) for frame in link.frames]

    async def _handle(self, ws) -> None:
        cp_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        version = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}[ws.subprotocol]
        link = Link(cp_id, version)
        self.links.append(link)
        central = (Central16Recorder if version == "1.6" else Central201Recorder)(cp_id, ws)
        central.link = link
        try:
            await central.start()
        except ConnectionClosed as exc:
            link.close_code = exc.rcvd.code if exc.rcvd else 1006
        finally:
            link.closed_ts = time.time()

    def _check(self, username: str, password: str) -> bool:
        return self.passwords.get(username) == password

    async def __aenter__(self) -> Self:
        self._server = await serve(self._handle, "127.0.0.1", self.port,
                                   subprotocols=["ocpp1.6", "ocpp2.0.1"],
                                   process_request=basic_auth(check_credentials=self._check))
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
