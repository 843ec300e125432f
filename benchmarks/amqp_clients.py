"""The worker's AMQP clients, raced on one batched workload in one run.

Publishes the same score results to a durable queue of a private RabbitMQ node, persistent
and confirmed, through
- `pika`: `messaging.ConfirmedPublisher` (pika's SelectConnection on an I/O thread), the
  publisher every evguard process uses;
- `hand-written`: the worker's former `RabbitPublisher` (its own I/O thread on the
  hand-written `serving.amqp` connection), loaded from git at commit `HANDWRITTEN_AT`
  (both were removed after this race: see docs/benchmarks.md).

Both go through the worker's interface (`publish(batch)`, `take_completed()`), driven the
way `PublishStep` drives them.

Workload: micro-batches of `--batch` results, each split into one message per (site,
normal/anomaly) routing key as contract v2 does; at most `--window` batches await
confirms (the worker's `max_inflight`). `--single` also runs one message per result.

Reports wall time, messages/s, results/s, CPU of this process per result (both threads)
and RabbitMQ's CPU (cores), with /proc/pressure/cpu; `--paced` batches also measure the
publish -> confirm latency at a steady 20,000 results/s (persistent, to a durable queue).

    .venv/bin/python benchmarks/amqp_clients.py --results 200000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

import pika
from procstat import cpu_pressure, cpu_seconds

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from messaging import connection_parameters, publisher_parameters
from pipelines.settings import Settings
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch
from serving.steps.publish import RabbitPublisher

ROOT = Path(__file__).resolve().parents[1]
HANDWRITTEN_AT = "e7f05ed"  # the last commit whose worker published through serving/amqp.py
SITES = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")




def beam_pid(node: str) -> int:
    """The Erlang VM of RabbitMQ node `node` (found by the node name in its environment)."""
    wanted = f"RABBITMQ_NODENAME={node}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if not (entry / "cmdline").read_bytes().split(b"\0")[0].endswith(b"beam.smp"):
                    continue
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no beam.smp process of node {node}")




def make_batches(results: int, per_batch: int, single: bool, seed: int = 0) -> list[list]:
    """Batches of (routing key, body, results in it): one body per routing key (contract v2
    size), or one per result with `single`."""
    rng = random.Random(seed)
    batches, n = [], 0
    while n < results:
        size = min(per_batch, results - n)
        by_key: dict[str, list[dict]] = {}
        for i in range(size):
            site = rng.choice(SITES)
            anomaly = rng.random() < 0.03
            result = {"sessionID": f"s-{n + i:09d}", "stationID": f"{site}-{rng.randrange(99)}",
                      "siteID": site, "score": round(rng.random(), 6), "threshold": 0.61,
                      "is_anomaly": anomaly, "model_version": "7",
                      "connectionTime": "2026-12-04T05:00:00+00:00", "kWhDelivered": 12.5}
            if anomaly:
                result["explanation"] = {"kwh_per_hour": 0.41, "duration_h": 0.22}
            by_key.setdefault(f"score.{site}.{'anomaly' if anomaly else 'normal'}",
                              []).append(result)
        if single:
            batch = [(key, json.dumps(r).encode(), 1) for key, rs in by_key.items() for r in rs]
        else:
            batch = [(key, json.dumps({"schema": "evguard.scores/2", "results": rs}).encode(),
                      len(rs)) for key, rs in by_key.items()]
        batches.append(batch)
        n += size
    return batches


def _load_at(commit: str, path: str, name: str) -> types.ModuleType:
    """Module `name` from `path` as it was at `commit` (registered, so later loads import it)."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)  # noqa: S102
    return module


def handwritten_publisher():
    """The worker's former `RabbitPublisher` and its `serving.amqp` connection, as they were
    at `HANDWRITTEN_AT` (both were removed after this race)."""
    if "serving.amqp" not in sys.modules:
        _load_at(HANDWRITTEN_AT, "serving/amqp.py", "serving.amqp")
    return _load_at(HANDWRITTEN_AT, "serving/steps/publish.py",
                    "handwritten_publish").RabbitPublisher


def drive(publisher, batches: list[list], window: int) -> tuple[float, float]:
    """Publish every batch with at most `window` awaiting confirms, as `PublishStep` does;
    (wall seconds, CPU seconds of this process) from the first publish to the last confirm."""
    if not publisher.wait_ready(20):
        raise RuntimeError("publisher not ready")
    cpu0, t0 = time.process_time(), time.perf_counter()
    inflight = 0
    for batch in batches:
        while inflight >= window:
            inflight -= len(publisher.take_completed())
            if inflight >= window:
                time.sleep(0.0005)
        publisher.publish(Batch(offsets={}, results=[(key, body) for key, body, _n in batch]))
        inflight += 1
    while inflight:
        inflight -= len(publisher.take_completed())
        if inflight:
            time.sleep(0.0005)
    return time.perf_counter() - t0, time.process_time() - cpu0


def paced(publisher, batches: list[list], interval_s: float) -> dict:
    """Publish -> confirm latency of each batch, one batch every `interval_s` (a worker at a
    steady rate, not saturated): p50 and p99 in ms."""
    if not publisher.wait_ready(20):
        raise RuntimeError("publisher not ready")
    latencies = []
    for batch in batches:
        t0 = time.perf_counter()
        publisher.publish(Batch(offsets={}, results=[(key, body) for key, body, _n in batch]))
        while not publisher.take_completed():
            time.sleep(0.0002)
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(max(0.0, interval_s - (time.perf_counter() - t0)))
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 2)}


def run_pika(settings: Settings, exchange: str, batches: list[list], window: int):
    publisher = RabbitPublisher(publisher_parameters(settings), exchange, WorkerMetrics()).start()
    try:
        return drive(publisher, batches, window)
    finally:
        publisher.close()


