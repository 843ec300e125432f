"""Standalone mode: the gateway is the CSMS. It answers each CALL as the specification
requires, but only after Kafka acknowledged the CALL's telemetry events.

Per connection, frames are handled one at a time, in order (a charger waits for each
answer anyway, and its events must reach Kafka in order). A slow Kafka therefore holds
back only the chargers whose events wait, never the loop: every connection is its own
task and waiting is `await`.

What each frame gets back:
- a valid CALL the CSMS handles: its CALLRESULT, once its events are stored; CALLERROR
  InternalError when Kafka did not acknowledge in time (the charger retries; a
  StartTransaction sent again with the same id and payload gets the same transaction id);
- another action chargers send: an empty CALLRESULT where the schema allows one (DataTransfer:
  UnknownVendorId); an action only the CSMS sends: NotSupported; an unknown one:
  NotImplemented;
- a malformed or schema-invalid CALL: the CALLERROR `parse_frame` names;
- a frame without a readable id: counted and logged; 2.0.1 gets RpcFrameworkError with id
  "-1", 1.6 nothing;
- over the rate limit (`ocpp_max_messages_per_s`, bursts of twice that): CALLERROR
  GenericError when its id can be read, and the frame is not processed (nor logged). The connection stays open: a charger
  catching up after an outage is bursty, and OCPP has it retry on CALLERROR.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.kafka_sink import DeliveryFailed, KafkaSink, ensure_topic
from gateway.metrics import GatewayMetrics
from gateway.registry import ChargePointInfo
from gateway.server import RateLimit
from gateway.transaction_ids import TransactionIds
from pipelines.settings import Settings
from pipelines.telemetry.ocpp_frames import (
    Call,
    CallResult,
    ConnectionState,
    FrameError,
    connection_event,
    encode_call_error,
    encode_call_result,
    normalise,
    parse_frame,
)
from pipelines.telemetry.ocpp_schemas import CHARGER_ACTIONS, known_actions, schema_violation

log = logging.getLogger("evguard.gateway.standalone")

ACK_TIMEOUT_S = 10.0  # a charger's own call timeout is typically 30-60 s
MAX_UNSTORED = 10_000


def iso_now(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class CsmsAnswers:
    """What the CSMS answers to each CALL a charger sends (pure but for the id source)."""

    def __init__(self, heartbeat_s: int, transaction_ids: Callable[[], int]) -> None:
        self.heartbeat_s = heartbeat_s
        self.transaction_ids = transaction_ids

    def answer(self, call: Call, version: str, now: float) -> dict:
        """The CALLRESULT payload.

        Raises:
            FrameError: NotSupported for an action a charger does not send, or has no
                answer here.
        """
        action, payload = call.action, call.payload
        accepted = {"status": "Accepted"}
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": iso_now(now),
                    "interval": self.heartbeat_s}
        if action == "Heartbeat":
            return {"currentTime": iso_now(now)}
        if action == "Authorize":
            return {"idTagInfo": accepted} if version == "1.6" else {"idTokenInfo": accepted}
        if action == "StartTransaction":
            return {"transactionId": self.transaction_ids(), "idTagInfo": accepted}
        if action == "StopTransaction":
            return {"idTagInfo": accepted} if "idTag" in payload else {}
        if action == "TransactionEvent":  # idTokenInfo is required when an idToken came
            return {"idTokenInfo": accepted} if "idToken" in payload else {}
        if action == "DataTransfer":
            return {"status": "UnknownVendorId"}
        if action in CHARGER_ACTIONS[version] and action in known_actions(version) \
                and schema_violation(version, action, {}, response=True) is None:
            return {}  # notifications whose answer is empty (StatusNotification, ...)
        raise FrameError("NotSupported", f"{action} is not supported by this CSMS",
                         call.message_id)


class StandaloneCsms:
    """The standalone mode: `handle` is its `gateway.server.ModeHandler`.

        csms = StandaloneCsms.from_settings(settings, metrics)
        server = GatewayServer(settings, csms.handle, registry, metrics)
        ...
        csms.close()   # flush Kafka

    Args:
        settings: heartbeat interval, rate limit.
        sink: where the events go; it is closed by `aclose`.
        metrics: the gateway's metrics.
        transaction_ids: the source of 1.6 transaction ids.
        gateway_name: stamped on every event.
        clock: epoch seconds (tests may pass their own).
    """

    def __init__(self, settings: Settings, sink: KafkaSink, metrics: GatewayMetrics,
                 transaction_ids: TransactionIds, gateway_name: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.answers = CsmsAnswers(settings.ocpp_heartbeat_s, transaction_ids.next)
        self.gateway_name = gateway_name or f"{socket.gethostname()}:{settings.ocpp_port}"
        self.clock = clock
        # answers not sent because Kafka failed, by (charger, message id, action): a charger
        # that sends the same StartTransaction again gets the same transaction id
        self._unstored: OrderedDict[tuple[str, str, str], tuple[dict, dict]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: GatewayMetrics | None = None,
                      gateway_name: str = "", ack_timeout_s: float = ACK_TIMEOUT_S,
                      ) -> StandaloneCsms:
        """Make the telemetry topic if missing, start the Kafka producer, and reserve
        transaction ids under the state dir.

        Raises:
            ConnectionError: Kafka does not answer.
        """
        ensure_topic(settings, settings.topic_telemetry)
        sink = KafkaSink(settings, settings.topic_telemetry, ack_timeout_s)
        ids = TransactionIds(settings.state_path / "ocpp_transaction_ids")
        return cls(settings, sink, metrics or GatewayMetrics(), ids, gateway_name)

    async def handle(self, connection: ServerConnection, charge_point: ChargePointInfo,
                     version: str) -> None:
        """Serve one charger until its socket closes."""
        state = ConnectionState(charge_point.id, version, site_id=charge_point.site,
                                gateway=self.gateway_name, connection_id=uuid.uuid4().hex[:12])
        limit = RateLimit(self.settings.ocpp_max_messages_per_s,
                          burst=2 * self.settings.ocpp_max_messages_per_s)
        self._store_later(connection_event(state, "connected", self.clock()))
        log.info("%s connected (OCPP %s, site %r)", charge_point.id, version, charge_point.site)
        reason = ""
        try:
            async for text in connection:
                reply = await self.handle_frame(text, state, limit)
                if reply is not None:
                    await connection.send(reply)
        except ConnectionClosed as closed:
            reason = str(closed)
        finally:
            reason = reason or str(connection.close_reason or "closed")
            self._store_later(connection_event(state, "disconnected", self.clock(), reason))
            log.info("%s disconnected: %s", charge_point.id, reason)

    def _store_later(self, event) -> None:
        """Connect and disconnect events are not answers to anything: produce, don't wait."""
        future = self.sink.send([event])
        future.add_done_callback(
            lambda f: f.cancelled() or f.exception() is None
            or self.metrics.produce_failures.inc())

    def _error(self, message_id: str, code: str, description: str) -> str:
        self.metrics.call_errors.labels(code).inc()
        return encode_call_error(message_id, code, description)

    def _over_limit(self, message_id: str | None) -> str | None:
        self.metrics.rate_limited.inc()
        if message_id is None:
            return None
        return self._error(message_id, "GenericError",
                           f"over {self.settings.ocpp_max_messages_per_s:g} messages/s: "
                           "send again later")

    async def handle_frame(self, text: str | bytes, state: ConnectionState,
                           limit: RateLimit) -> str | None:
        """The answer to one frame of the charger, or None (see the module doc)."""
        started, received = time.monotonic(), self.clock()
        version = state.version
        # over the limit a frame is only read as far as its id: no schema work, no log line
        allowed = limit.allow()
        try:
            frame = parse_frame(text, version, validate=allowed)
        except FrameError as error:
            self.metrics.frames.labels("charger", "invalid").inc()
            if not allowed:
                return self._over_limit(error.message_id if error.is_call else None)
            if error.message_id is None:
                self.metrics.unparseable.inc()
                log.warning("%s sent an unreadable frame (%s): %.200r", state.charge_point_id,
                            error.description, text)
            reply = error.call_error(version)
            if reply is not None:
                self.metrics.call_errors.labels(error.code).inc()
            return reply
        if not isinstance(frame, Call):
            # the standalone CSMS sends no CALLs, so there is nothing to match a result to
            self.metrics.frames.labels("charger", "unsolicited_result").inc()
            return None
        self.metrics.frames.labels("charger", frame.action).inc()
        if not allowed:
            return self._over_limit(frame.message_id)
        events = normalise(frame, text, "charger", state, received)
        retry_key = (state.charge_point_id, frame.message_id, frame.action)
        unstored = self._unstored.pop(retry_key, None)
        try:
            if unstored is not None and unstored[0] == frame.payload:
                payload = unstored[1]  # a retry keeps the transaction id it was given
            else:
                payload = self.answers.answer(frame, version, received)
        except FrameError as error:
            state.take_call("charger", frame.message_id)
            return self._error(frame.message_id, error.code, error.description)
        reply = encode_call_result(frame.message_id, payload)
        events += normalise(CallResult(frame.message_id, payload), reply, "csms", state,
                            received)
        try:
            await self.sink.deliver(events)
        except DeliveryFailed as exc:
            self.metrics.produce_failures.inc(len(events))
            if frame.action == "StartTransaction":
                self._unstored[retry_key] = (frame.payload, payload)
                while len(self._unstored) > MAX_UNSTORED:
                    self._unstored.popitem(last=False)
            log.warning("%s %s %s not stored, answered InternalError: %s",
                        state.charge_point_id, frame.action, frame.message_id, exc)
            return self._error(frame.message_id, "InternalError",
                               "telemetry could not be stored; send again")
        for event in events:
            self.metrics.events.labels(event.kind).inc()
        self.metrics.ack_seconds.observe(time.monotonic() - started)
        return reply

    def health(self) -> tuple[bool, dict]:
        ok = self.sink.healthy()
        return ok, {"mode": "standalone", "kafka": "ok" if ok else "failing"}

    def close(self) -> None:
        """Flush the events still queued for Kafka (blocking)."""
        self.sink.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
