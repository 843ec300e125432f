"""OCPP payload schemas: the official JSON schemas (shipped by the `ocpp` package) and the
RPC error code each kind of violation maps to, for OCPP 1.6J and 2.0.1.

Only the schema files are read (once per action, then cached); nothing of the `ocpp`
package's runtime is used, so one code path validates frames in both gateway modes.
"""

from __future__ import annotations

import functools
import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError

VERSIONS = ("1.6", "2.0.1")
SUBPROTOCOLS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

# Actions a charge point initiates (the rest of each version's schemas go CSMS -> charger).
CHARGER_ACTIONS = {
    "1.6": frozenset({
        "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
        "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
        "StatusNotification", "StopTransaction", "LogStatusNotification",
        "SecurityEventNotification", "SignCertificate", "SignedFirmwareStatusNotification"}),
    "2.0.1": frozenset({
        "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer",
        "FirmwareStatusNotification", "Get15118EVCertificate", "GetCertificateStatus",
        "Heartbeat", "LogStatusNotification", "MeterValues", "NotifyChargingLimit",
        "NotifyCustomerInformation", "NotifyDisplayMessages", "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule", "NotifyEvent", "NotifyMonitoringReport", "NotifyReport",
        "PublishFirmwareStatusNotification", "ReportChargingProfiles", "ReservationStatusUpdate",
        "SecurityEventNotification", "SignCertificate", "StatusNotification",
        "TransactionEvent"}),
}

# The error codes differ by version: 1.6 prints "FormationViolation" and
# "OccurenceConstraintViolation", 2.0.1 "FormatViolation" and "OccurrenceConstraintViolation".
FORMAT_VIOLATION = {"1.6": "FormationViolation", "2.0.1": "FormatViolation"}
OCCURRENCE_VIOLATION = {"1.6": "OccurenceConstraintViolation",
                        "2.0.1": "OccurrenceConstraintViolation"}
# a missing required field: 1.6 defines ProtocolError as "payload for Action is incomplete";
# 2.0.1 redefines ProtocolError as "not conform the PDU structure", so it is an occurrence
MISSING_FIELD = {"1.6": "ProtocolError", "2.0.1": "OccurrenceConstraintViolation"}
ERROR_CODES = {
    "1.6": frozenset({"NotImplemented", "NotSupported", "InternalError", "ProtocolError",
                      "SecurityError", "FormationViolation", "PropertyConstraintViolation",
                      "OccurenceConstraintViolation", "TypeConstraintViolation",
                      "GenericError"}),
    "2.0.1": frozenset({"FormatViolation", "GenericError", "InternalError",
                        "MessageTypeNotSupported", "NotImplemented", "NotSupported",
                        "OccurrenceConstraintViolation", "PropertyConstraintViolation",
                        "ProtocolError", "RpcFrameworkError", "SecurityError",
                        "TypeConstraintViolation"}),
}


def _schema_dir(version: str) -> Path:
    spec = importlib.util.find_spec("ocpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ocpp package (its JSON schemas) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / ("v" + version.replace(".", ""))


@functools.cache
def known_actions(version: str) -> frozenset[str]:
    """Every action the version defines (a schema exists for it), either direction."""
    names = (p.stem for p in (_schema_dir(version) / "schemas").glob("*.json"))
    if version == "1.6":
        return frozenset(n for n in names if not n.endswith("Response"))
    return frozenset(n.removesuffix("Request") for n in names if n.endswith("Request"))


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the "type" keyword reports it
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_datetime)


@functools.cache
def _validator(version: str, action: str, response: bool) -> Draft4Validator:
    if version == "1.6":
        name = action + ("Response" if response else "")
    else:
        name = action + ("Response" if response else "Request")
    text = (_schema_dir(version) / "schemas" / f"{name}.json").read_bytes()
    return Draft4Validator(orjson.loads(text.decode("utf-8-sig")), format_checker=_FORMATS)


def _error_code(error: ValidationError, version: str) -> str:
    keyword = error.validator
    if keyword == "required":
        return MISSING_FIELD[version]
    if keyword in ("minItems", "maxItems"):
        return OCCURRENCE_VIOLATION[version]
    if keyword in ("type", "maxLength", "minLength"):
        return "TypeConstraintViolation"
    if keyword in ("additionalProperties", "$ref", "anyOf", "oneOf", "allOf", "not"):
        return FORMAT_VIOLATION[version]
    return "PropertyConstraintViolation"  # enum, format, minimum, maximum, pattern, ...


def schema_violation(version: str, action: str, payload: Any,
                     response: bool = False) -> tuple[str, str] | None:
    """The first violation of the action's schema as (OCPP error code, description), or None.

    `action` must be one of `known_actions(version)`.
    """
    validator = _validator(version, action, response)
    error = next(iter(sorted(validator.iter_errors(payload), key=_depth)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    return _error_code(error, version), f"{where}: {error.message}"[:300]


def _depth(error: ValidationError) -> tuple[int, str]:
    # the shallowest error is the one a reader fixes first; the keyword breaks ties stably
    return len(error.absolute_path), str(error.validator)
