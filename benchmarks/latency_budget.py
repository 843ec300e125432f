"""Where a result's latency goes: the two broker hops measured alone, at the serving rate.

    .venv/bin/python benchmarks/latency_budget.py [--rate 1000] [--seconds 20] [--out FILE]

A session's path from produce to a confirmed result is: the Kafka hop (produce ->
broker -> the worker's fetch), the micro-batch (waiting for the batch in progress, then
its own scoring), and the RabbitMQ hop (publish -> the broker's confirm). The worker's
own stages are timed by `benchmarks/worker_profile.py`; this script measures the two hops
that the worker does not control, each alone, at the rate of the latency target:

1. Kafka hop: a producer sends `--rate` small messages/s to a private embedded broker
   (noida-db, one partition) with each `linger.ms` of `--linger`; a consumer polls them
   and records receipt - CreateTime; then with each consumer `fetch.min.bytes` and
   `fetch.wait.max.ms` of `--fetch`. The CPU of this process (producer and consumer) and of
   the broker is recorded for each, and for a consumer of an empty topic: what a consumer
   costs while nothing arrives.
2. RabbitMQ hop: at 1,000 sessions/s the worker sends one batched result message per
   micro-batch and routing key, so `--batches-per-s` messages of `--batch-results`
   results each (~500 bytes per result) are published to a uuid-named queue with
   publisher confirms; each publish -> confirm time is recorded, for every queue type
   and delivery mode that moves the trade-off: a durable classic queue with persistent
   messages (the default), the same with transient messages, and a quorum queue.

Prints a table and writes JSON with `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pika
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procstat import cpu_pressure, pid_of
from procstat import cpu_seconds_or_nan as cpu_seconds

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from pipelines.settings import Settings


def quantiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {"n": int(values.size), "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2),
            "max_ms": round(float(values.max()), 2)}






def kafka_hop(servers: str, rate: int, seconds: float, linger_ms: int,
              fetch_min_bytes: int = 1, fetch_wait_ms: int = 500,
              broker: int | None = None) -> dict:
    """Produce at `rate`/s, consume at once; receipt minus CreateTime per message, and the
    CPU the consumer's process and the broker spent on it (cores)."""
    topic = f"latency-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.min.bytes": fetch_min_bytes,
                         "fetch.wait.max.ms": fetch_wait_ms})
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": linger_ms})
    total, lags, done = int(rate * seconds), [], threading.Event()

    def consume() -> None:
        seen = 0
        while seen < total and not done.is_set():
            first = consumer.poll(0.5)  # consume(n, t) would wait for n messages or t
            if first is None:
                continue
            for message in [first, *consumer.consume(1000, 0)]:
                if message.error():
                    continue
                lags.append(time.time() * 1000 - message.timestamp()[1])
                seen += 1
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    body = b"x" * 400
    cpu_before = (sum(os.times()[:2]), cpu_seconds(broker))
    start = time.monotonic()
    for i in range(total):
        while time.monotonic() < start + i / rate:
            time.sleep(0.0005)
        producer.produce(topic, body, key=str(i % 50))
        producer.poll(0)
    producer.flush(30)
    done.wait(seconds + 30)
    elapsed = time.monotonic() - start
    cpu_after = (sum(os.times()[:2]), cpu_seconds(broker))
    done.set()
    reader.join(5)
    consumer.close()
    admin.delete_topics([topic])
    warm = lags[len(lags) // 10:]  # the first tenth includes joining the group
    return {"hop": "kafka", "linger_ms": linger_ms, "fetch_min_bytes": fetch_min_bytes,
            "fetch_wait_ms": fetch_wait_ms, **quantiles(warm),
            "client_cores": round((cpu_after[0] - cpu_before[0]) / elapsed, 3),
            "broker_cores": round((cpu_after[1] - cpu_before[1]) / elapsed, 3)}


def idle_consumer(servers: str, seconds: float, broker: int | None) -> dict:
    """CPU of a consumer of an empty topic, and of the broker serving it (cores). A broker
    that keeps to fetch.wait.max.ms answers an empty fetch after that wait; one that answers
    at once makes the client fetch again at once."""
    topic = f"idle-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(15)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    settle = time.monotonic() + 3.0  # join the group first
    while time.monotonic() < settle:
        consumer.poll(0.1)
    before, broker_before, start = sum(os.times()[:2]), cpu_seconds(broker), time.monotonic()
    while time.monotonic() < start + seconds:
        consumer.poll(0.1)
    elapsed = time.monotonic() - start
    row = {"hop": "kafka idle", "seconds": round(elapsed, 1),
           "client_cores": round((sum(os.times()[:2]) - before) / elapsed, 3),
           "broker_cores": round((cpu_seconds(broker) - broker_before) / elapsed, 3)}
    consumer.close()
    admin.delete_topics([topic])
    return row


def rabbit_hop(url: str, batches_per_s: int, seconds: float, results: int, queue_type: str,
               persistent: bool) -> dict:
    """Publish one batch-sized message at a time with confirms; publish -> confirm time."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = f"latency-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
    channel.confirm_delivery()
    body = json.dumps({"results": [{"sessionID": f"s-{i}", "pad": "x" * 440}
                                   for i in range(results)]}).encode()
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    times, total = [], int(batches_per_s * seconds)
    start = time.monotonic()
    for i in range(total):
        while time.monotonic() < start + i / batches_per_s:
            time.sleep(0.0005)
        t0 = time.perf_counter()
        channel.basic_publish("", queue, body, props)
        times.append((time.perf_counter() - t0) * 1000)
        if i % 200 == 0:
            channel.queue_purge(queue)
    channel.queue_delete(queue)
    connection.close()
    return {"hop": "rabbitmq", "queue": queue_type,
            "delivery": "persistent" if persistent else "transient",
            "message_bytes": len(body), **quantiles(times[len(times) // 10:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--rate", type=int, default=1000, help="sessions per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--linger", default="0,5", help="producer linger.ms values to try")
    parser.add_argument("--fetch", default="1:500,65536:10",
                        help="consumer fetch.min.bytes:fetch.wait.max.ms pairs to try (with "
                             "the last linger value); 1:500 is librdkafka's default")
    parser.add_argument("--skip-rabbitmq", action="store_true", help="the Kafka hop only")
    parser.add_argument("--batches-per-s", type=int, default=40,
                        help="result messages per second (micro-batches x routing keys)")
    parser.add_argument("--batch-results", type=int, default=25,
                        help="results per message (rate / micro-batches per second)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    base = Settings()
    rows = []
    with tempfile.TemporaryDirectory(prefix="evg-latency-") as tmp:
        settings = base.model_copy(update={"kafka_port": free_port(), "state_dir": Path(tmp)})
        stack = LocalStack(settings)
        stack.up(only=("kafka",))
        try:
            broker = pid_of("noida-db", settings.kafka_port)
            lingers = [int(v) for v in args.linger.split(",")]
            fetches = [tuple(int(x) for x in pair.split(":")) for pair in args.fetch.split(",")]
            runs = [(linger, *fetches[0]) for linger in lingers]
            runs += [(lingers[-1], *pair) for pair in fetches[1:]]
            print("kafka, an idle consumer (no messages)", flush=True)
            idle = idle_consumer(settings.kafka_servers, min(args.seconds, 10.0), broker)
            for linger, min_bytes, wait_ms in runs:
                print(f"kafka hop, linger.ms={linger}, fetch.min.bytes={min_bytes}, "
                      f"fetch.wait.max.ms={wait_ms}: {args.rate}/s for {args.seconds:.0f} s",
                      flush=True)
                rows.append(kafka_hop(settings.kafka_servers, args.rate, args.seconds, linger,
                                      min_bytes, wait_ms, broker))
        finally:
            stack.kafka_process().stop()
    for queue_type, persistent in () if args.skip_rabbitmq else (
            ("classic", True), ("classic", False), ("quorum", True)):
        print(f"rabbitmq hop, {queue_type} queue, {'persistent' if persistent else 'transient'}:"
              f" {args.batches_per_s} messages/s of {args.batch_results} results", flush=True)
        rows.append(rabbit_hop(base.rabbitmq_url, args.batches_per_s, args.seconds,
                               args.batch_results, queue_type, persistent))
    pressure = cpu_pressure()
    print(f"\nCPU pressure at the end: {pressure}\n")
    print(f"An idle consumer of an empty topic: {idle['client_cores']} cores in the client, "
          f"{idle['broker_cores']} in the broker\n")
    print("| hop | setting | n | p50 ms | p99 ms | max ms | client / broker cores |\n"
          "|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        setting = (f"linger.ms={row['linger_ms']}, fetch.min.bytes={row['fetch_min_bytes']}, "
                   f"fetch.wait.max.ms={row['fetch_wait_ms']}" if row["hop"] == "kafka"
                   else f"{row['queue']}, {row['delivery']}, {row['message_bytes']} B")
        cores = (f"{row['client_cores']} / {row['broker_cores']}" if row["hop"] == "kafka"
                 else "")
        print(f"| {row['hop']} | {setting} | {row['n']} | {row['p50_ms']} | {row['p99_ms']} |"
              f" {row['max_ms']} | {cores} |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "idle_consumer": idle,
                                        "cpu_pressure": pressure,
                                        "args": {k: str(v) for k, v in vars(args).items()}},
                                       indent=2))


if __name__ == "__main__":
    main()
