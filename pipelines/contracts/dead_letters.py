"""Dead letters (contract §6): what a bad message carries to its dead-letter queue.

Two kinds, one shape of evidence: the original bytes, unchanged, plus headers
that say why and where from.
- A session the worker cannot score goes to the Kafka topic `<sessions topic>.dlq`
  with `error`, `error_stage` (`decode`, `schema` or `features`) and its
  `source_topic`, `source_partition` and `source_offset`.
- A score result a consumer cannot use goes to the RabbitMQ queue `<queue>.dlq`
  with `error`, `source_queue` and `source_routing_key` (and `attempts` for an
  alert that could not be delivered). A batch of results (`evguard.scores/2`) whose
  good elements were used goes there too, whole, when some of its elements were
  not: `bad_elements` lists them as `index: reason` (`bad_element_headers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pipelines.contracts.sessions import Source

MAX_ERROR_CHARS = 1000  # a header, not a log: enough to say which rule broke
MAX_LISTED_ELEMENTS = 100  # of a batch's bad elements, listed one by one (all are counted)
MAX_ELEMENT_REASON_CHARS = 200


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


def bad_element_headers(errors: Sequence[tuple[int, str]],
                        total: int) -> tuple[str, dict[str, object]]:
    """`(error, extra headers)` of a result batch that goes to `<queue>.dlq` because of some of
    its elements (pure).

    Args:
        errors: `(index in the batch, reason)` of each element that was not used.
        total: how many results the batch holds.

    Returns:
        The `error` text (a summary naming the first elements) and the headers
        `bad_elements` (a list of `index: reason`, the first `MAX_LISTED_ELEMENTS`),
        `bad_element_count` and `result_count`, for `result_dead_letter_headers`.
    """
    listed = [f"{index}: {reason[:MAX_ELEMENT_REASON_CHARS]}"
              for index, reason in errors[:MAX_LISTED_ELEMENTS]]
    error = f"{len(errors)} of {total} results rejected: " + "; ".join(listed)
    return error, {"bad_elements": listed, "bad_element_count": len(errors),
                   "result_count": total}


def read_bad_elements(headers: Mapping[str, object]) -> list[tuple[int, str]]:
    """`(index, reason)` of each element listed in a dead-lettered batch's headers."""
    found = []
    for item in headers.get("bad_elements") or []:
        text = item.decode(errors="replace") if isinstance(item, bytes) else str(item)
        index, _, reason = text.partition(": ")
        found.append((int(index), reason))
    return found
