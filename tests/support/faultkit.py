"""What the fault suite (tests/faults) and the soak (benchmarks/soak) share: worker processes
that are killed and restarted, a continuous replay, reading topics back, and the tally of
lost and duplicated sessions.

Results are collected with `tests.support.queues.ResultQueue` (a durable queue that
acknowledges after recording, so redeliveries show as duplicates).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.settings import Settings, settings_env

ROOT = Path(__file__).resolve().parents[2]
ZYGOTE = Path(__file__).with_name("worker_zygote.py")


# ---- the worker as a process ------------------------------------------------------------
def health(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return None


def wait_for_partitions(port: int, timeout: float = 60.0, alive=lambda: True) -> dict:
    """Wait until the worker on `port` owns partitions; its /healthz body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = health(port)
        if body and body.get("partitions"):
            return body
        if not alive():
            raise AssertionError(f"the worker on port {port} exited before it got partitions")
        time.sleep(0.1)
    raise AssertionError(f"the worker on port {port} got no partitions within {timeout:.0f}s")


def metric(port: int, name: str, labels: str = "") -> float:
    """One sample of the worker's /metrics, e.g. `metric(p, "evguard_serving_dead_lettered_total",
    'stage="decode"')`; 0 when the series does not exist yet."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    series = f"{name}{{{labels}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Zygote:
    """The warm parent of worker processes (`worker_zygote.py`): start it early, fork often.

    Its imports take 10-20 s; forking a worker from it takes milliseconds. One zygote can
    serve any settings: each fork gets its own environment and log.
    """

    def __init__(self, log: Path) -> None:
        self.log = log
        self._exits: dict[int, int] = {}
        self._pids: list[int] = []
        self._ready = False
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, str(ZYGOTE)], cwd=ROOT, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=out, start_new_session=True, text=True,
                bufsize=1, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            kind, *numbers = line.split()
            with self._changed:
                if kind == "ready":
                    self._ready = True
                elif kind == "pid":
                    self._pids.append(int(numbers[0]))
                elif kind == "exit":
                    self._exits[int(numbers[0])] = int(numbers[1])
                self._changed.notify_all()

    def _wait(self, predicate, timeout: float, what: str):
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(f"{what} within {timeout:.0f}s (log {self.log})")
            return predicate()

    def wait_ready(self, timeout: float = 180.0) -> None:
        self._wait(lambda: self._ready or self._proc.poll() is not None, timeout,
                   "the warm parent of the workers did not start")
        assert self._ready, f"the warm parent of the workers died (log {self.log})"

    def fork(self, env: dict[str, str], log: Path, args: Sequence[str] = (),
             timeout: float = 180.0) -> int:
        """A new worker process with this environment, writing to `log`; its PID."""
        import json

        with self._lock:
            seen = len(self._pids)
            self._proc.stdin.write(json.dumps({"env": env, "log": str(log),
                                               "args": list(args)}) + "\n")
            self._proc.stdin.flush()
            return self._wait(lambda: len(self._pids) > seen and self._pids[seen], timeout,
                              "the warm parent forked no worker")

    def exited(self, pid: int) -> int | None:
        return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float) -> int:
        self._wait(lambda: pid in self._exits, timeout, f"worker {pid} did not exit")
        return self._exits[pid]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)


class WorkerSupervisor:
    """Runs the scoring worker (`python -m serving`) as one process at a time, and restarts it.

    Workers are forked from a warm parent (`Zygote`), so a restart costs the champion load
    and the group join, as after a crash on a warm host, and not the imports of a new
    interpreter. Each worker is a process of its own session, signalled by PID.
    """

    def __init__(self, settings: Settings, log: Path, zygote: Zygote | None = None,
                 env: dict[str, str] | None = None,
                 args: Sequence[str] = ("--quiet-batches",)) -> None:
        self.log = log
        self.env = {**os.environ, **settings_env(settings), "MLFLOW_DISABLE_TELEMETRY": "true",
                    **(env or {})}
        self.args = list(args)
        self._own_zygote = zygote is None
        self.zygote = zygote
        self.pid: int | None = None
        self.started = 0
        self.kills = 0
        self.exit_codes: list[int] = []

    def prepare(self) -> None:
        """Start a warm parent now if none was given (its imports take a while)."""
        if self.zygote is None:
            self.zygote = Zygote(self.log.with_suffix(".zygote.log"))

    def start(self) -> int:
        """Fork a new worker; its PID."""
        assert not self.alive(), "one worker at a time"
        self.prepare()
        self.zygote.wait_ready()
        self.pid = self.zygote.fork(self.env, self.log, self.args)
        self.started += 1
        return self.pid

    def alive(self) -> bool:
        return self.pid is not None and self.zygote.exited(self.pid) is None

    def _exit_code(self, timeout: float) -> int:
        code = self.zygote.wait_exit(self.pid, timeout)
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        """SIGKILL the serving process, by its PID."""
        assert self.alive(), "no running worker to kill"
        os.kill(self.pid, signal.SIGKILL)
        self._exit_code(30)
        self.kills += 1

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the serving process (graceful: finish, confirm, commit); its exit code."""
        if self.pid is None:
            return None
        if not self.alive():
            return self.zygote.exited(self.pid)
        os.kill(self.pid, signal.SIGTERM)
        try:
            return self._exit_code(timeout)
        except AssertionError:
            os.kill(self.pid, signal.SIGKILL)
            return self._exit_code(10)

    def close(self) -> None:
        """Stop the serving process (and the warm parent, if this supervisor started it)."""
        self.stop(timeout=30)
        if self._own_zygote and self.zygote is not None:
            self.zygote.close()


