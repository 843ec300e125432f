"""What the independent charge point sends: plans (steps for tests/interop/ocpp_rpc_peer.js)
written in OCPP's own JSON, as a charger of each version puts it on the wire."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(seconds_ago: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def steps_16() -> list[dict]:
    """Boot, status, authorize, start, MeterValues with several measurands and phases,
    stop with transaction data, heartbeat: in their JSON, as a 1.6J charger sends it."""
    sampled = [
        {"value": "12.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh",
         "context": "Sample.Periodic", "location": "Outlet"},
        {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "10.1", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
        {"value": "10.3", "measurand": "Current.Import", "unit": "A", "phase": "L2"},
        {"value": "9.9", "measurand": "Current.Import", "unit": "A", "phase": "L3"},
        {"value": "16", "measurand": "Current.Offered", "unit": "A"},
        {"value": "230", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
        {"value": "232", "measurand": "Voltage", "unit": "V", "phase": "L2-N"},
        {"value": "40.2", "measurand": "Temperature", "unit": "Celsius", "location": "Body"},
        {"value": "68", "measurand": "SoC", "unit": "Percent", "location": "EV"},
    ]
    return [
        {"call": "BootNotification", "params": {
            "chargePointVendor": "IndependentVendor", "chargePointModel": "NodeCP-16",
            "chargePointSerialNumber": "SN-16", "firmwareVersion": "fw-1.0"}},
        {"call": "StatusNotification", "params": {
            "connectorId": 1, "errorCode": "NoError", "status": "Preparing",
            "timestamp": iso(5)}},
        {"call": "Authorize", "params": {"idTag": "RFID-NODE-1"}},
        {"call": "StartTransaction", "params": {
            "connectorId": 1, "idTag": "RFID-NODE-1", "meterStart": 12000,
            "timestamp": iso(4)}},
        {"call": "MeterValues", "params": {
            "connectorId": 1, "transactionId": "$3.transactionId",
            "meterValue": [{"timestamp": iso(3), "sampledValue": sampled}]}},
        {"call": "StopTransaction", "params": {
            "meterStop": 13000, "timestamp": iso(2), "transactionId": "$3.transactionId",
            "reason": "EVDisconnected", "idTag": "RFID-NODE-1",
            "transactionData": [{"timestamp": iso(2), "sampledValue": [
                {"value": "13000", "measurand": "Energy.Active.Import.Register",
                 "unit": "Wh", "context": "Transaction.End"}]}]}},
        {"call": "Heartbeat", "params": {}},
    ]


def steps_201(transaction_id: str) -> list[dict]:
    """Boot, status, TransactionEvent Started / Updated with a meterValue / Ended, heartbeat."""
    info = {"transactionId": transaction_id, "chargingState": "EVConnected"}
    token = {"idToken": "TOKEN-NODE-1", "type": "ISO14443"}
    return [
        {"call": "BootNotification", "params": {
            "reason": "PowerUp", "chargingStation": {
                "model": "NodeCS-201", "vendorName": "IndependentVendor",
                "serialNumber": "SN-201", "firmwareVersion": "fw-2.0"}}},
        {"call": "StatusNotification", "params": {
            "timestamp": iso(5), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}},
        {"call": "TransactionEvent", "params": {
            "eventType": "Started", "timestamp": iso(4), "triggerReason": "Authorized",
            "seqNo": 0, "transactionInfo": info, "idToken": token,
            "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{"timestamp": iso(4), "sampledValue": [
                {"value": 0, "measurand": "Energy.Active.Import.Register",
                 "context": "Transaction.Begin", "unitOfMeasure": {"unit": "Wh"}}]}]}},
        {"call": "TransactionEvent", "params": {
            "eventType": "Updated", "timestamp": iso(3), "triggerReason": "MeterValuePeriodic",
            "seqNo": 1, "transactionInfo": {**info, "chargingState": "Charging"},
            "meterValue": [{"timestamp": iso(3), "sampledValue": [
                {"value": 2.75, "measurand": "Energy.Active.Import.Register",
                 "unitOfMeasure": {"unit": "kWh"}},
                {"value": 11, "measurand": "Power.Active.Import",
                 "unitOfMeasure": {"unit": "W", "multiplier": 3}},
                {"value": 16.1, "measurand": "Current.Import", "phase": "L1",
                 "unitOfMeasure": {"unit": "A"}},
                {"value": 15.8, "measurand": "Current.Import", "phase": "L2",
                 "unitOfMeasure": {"unit": "A"}},
                {"value": 16, "measurand": "Current.Offered", "unitOfMeasure": {"unit": "A"}},
                {"value": 229, "measurand": "Voltage", "phase": "L1-N",
                 "unitOfMeasure": {"unit": "V"}},
                {"value": 55, "measurand": "SoC", "location": "EV",
                 "unitOfMeasure": {"unit": "Percent"}}]}]}},
        {"call": "TransactionEvent", "params": {
            "eventType": "Ended", "timestamp": iso(2), "triggerReason": "EVDeparted",
            "seqNo": 2, "transactionInfo": {**info, "chargingState": "Idle",
                                            "stoppedReason": "EVDisconnected"},
            "meterValue": [{"timestamp": iso(2), "sampledValue": [
                {"value": 3100, "measurand": "Energy.Active.Import.Register",
                 "context": "Transaction.End", "unitOfMeasure": {"unit": "Wh"}}]}]}},
        {"call": "Heartbeat", "params": {}},
    ]
