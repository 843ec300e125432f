"""The score result contract (§5): encoded by the worker, parsed by the consumers."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.contracts.score_result import (
    InvalidScoreResult,
    build_results,
    parse_score_result,
    routing_key,
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
    try:
        parse_score_result(raw)
    except InvalidScoreResult:
        pass


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


