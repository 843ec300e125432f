"""Soak: replay without pause while the worker and the brokers fail at random times.

    .venv/bin/python benchmarks/soak/run_soak.py --minutes 3 [--seed 7] [--rate 200]

On a private stack in a temporary state dir (embedded Kafka-compatible broker, a RabbitMQ
node of its own, a sqlite MLflow with a freshly trained champion) it runs the worker as a
process and replays synthetic sessions continuously (a few bad messages with every fault,
for the dead-letter topic). At seeded random times (every --min-gap..--max-gap seconds)
one fault happens:

- `kill_worker`: SIGKILL the worker, start a new one (same static group membership);
- `stop_worker`: SIGTERM (graceful), start a new one;
- `restart_rabbitmq`: stop and start the RabbitMQ node (same data dir);
- `restart_kafka`: stop the broker, wait 1-3 s, start it (same data dir).

A worker that exits on its own is counted and started again, as a supervisor would. At
the end the replay stops, the results are awaited, and the report says how many sessions
were replayed, how many have no result (lost), and how many results are extra copies
(duplicates, allowed: delivery is at-least-once). The JSON report is written to
test-artifacts/soak-<time>.json; the exit code is 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from pipelines.settings import Settings
from tests.support.champion import register_champion
from tests.support.faultkit import (
    ContinuousReplay,
    WorkerSupervisor,
    produce_tracked,
    read_topic,
    tally,
    wait_for_partitions,
)
from tests.support.queues import ResultQueue

FAULTS = ("kill_worker", "stop_worker", "restart_rabbitmq", "restart_kafka")
BAD = [b"{not json", b"\xff\xfe", b'{"schema_version": 1}', b"[]", b""]


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        tag = uuid.uuid4().hex[:6]
        self.settings = Settings(
            _env_file=None, state_dir=root / "state", data_dir=root / "data",
            kafka_port=free_port(), metrics_port=free_port(),
            rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
            mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db", topic_sessions=f"soak-{tag}",
            topic_dlq=f"soak-{tag}.dlq", consumer_group=f"soak-{tag}",
            rabbitmq_exchange=f"ev.scores.soak-{tag}", serve_instance_id=f"soak-{tag}",
            serve_batch_size=500, serve_publish_retry_max_s=2.0, serve_model_poll_s=5.0)
        self.stack = LocalStack(self.settings)
        self.root = root
        self.events: list[dict] = []
        self.unexpected_exits: list[int] = []
        self.bad_keys: list[str] = []
        self.t0 = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    # ---- set-up and tear-down -------------------------------------------------------
    def up(self) -> None:
        self.log("starting Kafka-compatible broker and RabbitMQ node")
        self.stack.up(only=("kafka", "rabbitmq"))
        self.log("training and registering a champion")
        register_champion(self.settings, seed=self.args.seed)
        self.results = ResultQueue(self.settings.rabbitmq_url, self.settings.rabbitmq_exchange)
        self.workers = WorkerSupervisor(self.settings, self.root / "worker.log")
        self.start_worker()
        self.replay = ContinuousReplay(self.settings, rate=self.args.rate, seed=self.args.seed,
                                       round_size=500).start()

    def down(self) -> None:
        for close in (lambda: self.workers.close(), lambda: self.results.close(),
                      self.stack.down):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - tear down the rest anyway
                self.log(f"tear-down: {exc}")

    # ---- faults -------------------------------------------------------------------------
    def start_worker(self) -> None:
        self.workers.start()
        wait_for_partitions(self.settings.metrics_port, timeout=120, alive=self.workers.alive)

    def kill_worker(self) -> str:
        self.workers.kill()
        self.start_worker()
        return "SIGKILL, restarted"

    def stop_worker(self) -> str:
        code = self.workers.stop()
        self.start_worker()
        return f"SIGTERM (exit {code}), restarted"

    def restart_rabbitmq(self) -> str:
        t = time.monotonic()
        self.stack.rabbitmq_process().stop()
        self.stack.up(only=("rabbitmq",))
        return f"down {time.monotonic() - t:.1f}s"

    def restart_kafka(self) -> str:
        t = time.monotonic()
        kafka = self.stack.kafka_process()
        kafka.stop()
        time.sleep(self.rng.uniform(1.0, 3.0))
        kafka.start()
        return f"down {time.monotonic() - t:.1f}s"

    def inject_bad(self) -> None:
        keys = [f"soak-bad-{len(self.bad_keys) + i}" for i in range(len(BAD))]
        produce_tracked(self.settings, list(zip(keys, BAD)))
        self.bad_keys += keys

    def supervise(self) -> None:
        """Restart a worker that stopped on its own (as systemd or Prefect would)."""
        if not self.workers.alive():
            code = self.workers.zygote.exited(self.workers.pid)
            self.unexpected_exits.append(code)
            self.log(f"worker exited on its own with code {code}; starting a new one")
            self.start_worker()

    def run(self) -> dict:
        started = time.monotonic()
        end = started + self.args.minutes * 60
        next_fault = time.monotonic() + self.rng.uniform(self.args.min_gap, self.args.max_gap)
        while time.monotonic() < end:
            time.sleep(0.5)
            self.supervise()
            if time.monotonic() < next_fault:
                continue
            fault = self.rng.choice(FAULTS)
            at = time.monotonic() - self.t0
            outcome = getattr(self, fault)()
            self.inject_bad()
            received = len(self.results.wait_for(lambda r: False, timeout=0).bodies)
            self.events.append({"at_s": round(at, 1), "fault": fault, "outcome": outcome})
            self.log(f"{fault}: {outcome}; {len(self.replay.expected)} replayed, "
                     f"{received} results so far")
            next_fault = time.monotonic() + self.rng.uniform(self.args.min_gap,
                                                             self.args.max_gap)
        fault_phase = time.monotonic() - started
        self.log("stopping the replay, waiting for every result")
        self.replay.stop()
        expected = set(self.replay.expected)
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline:
            self.supervise()
            results = self.results.wait_for(lambda r: r.sessions() >= expected, timeout=2)
            if results.sessions() >= expected:
                break
        dead = read_topic(self.settings, self.settings.topic_dlq, len(self.bad_keys),
                          timeout=60)
        dead_keys = Counter(m.key().decode() for m in dead if m.key())
        code = self.workers.stop()
        counted = tally(expected, results.bodies)
        return {
            "command": "benchmarks/soak/run_soak.py " + " ".join(sys.argv[1:]),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "minutes": self.args.minutes, "seed": self.args.seed, "rate": self.args.rate,
            "sessions_replayed": counted.messages, "results_received": len(results.bodies),
            "lost": counted.lost, "lost_examples": counted.lost_ids,
            "duplicates": counted.duplicates,
            "duplicate_share": round(counted.duplicates / max(1, counted.messages), 4),
            "faults": dict(Counter(e["fault"] for e in self.events)), "events": self.events,
            "worker_processes": self.workers.started,
            "unexpected_worker_exits": self.unexpected_exits, "last_exit_code": code,
            "replay_failed": self.replay.failed, "replay_resent": self.replay.resent,
            "bad_messages": len(self.bad_keys),
            "bad_messages_dead_lettered": len(set(self.bad_keys) & set(dead_keys)),
            "dead_letter_copies": sum(dead_keys.values()),
            "setup_seconds": round(started - self.t0, 1),
            "fault_phase_seconds": round(fault_phase, 1),
            "drain_seconds": round(time.monotonic() - started - fault_phase, 1),
            "replay_waits_for_broker": self.replay.waits_for_broker,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the fault phase")
    parser.add_argument("--seed", type=int, default=7, help="seed of the faults and sessions")
    parser.add_argument("--rate", type=float, default=200.0, help="sessions replayed per second")
    parser.add_argument("--min-gap", type=float, default=8.0, help="least seconds between faults")
    parser.add_argument("--max-gap", type=float, default=20.0, help="most seconds between faults")
    parser.add_argument("--drain-timeout", type=float, default=180.0,
                        help="how long to wait for the last results")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="evguard-soak-"))
    soak = Soak(args, root)
    try:
        soak.up()
        report = soak.run()
    finally:
        soak.down()
    out = ROOT / "test-artifacts" / f"soak-{datetime.now():%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    print(f"report: {out}")
    complete = report["bad_messages_dead_lettered"] == report["bad_messages"]
    if report["lost"] == 0 and complete:
        shutil.rmtree(root, ignore_errors=True)  # the broker's data: ~300 MB per 10 minutes
        return 0
    print(f"logs and broker data kept for inspection: {root}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
