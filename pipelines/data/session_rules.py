"""The features suite's range rules, checked on a feature matrix with numpy.

Ingest quarantines a session that breaks a rule of `expectations/features.json`
(done charging hours before connecting, connected for no time or for weeks, more
power than an ACN station delivers). The stream cannot run Great Expectations on
every micro-batch, and a forest scores such a session only as far out as the
training rows reach: a value beyond their range isolates no faster than the
edge of that range does. So the worker checks the same rules here, read from
the same suite file, and a session that breaks one is certain to be anomalous
(`serving.steps.score`). `tests/pipelines/data/test_session_rules.py` holds the
two to the same verdict on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.data.validation import load_suite

FEATURES_SUITE = "features"
RULE_SCORE = 1.0  # the top of an isolation score's range: a point isolated at once
_RANGE = "expect_column_values_to_be_between"


@dataclass(frozen=True)
class RangeRule:
    """One `expect_column_values_to_be_between` of the suite, with GX's bounds semantics."""

    column: str
    low: float | None
    high: float | None
    strict_low: bool
    strict_high: bool
    reason: str

    def broken(self, values: np.ndarray) -> np.ndarray:
        """True where `values` fall outside the range (NaN breaks it, as a null would)."""
        inside = ~np.isnan(values)
        if self.low is not None:
            inside &= values > self.low if self.strict_low else values >= self.low
        if self.high is not None:
            inside &= values < self.high if self.strict_high else values <= self.high
        return ~inside


def range_rules(document: dict | None = None) -> tuple[RangeRule, ...]:
    """The range rules of the features suite (or of `document`), in suite order."""
    document = document if document is not None else load_suite(FEATURES_SUITE)
    rules = []
    for expectation in document["expectations"]:
        if expectation["type"] != _RANGE:
            continue
        kwargs = expectation["kwargs"]
        if kwargs.get("mostly", 1.0) < 1.0 or "row_condition" in kwargs:
            continue  # such a rule tolerates breaks, so one break proves nothing
        rules.append(RangeRule(
            column=kwargs["column"], low=kwargs.get("min_value"), high=kwargs.get("max_value"),
            strict_low=bool(kwargs.get("strict_min")), strict_high=bool(kwargs.get("strict_max")),
            reason=expectation.get("meta", {}).get("reason") or f"{kwargs['column']} in range"))
    return tuple(rules)


class RuleCheck:
    """The rules that apply to a matrix with `columns`, checked a whole batch at a time."""

    def __init__(self, columns: Sequence[str], rules: Sequence[RangeRule] | None = None) -> None:
        rules = range_rules() if rules is None else rules
        position = {name: i for i, name in enumerate(columns)}
        self.columns = tuple(columns)
        self.rules = tuple(r for r in rules if r.column in position)
        self.positions = tuple(position[r.column] for r in self.rules)  # column of each rule

    def first_broken(self, matrix: np.ndarray) -> np.ndarray:
        """Per row, the index in `self.rules` of the first rule it breaks, or -1."""
        first = np.full(len(matrix), -1, dtype=np.int64)
        for index in range(len(self.rules) - 1, -1, -1):  # the earliest rule is written last
            broken = self.rules[index].broken(matrix[:, self.positions[index]])
            first[broken] = index
        return first


def apply_rules(check: RuleCheck, matrix: np.ndarray,
                scores: np.ndarray) -> tuple[np.ndarray, dict[int, dict]]:
    """Raise the score of every row that breaks a rule to at least `RULE_SCORE`.

    Returns:
        The new scores, and per row that breaks a rule the explanation item that
        names it (contract §5): `feature` and `value` of the broken column, the
        suite's `rule`, and as `contribution` how far it raised the model's score,
        so the model's own score stays readable as `score - contribution`.
    """
    first = check.first_broken(matrix)
    rows = np.flatnonzero(first >= 0)
    if len(rows) == 0:
        return scores, {}
    raised = scores.copy()
    raised[rows] = np.maximum(scores[rows], RULE_SCORE)
    items = {}
    for row, index in zip(rows.tolist(), first[rows].tolist()):
        rule = check.rules[index]
        items[row] = {"feature": rule.column, "value": float(matrix[row, check.positions[index]]),
                      "contribution": float(raised[row] - scores[row]), "typical": None,
                      "rule": rule.reason}
    return raised, items


def score_with_rules(check: RuleCheck, matrix: np.ndarray, scores: np.ndarray,
                     threshold: float,
                     explain: Callable[[np.ndarray], dict[int, list[dict]]],
                     ) -> tuple[np.ndarray, dict[int, list[dict]]]:
    """`apply_rules`, then each anomaly's explanation: a broken rule is the whole explanation
    of its row, and `explain(rows)` (the model's) is asked only for the other anomalies.

    Returns:
        The scores with the rules applied, and row -> explanation items.
    """
    scores, broken = apply_rules(check, matrix, scores)
    for_the_model = np.setdiff1d(np.flatnonzero(scores >= threshold),
                                 np.fromiter(broken, np.int64, len(broken)), assume_unique=True)
    explanations = explain(for_the_model) if len(for_the_model) else {}
    explanations.update((row, [item]) for row, item in broken.items())
    return scores, explanations
