"""The score result contract (§5): encoded by the worker (version 2, one message per routing
key of a micro-batch), parsed by the consumers (versions 1 and 2)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.contracts.dates import iso_to_epoch
from pipelines.contracts.score_result import (
    SCHEMA_V2,
    InvalidScoreResult,
    build_results,
    encode_score_result,
    parse_score_result,
    parse_score_results,
    routing_key,
    score_result_body,
)
from pipelines.contracts.sessions import Source
from tests.support.sessions import SESSION


def test_parse_accepts_the_contract_example_and_rejects_each_broken_field(kit):
    result = parse_score_result(kit.score_json())
    assert result.is_anomaly and result.model_version == "3"
    assert result.latency_ms == pytest.approx(40, abs=1)
    assert result.features["avg_kw"] == 2.4
    for field, value, words in [("score", float("nan"), "score"), ("is_anomaly", "yes", "is_anomaly"),
                                ("sessionID", "", "sessionID"), ("scored_at", "yesterday", "scored_at"),
                                ("model", None, "model"), ("features", [1], "features"),
                                ("stationID", "x" * 129, "longer than 128")]:
        with pytest.raises(InvalidScoreResult, match=words):
            parse_score_result(kit.score_json(**{field: value}))
    # values a JSON column cannot hold become null instead of losing the result
    odd = parse_score_result(kit.score_json(features={"avg_kw": float("nan"), "kwh": 3},
                                  explanation=[{"feature": "avg_kw", "value": float("inf")}]))
    assert odd.features == {"avg_kw": None, "kwh": 3.0}
    assert odd.explanation == [{"feature": "avg_kw", "value": None, "contribution": None,
                                "typical": None}]


@given(st.binary(max_size=200))
def test_parse_never_raises_anything_but_invalid_score_result(raw):
    for parse in (parse_score_result, parse_score_results):
        try:
            parse(raw)
        except InvalidScoreResult:
            pass


MODEL = {"name": "ev-session-anomaly", "version": "3", "feature_version": "f1"}
EXPLANATION = [{"feature": "avg_kw", "value": 41.0, "contribution": 0.12, "typical": 3.2}]


def scored_batch(n: int = 6, threshold: float = 0.6):
    """A micro-batch of `n` sessions over two sites, every third one anomalous, encoded."""
    records = [{**SESSION, "sessionID": f"s{i}", "siteID": "0002" if i % 2 else "0001"}
               for i in range(n)]
    sources = [Source("ev-station-data", i % 3, 40 + i, 1_700_000_000_000 + i) for i in range(n)]
    scores = np.array([0.7 if i % 3 == 0 else 0.4 for i in range(n)])
    features = np.array([[1.5 + i, float(i)] for i in range(n)])
    features[1, 0] = np.nan  # a value JSON cannot hold: null
    explanations = {i: EXPLANATION for i in range(n) if scores[i] >= threshold}
    return build_results(records, sources, ["avg_kw", "n_edits"], features, scores, threshold,
                         explanations, MODEL, "2026-01-01T00:00:00.000+00:00")


def test_a_batch_is_one_message_per_routing_key_and_parses_back_to_each_result():
    out = scored_batch()
    assert [key for key, _ in out] == ["score.0001.anomaly", "score.0002.normal",
                                       "score.0001.normal", "score.0002.anomaly"]
    found = {key: parse_score_results(body) for key, body in out}
    assert all(f.errors == [] for f in found.values())
    assert [r.session_id for r in found["score.0001.anomaly"].results] == ["s0"]
    assert [r.session_id for r in found["score.0002.normal"].results] == ["s1", "s5"]
    assert [r.session_id for r in found["score.0001.normal"].results] == ["s2", "s4"]
    assert [r.session_id for r in found["score.0002.anomaly"].results] == ["s3"]
    s1, s5 = found["score.0002.normal"].results
    assert (s1.site_id, s1.is_anomaly, s1.score, s1.threshold) == ("0002", False, 0.4, 0.6)
    assert s1.features == {"avg_kw": None, "n_edits": 1.0} and s5.features["avg_kw"] == 6.5
    assert s1.explanation == [] and found["score.0002.anomaly"].results[0].explanation == \
        EXPLANATION
    assert (s5.kafka_partition, s5.kafka_offset) == (2, 45)
    assert s5.kafka_ts == pytest.approx(1_700_000_000.005)
    assert (s5.model_name, s5.model_version, s5.feature_version) == ("ev-session-anomaly", "3",
                                                                     "f1")
    assert s5.connection_ts == iso_to_epoch("2020-01-01T18:10:34+00:00")
    assert s5.scored_ts == iso_to_epoch("2026-01-01T00:00:00+00:00")
    body = orjson.loads(out[1][1])  # the shared fields are written once
    assert body["schema"] == SCHEMA_V2 and body["count"] == 2
    assert body["feature_columns"] == ["avg_kw", "n_edits"] and "explanation" not in \
        body["results"]


def test_a_batch_parses_to_the_same_results_as_version_1_messages_of_its_sessions(kit):
    objects = [kit.score_message(session=f"v-{i}", score=s, scored_ts=1_767_225_600.0)
               for i, s in enumerate([0.2, 0.9, 0.3, 0.95])]
    from_v1 = sorted((parse_score_results(encode_score_result(o)[1]).results[0] for o in objects),
                     key=lambda r: r.session_id)
    from_v2 = sorted((r for _, body in kit.score_batch(objects)
                      for r in parse_score_results(body).results), key=lambda r: r.session_id)
    assert from_v2 == from_v1 and len(from_v1) == 4


def test_version_1_is_still_accepted_as_one_result():
    message = score_result_body(SESSION, Source("t", 1, 2, 3_000), {"avg_kw": 1.0}, 0.9, 0.6,
                                EXPLANATION, MODEL, "2026-01-01T00:00:00+00:00")
    key, body = encode_score_result(message)
    found = parse_score_results(body)
    assert key == "score.0002.anomaly" and found.errors == [] and found.indexes == [0]
    (result,) = found.results
    assert result == parse_score_result(body)
    assert (result.session_id, result.kafka_partition, result.kafka_offset) == \
        (SESSION["sessionID"], 1, 2)


@pytest.mark.parametrize("column, value, words", [
    ("sessionID", "", "sessionID must be a non-empty string"),
    ("stationID", "x" * 129, "stationID is longer than 128"),
    ("score", "high", "score must be a finite number"),
    ("features", [1.0], "features must be a list of 2 numbers"),
    ("explanation", "why", "explanation must be a list"),
    ("connectionTime", "noon", "connectionTime is not an RFC 1123 or ISO-8601 date"),
    ("kafka_timestamp_ms", True, "kafka_timestamp_ms must be a finite number"),
])
def test_a_bad_element_is_reported_by_index_and_the_others_still_parse(column, value, words):
    _, body = scored_batch()[2]  # score.0001.normal: s2 and s4
    data = orjson.loads(body)
    data["results"].setdefault(column, [None] * data["count"])[1] = value
    found = parse_score_results(orjson.dumps(data))
    assert [r.session_id for r in found.results] == ["s2"] and found.indexes == [0]
    assert [index for index, _ in found.errors] == [1] and words in found.errors[0][1]


@pytest.mark.parametrize("change, words", [
    ({"schema": "evguard.score/9"}, "schema must be"),
    ({"model": "v3"}, "model must be an object"),
    ({"threshold": None}, "threshold"),
    ({"scored_at": "today"}, "scored_at"),
    ({"is_anomaly": 1}, "is_anomaly"),
    ({"siteID": ""}, "siteID"),
    ({"count": 3}, "results.sessionID must be a list of 3 entries"),
    ({"count": -1}, "count"),
    ({"feature_columns": [1, 2]}, "feature_columns"),
    ({"results": []}, "results must be an object"),
])
def test_a_batch_whose_shared_fields_are_bad_is_wholly_bad(change, words):
    data = {**orjson.loads(scored_batch()[1][1]), **change}
    with pytest.raises(InvalidScoreResult, match=words):
        parse_score_results(orjson.dumps(data))
    with pytest.raises(InvalidScoreResult, match="not JSON"):
        parse_score_results(b"\xff{")


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=5))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@given(st.dictionaries(st.sampled_from(["sessionID", "stationID", "spaceID", "score",
                                        "features", "explanation", "connectionTime",
                                        "kWhDelivered", "kafka_offset", "kafka_timestamp_ms"]),
                       st.lists(JSON_VALUES, min_size=2, max_size=2)))
def test_any_batch_parses_into_good_results_and_indexed_errors_or_is_wholly_bad(columns):
    data = orjson.loads(scored_batch()[1][1])
    data["results"].update(columns)
    try:  # json: integers beyond 64 bits and Infinity too
        found = parse_score_results(json.dumps(data))
    except InvalidScoreResult:
        return
    assert sorted(found.indexes + [i for i, _ in found.errors]) == [0, 1]
    assert len(found.results) == len(found.indexes)


def test_routing_key_words():
    assert routing_key("0019", False) == "score.0019.normal"
    assert routing_key("0019", True) == "score.0019.anomaly"


