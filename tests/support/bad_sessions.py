"""Hypothesis strategies for session messages that break the worker's input contract.

Each draw is a `BadMessage`: the Kafka value (bytes, or None for a null value),
the dead-letter stage the contract gives it (docs/contracts.md §6: `decode` for
bytes that are not UTF-8 JSON, `schema` for JSON that breaks the session shape
of §1), the category, and the field it breaks. Every message is built from a
valid session by breaking exactly one rule, so the worker's reason must name
that field. Validity is judged here from the contract, independently of
`pipelines.contracts.sessions`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

SCHEMA_VERSION = 1
MAX_KWH = 1e6  # contract: kWhDelivered in [0, 1e6)
REQUIRED = ("schema_version", "sessionID", "stationID", "siteID", "connectionTime",
            "disconnectTime", "kWhDelivered")
OPTIONAL_TEXT = ("_id", "clusterID", "spaceID", "timezone", "userID")
INPUT_NUMBERS = ("WhPerMile", "kWhRequested", "milesRequested", "minutesAvailable")
INPUT_DATES = ("modifiedAt", "requestedDeparture")
RFC1123_GMT = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|"
                         r"Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT")
SITE_WORD = re.compile(r"[A-Za-z0-9_-]{1,32}")
# byte sequences no UTF-8 decoder accepts: stray continuation, bad lead, overlong, surrogate
INVALID_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1",
                b"\xf0\x28\x8c\xbc", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80")

_SENTINEL = "@@number@@"  # replaced by a literal json.dumps cannot write


@dataclass(frozen=True)
class BadMessage:
    value: bytes | None
    stage: str  # decode | schema
    category: str
    field: str  # the field whose rule it breaks; "" when the whole message is unreadable


def _dumps(record: Any) -> bytes:
    return json.dumps(record, allow_nan=True).encode()


def _json_valid(text: bytes) -> bool:
    """Strict JSON (RFC 8259): UTF-8, no NaN/Infinity, numbers that fit a double."""
    def reject(token: str):
        raise ValueError(token)

    def finite(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise ValueError(token)
        return value

    try:
        json.loads(text.decode("utf-8"), parse_constant=reject, parse_float=finite)
    except ValueError:
        return False
    return True


# ---- values of the wrong type -------------------------------------------------------
_scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False,
                                                               allow_infinity=False),
                     st.booleans(), st.none())
_containers = st.one_of(st.lists(st.integers(-100, 100), max_size=3),
                        st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=2))
not_text = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False,
                                                               allow_infinity=False),
                     st.booleans(), _containers)
not_number = st.one_of(st.text(max_size=8), st.booleans(), _containers)
not_a_date = st.one_of(
    st.text(max_size=40).filter(lambda s: RFC1123_GMT.fullmatch(s) is None),
    st.sampled_from(["2019-01-02T14:55:53Z", "Wed, 02 Jan 2019 14:55:53 UTC",
                     "wed, 02 jan 2019 14:55:53 GMT", "Wed, 2 Jan 2019 14:55:53 GMT",
                     "Wed, 02 Jan 2019 14:55:53 GMT ", "Wednesday, 02-Jan-19 14:55:53 GMT"]),
    st.integers(0, 2**40), st.booleans(), _containers)
bad_site_word = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: SITE_WORD.fullmatch(s) is None),
    st.just(""), st.text(alphabet="abc0123", min_size=33, max_size=40))


def one_bad_message_per_category(bases: Sequence[dict],
                                 known_sites: frozenset[str]) -> st.SearchStrategy:
    """Ten messages, one per category, each breaking exactly one rule of the session contract.

    A tuple rather than a choice among categories keeps the corpus balanced.

    Args:
        bases: valid sessions (with `schema_version`) to break.
        known_sites: the siteIDs the worker accepts.
    """
    base = st.sampled_from(range(len(bases))).map(lambda i: dict(bases[i]))
    return st.tuples(
        st.tuples(base, st.floats(0, 1, exclude_max=True), st.sampled_from(INVALID_UTF8))
        .map(lambda a: _not_utf8(*a)),
        st.tuples(base, _malformed).map(lambda a: _malformed_json(*a)),
        st.tuples(base, st.sampled_from(["kWhDelivered", "userInputs"]), _non_finite)
        .map(lambda a: _nan_inf(*a)),
        _empty.map(lambda v: BadMessage(v, "decode", "empty", "")),
        st.one_of(_scalars, _lists, st.text(max_size=20), base.map(lambda b: [b]))
        .map(lambda v: BadMessage(_dumps(v), "schema", "not_an_object", "")),
        st.tuples(base, st.sampled_from(REQUIRED)).map(lambda a: _missing(*a)),
        st.tuples(base, _negative).map(lambda a: _set_kwh(*a, "negative_value")),
        st.tuples(base, _huge).map(lambda a: _set_kwh(*a, "huge_value")),
        st.tuples(base, _site_words.filter(lambda w: w not in known_sites))
        .map(lambda a: _replace(*a, field="siteID", category="unknown_site")),
        st.tuples(base, _wrong_values).map(lambda a: _wrong_type(*a)),
    )


_empty = st.sampled_from([None, b"", b" ", b"\n", b"\t\r\n"])  # null value, blank bytes
_lists = st.lists(st.integers(-100, 100), max_size=3)
_site_words = st.from_regex(SITE_WORD, fullmatch=True)
_non_finite = st.sampled_from([math.nan, math.inf, -math.inf, "1e999", "-1e400"])
_negative = st.one_of(st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False),
                      st.integers(-2**63, -1))
# a digit string longer than any integer type is a huge literal, parsed as a double
_huge = st.one_of(st.floats(min_value=MAX_KWH, allow_nan=False, allow_infinity=False),
                  st.integers(int(MAX_KWH), 2**63 - 1),
                  st.integers(64, 300).map(lambda n: "9" * n))
_malformed = st.one_of(st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
                       st.tuples(st.sampled_from(["python_repr", "trailing_comma"]), st.none()),
                       st.tuples(st.just("junk"), st.text(max_size=30)))
_wrong_values = st.one_of(
    st.tuples(st.just("schema_version"), st.one_of(
        st.integers(-2**63, 2**63 - 1).filter(lambda v: v != SCHEMA_VERSION),
        st.text(max_size=3), st.booleans(), st.none(), _containers)),
    st.tuples(st.sampled_from(["sessionID", "stationID"]),
              st.one_of(not_text, st.none(), st.just(""))),
    st.tuples(st.just("siteID"), st.one_of(not_text, st.none(), bad_site_word)),
    st.tuples(st.sampled_from(["connectionTime", "disconnectTime"]),
              st.one_of(not_a_date, st.none())),
    st.tuples(st.just("doneChargingTime"), not_a_date),
    st.tuples(st.just("kWhDelivered"), st.one_of(not_number, st.none())),
    st.tuples(st.sampled_from(OPTIONAL_TEXT), not_text),
    st.tuples(st.just("userInputs"), st.one_of(
        st.text(max_size=8), st.integers(), st.booleans(),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))),
    st.tuples(st.just("userInputs_item"), st.tuples(
        st.floats(0, 1, exclude_max=True),
        st.one_of(_scalars, st.text(max_size=5), st.lists(st.integers(), max_size=2)))),
    st.tuples(st.sampled_from(INPUT_NUMBERS), st.tuples(st.just("input"), not_number)),
    st.tuples(st.sampled_from(INPUT_DATES), st.tuples(st.just("input"), not_a_date)),
)


def _not_utf8(base: dict, where: float, invalid: bytes) -> BadMessage:
    text = _dumps(base)
    at = int(where * (len(text) + 1))
    value = text[:at] + invalid + text[at:]
    return BadMessage(value, "decode", "not_utf8", "")


def _malformed_json(base: dict, how: tuple) -> BadMessage:
    kind, arg = how
    text = _dumps(base)
    value = {"truncate": lambda: text[:int(arg * len(text))],
             "python_repr": lambda: repr(base).encode(),  # quotes, True, None
             "trailing_comma": lambda: text[:-1] + b",}",
             "junk": lambda: arg.encode()}[kind]()
    assume(not _json_valid(value))
    return BadMessage(value, "decode", "malformed_json", "")


def _nan_inf(base: dict, field: str, number) -> BadMessage:
    slot = _SENTINEL if isinstance(number, str) else number
    if field == "userInputs":
        base["userInputs"] = [{"kWhRequested": slot}]
    else:
        base["kWhDelivered"] = slot
    text = _dumps(base)
    if isinstance(number, str):  # a literal that overflows a double
        text = text.replace(_dumps(_SENTINEL), number.encode(), 1)
    assert not _json_valid(text)
    return BadMessage(text, "decode", "nan_inf", "")


def _missing(base: dict, field: str) -> BadMessage:
    del base[field]
    return BadMessage(_dumps(base), "schema", "missing_field", field)


def _replace(base: dict, value: Any, field: str, category: str) -> BadMessage:
    base[field] = value
    return BadMessage(_dumps(base), "schema", category, field)


def _set_kwh(base: dict, value: Any, category: str) -> BadMessage:
    if isinstance(value, str):
        base["kWhDelivered"] = _SENTINEL
        text = _dumps(base).replace(_dumps(_SENTINEL), value.encode(), 1)
        return BadMessage(text, "schema", category, "kWhDelivered")
    return _replace(base, value, "kWhDelivered", category)


def _wrong_type(base: dict, target: tuple) -> BadMessage:
    field, value = target
    if field == "userInputs_item":  # a non-object among the edits
        where, item = value
        edits = list(base.get("userInputs") or [{}])
        edits.insert(int(where * (len(edits) + 1)), item)
        base["userInputs"], field = edits, "userInputs"
    elif field in INPUT_NUMBERS + INPUT_DATES:  # in the last edit: the request in force
        edits = [dict(e) for e in (base.get("userInputs") or [{}])]
        edits[-1][field] = value[1]
        base["userInputs"] = edits
    else:
        base[field] = value
    return BadMessage(_dumps(base), "schema", "wrong_type", field)
