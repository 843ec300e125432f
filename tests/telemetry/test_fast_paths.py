"""The telemetry hot path's shortcuts give what the plain code gives: measurands of a decoded
event, the connector state's changelog bytes, the direct indexing of its float fields, and
the shared result of a quiet sample."""

from __future__ import annotations

import math
import struct
from array import array

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.contracts.live_alert import KINDS
from pipelines.contracts.telemetry import (
    EXAMPLE_TELEMETRY,
    MEASURANDS,
    STATUSES,
    _finite,
    _finite_decoded,
    parse_telemetry,
)
from pipelines.telemetry import detectors
from pipelines.telemetry.detectors import RECENT_IDS, ConnectorState, on_event
from tests.telemetry.kit import T0, meter, transaction

NAMES = st.sampled_from([*MEASURANDS, "bogus", "Current.Import", ""])
VALUES = st.one_of(st.floats(), st.floats(allow_nan=False, allow_infinity=False),
                   st.integers(-(2**63), 2**64), st.booleans(), st.none(), st.text(max_size=3),
                   st.just(1.7e308), st.just(-0.0))
DOUBLE = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]))


def _typed(values: dict) -> list[tuple[str, object, type]]:
    return [(k, v, type(v)) for k, v in values.items()]


# a sample is mostly known names with float values: NaN or an infinity among them is the case
# the shortcut must notice
SAMPLES = st.one_of(st.dictionaries(NAMES, VALUES, max_size=9),
                    st.dictionaries(st.sampled_from(list(MEASURANDS)), DOUBLE, max_size=8))


@settings(max_examples=500, deadline=None)
@given(SAMPLES)
def test_measurands_of_a_decoded_event_are_the_finite_known_ones_as_floats(values):
    expected = _finite(values)
    got = _finite_decoded(dict(values))
    assert _typed(got) == _typed(expected)
    assert all(type(v) is float and math.isfinite(v) and k in MEASURANDS for k, v in got.items())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(NAMES, st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                        st.integers(-(2**63), 2**63 - 1), st.booleans(),
                                        st.none()), max_size=9))
def test_a_parsed_event_carries_the_same_measurands_as_the_plain_filter(values):
    body = {**EXAMPLE_TELEMETRY, "measurands": values}
    event = parse_telemetry(orjson.dumps(body))
    assert _typed(event.measurands) == _typed(_finite(orjson.loads(orjson.dumps(values))))


def _record(conn: ConnectorState) -> bytes:
    """The changelog layout, written out field by field from its definition."""
    texts = [t.encode() for t in (conn.charge_point_id, conn.site_id, conn.transaction_id,
                                  conn.error_code, conn.user_id)]
    status = STATUSES.index(conn.status) + 1 if conn.status else 0
    n = len(KINDS)
    head = struct.pack(f"<5H2B2H2I{n}H{RECENT_IDS}I{len(conn.doubles)}d",
                       *map(len, texts), status, conn.open_bits, conn.connector_id,
                       min(conn.advances, 65535), conn.charging_samples, conn.last_ended_tx,
                       *conn.streaks, *conn.recent, *conn.doubles)
    return head + b"".join(texts) + bytes((conn.recent_at,))


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(cp=TEXT.filter(bool), site=TEXT, tx=TEXT, error=TEXT, user=TEXT,
       status=st.sampled_from(["", *STATUSES]), connector=st.integers(0, 65535),
       open_bits=st.integers(0, 255), samples=st.integers(0, 2**32 - 1),
       ended=st.integers(0, 2**32 - 1), advances=st.integers(0, 70000),
       recent_at=st.integers(0, RECENT_IDS - 1),
       streaks=st.lists(st.integers(0, 65535), min_size=len(KINDS), max_size=len(KINDS)),
       recent=st.lists(st.integers(0, 2**32 - 1), min_size=RECENT_IDS, max_size=RECENT_IDS),
       doubles=st.lists(DOUBLE, min_size=len(ConnectorState("x", 1).doubles),
                        max_size=len(ConnectorState("x", 1).doubles)))
def test_state_bytes_follow_the_record_layout_and_round_trip(
        cp, site, tx, error, user, status, connector, open_bits, samples, ended, advances,
        recent_at, streaks, recent, doubles):
    conn = ConnectorState(cp, connector, site, tx, status, error, user, open_bits, samples,
                          ended, recent_at)
    conn.advances = advances
    conn.streaks, conn.recent = array("H", streaks), array("I", recent)
    conn.doubles = array("d", doubles)
    data = conn.to_bytes()
    assert data == _record(conn)
    assert ConnectorState.from_bytes(data).to_bytes() == data


def test_each_index_constant_reads_the_field_its_property_writes():
    constants = {name: getattr(detectors, name.upper()) for name in detectors._DOUBLES
                 if hasattr(detectors, name.upper())}
    assert len(constants) >= 20
    conn = ConnectorState("CP-1", 1)
    for i, name in enumerate(detectors._DOUBLES):
        setattr(conn, name, 1000.0 + i)
    for name, at in constants.items():
        assert conn.doubles[at] == getattr(conn, name), name


def test_a_quiet_samples_shared_result_is_not_changed_by_a_later_alert():
    state: dict = {}
    quiet = [on_event(state, e) for e in transaction(lambda i: (30.0, 32.0, "Charging"),
                                                        samples=5, end=False)]
    assert all(r.applied for r in quiet)
    hot = on_event(state, meter(T0 + 60, 1100.0, 30.0, temperature_c=90.0))
    assert [a.kind for a in hot.alerts] == ["overtemperature"]
    assert [r.alerts for r in quiet] == [[]] * len(quiet)
    assert on_event(state, meter(T0 + 70, 1110.0, 30.0, temperature_c=90.0)).alerts == []
    assert hot.alerts[0].status == "open"
