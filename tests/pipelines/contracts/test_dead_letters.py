"""The dead-letter contract (§6): what a bad message carries to its dead-letter queue."""

from __future__ import annotations

from pipelines.contracts.dead_letters import (
    MAX_ERROR_CHARS,
    MAX_LISTED_ELEMENTS,
    bad_element_headers,
    read_bad_elements,
    read_session_dead_letter,
    result_dead_letter_headers,
    session_dead_letter_headers,
)
from pipelines.contracts.sessions import Source


def test_a_session_dead_letter_carries_its_reason_stage_and_position():
    source = Source("ev-station-data", 2, 41, 1_700_000_000_000)
    headers = session_dead_letter_headers("kWhDelivered must be a number", "schema", source)
    assert all(isinstance(value, bytes) for _, value in headers)
    assert read_session_dead_letter(headers) == ("kWhDelivered must be a number", "schema",
                                                 source._replace(timestamp_ms=0))


def test_a_result_batch_dead_letter_lists_its_bad_elements_by_index():
    error, extra = bad_element_headers([(3, "score must be a finite number, got 'x'"),
                                        (17, "sessionID must be a non-empty string")], 40)
    headers = result_dead_letter_headers(error, "monitoring", "score.0002.normal", **extra)
    assert headers["error"].startswith("2 of 40 results rejected: 3: score must be")
    assert (headers["bad_element_count"], headers["result_count"]) == (2, 40)
    # read back from str (pika decodes UTF-8 header strings) or bytes alike
    received = {**headers, "bad_elements": [e.encode() for e in headers["bad_elements"]]}
    assert read_bad_elements(received) == [(3, "score must be a finite number, got 'x'"),
                                           (17, "sessionID must be a non-empty string")]


def test_a_batch_with_many_bad_elements_lists_the_first_and_counts_them_all():
    errors = [(i, "x" * 500) for i in range(MAX_LISTED_ELEMENTS + 50)]
    error, extra = bad_element_headers(errors, 1000)
    headers = result_dead_letter_headers(error, "alerts", "score.0002.anomaly", **extra)
    assert extra["bad_element_count"] == MAX_LISTED_ELEMENTS + 50
    assert len(read_bad_elements(headers)) == MAX_LISTED_ELEMENTS
    assert len(headers["error"]) == MAX_ERROR_CHARS
