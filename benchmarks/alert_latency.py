"""Time from a session produced to Kafka to its alert email in the SMTP sink, end to end.

    .venv/bin/python benchmarks/alert_latency.py [--samples 30]

Starts a private stack (embedded Kafka-compatible broker, SMTP sink; the
machine's RabbitMQ with uuid-named exchange and queues), registers a small
champion in a private sqlite MLflow (with the tests' registrar), and runs the real processes: the worker
(`python -m serving`), `evguard monitor` and `evguard alert`. Then, one at a
time, it produces an impossible session (250 kWh) from a new station and waits
for its .eml in the outbox and its row in the monitoring store. Prints a
markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' support kits


def impossible_session(template: dict, i: int) -> dict:
    return {**template, "_id": uuid.uuid4().hex, "sessionID": f"bench-{uuid.uuid4().hex[:12]}",
            "stationID": f"CA-B{i:03d}", "kWhDelivered": 250.0}


def wait_for(check, timeout: float, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(interval)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()

    from confluent_kafka import Producer
    from sqlalchemy import select

    from evguard.services.process import free_port
    from evguard.services.stack import LocalStack
    from pipelines.contracts.sessions import encode_session
    from pipelines.data.synth import generate_sessions
    from pipelines.scores.store import MonitoringStore, scores
    from pipelines.settings import Settings, settings_env
    from tests.support.champion import register_champion
    from tests.support.queues import consumer_queues

    with tempfile.TemporaryDirectory() as tmp, consumer_queues(Settings(
            _env_file=None, state_dir=Path(tmp) / "state", data_dir=Path(tmp) / "data",
            kafka_port=free_port(), smtp_port=free_port(), metrics_port=free_port(),
            dashboard_port=free_port(), alert_cooldown_s=3600)) as settings:
        stack = LocalStack(settings)
        stack.up(only=("kafka", "smtp", "mlflow"))
        threshold = register_champion(settings, seed=3, sessions=2000, n_estimators=100,
                                      alert_share=0.02).model.threshold
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        evguard = str(Path(sys.executable).parent / "evguard")
        logs = Path(tmp) / "logs"
        logs.mkdir()
        procs = {}
        for name, cmd in {"monitor": [evguard, "monitor", "--no-retrain"],
                          "alert": [evguard, "alert"],
                          "worker": [sys.executable, "-m", "serving", "--quiet-batches"]}.items():
            with open(logs / name, "wb") as log:
                procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        store = MonitoringStore(settings.monitoring_db)
        producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 0})
        template = generate_sessions(1, seed=9)[0][0]
        rows = []
        try:
            time.sleep(8)  # the worker loads the champion and joins its group
            for i in range(args.samples + 3):
                session = impossible_session(template, i)
                sid = session["sessionID"]
                sent = time.time()
                producer.produce(settings.topic_sessions, key=session["stationID"],
                                 value=encode_session(session))
                producer.flush(10)

                def email_time(sid=sid):
                    for f in settings.outbox_dir.glob("*.eml"):
                        if sid in f.read_text(errors="replace"):
                            return f.stat().st_mtime
                    return None

                def stored_row(sid=sid):
                    with store.engine.connect() as conn:
                        return conn.execute(
                            select(scores.c.stored_ts, scores.c.scored_ts, scores.c.score)
                            .where(scores.c.session_id == sid)).first()

                emailed = wait_for(email_time, 60)
                row = wait_for(stored_row, 10, interval=0.05)
                if emailed is None or row is None:
                    tails = "\n".join(f"--- {n}:\n{(logs / n).read_text()[-1500:]}" for n in procs)
                    raise SystemExit(f"session {sid}: email {emailed}, stored row {row}\n{tails}")
                if i >= 3:  # the first three warm the processes up
                    rows.append({"email": emailed - sent, "scored": row.scored_ts - sent,
                                 "stored": row.stored_ts - sent, "score": row.score})
                for f in settings.outbox_dir.glob("*.eml"):
                    f.unlink()
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(30)
            store.close()
            stack.down()

    def stats(key: str) -> str:
        values = sorted(r[key] * 1000 for r in rows)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        return (f"| {key} | {statistics.median(values):.0f} | {p95:.0f} | {values[0]:.0f} | "
                f"{values[-1]:.0f} |")

    print(f"\n{len(rows)} sessions, one at a time, each from a new station "
          f"(scores {min(r['score'] for r in rows):.3f}..{max(r['score'] for r in rows):.3f}, "
          f"threshold {threshold:.3f}); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| produced to Kafka → | p50 ms | p95 ms | min ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    print(stats("scored").replace("| scored |", "| scored by the worker (`scored_at`) |"))
    print(stats("stored").replace("| stored |", "| stored by the monitoring consumer |"))
    print(stats("email").replace("| email |", "| alert email written by the SMTP sink |"))


if __name__ == "__main__":
    main()
