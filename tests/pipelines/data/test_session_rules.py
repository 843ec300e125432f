"""The stream's range rules: the same verdict as the features suite in Great Expectations."""

from __future__ import annotations

import numpy as np

from pipelines.data.features import FEATURE_COLUMNS, add_features, sessions_to_frame
from pipelines.data.session_rules import (
    RULE_SCORE,
    RangeRule,
    RuleCheck,
    apply_rules,
    range_rules,
)
from pipelines.data.synth import generate_sessions
from pipelines.data.validation import load_suite, run_suite


def test_every_row_the_stream_flags_is_one_the_features_suite_rejects_and_back():
    # synthetic sessions with every kind of planted fault, rule-breaking ones included
    records, labels = generate_sessions(1500, seed=5, anomaly_rate=0.2)
    frame = add_features(sessions_to_frame(records))
    suite = load_suite("features")
    ranges = {"expectations": [e for e in suite["expectations"]
                               if e["type"] == "expect_column_values_to_be_between"]}
    ranges["name"] = suite["name"]
    _, failures = run_suite(frame, ranges)
    rejected = np.zeros(len(frame), bool)
    rejected[list(failures)] = True

    check = RuleCheck(FEATURE_COLUMNS)
    flagged = check.first_broken(frame[FEATURE_COLUMNS].to_numpy(np.float64)) >= 0

    assert rejected.sum() > 20  # the planted inversions and impossible sessions are there
    assert np.array_equal(flagged, rejected)
    assert {labels.get(records[i]["sessionID"]) for i in np.flatnonzero(flagged)} \
        >= {"timestamp_inversion"}


def test_rules_come_from_the_suite_with_its_bounds_and_reasons():
    expected = [e for e in load_suite("features")["expectations"]
                if e["type"] == "expect_column_values_to_be_between"]
    rules = range_rules()
    assert len(rules) == len(expected) > 0
    for rule, expectation in zip(rules, expected, strict=True):
        kwargs = expectation["kwargs"]
        assert (rule.column, rule.low, rule.high) == (
            kwargs["column"], kwargs.get("min_value"), kwargs.get("max_value"))
        assert rule.strict_low == bool(kwargs.get("strict_min"))
        assert rule.strict_high == bool(kwargs.get("strict_max"))
        assert rule.reason == expectation["meta"]["reason"]
    # a rule that tolerates some breaks (`mostly`) proves nothing about one row
    lenient = {"expectations": [{"type": "expect_column_values_to_be_between",
                                 "kwargs": {"column": "avg_kw", "max_value": 1, "mostly": 0.9}}]}
    assert range_rules(lenient) == ()


def test_bounds_follow_gx_semantics_and_nan_breaks_a_rule():
    rule = RangeRule("x", 0.0, 1.0, strict_low=True, strict_high=False, reason="r")
    values = np.array([0.0, 0.5, 1.0, 1.5, np.nan, -1.0])
    assert rule.broken(values).tolist() == [True, False, False, True, True, True]


def test_apply_rules_raises_only_breaking_rows_and_names_the_first_broken_rule():
    rules = (RangeRule("a", 0.0, None, False, False, "a is not negative"),
             RangeRule("b", None, 10.0, False, False, "b at most 10"))
    check = RuleCheck(["b", "c", "a"], rules)
    matrix = np.array([[1.0, 0.0, 1.0],     # fine
                       [20.0, 0.0, -1.0],   # breaks both: the suite's first rule is named
                       [20.0, 0.0, 1.0]])   # breaks b
    scores = np.array([0.3, 0.4, 1.2])
    raised, items = apply_rules(check, matrix, scores)
    assert raised.tolist() == [0.3, RULE_SCORE, 1.2] and scores.tolist() == [0.3, 0.4, 1.2]
    assert set(items) == {1, 2}
    assert items[1]["feature"] == "a" and items[1]["value"] == -1.0
    assert items[1]["rule"] == "a is not negative"
    assert raised[1] - items[1]["contribution"] == scores[1]  # the model's own score is kept
    assert items[2]["rule"] == "b at most 10" and items[2]["contribution"] == 0.0
    assert RuleCheck(["c"], rules).rules == ()  # rules on absent columns do not apply
