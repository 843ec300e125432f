"""The ceiling of the two brokers: consume from Kafka, publish to RabbitMQ, commit. No scoring.

    python benchmarks/race/bare_loop.py --kafka HOST:PORT --topic T --group G \
        --amqp URL --exchange X --expect N [--batch-size 1000] [--grouping message|batch]

Run by `benchmarks/serving_throughput.py` (part `bare`). Micro-batches of up to
--batch-size messages (`Consumer.consume`, as the worker takes them); each batch is
published persistent with confirms (one AMQP message per session with `message`, one per
partition of the batch with `batch`, the worker's two result shapes), and its offsets are
committed only after RabbitMQ confirmed it. Prints `progress <monotonic s> <results>` after
each batch and stops once --expect results are confirmed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from confirm_publisher import BatchConfirmPublisher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--expect", type=int, required=True, help="stop after this many results")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--grouping", choices=("message", "batch"), default="message")
    args = parser.parse_args()

    consumer = Consumer({"bootstrap.servers": args.kafka, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "enable.auto.offset.store": False,
                         # the embedded broker answers a fetch with the whole backlog (it
                         # ignores fetch.max.bytes): the worker's consumer allows the same
                         "receive.message.max.bytes": 1_000_000_000})
    consumer.subscribe([args.topic])
    publisher = BatchConfirmPublisher(args.amqp, args.exchange)
    done = 0
    try:
        while done < args.expect:
            messages = [m for m in consumer.consume(args.batch_size, 0.5) if not m.error()]
            if not messages:
                continue
            if args.grouping == "message":
                publisher.publish(("score.bare.normal", m.value()) for m in messages)
            else:
                by_partition: dict[int, list[bytes]] = {}
                for m in messages:
                    by_partition.setdefault(m.partition(), []).append(m.value())
                publisher.publish(("score.bare.normal", b"[" + b",".join(values) + b"]")
                                  for values in by_partition.values())
            last: dict[int, int] = {}
            for m in messages:
                last[m.partition()] = m.offset()
            done += len(messages)
            # asynchronous like the worker's commits, except the last one, before closing
            consumer.commit(offsets=[TopicPartition(args.topic, p, o + 1)
                                     for p, o in last.items()],
                            asynchronous=done < args.expect)
            print(f"progress {time.monotonic():.4f} {done}", flush=True)
    finally:
        publisher.close()
        consumer.close()


if __name__ == "__main__":
    main()
