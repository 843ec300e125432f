"""What the fault suite (tests/faults) and the soak (benchmarks/soak) share: worker processes
that are killed and restarted, a continuous replay, reading topics back, and the tally of
lost and duplicated sessions.

Results are collected with `tests.serving.helpers.ResultQueue` (a durable queue that
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import httpx

from evguard.settings import Settings, settings_env

ROOT = Path(__file__).resolve().parents[2]
STANDBY = Path(__file__).with_name("standby_worker.py")


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


class WorkerSupervisor:
    """Runs the scoring worker (`python -m serving`) as one process at a time, and restarts it.

    The next process is started ahead of need (`standby_worker.py`): it imports the
    worker's modules, then waits; `start` lets it run `serving.__main__.main`. So a restart
    costs the champion load and the group join, as after a crash on a warm host.
    Processes run in their own sessions and are signalled by PID only.
    """

    def __init__(self, settings: Settings, log: Path, env: dict[str, str] | None = None,
                 args: Sequence[str] = ("--quiet-batches",)) -> None:
        self.settings = settings
        self.log = log
        self.env = {**os.environ, **settings_env(settings), "MLFLOW_DISABLE_TELEMETRY": "true",
                    **(env or {})}
        self.args = list(args)
        self.current: subprocess.Popen | None = None
        self._standby: subprocess.Popen | None = None
        self.started = 0
        self.kills = 0
        self.exit_codes: list[int] = []

    def _spawn(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            return subprocess.Popen([sys.executable, str(STANDBY), *self.args], cwd=ROOT,
                                    env=self.env, stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def prepare(self) -> None:
        """Start the next process now, so that it is warm when needed."""
        if self._standby is None or self._standby.poll() is not None:
            self._standby = self._spawn()

    def start(self, prepare_next: bool = True) -> subprocess.Popen:
        """Let the prepared process serve (preparing one first if there is none)."""
        assert self.current is None or self.current.poll() is not None, "one worker at a time"
        self.prepare()
        proc, self._standby = self._standby, None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        self.current = proc
        self.started += 1
        if prepare_next:
            self.prepare()
        return proc

    def alive(self) -> bool:
        return self.current is not None and self.current.poll() is None

    def kill(self) -> None:
        """SIGKILL the serving process, by its PID, and reap it."""
        proc = self.current
        assert proc is not None and proc.poll() is None, "no running worker to kill"
        os.kill(proc.pid, signal.SIGKILL)
        self.exit_codes.append(proc.wait(30))
        self.kills += 1

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the serving process (graceful: finish, confirm, commit); its exit code."""
        proc = self.current
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        self.exit_codes.append(code)
        return code

    def close(self) -> None:
        """Stop the serving process and discard the prepared one."""
        self.stop(timeout=30)
        if self._standby is not None and self._standby.poll() is None:
            self._standby.kill()
            self._standby.wait(10)
        self._standby = None


# ---- a replay that runs until stopped -----------------------------------------------------
class ContinuousReplay:
    """Replays seeded synthetic sessions through `serving.replay.replay`, round after round,
    at `rate` sessions/s, until stopped. Every round renames its sessions (`~<tag><k>`), so
    each message is a new session; `expected` holds every sessionID produced."""

    def __init__(self, settings: Settings, rate: float, seed: int = 0, round_size: int = 200,
                 anomaly_rate: float = 0.03, tag: str | None = None) -> None:
        from pipelines.synth import generate_sessions

        self.settings = settings
        self.rate = rate
        self.pool, _ = generate_sessions(round_size, seed=seed, anomaly_rate=anomaly_rate)
        self.tag = tag or uuid.uuid4().hex[:6]
        self.expected: list[str] = []
        self.failed = 0
        self.errors: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="continuous-replay", daemon=True)

    def start(self) -> "ContinuousReplay":
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        from confluent_kafka import Producer

        from serving.replay import ReplayPace, producer_config, replay

        producer = Producer(producer_config(self.settings.kafka_servers))
        while not self._stop.is_set():
            suffix = f"~{self.tag}{self.rounds}"
            records = [{**r, "sessionID": f"{r['sessionID']}{suffix}"} for r in self.pool]
            self.expected.extend(r["sessionID"] for r in records)
            report = replay(self.settings, records, ReplayPace(rate=self.rate),
                            producer=producer, flush_timeout_s=120)
            self.failed += report.failed
            self.errors.extend(report.errors)
            self.rounds += 1

    def stop(self, timeout: float = 150.0) -> None:
        """Finish the round in progress and stop."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the replay did not finish its last round"


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


def read_topic(settings: Settings, topic: str, count: int, timeout: float = 30.0,
               quiet_s: float = 1.0) -> list:
    """Every message of `topic` from the start: until `count` arrived and nothing more came
    for `quiet_s` (so extra copies are seen too), or `timeout`."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"fault-reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
            if batch:
                messages += batch
                last = time.monotonic()
            elif len(messages) >= count and time.monotonic() - last >= quiet_s:
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
