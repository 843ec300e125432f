"""`validate_session` accepts through one quick check (`_is_valid`) and refuses through the rule
by rule one (`_check_session`); both must accept exactly the same records."""

from __future__ import annotations

import copy
import random

import orjson
import pytest

from pipelines.contracts.sessions import (
    InvalidSession,
    _check_session,
    _is_valid,
    encode_session,
    validate_session,
)
from pipelines.data.synth import generate_sessions

ODD_VALUES = [None, "", "x", 0, -1, 1.5, float("nan"), float("inf"), 1e7, True, [], {}, [{}],
              "Wed, 02 Jan 2019 14:55:53 GMT", "Wed, 2 Jan 2019 14:55:53 GMT", "0002", "a.b",
              [{"kWhRequested": "3"}], [{"requestedDeparture": "soon"}], [7], 1.0]
FIELDS = ["schema_version", "sessionID", "stationID", "siteID", "connectionTime",
          "disconnectTime", "doneChargingTime", "kWhDelivered", "_id", "clusterID", "spaceID",
          "timezone", "userID", "userInputs"]


def _outcome(check, record, site_ids):
    try:
        return check(record, site_ids) is record
    except InvalidSession as exc:
        return exc.reason


def _mutants(seed: int) -> list:
    records, _ = generate_sessions(300, seed=seed, anomaly_rate=0.05)
    records = [orjson.loads(encode_session(r)) for r in records]
    rng = random.Random(seed)
    out = list(records)
    for record in records:
        odd = copy.deepcopy(record)
        for field in rng.sample(FIELDS, rng.choice((1, 1, 2))):
            if rng.random() < 0.15:
                odd.pop(field, None)
            elif field == "userInputs" and odd.get("userInputs") and rng.random() < 0.5:
                odd["userInputs"][-1][rng.choice(["kWhRequested", "minutesAvailable",
                                                  "requestedDeparture", "modifiedAt"])] = \
                    rng.choice(ODD_VALUES)
            else:
                odd[field] = rng.choice(ODD_VALUES)
        out.append(odd)
    return out + [None, [], "junk", 3]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("site_ids", [frozenset(), frozenset({"0001", "0002"})])
def test_the_quick_check_accepts_exactly_what_the_rule_by_rule_check_accepts(seed, site_ids):
    records = _mutants(seed)
    accepted = 0
    for record in records:
        expected = _outcome(_check_session, record, site_ids)
        assert _is_valid(record, site_ids) == (expected is True), (record, expected)
        assert _outcome(validate_session, record, site_ids) == expected
        accepted += expected is True
    assert 0 < accepted < len(records)  # both kinds were seen
