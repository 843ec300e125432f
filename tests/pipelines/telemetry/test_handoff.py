"""The session hand-off, pure: a finished transaction becomes an ACN session that the
sessions contract accepts, with a stable id, the register's energy and the request."""

from __future__ import annotations

import math

import orjson
import pytest

from pipelines.contracts.dates import rfc1123_to_epoch
from pipelines.contracts.sessions import decode_session, encode_session
from pipelines.telemetry.detectors import on_event
from pipelines.telemetry.handoff import TransactionSummary, assemble_session, site_word
from tests.telemetry.kit import T0, level2, transaction

ZONE = "America/Los_Angeles"


def summary(**changes) -> TransactionSummary:
    fields = {"charge_point_id": "CP-7", "connector_id": 2, "transaction_id": "1187",
              "site_id": "caltech", "start_ts": T0, "end_ts": T0 + 4 * 3600,
              "done_ts": T0 + 3 * 3600, "start_wh": 5000.0, "end_wh": 17345.0}
    return TransactionSummary(**{**fields, **changes})


def test_a_summary_becomes_a_valid_acn_session():
    record = decode_session(encode_session(assemble_session(summary(), ZONE)))
    assert record["sessionID"] == "CP-7_1187" and record["stationID"] == "CP-7"
    assert record["siteID"] == "caltech" and record["timezone"] == ZONE
    assert record["kWhDelivered"] == pytest.approx(12.345)
    assert rfc1123_to_epoch(record["connectionTime"]) == T0
    assert rfc1123_to_epoch(record["disconnectTime"]) == T0 + 4 * 3600
    assert rfc1123_to_epoch(record["doneChargingTime"]) == T0 + 3 * 3600
    assert record["userInputs"] is None


def test_the_session_id_is_stable_and_differs_per_transaction():
    a = assemble_session(summary(), ZONE)
    assert assemble_session(summary(), ZONE) == a
    other = assemble_session(summary(transaction_id="1188"), ZONE)
    assert other["sessionID"] != a["sessionID"] and other["_id"] != a["_id"]


def test_the_request_becomes_user_inputs_when_known():
    record = assemble_session(summary(kwh_requested=20.0, minutes_available=300.0,
                                      departure_ts=T0 + 5 * 3600, user_id="abc"), ZONE)
    [inputs] = record["userInputs"]
    assert inputs["kWhRequested"] == 20.0 and inputs["minutesAvailable"] == 300.0
    assert rfc1123_to_epoch(inputs["requestedDeparture"]) == T0 + 5 * 3600
    assert record["userID"] == "abc"
    decode_session(orjson.dumps({**record, "schema_version": 1}))


def test_unknown_or_backwards_registers_deliver_zero_and_no_charging_leaves_done_null():
    record = assemble_session(summary(start_wh=math.nan, done_ts=math.nan), ZONE)
    assert record["kWhDelivered"] == 0.0 and record["doneChargingTime"] is None
    assert assemble_session(summary(end_wh=100.0), ZONE)["kWhDelivered"] == 0.0


def test_a_site_that_is_not_a_routing_word_is_made_one():
    assert site_word("") == "unknown" and site_word("a.b c") == "a_b_c"
    assert assemble_session(summary(site_id="x.y"), ZONE)["siteID"] == "x_y"


def test_no_start_time_is_a_clear_error():
    with pytest.raises(ValueError, match="no start or end"):
        assemble_session(summary(start_ts=math.nan), ZONE)


def test_a_transaction_run_through_the_detectors_hands_off_its_energy_and_times():
    events = transaction(level2(taper_from=20), samples=40,
                         details={"kWhRequested": 8.0, "id_token_hash": "h1"})
    state: dict = {}
    summaries = [r.summary for r in (on_event(state, e) for e in events) if r.summary]
    record = decode_session(encode_session(assemble_session(summaries[0], ZONE)))
    delivered = (events[-1].measurands["energy_wh"] - 1000.0) / 1000
    assert record["kWhDelivered"] == pytest.approx(delivered, abs=1e-3)
    assert record["userInputs"][0]["kWhRequested"] == 8.0 and record["userID"] == "h1"
    last_drawing = max(e.charger_ts for e in events
                       if e.kind == "meter" and e.measurands["current_a"] >= 0.5)
    assert rfc1123_to_epoch(record["doneChargingTime"]) == int(last_drawing)
