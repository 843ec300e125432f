"""The session message contract (§1): encode and decode, and what decoding refuses."""

from __future__ import annotations

import copy
import json
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.contracts.sessions import InvalidSession, decode_session, encode_session
from tests.support.sessions import SESSION


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


