"""Decode/validate sessions and build results: pure functions, no services."""

from __future__ import annotations

import copy
import json
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.contracts.dates import rfc1123_to_iso
from pipelines.contracts.score_result import build_results, parse_score_result, routing_key
from pipelines.contracts.sessions import InvalidSession, Source, decode_session, encode_session

SESSION = {
    "_id": "5e225f9ff9af8b5c26d21716", "clusterID": "0039",
    "connectionTime": "Wed, 01 Jan 2020 18:10:34 GMT",
    "disconnectTime": "Wed, 01 Jan 2020 21:05:40 GMT",
    "doneChargingTime": "Wed, 01 Jan 2020 19:22:56 GMT", "kWhDelivered": 2.328,
    "sessionID": "2_39_127_19_2020-01-01 18:10:34.057445", "siteID": "0002", "spaceID": "CA-309",
    "stationID": "2-39-127-19", "timezone": "America/Los_Angeles", "userID": "000000710",
    "userInputs": [{"WhPerMile": 261, "kWhRequested": 7.83, "milesRequested": 30,
                    "minutesAvailable": 458, "modifiedAt": "Wed, 01 Jan 2020 18:10:53 GMT",
                    "paymentRequired": True, "requestedDeparture": "Thu, 02 Jan 2020 01:48:34 GMT",
                    "userID": 710}],
}


def test_encoded_session_decodes_to_the_same_record_with_schema_version():
    decoded = decode_session(encode_session(SESSION))
    assert decoded == {**SESSION, "schema_version": 1}


def test_nulls_that_acn_data_has_are_valid():
    record = {**SESSION, "doneChargingTime": None, "userInputs": None, "userID": None}
    assert decode_session(encode_session(record))["userInputs"] is None


def _broken(**changes):
    record = copy.deepcopy(SESSION)
    for key, value in changes.items():
        if value is KeyError:
            record.pop(key)
        else:
            record[key] = value
    return encode_session(record)


@pytest.mark.parametrize("value, words", [
    (_broken(kWhDelivered=-1.0), "kWhDelivered"),
    (_broken(kWhDelivered="7.1"), "kWhDelivered"),
    (_broken(kWhDelivered=True), "kWhDelivered"),
    (_broken(kWhDelivered=1e300), "kWhDelivered"),
    (_broken(sessionID=KeyError), "sessionID"),
    (_broken(stationID=""), "stationID"),
    (_broken(siteID="00.02"), "siteID"),
    (_broken(siteID="9999"), "unknown siteID"),
    (_broken(connectionTime="2020-01-01T18:10:34Z"), "connectionTime"),
    (_broken(disconnectTime=None), "disconnectTime"),
    (_broken(userInputs={"kWhRequested": 3}), "userInputs"),
    (_broken(userInputs=[{"kWhRequested": "lots"}]), "userInputs[0].kWhRequested"),
    (_broken(userInputs=[7]), "userInputs[0]"),
    (_broken(timezone=5), "timezone"),
    (orjson.dumps({**SESSION}), "schema_version"),
    (orjson.dumps([SESSION]), "JSON object"),
])
def test_schema_violations_are_rejected_with_the_rule_they_break(value, words):
    with pytest.raises(InvalidSession, match=re.escape(words)) as caught:
        decode_session(value, site_ids=frozenset({"0001", "0002", "0019"}))
    assert caught.value.stage == "schema"


@pytest.mark.parametrize("value", [b"", b"{", b"\xff\xfe\x00", b'{"kWhDelivered": NaN}', None])
def test_bytes_that_are_not_json_fail_at_decode(value):
    with pytest.raises(InvalidSession) as caught:
        decode_session(value)
    assert caught.value.stage == "decode"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_either_decode_to_a_valid_session_or_raise_invalid_session(value):
    try:
        record = decode_session(value)
    except InvalidSession as exc:
        assert exc.reason
    else:
        assert isinstance(record, dict) and record["schema_version"] == 1


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(SESSION) + ["schema_version"]), JSON_VALUES,
                       max_size=4))
def test_mutated_sessions_never_raise_anything_but_invalid_session(changes):
    record = {**SESSION, "schema_version": 1, **changes}
    try:
        decode_session(json.dumps(record).encode())  # stdlib json writes NaN and huge ints too
    except InvalidSession:
        pass


def test_rfc1123_dates_convert_to_iso_utc():
    assert rfc1123_to_iso("Wed, 02 Jan 2019 14:55:53 GMT") == "2019-01-02T14:55:53+00:00"
    assert rfc1123_to_iso(None) is None


def test_results_follow_the_contract_and_parse_with_the_consumers_parser():
    records = [SESSION, {**SESSION, "sessionID": "b", "siteID": "0001"}]
    sources = [Source("ev-station-data", 2, 41, 1_700_000_000_000),
               Source("ev-station-data", 0, 7, 1_700_000_000_500)]
    explanation = [{"feature": "avg_kw", "value": 41.0, "contribution": 0.12, "typical": 3.2}]
    out = build_results(records, sources, ["avg_kw", "n_edits"], [[1.5, 1.0], [41.0, 0.0]],
                        [0.4, 0.7], 0.6, {1: explanation},
                        {"name": "ev-session-anomaly", "version": "3", "feature_version": "f1"},
                        "2026-01-01T00:00:00.000+00:00")
    assert [key for key, _ in out] == ["score.0002.normal", "score.0001.anomaly"]
    normal, anomaly = (orjson.loads(body) for _, body in out)
    assert normal["explanation"] == [] and anomaly["explanation"] == explanation
    assert anomaly["kafka"] == {"topic": "ev-station-data", "partition": 0, "offset": 7,
                                "timestamp_ms": 1_700_000_000_500}
    assert anomaly["features"] == {"avg_kw": 41.0, "n_edits": 0.0}
    assert normal["connectionTime"] == "2020-01-01T18:10:34+00:00"
    parsed = parse_score_result(out[1][1])
    assert (parsed.session_id, parsed.site_id, parsed.is_anomaly, parsed.model_version) == \
        ("b", "0001", True, "3")
    assert parsed.kafka_ts == pytest.approx(1_700_000_000.5)


def test_routing_key_words():
    assert routing_key("0019", False) == "score.0019.normal"
    assert routing_key("0019", True) == "score.0019.anomaly"
