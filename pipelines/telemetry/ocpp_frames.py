"""OCPP-J frames: parse, validate, answer, and normalise into telemetry events. Pure.

Both gateway modes use this one path: the standalone CSMS on the frames it receives and
the results it sends, the proxy on the frames it forwards in both directions.

    state = ConnectionState("CP-1", "1.6", site_id="caltech", gateway="gw-1")
    frame = parse_frame(text, state.version)        # Call | CallResult | CallError
    events = normalise(frame, text, "charger", state, received_ts)

`parse_frame` raises `FrameError`, which carries the OCPP error code of the version and the
message id when it could be read; `FrameError.call_error()` is the CALLERROR to send back.
`ConnectionState` keeps the calls awaiting a result (by sender and message id), so a
CALLRESULT is read in the light of its CALL (1.6 StartTransaction.conf carries the
transaction id). `normalise` never raises: what cannot be read is left out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import orjson

from pipelines.contracts.telemetry import TelemetryEvent, cap_raw
from pipelines.telemetry import ocpp_events
from pipelines.telemetry.ocpp_schemas import (
    FORMAT_VIOLATION,
    VERSIONS,
    known_actions,
    schema_violation,
)

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_MESSAGE_ID = 36  # characters, both versions
MAX_PENDING = 256  # calls awaiting a result per connection, beyond which the oldest is dropped
Sender = Literal["charger", "csms"]


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict


@dataclass(frozen=True, slots=True)
class CallError:
    message_id: str
    error_code: str
    description: str
    details: dict


Frame = Call | CallResult | CallError


class FrameError(ValueError):
    """A frame that is not a valid OCPP-J message of its version.

    Attributes:
        code: the OCPP error code to answer with (spelled as the version spells it).
        message_id: the frame's message id, or None when it could not be read.
        description: what is wrong, for people.
        is_call: True when the frame is (or looks like) a CALL: only a CALL is answered.
    """

    def __init__(self, code: str, description: str, message_id: str | None = None,
                 is_call: bool = True) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.message_id = message_id
        self.is_call = is_call

    def call_error(self, version: str) -> str | None:
        """The CALLERROR text to send back, or None when nothing should be answered.

        A CALLRESULT or CALLERROR is never answered. A frame whose id cannot be read is
        answered with id "-1" in 2.0.1 (RpcFrameworkError) and not at all in 1.6, which
        has no such rule.
        """
        if not self.is_call:
            return None
        if self.message_id is None:
            return encode_call_error("-1", self.code, self.description) \
                if version == "2.0.1" else None
        return encode_call_error(self.message_id, self.code, self.description)


def _rpc_error(version: str) -> str:
    return "RpcFrameworkError" if version == "2.0.1" else FORMAT_VIOLATION[version]


def parse_frame(text: str | bytes, version: str, validate: bool = True) -> Frame:
    """Read one OCPP-J frame of `version` ("1.6" or "2.0.1").

    Args:
        text: the WebSocket message.
        version: the connection's negotiated version.
        validate: check a CALL's payload against its action's schema.

    Raises:
        FrameError: not JSON, not an OCPP-J array, an unknown action (NotImplemented), or
            a payload that breaks its schema (the matching constraint violation).
    """
    if version not in VERSIONS:
        raise ValueError(f"unsupported OCPP version {version!r}")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(_rpc_error(version), "the frame is not JSON") from None
    if not isinstance(message, list) or not message or type(message[0]) is not int:
        raise FrameError(_rpc_error(version), "the frame is not an array [type, id, ...]")
    kind = message[0]
    message_id = message[1] if len(message) > 1 and isinstance(message[1], str) else None
    if message_id is None:
        raise FrameError(_rpc_error(version), "the message id is missing or not a string",
                         is_call=kind == CALL)
    if kind not in (CALL, CALLRESULT, CALLERROR):
        # 1.6 ignores an unknown message type; 2.0.1 answers it
        raise FrameError("MessageTypeNotSupported" if version == "2.0.1" else
                         FORMAT_VIOLATION[version], f"message type {kind} is not supported",
                         message_id, is_call=version == "2.0.1")
    if len(message_id) > MAX_MESSAGE_ID:
        raise FrameError(_rpc_error(version), f"the message id is longer than "
                                              f"{MAX_MESSAGE_ID} characters", message_id,
                         is_call=kind == CALL)
    if kind == CALL:
        return _call(message, message_id, version, validate)
    if kind == CALLRESULT:
        if len(message) != 3 or not isinstance(message[2], dict):
            raise FrameError(_rpc_error(version), "a CALLRESULT is [3, id, {payload}]",
                             message_id, is_call=False)
        return CallResult(message_id, message[2])
    if (len(message) != 5 or not isinstance(message[2], str) or not isinstance(message[3], str)
            or not isinstance(message[4], dict)):
        raise FrameError(_rpc_error(version), "a CALLERROR is [4, id, code, text, {details}]",
                         message_id, is_call=False)
    return CallError(message_id, message[2], message[3], message[4])


def _call(message: list, message_id: str, version: str, validate: bool) -> Call:
    if len(message) != 4 or not isinstance(message[2], str):
        raise FrameError(_rpc_error(version), "a CALL is [2, id, action, {payload}]",
                         message_id)
    action, payload = message[2], message[3]
    if action not in known_actions(version):
        raise FrameError("NotImplemented", f"action {action[:64]!r} is not known in OCPP "
                                           f"{version}", message_id)
    if not isinstance(payload, dict):
        raise FrameError(FORMAT_VIOLATION[version], "the payload is not an object", message_id)
    if validate:
        violation = schema_violation(version, action, payload)
        if violation is not None:
            raise FrameError(*violation, message_id)
    return Call(message_id, action, payload)


def encode_call(message_id: str, action: str, payload: dict) -> str:
    return orjson.dumps([CALL, message_id, action, payload]).decode()


def encode_call_result(message_id: str, payload: dict) -> str:
    return orjson.dumps([CALLRESULT, message_id, payload]).decode()


def encode_call_error(message_id: str, code: str, description: str = "",
                      details: dict | None = None) -> str:
    return orjson.dumps([CALLERROR, message_id, code, description, details or {}]).decode()


@dataclass(slots=True)
class PendingCall:
    action: str
    payload: dict
    received_ts: float


@dataclass
class ConnectionState:
    """What one connection remembers between frames; the gateway keeps one per socket.

    Attributes:
        charge_point_id, version, site_id, gateway: stamped on every event.
        connection_id: unique per socket (the gateway's choice); names the connect and
            disconnect events.
        pending: calls awaiting their result, by (sender, message id), oldest first.
        transaction_connectors: transaction id -> its connector (1.6 StopTransaction
            and a 2.0.1 TransactionEvent without `evse` do not repeat it).
    """

    charge_point_id: str
    version: str
    site_id: str = ""
    gateway: str = ""
    connection_id: str = ""
    pending: OrderedDict[tuple[str, str], PendingCall] = field(default_factory=OrderedDict)
    transaction_connectors: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def remember_call(self, sender: Sender, call: Call, received_ts: float) -> None:
        self.pending[(sender, call.message_id)] = PendingCall(call.action, call.payload,
                                                              received_ts)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)

    def take_call(self, sender: Sender, message_id: str) -> PendingCall | None:
        return self.pending.pop((sender, message_id), None)


def _other(sender: Sender) -> Sender:
    return "csms" if sender == "charger" else "charger"


def normalise(frame: Frame, raw: str | bytes, sender: Sender, state: ConnectionState,
              received_ts: float) -> list[TelemetryEvent]:
    """The telemetry events of one frame, in order; updates `state`.

    Args:
        frame: what `parse_frame` returned.
        raw: the frame's text, kept (capped) in every event for audit.
        sender: who sent it: "charger" or "csms".
        state: the connection's state.
        received_ts: the gateway's clock when the frame arrived (epoch seconds).

    Returns:
        The events a charger's CALL (or the CSMS's answer to one) carries; [] for
        everything else. Never raises on any frame `parse_frame` returned.
    """
    if isinstance(frame, Call):
        state.remember_call(sender, frame, received_ts)
        if sender != "charger":
            return []
        maker = ocpp_events.CALL_EVENTS.get(state.version, {}).get(frame.action)
        payload, result = frame.payload, None
        action = frame.action
    else:
        pending = state.take_call(_other(sender), frame.message_id)
        if pending is None or sender != "csms" or isinstance(frame, CallError):
            return []
        maker = ocpp_events.RESULT_EVENTS.get(state.version, {}).get(pending.action)
        payload, result, action = pending.payload, frame.payload, pending.action
    if maker is None:
        return []
    capped, truncated = cap_raw(raw)
    context = ocpp_events.EventContext(
        charge_point_id=state.charge_point_id, version=state.version, site_id=state.site_id,
        gateway=state.gateway, transaction_connectors=state.transaction_connectors,
        message_id=frame.message_id, received_ts=received_ts, raw=capped,
        raw_truncated=truncated, action=action)
    try:
        return maker(context, payload, result)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        # a payload the schema allowed but that still cannot be read (unvalidated proxy
        # traffic): it is forwarded and counted, never fatal
        return []


def connection_event(state: ConnectionState, kind: Literal["connected", "disconnected"],
                     received_ts: float, reason: str = "") -> TelemetryEvent:
    """The `connected` / `disconnected` event of a socket (`state.connection_id` names it)."""
    return TelemetryEvent(
        event_id=f"{state.charge_point_id}:{state.connection_id}-{kind}:0", kind=kind,
        charge_point_id=state.charge_point_id, connector_id=0, transaction_id=None,
        charger_ts=None, received_ts=received_ts, ocpp_version=state.version,
        site_id=state.site_id, details={"reason": reason[:200]} if reason else {},
        gateway=state.gateway)