# ---- a replay that runs until stopped -----------------------------------------------------
class ContinuousReplay:
    """Replays seeded synthetic sessions through `serving.replay.replay`, round after round,
    at `rate` sessions/s, until stopped. Every round renames its sessions (`~<tag><k>`), so
    each message is a new session; `expected` holds every sessionID produced."""

    def __init__(self, settings: Settings, rate: float, seed: int = 0, round_size: int = 200,
                 anomaly_rate: float = 0.03, tag: str | None = None) -> None:
        from pipelines.data.synth import generate_sessions

        self.settings = settings
        self.rate = rate
        self.pool, _ = generate_sessions(round_size, seed=seed, anomaly_rate=anomaly_rate)
        self.tag = tag or uuid.uuid4().hex[:6]
        self.expected: list[str] = []
        self.failed = 0
        self.resent = 0
        self.waits_for_broker = 0
        self.error: Exception | None = None
        self.errors: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="continuous-replay", daemon=True)

    def start(self) -> ContinuousReplay:
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        from serving.replay import ReplayPace, replay

        while not self._stop.is_set():
            suffix = f"~{self.tag}{self.rounds}"
            records = [{**r, "sessionID": f"{r['sessionID']}{suffix}"} for r in self.pool]
            self.expected.extend(r["sessionID"] for r in records)
            while True:
                try:
                    report = replay(self.settings, records, ReplayPace(rate=self.rate),
                                    flush_timeout_s=120)
                    break
                except ConnectionError:  # the broker is restarting; nothing was sent
                    self.waits_for_broker += 1
                    time.sleep(0.5)
                except Exception as exc:  # noqa: BLE001 - the test reports it
                    self.error = exc
                    return
            self.failed += report.failed
            self.resent += report.resent
            self.errors.extend(report.errors)
            self.rounds += 1

    def stop(self, timeout: float = 150.0) -> None:
        """Finish the round in progress and stop."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the replay did not finish its last round"
        assert self.error is None, f"the replay crashed: {self.error!r}"


# ---- reading back and counting ------------------------------------------------------------
def produce_tracked(settings: Settings, messages: Iterable[tuple[str, bytes | None]],
                    topic: str | None = None) -> dict[str, tuple[int, int]]:
    """Produce (key, value) pairs, keys unique; returns key -> (partition, offset) as delivered."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    positions: dict[str, tuple[int, int]] = {}
    failed: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            positions[msg.key().decode()] = (msg.partition(), msg.offset())

    for key, value in messages:
        while True:
            try:
                producer.produce(topic or settings.topic_sessions, value=value, key=key,
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0 and not failed, failed[:3]
    return positions


def read_topic(settings: Settings, topic: str, count: int | None, timeout: float = 30.0,
               quiet_s: float = 1.0) -> list:
    """Every message of `topic` from the start: until `count` arrived and nothing more came
    for `quiet_s` (so extra copies are seen too), or `timeout`. `count=None` reads up to the
    end the broker reports (its high watermarks when the read starts): for a topic that may
    hold fewer messages than were sent, such as after a broker crash."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"fault-reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends: dict[int, int] = {}
    if count is None:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
    consumer.subscribe([topic])
    messages: list = []
    read_to: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    last = time.monotonic()

    def complete() -> bool:
        if count is not None:
            return len(messages) >= count
        return all(read_to.get(p, 0) >= end for p, end in ends.items())

    try:
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
            if batch:
                messages += batch
                for m in batch:
                    read_to[m.partition()] = max(read_to.get(m.partition(), 0), m.offset() + 1)
                last = time.monotonic()
            elif complete() and time.monotonic() - last >= quiet_s:
                break
    finally:
        consumer.close()
    return messages


@dataclass
class Tally:
    """Sessions expected vs results received: lost ones are missing, duplicates extra copies."""

    messages: int
    received: int
    lost: int
    duplicates: int
    lost_ids: list[str] = field(default_factory=list)


def tally(expected: Iterable[str], bodies: Sequence[dict]) -> Tally:
    wanted = set(expected)
    copies = [b["sessionID"] for b in bodies if b["sessionID"] in wanted]
    missing = sorted(wanted - set(copies))
    return Tally(len(wanted), len(set(copies)), len(missing), len(copies) - len(set(copies)),
                 missing[:10])
