"""Serving benchmark: the worker against a naive per-message baseline, in one run.

    .venv/bin/python benchmarks/serving_throughput.py [--sessions 200000] [--queue classic]

What it does, on a private embedded Kafka broker and the RabbitMQ of
EVGUARD_RABBITMQ_URL (a uuid-named exchange and queue, deleted afterwards):

1. trains and registers a champion (Isolation Forest, or EIF with --model eif)
   in a temporary MLflow store;
2. throughput: pre-fills the topic with --sessions synthetic sessions, starts
   one worker process (`python -m serving`, confirms on, results persistent,
   routed to one durable queue of type --queue), and times it until RabbitMQ
   has confirmed every result. CPU of the worker, RabbitMQ and the broker is
   sampled from /proc, the worker's RSS too, and its per-batch log gives the
   time per stage;
3. latency: replays at --latency-rate sessions/s for --latency-seconds; p50
   and p99 from produce (Kafka timestamp) to confirmed publish come from the
   worker's histogram, and from produce to receipt by a consumer of the queue;
4. baseline: the seed's design on the same model and data for
   --baseline-seconds: one message at a time, a DataFrame and a predict per
   message, a new RabbitMQ connection per message (with a confirm, as the
   worker has).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from pipelines.settings import Settings, settings_env
from tests.support.champion import register_champion

CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGES = ("decode_ms", "score_ms", "explain_ms", "encode_ms", "confirm_ms", "batch_ms")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def pid_of(command: str, port: int | None = None) -> int | None:
    """The pid of a process by executable name (and port in its arguments), read from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "exe")).name != command:
                continue  # e.g. the Python wrapper script of the noida-db binary
            if port is None or str(port) in (entry / "cmdline").read_text():
                return int(entry.name)
        except OSError:
            continue
    return None


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    rows = re.findall(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return [(float("inf") if le == "+Inf" else float(le), float(c)) for le, c in rows]


def histogram_quantile(rows: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation inside the bucket, as PromQL's histogram_quantile does."""
    total = rows[-1][1]
    if total == 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in rows:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def train_champion(settings: Settings, kind: str) -> str:
    """A champion of `kind` on 5,000 synthetic sessions, at the training flow's 1 % budget."""
    extra = {"extension_level": 1} if kind == "eif" else {}
    return register_champion(settings, seed=7, sessions=5000, n_estimators=100,
                             alert_share=0.01, kind=kind, **extra).version


def declare_queue(settings: Settings, queue: str, kind: str) -> None:
    arguments = {"quorum": {"x-queue-type": "quorum"},
                 "classic-v2": {"x-queue-version": 2}}.get(kind, {})
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(settings.rabbitmq_exchange, "topic", durable=True)
        ch.queue_declare(queue, durable=True, arguments=arguments)
        ch.queue_bind(queue, settings.rabbitmq_exchange, "score.#")


def queue_depth(settings: Settings, queue: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count


def purge(settings: Settings, queue: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        conn.channel().queue_purge(queue)


class Sampler:
    """CPU seconds of a few processes, sampled with the worker's published count."""

    def __init__(self, pids: dict[str, int | None], port: int) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.port = port
        self.rows: list[tuple[float, float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                published = metric(scrape(self.port), "evguard_serving_published_total")
                cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
                self.rows.append((time.monotonic(), published, cpu))
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_share(self, t0: float, t1: float) -> dict[str, float]:
        inside = [r for r in self.rows if t0 <= r[0] <= t1]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        span = last[0] - first[0]
        return {name: (last[2][name] - first[2][name]) / span for name in first[2]}


def cpu_pressure() -> str:
    """Linux PSI: share of time some runnable task waited for a CPU (other work on the box)."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unknown"


def wait_healthy(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json().get("partitions"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the worker did not start")


def batch_rows(log: Path) -> list[dict[str, str]]:
    """The fields of the worker's per-batch log lines, in order."""
    return [dict(re.findall(r"(\w+)=([0-9.]+)", line))
            for line in log.read_text(errors="replace").splitlines()
            if "evguard.serving.batch" in line]


def stage_times(rows: list[dict[str, str]], statistic=statistics.mean) -> dict[str, float]:
    """Ms per batch for each stage, and sessions per batch."""
    out: dict[str, float] = {"batches": len(rows)}
    if rows:
        out["sessions_per_batch"] = statistic([float(r["n"]) for r in rows])
        for stage in (*STAGES, "e2e_max_ms"):
            out[stage] = statistic([float(r.get(stage, 0)) for r in rows])
    return out


def latency_consumer(settings: Settings, queue: str, expected: int,
                     out: list[tuple[float, float]], done: threading.Event) -> None:
    """(produced at ms, latency ms) of each result, at receipt by a consumer of the queue."""
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.5):
            if method is not None:
                sent = orjson.loads(body)["kafka"]["timestamp_ms"]
                out.append((sent, time.time() * 1000 - sent))
            if len(out) >= expected or done.is_set():
                break


def naive_baseline(settings: Settings, seconds: float, records: list[dict]) -> dict:
    """The seed's design: poll one message, a DataFrame and a predict, a new connection each."""
    import pandas as pd
    from confluent_kafka import Consumer

    from pipelines.data.features import feature_matrix
    from pipelines.models.registry import load_champion
    from serving.replay import replay

    topic = f"{settings.topic_sessions}-baseline"
    base = settings.model_copy(update={"topic_sessions": topic})
    from serving.kafka import ensure_topics

    ensure_topics(base)
    replay(base, records)
    model = load_champion(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"baseline-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    consumer.subscribe([topic])
    params = pika.URLParameters(settings.rabbitmq_url)
    done, t0 = 0, None
    while t0 is None or time.monotonic() - t0 < seconds:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        t0 = t0 or time.monotonic()
        record = json.loads(message.value())
        frame = pd.DataFrame([record])
        features = feature_matrix(frame.to_dict("records"))
        score = float(model.score(features)[0])
        anomalous = score >= model.threshold
        explanation = model.explain(features, top_k=3)[0] if anomalous else []
        body = json.dumps({"sessionID": record["sessionID"], "score": score,
                           "is_anomaly": bool(anomalous), "explanation": explanation})
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish(settings.rabbitmq_exchange,
                              f"score.{record['siteID']}.{'anomaly' if anomalous else 'normal'}",
                              body, pika.BasicProperties(delivery_mode=2))
        conn.close()
        done += 1
    consumer.close()
    elapsed = time.monotonic() - t0
    return {"sessions": done, "seconds": elapsed, "rate": done / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--model", choices=("iforest", "eif"), default="iforest")
    parser.add_argument("--queue", choices=("classic", "classic-v2", "quorum"), default="classic")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from pipelines.data.synth import generate_sessions
    from serving.replay import ReplayPace, replay

    tmp = Path(tempfile.mkdtemp(prefix="evguard-bench-"))
    tag = uuid.uuid4().hex[:8]
    base = Settings()
    settings = Settings(
        _env_file=None, state_dir=tmp / "state", data_dir=tmp / "data",
        kafka_port=free_port(), metrics_port=free_port(), rabbitmq_url=base.rabbitmq_url,
        rabbitmq_exchange=f"ev.scores.bench-{tag}", topic_sessions=f"bench-{tag}",
        topic_dlq=f"bench-{tag}.dlq", consumer_group=f"bench-{tag}",
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", serve_model_poll_s=3600,
        serve_batch_size=args.batch_size)
    queue = f"bench-results-{tag}"
    stack = LocalStack(settings)
    figures: dict = {"sessions": args.sessions, "model": args.model, "queue": args.queue,
                     "batch_size": args.batch_size, "load_before": os.getloadavg()}
    worker = None
    # a stopped benchmark still tears down its broker, worker and RabbitMQ objects
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.up(only=("kafka",))
        figures["champion"] = train_champion(settings, args.model)
        declare_queue(settings, queue, args.queue)
        records, _ = generate_sessions(20_000, seed=1, anomaly_rate=0.02)
        rounds = max(1, args.sessions // len(records))
        n = len(records) * rounds
        figures["sessions"] = n
        t = time.monotonic()
        produced = replay(settings, records, repeat=rounds)
        figures["prefill_rate"] = produced.delivered / (time.monotonic() - t)
        print(f"pre-filled {produced.delivered} sessions at {figures['prefill_rate']:.0f}/s",
              flush=True)

        log = tmp / "worker.log"
        env = {**os.environ, **settings_env(settings)}
        with open(log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                                      stdout=out, stderr=subprocess.STDOUT)
        sampler = Sampler({"worker": worker.pid, "rabbitmq": pid_of("beam.smp"),
                           "kafka broker": pid_of("noida-db", settings.kafka_port)},
                          settings.metrics_port)
        sampler.start()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            text = scrape_safely(settings.metrics_port)
            if text and metric(text, "evguard_serving_published_total") >= n:
                break
            time.sleep(0.05)
        finished = time.monotonic()
        time.sleep(0.3)  # let the sampler see the end too
        rows = sampler.rows
        started = next(r[0] for r in rows if r[1] > 0)
        lo = next(r for r in rows if r[1] >= 0.1 * n)
        hi = next(r for r in rows if r[1] >= 0.9 * n)
        figures["throughput"] = n / (finished - started)
        figures["throughput_steady"] = (hi[1] - lo[1]) / (hi[0] - lo[0])
        figures["cpu_cores"] = sampler.cpu_share(lo[0], hi[0])
        figures["worker_cpu_us_per_session"] = (
            1e6 * figures["cpu_cores"].get("worker", float("nan")) / figures["throughput_steady"])
        figures["cpu_pressure"] = cpu_pressure()
        figures["worker_memory_mb"] = memory_mb(worker.pid)
        rows = batch_rows(log)
        figures["stages"] = stage_times(rows[len(rows) // 10:])  # skip the warm-up
        throughput_batches = len(rows)
        figures["queue_depth"] = queue_depth(settings, queue)
        print(f"throughput {figures['throughput']:.0f}/s (steady {figures['throughput_steady']:.0f}"
              f"/s), cpu {figures['cpu_cores']}, worker "
              f"{figures['worker_cpu_us_per_session']:.0f} us CPU/session, memory "
              f"{figures['worker_memory_mb']}, {figures['cpu_pressure']}", flush=True)
        purge(settings, queue)

        # the replay producer's own start (metadata, idempotent producer id) delays its first
        # messages: two seconds at the rate warm everything up before the measured window
        warm_n = int(args.latency_rate * 2)
        expected = int(args.latency_rate * args.latency_seconds)
        sample, _ = generate_sessions(warm_n + expected, seed=2, anomaly_rate=0.02)
        sample = [{**r, "sessionID": f"lat-{r['sessionID']}"} for r in sample]
        observed: list[tuple[float, float]] = []
        done = threading.Event()
        reader = threading.Thread(target=latency_consumer, args=(
            settings, queue, warm_n + expected, observed, done), daemon=True)
        reader.start()
        from confluent_kafka import Producer

        from serving.kafka import producer_config

        producer = Producer(producer_config(settings.kafka_servers))
        replay(settings, sample[:warm_n], ReplayPace(rate=args.latency_rate), producer=producer)
        time.sleep(1.0)
        before = buckets(scrape(settings.metrics_port), "evguard_serving_end_to_end_seconds")
        window_start_ms = time.time() * 1000
        replay(settings, sample[warm_n:], ReplayPace(rate=args.latency_rate), producer=producer)
        reader.join(60)
        done.set()
        time.sleep(0.5)
        after = buckets(scrape(settings.metrics_port), "evguard_serving_end_to_end_seconds")
        latencies = [lat for sent, lat in observed if sent >= window_start_ms]
        figures["latency_stages_median"] = stage_times(
            batch_rows(log)[throughput_batches + warm_n // 50:], statistics.median)
        delta = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
        figures["latency"] = {
            "rate": args.latency_rate, "sessions": expected, "received": len(latencies),
            "confirm_p50_ms": 1000 * histogram_quantile(delta, 0.5),
            "confirm_p99_ms": 1000 * histogram_quantile(delta, 0.99),
            "consumer_p50_ms": percentile(latencies, 0.5) if latencies else None,
            "consumer_p99_ms": percentile(latencies, 0.99) if latencies else None,
            "consumer_max_ms": max(latencies) if latencies else None}
        print(f"latency {figures['latency']}", flush=True)
        worker.send_signal(signal.SIGTERM)
        figures["worker_exit"] = worker.wait(60)
        sampler.stop()
        worker = None

        figures["baseline"] = naive_baseline(settings, args.baseline_seconds, records[:4000])
        figures["speedup"] = figures["throughput"] / figures["baseline"]["rate"]
        figures["load_after"] = os.getloadavg()
        print(f"baseline {figures['baseline']}; speed-up {figures['speedup']:.0f}x", flush=True)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        try:
            with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
                ch = conn.channel()
                ch.queue_delete(queue)
                ch.exchange_delete(settings.rabbitmq_exchange)
        except pika.exceptions.AMQPError:
            pass
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def scrape_safely(port: int) -> str | None:
    try:
        return scrape(port)
    except httpx.HTTPError:
        return None


if __name__ == "__main__":
    main()
