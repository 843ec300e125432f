"""The session hand-off: a finished OCPP transaction as an ACN session, for the scoring worker (pure).

At a transaction's end the telemetry processor knows when the car was connected and
disconnected, when it last drew power, the energy register at both ends and, where the
charger or the driver said so, the request (energy, minutes available, departure). This
module turns that `TransactionSummary` into the ACN session object of contract §1, so the
session model scores live-fed sessions exactly as it scores the ACN exports.

`sessionID` is derived from the charge point and the OCPP transaction id only, so a
redelivered `transaction_ended` event hands the same session off again, never a new one.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from pipelines.contracts.dates import format_rfc1123
from pipelines.contracts.sessions import SCHEMA_VERSION, validate_session

_SITE_WORD = re.compile(r"[^A-Za-z0-9_-]")
UNKNOWN_SITE = "unknown"


@dataclass(frozen=True)
class TransactionSummary:
    """What the processor knew of one transaction when it ended. Times are epoch seconds (UTC);
    NaN = not known.

    Attributes:
        start_ts: the charger's time of the transaction start (connection).
        end_ts: the charger's time of the transaction end (disconnection).
        done_ts: the last sample that drew power (NaN when it never did).
        start_wh, end_wh: the energy register at both ends.
        kwh_requested, minutes_available, departure_ts: the driver's request, where known.
        user_id: the driver (an id-token hash, or what the gateway gave), "" = unknown.
    """

    charge_point_id: str
    connector_id: int
    transaction_id: str
    site_id: str
    start_ts: float
    end_ts: float
    done_ts: float
    start_wh: float
    end_wh: float
    kwh_requested: float = math.nan
    minutes_available: float = math.nan
    departure_ts: float = math.nan
    user_id: str = ""
    stop_reason: str = ""

    @property
    def kwh_delivered(self) -> float:
        """The register difference in kWh; 0 when a register is unknown or ran backwards."""
        delivered = (self.end_wh - self.start_wh) / 1000.0
        return delivered if math.isfinite(delivered) and delivered > 0 else 0.0


def session_id(charge_point_id: str, transaction_id: str) -> str:
    """Stable per transaction: `<chargePoint>_<transactionId>`."""
    return f"{charge_point_id}_{transaction_id}"


def site_word(site_id: str) -> str:
    """The site as the session contract accepts it: letters, digits, `_` and `-`, at most 32."""
    word = _SITE_WORD.sub("_", site_id)[:32]
    return word or UNKNOWN_SITE


def _user_inputs(summary: TransactionSummary, connection: str) -> list[dict] | None:
    known = {"kWhRequested": summary.kwh_requested,
             "minutesAvailable": summary.minutes_available}
    inputs: dict = {name: round(value, 3) for name, value in known.items()
                    if math.isfinite(value) and value >= 0}
    if math.isfinite(summary.departure_ts):
        inputs["requestedDeparture"] = format_rfc1123(summary.departure_ts)
    if not inputs:
        return None
    inputs.update({"modifiedAt": connection, "paymentRequired": False,
                   "userID": summary.user_id or None})
    for name in ("WhPerMile", "milesRequested"):
        inputs.setdefault(name, None)
    return [inputs]


def assemble_session(summary: TransactionSummary, timezone: str) -> dict:
    """The ACN session of one finished transaction (contract §1, `schema_version` included).

    Args:
        summary: the transaction as the processor saw it.
        timezone: the sites' IANA timezone (`settings.telemetry_timezone`).

    Returns:
        A session that passes `pipelines.contracts.sessions.validate_session`.

    Raises:
        ValueError: the transaction has no usable start or end time.
    """
    if not (math.isfinite(summary.start_ts) and math.isfinite(summary.end_ts)):
        raise ValueError(f"transaction {summary.transaction_id} of {summary.charge_point_id} "
                         "has no start or end time")
    end_ts = max(summary.end_ts, summary.start_ts)
    connection = format_rfc1123(summary.start_ts)
    done = summary.done_ts
    sid = session_id(summary.charge_point_id, summary.transaction_id)
    record = {
        "_id": hashlib.sha1(sid.encode()).hexdigest()[:24],
        "clusterID": None,
        "connectionTime": connection,
        "disconnectTime": format_rfc1123(end_ts),
        "doneChargingTime": (format_rfc1123(min(max(done, summary.start_ts), end_ts))
                             if math.isfinite(done) else None),
        "kWhDelivered": round(summary.kwh_delivered, 4),
        "sessionID": sid,
        "siteID": site_word(summary.site_id),
        "spaceID": f"{summary.charge_point_id}-{summary.connector_id}",
        "stationID": summary.charge_point_id,
        "timezone": timezone,
        "userID": summary.user_id or None,
        "userInputs": _user_inputs(summary, connection),
        "schema_version": SCHEMA_VERSION,
    }
    return validate_session(record)
