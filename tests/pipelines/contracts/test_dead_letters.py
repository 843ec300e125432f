"""The dead-letter contract (§6): what a bad message carries to its dead-letter queue."""

from __future__ import annotations

from pipelines.contracts.dead_letters import read_session_dead_letter, session_dead_letter_headers
from pipelines.contracts.sessions import Source


def test_a_session_dead_letter_carries_its_reason_stage_and_position():
    source = Source("ev-station-data", 2, 41, 1_700_000_000_000)
    headers = session_dead_letter_headers("kWhDelivered must be a number", "schema", source)
    assert all(isinstance(value, bytes) for _, value in headers)
    assert read_session_dead_letter(headers) == ("kWhDelivered must be a number", "schema",
                                                 source._replace(timestamp_ms=0))
