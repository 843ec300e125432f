"""Dead letters (contract §6): what a bad message carries to its dead-letter queue.

Two kinds, one shape of evidence: the original bytes, unchanged, plus headers
that say why and where from.
- A session the worker cannot score goes to the Kafka topic `<sessions topic>.dlq`
  with `error`, `error_stage` (`decode`, `schema` or `features`) and its
  `source_topic`, `source_partition` and `source_offset`.
- A score result a consumer cannot use goes to the RabbitMQ queue `<queue>.dlq`
  with `error`, `source_queue` and `source_routing_key` (and `attempts` for an
  alert that could not be delivered).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.contracts.sessions import Source

MAX_ERROR_CHARS = 1000  # a header, not a log: enough to say which rule broke


def dlq_name(queue: str) -> str:
    """The RabbitMQ dead-letter queue of a consumer's queue."""
    return f"{queue}.dlq"


def session_dead_letter_headers(reason: str, stage: str, source: Source) -> list[tuple[str, bytes]]:
    """Kafka headers of a session that went to the dead-letter topic."""
    return [("error", reason.encode()), ("error_stage", stage.encode()),
            ("source_topic", source.topic.encode()),
            ("source_partition", str(source.partition).encode()),
            ("source_offset", str(source.offset).encode())]


def read_session_dead_letter(headers: Iterable[tuple[str, bytes]]) -> tuple[str, str, Source]:
    """`(error, stage, source)` from the headers of a dead-lettered session (source timestamp 0)."""
    found = {key: value.decode(errors="replace") for key, value in headers}
    source = Source(found.get("source_topic", ""), int(found.get("source_partition", -1)),
                    int(found.get("source_offset", -1)), 0)
    return found.get("error", ""), found.get("error_stage", ""), source


def result_dead_letter_headers(error: str, queue: str, routing_key: str,
                               **extra: object) -> dict[str, object]:
    """AMQP headers of a score result that went to `<queue>.dlq`."""
    return {"error": error[:MAX_ERROR_CHARS], "source_queue": queue,
            "source_routing_key": routing_key, **extra}