def run_handwritten(settings: Settings, exchange: str, batches: list[list], window: int):
    publisher = handwritten_publisher()(settings.rabbitmq_url, exchange, WorkerMetrics()).start()
    try:
        return drive(publisher, batches, window)
    finally:
        publisher.close()


def measure(name: str, run, settings: Settings, rabbit_pid: int, batches: list[list],
            window: int) -> dict:
    exchange, queue = f"bench.amqp-{uuid.uuid4().hex[:8]}", f"bench.amqp-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(connection_parameters(settings)) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, "#")
    messages = sum(len(b) for b in batches)
    results = sum(n for b in batches for *_kb, n in b)
    rabbit0 = cpu_seconds(rabbit_pid)
    wall, cpu = run(settings, exchange, batches, window)
    rabbit = cpu_seconds(rabbit_pid) - rabbit0  # includes the connect and close: an upper bound
    with pika.BlockingConnection(connection_parameters(settings)) as conn:
        channel = conn.channel()
        arrived = channel.queue_declare(queue, passive=True).method.message_count
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
    if arrived != messages:
        raise AssertionError(f"{name}: {arrived} of {messages} messages arrived")
    return {"client": name, "messages": messages, "results": results, "wall_s": round(wall, 3),
            "messages_per_s": round(messages / wall), "results_per_s": round(results / wall),
            "client_cpu_us_per_result": round(cpu / results * 1e6, 2),
            "client_cpu_cores": round(cpu / wall, 2), "rabbitmq_cpu_cores": round(rabbit / wall, 2)}


def race(settings: Settings, rabbit_pid: int, clients, workloads, args) -> list[dict]:
    rows = []
    if args.paced:
        batches = workloads[0][1][:args.paced]
        for _round in range(2):
            for name, make in (("hand-written", lambda e: handwritten_publisher()(
                    settings.rabbitmq_url, e, WorkerMetrics())),
                               ("pika", lambda e: RabbitPublisher(
                                   publisher_parameters(settings), e, WorkerMetrics()))):
                exchange, queue = (f"bench.paced-{uuid.uuid4().hex[:8]}",
                                   f"bench.paced-{uuid.uuid4().hex[:8]}")
                with pika.BlockingConnection(connection_parameters(settings)) as conn:
                    channel = conn.channel()
                    channel.exchange_declare(exchange, "topic", durable=True)
                    channel.queue_declare(queue, durable=True)
                    channel.queue_bind(queue, exchange, "#")
                publisher = make(exchange).start()
                try:
                    row = {"workload": f"paced, a batch every {args.interval_ms} ms",
                           "client": name, **paced(publisher, batches, args.interval_ms / 1000)}
                finally:
                    publisher.close()
                with pika.BlockingConnection(connection_parameters(settings)) as conn:
                    conn.channel().queue_delete(queue)
                    conn.channel().exchange_delete(exchange)
                print(json.dumps(row), flush=True)
    for workload, batches in workloads:
        measure("warm-up", run_pika, settings, rabbit_pid, batches[:20], args.window)
        for _round in range(args.rounds):
            for name, run in clients:
                row = {"workload": workload, **measure(name, run, settings, rabbit_pid,
                                                       batches, args.window)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=1_000, help="results per micro-batch")
    parser.add_argument("--window", type=int, default=8, help="batches awaiting confirms")
    parser.add_argument("--single", type=int, default=20_000,
                        help="results for the one-message-per-result case (0 = skip)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per client")
    parser.add_argument("--paced", type=int, default=200,
                        help="batches for the publish -> confirm latency at a steady rate "
                             "(0 = skip)")
    parser.add_argument("--interval-ms", type=float, default=50.0,
                        help="one batch every this often in the paced case (50 ms of "
                             "1,000 results = 20,000 results/s)")
    args = parser.parse_args()
    clients = [("hand-written", run_handwritten), ("pika", run_pika)]
    workloads = [("batched", make_batches(args.results, args.batch, single=False))]
    if args.single:
        workloads.append(("single", make_batches(args.single, args.batch, single=True)))
    print(f"cpu pressure before: {cpu_pressure()}")
    with tempfile.TemporaryDirectory(prefix="amqp-bench-") as state:
        # a private node: its CPU is this benchmark's alone
        settings = Settings(_env_file=None, state_dir=Path(state),
                            rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
        stack = LocalStack(settings)
        stack.up(only=("rabbitmq",))
        try:
            rows = race(settings, beam_pid(stack.rabbitmq_process().env["RABBITMQ_NODENAME"]),
                        clients, workloads, args)
        finally:
            stack.down()
    print(f"cpu pressure after: {cpu_pressure()}")
    for workload, _batches in workloads:
        median = {name: {key: statistics.median(r[key] for r in rows
                                                if r["workload"] == workload
                                                and r["client"] == name)
                          for key in ("wall_s", "client_cpu_us_per_result",
                                      "rabbitmq_cpu_cores")}
                  for name, _run in clients}
        print(f"{workload} (median of {args.rounds}): {json.dumps(median)}")
        if "hand-written" in median:
            gain = median["pika"]["wall_s"] / median["hand-written"]["wall_s"] - 1
            extra = (median["pika"]["client_cpu_us_per_result"]
                     - median["hand-written"]["client_cpu_us_per_result"])
            print(f"{workload}: publishing alone, the hand-written client is {gain:+.0%} faster "
                  f"(wall) than pika; pika costs {extra:+.2f} us of CPU per result, "
                  f"{extra / 25:+.1%} of the worker's 25 us/session budget end to end")


if __name__ == "__main__":
    main()
