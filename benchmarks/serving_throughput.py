"""Serving benchmark: the worker, the peer a user would pick, and the ceilings, in one run.

    .venv/bin/python benchmarks/serving_throughput.py [--sessions 200000] \
        [--parts evguard,quix,bare,seed,scaleout,latency] [--out figures.json]

Everything runs on a private embedded Kafka broker (3 partitions) and the RabbitMQ of
EVGUARD_RABBITMQ_URL (a uuid-named exchange and one durable queue bound to `score.#`,
deleted afterwards). One champion (Isolation Forest, or EIF with --model eif) is trained
and registered in a temporary MLflow store, and the topic is pre-filled once with
--sessions synthetic sessions; every throughput part then reads the same topic from the
start in a consumer group of its own, on the same machine, and is timed from its first to
its last committed offset (each commits only after RabbitMQ confirmed the results).
After each part a consumer drains the queue and counts the results it delivered, which
must cover every session. CPU per process is sampled from /proc between 10 % and 90 % of
the committed sessions. The parts (--parts, in this order):

- evguard: one worker process (`python -m serving`), as deployed;
- quix: the same pipeline written with Quix Streams 3.28.1 (`benchmarks/race/
  quix_pipeline.py`: a `BatchingSink` that scores each checkpoint's batch with the same
  champion, features and result encoder and publishes it with confirms), in a venv of
  its own under .evguard/race-quix (Quix pins an older confluent-kafka and pydantic);
- bare: consume -> publish with confirms -> commit, no decoding or scoring
  (`benchmarks/race/bare_loop.py`): the ceiling the two brokers allow on this machine;
- seed: the seed's design on the same model for --baseline-seconds: one message at a
  time, a DataFrame and a predict per message, a new RabbitMQ connection per message
  (with a confirm, as the worker has);
- scaleout: --workers worker processes in one group (static membership, a group
  instance id each), for each count in --workers (1 is the evguard part when it ran);
- latency: a fresh worker on a topic of its own, fed at --latency-rate sessions/s for
  --latency-seconds; p50/p99 from produce (Kafka timestamp) to confirmed publish from
  the worker's histogram, and from produce to receipt by a consumer of the queue; the
  CPU cores of the worker, the two brokers and this process (the paced producer and the
  consumer) over the window.

Each part prints a progress line; the figures are printed as JSON at the end and
written to --out. Ratios are to the evguard part's steady throughput.
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

from procstat import cpu_pressure, cpu_seconds, cpu_seconds_or_nan, pid_of

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from pipelines import native
from pipelines.settings import Settings, settings_env
from pipelines.stations import context as station_context
from tests.support.champion import register_champion

STAGES = ("decode_ms", "context_ms", "score_ms", "explain_ms", "encode_ms", "confirm_ms",
          "batch_ms")




def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out




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
    """CPU seconds of a few processes, sampled with a progress count (sessions done)."""

    def __init__(self, pids: dict[str, int | None], count, interval_s: float = 0.1) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.count = count
        self.interval_s = interval_s
        self.rows: list[tuple[float, float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.count()
            except (httpx.HTTPError, OSError, RuntimeError):
                done = None
            if done is not None:
                # a process that has exited keeps its last CPU figure: its final commit
                # (a fast part ends within one interval) must still be counted
                cpu = dict(self.rows[-1][2]) if self.rows else {}
                for name, pid in self.pids.items():
                    try:
                        cpu[name] = cpu_seconds(pid)
                    except OSError:
                        pass
                self.rows.append((time.monotonic(), done, cpu))
            time.sleep(self.interval_s)

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
        return {name: (last[2][name] - first[2][name]) / span
                for name in first[2] if name in last[2]}




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


def partitions_of(port: int) -> list | None:
    """The partitions a worker owns now, from its /healthz (None: not answering)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json().get("partitions")
    except (httpx.HTTPError, ValueError):
        return None


class AssignmentWatch:
    """When every worker of a group first owned partitions at once (the end of the start-up
    rebalances), and what each owned last."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.all_assigned_at: float | None = None
        self.owned: list[list | None] = [None] * len(ports)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.owned = [partitions_of(port) for port in self.ports]
            if self.all_assigned_at is None and all(self.owned):
                self.all_assigned_at = time.monotonic()
            time.sleep(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def batch_rows(log: Path) -> list[dict[str, str]]:
    """The fields of the worker's per-batch log lines, in order."""
    return [dict(re.findall(r"(\w+)=([0-9.]+)", line))
            for line in log.read_text(errors="replace").splitlines()
            if "evguard.serving.batch" in line]


def slowest_batches(rows: list[dict[str, str]], k: int = 5) -> list[dict[str, float]]:
    """Where the tail goes: the `k` batches whose oldest session waited longest, each with
    its stages and `before_worker_ms` (produce -> the worker took the batch: the Kafka hop
    plus the wait for the batch in progress)."""
    out = []
    for row in sorted(rows, key=lambda r: -float(r.get("e2e_max_ms", 0)))[:k]:
        figures = {name: float(row[name]) for name in ("n", *STAGES, "e2e_max_ms") if name in row}
        figures["before_worker_ms"] = round(
            figures.get("e2e_max_ms", 0) - figures.get("batch_ms", 0), 1)
        out.append(figures)
    return out


def stage_times(rows: list[dict[str, str]], statistic=statistics.mean) -> dict[str, float]:
    """Ms per batch for each stage, and sessions per batch."""
    out: dict[str, float] = {"batches": len(rows)}
    if rows:
        out["sessions_per_batch"] = statistic([float(r["n"]) for r in rows])
        for stage in (*STAGES, "e2e_max_ms"):
            out[stage] = statistic([float(r.get(stage, 0)) for r in rows])
    return out


def result_items(body: bytes) -> list[tuple[str | None, float | None]]:
    """(sessionID, Kafka timestamp ms or None) of each result one message carries: one
    (contract v1, the seed's and the bare loop's per-session bodies) or many (contract v2's
    columns under `results`, or the bare loop's JSON list of sessions)."""
    data = orjson.loads(body)
    if isinstance(data, list):
        return [(item.get("sessionID"), None) for item in data]
    results = data.get("results") if isinstance(data, dict) else None
    if isinstance(results, dict):  # evguard.scores/2: one list per column
        ids = results.get("sessionID") or []
        return list(zip(ids, results.get("kafka_timestamp_ms") or [None] * len(ids)))
    if isinstance(results, list):
        return [(item.get("sessionID"), (item.get("kafka") or {}).get("timestamp_ms"))
                for item in results]
    return [(data.get("sessionID"), (data.get("kafka") or {}).get("timestamp_ms"))]


def latency_consumer(settings: Settings, queue: str, expected: int,
                     out: list[tuple[float, float]], done: threading.Event) -> None:
    """(produced at ms, latency ms) of each result, at receipt by a consumer of the queue."""
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.5):
            if method is not None:
                now = time.time() * 1000
                out.extend((sent, now - sent) for _id, sent in result_items(body)
                           if sent is not None)
            if len(out) >= expected or done.is_set():
                break


def drain(settings: Settings, queue: str, quiet_s: float = 1.0) -> dict[str, int]:
    """Consume everything in `queue`: messages, results in them, distinct sessionIDs."""
    messages, results, sessions = 0, 0, set()
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=2000)
        for method, _props, body in ch.consume(queue, auto_ack=True,
                                               inactivity_timeout=quiet_s):
            if method is None:
                if ch.queue_declare(queue, passive=True).method.message_count == 0:
                    break
                continue
            messages += 1
            for session_id, _sent in result_items(body):
                results += 1
                sessions.add(session_id)
        ch.cancel()
    return {"messages": messages, "results": results, "distinct_sessions": len(sessions)}


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


PARTS = ("evguard", "quix", "bare", "seed", "scaleout", "latency")
RACE = ROOT / "benchmarks" / "race"
QUIX = "quixstreams==3.28.1"
QUIX_VENV = ROOT / ".evguard" / "race-quix"
# what Quix Streams 3.28.1 pins lower than the project does; everything else is shared
QUIX_OWN = ("confluent-kafka", "pydantic", "pydantic-core", "pydantic-settings")


def ensure_quix_venv() -> Path:
    """The Python of a venv with Quix Streams, made once under .evguard/race-quix.

    Quix Streams 3.28.1 needs confluent-kafka < 2.13 and pydantic < 2.14, older than the
    project's, so it cannot be a dependency group of the project (uv resolves all groups
    together and would downgrade the worker's Kafka client). The venv holds Quix and the
    versions it pins; a `.pth` file then appends the project's venv, so numpy, pandas,
    scikit-learn, MLflow and the project's own packages are the very ones the worker
    uses. Every other package is constrained to the project's version.
    """
    python = QUIX_VENV / "bin" / "python"
    probe = [str(python), "-c", "import quixstreams, serving; print(quixstreams.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True,
                                          check=False).stdout.strip() == QUIX.split("==")[1]:
        return python
    uv = shutil.which("uv") or str(ROOT / ".evguard" / "tools" / "bin" / "uv")
    print(f"[quix] installing {QUIX} into {QUIX_VENV} (once)", flush=True)
    subprocess.run([uv, "venv", "-q", "--allow-existing", "--python", sys.executable,
                    str(QUIX_VENV)], check=True)
    frozen = subprocess.run([uv, "pip", "freeze", "--python", sys.executable],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    constraints = QUIX_VENV / "constraints.txt"
    constraints.write_text("\n".join(
        line for line in frozen
        if "==" in line and line.split("==")[0].lower() not in QUIX_OWN) + "\n")
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "-c",
                    str(constraints), QUIX], check=True)
    import sysconfig

    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()
    Path(site, "zz_evguard_project.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return python


def committed(servers: str, topic: str, group: str, partitions: int):
    """A count of the sessions `group` committed on `topic` (read from the broker), and the
    consumer to close afterwards. It never joins the group."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": group,
                         "enable.auto.commit": False})
    wanted = [TopicPartition(topic, p) for p in range(partitions)]

    def count() -> float:
        return float(sum(max(tp.offset, 0) for tp in consumer.committed(wanted, timeout=5)))

    return count, consumer


def timed(name: str, n: int, pids: dict[str, int | None], count, alive,
          timeout_s: float = 1800) -> Sampler:
    """Sample CPU and `count()` (sessions committed) until it reaches n."""
    sampler = Sampler(pids, count, 0.2).start()
    deadline = time.monotonic() + timeout_s
    try:
        while not (sampler.rows and sampler.rows[-1][1] >= n):
            if not alive():
                time.sleep(1.0)  # its last commit may have landed after the last sample
                if sampler.rows and sampler.rows[-1][1] >= n:
                    break
                raise RuntimeError(f"{name} stopped before it committed {n} sessions")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not commit {n} sessions in {timeout_s} s")
            time.sleep(0.1)
    finally:
        sampler.stop()
    return sampler


def progress_rows(log: Path) -> list[tuple[float, float]]:
    """(monotonic s, sessions done) from a race part's `progress` lines (one per batch)."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("progress "):
            _, t, done = line.split()
            rows.append((float(t), float(done)))
    return rows


def rate_figures(rows: list[tuple[float, float]], n: int, sampler: Sampler,
                 not_before: float | None = None) -> dict:
    """Throughput from the first to the last progress row (sessions of the first row not
    counted), steady throughput and CPU cores per process between 10 % and 90 % of n (or
    from `not_before` on, if later: when every worker of a group owned partitions)."""
    first = next(r for r in rows if r[1] > 0)
    last = next(r for r in rows if r[1] >= n)
    hi = next(r for r in rows if r[1] >= 0.9 * n)
    lo = next(r for r in rows if r[1] >= 0.1 * n)
    if not_before is not None and lo[0] < not_before:
        lo = next((r for r in rows if r[0] >= not_before and r[0] < hi[0]), lo)
    out: dict = {"seconds": last[0] - first[0],
                 "throughput": (n - first[1]) / max(last[0] - first[0], 1e-9)}
    out["throughput_steady"] = ((hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0]
                                else out["throughput"])
    # a short part may have fewer than two CPU samples inside its window: take them all
    cores = sampler.cpu_share(lo[0], hi[0]) or sampler.cpu_share(-1.0, float("inf"))
    out["cpu_cores"] = {k: round(v, 3) for k, v in cores.items()}
    out["cpu_cores_total"] = round(sum(cores.values()), 3)
    out["cpu_us_per_session"] = {k: round(1e6 * v / out["throughput_steady"], 1)
                                 for k, v in out["cpu_cores"].items()}
    out["cpu_pressure"] = cpu_pressure()
    return out


def stop_process(proc: subprocess.Popen, timeout: float = 60) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


class Run:
    """The shared state of one benchmark run: broker, champion, topic, queue, children."""

    def __init__(self, args: argparse.Namespace, settings: Settings, queue: str,
                 tmp: Path, tag: str) -> None:
        self.args, self.settings, self.queue, self.tmp, self.tag = args, settings, queue, tmp, tag
        self.children: list[subprocess.Popen] = []
        self.figures: dict = {}
        self.n = 0
        self.records: list[dict] = []

    def broker_pids(self) -> dict[str, int | None]:
        return {"rabbitmq": pid_of("beam.smp"),
                "kafka broker": pid_of("noida-db", self.settings.kafka_port)}

    def verify(self, name: str, expected: int, exact: bool = True) -> dict:
        """Drain the queue; every session of the part must have its result there."""
        counted = drain(self.settings, self.queue)
        counted["expected"] = expected
        counted["duplicates"] = counted["results"] - counted["distinct_sessions"]
        counted["complete"] = (counted["distinct_sessions"] == expected if exact
                               else counted["results"] == expected)
        if not counted["complete"]:
            print(f"[{name}] WARNING: results do not match: {counted}", flush=True)
        return counted

    # ---- worker processes ----------------------------------------------------
    def start_workers(self, part: str, k: int, topic: str | None = None,
                      static: bool = False) -> list[tuple[subprocess.Popen, Settings, Path]]:
        s = self.settings
        group = f"bench-{self.tag}-{part}"
        out = []
        for i in range(k):
            ws = s.model_copy(update={
                "consumer_group": group, "metrics_port": free_port(),
                "topic_sessions": topic or s.topic_sessions,
                "topic_station_state": f"bench-{self.tag}-{part}.state",
                "serve_instance_id": f"{part}-{i}" if static else ""})
            log = self.tmp / f"worker-{part}-{i}.log"
            env = {**os.environ, **settings_env(ws)}
            with open(log, "wb") as sink:
                proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                                        stdout=sink, stderr=subprocess.STDOUT)
            self.children.append(proc)
            out.append((proc, ws, log))
        return out

    def workers_part(self, part: str, k: int, static: bool) -> dict:
        s, n = self.settings, self.n
        workers = self.start_workers(part, k, static=static)
        count, reader = committed(s.kafka_servers, s.topic_sessions, workers[0][1].consumer_group,
                                  s.topic_partitions)
        pids = {f"worker {i}" if k > 1 else "worker": p.pid for i, (p, _, _) in enumerate(workers)}
        watch = AssignmentWatch([ws.metrics_port for _, ws, _ in workers])
        try:
            sampler = timed(part, n, {**pids, **self.broker_pids()}, count,
                            lambda: all(p.poll() is None for p, _, _ in workers))
            watch.stop()
            fig = rate_figures([(t, c) for t, c, _ in sampler.rows], n, sampler,
                               not_before=watch.all_assigned_at if k > 1 else None)
            fig["workers"] = k
            fig["partitions_owned"] = watch.owned
            fig["worker_memory_mb"] = [memory_mb(p.pid) for p, _, _ in workers]
            if k == 1:
                rows = batch_rows(workers[0][2])
                fig["stages"] = stage_times(rows[len(rows) // 10:])  # skip the warm-up
        finally:
            watch.stop()
            reader.close()
            for proc, _, _ in workers:
                stop_process(proc)
        fig["delivered"] = self.verify(part, n)
        return fig

    # ---- the parts --------------------------------------------------------------
    def part_evguard(self) -> dict:
        return self.workers_part("evguard", 1, static=False)

    def part_scaleout(self) -> dict:
        out = {}
        for k in self.args.workers:
            if k == 1 and "evguard" in self.figures:
                out["1"] = {**self.figures["evguard"], "note": "the evguard part"}
                continue
            print(f"[scaleout] {k} worker(s) in one group (static membership)", flush=True)
            try:
                out[str(k)] = self.workers_part(f"scale{k}", k, static=True)
            except Exception as exc:  # noqa: BLE001 - the other counts still run
                out[str(k)] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"[scaleout] {k}: FAILED: {out[str(k)]['error']}", flush=True)
                purge(self.settings, self.queue)
                continue
            print(f"[scaleout] {k}: {summary(out[str(k)])}", flush=True)
        return out

    def subprocess_part(self, name: str, command: list[str]) -> dict:
        s, n = self.settings, self.n
        group = f"bench-{self.tag}-{name}"
        command = [*command, "--kafka", s.kafka_servers, "--topic", s.topic_sessions,
                   "--group", group, "--amqp", s.rabbitmq_url, "--exchange",
                   s.rabbitmq_exchange, "--expect", str(n)]
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                    env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        self.children.append(proc)
        count, reader = committed(s.kafka_servers, s.topic_sessions, group, s.topic_partitions)
        try:
            sampler = timed(name, n, {name: proc.pid, **self.broker_pids()}, count,
                            lambda: proc.poll() is None)
            fig = {"memory_mb": memory_mb(proc.pid) if proc.poll() is None else None}
            # its own per-batch progress lines time it more finely than the commits
            rows = progress_rows(log)
            timed_by = "progress" if len(rows) >= 5 else "commits"
            fig.update(rate_figures(rows if len(rows) >= 5 else
                                    [(t, c) for t, c, _ in sampler.rows], n, sampler))
            fig["timed_by"] = timed_by
        except RuntimeError:
            print(log.read_text(errors="replace")[-3000:], flush=True)
            raise
        finally:
            reader.close()
            stop_process(proc)
        fig["delivered"] = self.verify(name, n)
        return fig

    def part_quix(self) -> dict:
        python = ensure_quix_venv()
        fig = self.subprocess_part("quix", [
            str(python), str(RACE / "quix_pipeline.py"), "--mlflow",
            self.settings.mlflow_tracking_uri, "--commit-every", str(self.args.quix_commit_every),
            "--state-dir", str(self.tmp / "quix-state")])
        fig["commit_every"] = self.args.quix_commit_every
        return fig

    def part_bare(self) -> dict:
        grouping = self.args.bare_grouping
        if grouping == "auto":  # the shape of the worker's results: one per session, or batched
            seen = self.figures.get("evguard", {}).get("delivered")
            if seen:
                batched = seen["messages"] * 2 < seen["results"]
            else:
                from pipelines.contracts import score_result

                batched = not str(getattr(score_result, "SCHEMA", "/1")).endswith("/1")
            grouping = "batch" if batched else "message"
        fig = self.subprocess_part("bare", [
            sys.executable, str(RACE / "bare_loop.py"), "--batch-size",
            str(self.args.batch_size), "--grouping", grouping])
        fig["grouping"] = grouping
        return fig

    def part_seed(self) -> dict:
        fig = naive_baseline(self.settings, self.args.baseline_seconds, self.records[:4000])
        fig["delivered"] = self.verify("seed", fig["sessions"], exact=False)
        fig["cpu_pressure"] = cpu_pressure()
        return fig

    def part_latency(self) -> dict:
        """A fresh worker on a topic of its own, fed at a steady rate."""
        from confluent_kafka import Producer

        from pipelines.data.synth import generate_sessions
        from serving.kafka import ensure_topics, producer_config
        from serving.replay import ReplayPace, replay

        args = self.args
        topic = f"bench-{self.tag}-latency"
        proc, ws, log = self.start_workers("latency", 1, topic=topic)[0]
        ensure_topics(ws)
        try:
            wait_healthy(ws.metrics_port)
            # the replay producer's own start (metadata, idempotent producer id) delays its
            # first messages: two seconds at the rate warm everything up before the window
            warm_n = int(args.latency_rate * 2)
            expected = int(args.latency_rate * args.latency_seconds)
            sample, _ = generate_sessions(warm_n + expected, seed=2, anomaly_rate=0.02)
            sample = [{**r, "sessionID": f"lat-{r['sessionID']}"} for r in sample]
            observed: list[tuple[float, float]] = []
            done = threading.Event()
            reader = threading.Thread(target=latency_consumer, args=(
                self.settings, self.queue, warm_n + expected, observed, done), daemon=True)
            reader.start()
            producer = Producer(producer_config(ws.kafka_servers))
            replay(ws, sample[:warm_n], ReplayPace(rate=args.latency_rate), producer=producer)
            time.sleep(1.0)
            warm_batches = len(batch_rows(log))
            before = buckets(scrape(ws.metrics_port), "evguard_serving_end_to_end_seconds")
            window_start_ms = time.time() * 1000
            pids = {"worker": proc.pid, **self.broker_pids(), "producer and consumer": os.getpid()}
            cpu_before = {name: cpu_seconds_or_nan(pid) for name, pid in pids.items()}
            replay(ws, sample[warm_n:], ReplayPace(rate=args.latency_rate), producer=producer)
            reader.join(60)
            window_s = time.time() - window_start_ms / 1000
            cores = {name: round((cpu_seconds_or_nan(pid) - cpu_before[name]) / window_s, 3)
                     for name, pid in pids.items()}
            done.set()
            time.sleep(0.5)
            after = buckets(scrape(ws.metrics_port), "evguard_serving_end_to_end_seconds")
            memory = memory_mb(proc.pid)
        finally:
            stop_process(proc)
        latencies = [lat for sent, lat in observed if sent >= window_start_ms]
        delta = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
        purge(self.settings, self.queue)
        return {
            "rate": args.latency_rate, "sessions": expected, "received": len(latencies),
            "confirm_p50_ms": 1000 * histogram_quantile(delta, 0.5),
            "confirm_p99_ms": 1000 * histogram_quantile(delta, 0.99),
            "consumer_p50_ms": percentile(latencies, 0.5) if latencies else None,
            "consumer_p99_ms": percentile(latencies, 0.99) if latencies else None,
            "consumer_max_ms": max(latencies) if latencies else None,
            "stages_median": stage_times(batch_rows(log)[warm_batches:], statistics.median),
            "slowest_batches": slowest_batches(batch_rows(log)[warm_batches:]),
            "cpu_cores": cores, "worker_memory_mb": memory, "cpu_pressure": cpu_pressure()}


def summary(fig: dict) -> str:
    cores = ", ".join(f"{k} {v:.2f}" for k, v in fig.get("cpu_cores", {}).items())
    delivered = fig.get("delivered", {})
    return (f"{fig.get('throughput', fig.get('rate', 0)):,.0f}/s (steady "
            f"{fig.get('throughput_steady', fig.get('rate', 0)):,.0f}/s), cores: {cores}; "
            f"results {delivered.get('results')} in {delivered.get('messages')} messages "
            f"({'complete' if delivered.get('complete') else 'INCOMPLETE'}, "
            f"{delivered.get('duplicates', 0)} duplicates); "
            f"{fig.get('cpu_pressure', '')}")


def race_table(figures: dict) -> list[dict]:
    """Each part's throughput and its ratio to the evguard part's (steady figures)."""
    ref = figures.get("evguard", {}).get("throughput_steady")
    rows = []
    for name in ("evguard", "quix", "bare", "seed"):
        fig = figures.get(name)
        if not fig or "error" in fig:
            continue
        rate = fig.get("throughput_steady", fig.get("rate"))
        rows.append({"part": name, "sessions_per_s": round(rate, 1),
                     "ratio_to_evguard": round(rate / ref, 4) if ref else None,
                     "results_complete": fig.get("delivered", {}).get("complete")})
    for k, fig in figures.get("scaleout", {}).items():
        if "error" in fig:
            continue
        rows.append({"part": f"scaleout x{k}", "sessions_per_s": round(fig["throughput_steady"], 1),
                     "ratio_to_evguard": round(fig["throughput_steady"] / ref, 4) if ref else None,
                     "results_complete": fig.get("delivered", {}).get("complete")})
    return rows


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown}; choose from {PARTS}")
    return [p for p in PARTS if p in parts]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run heavy runs under `flock` on a shared machine; see docs/benchmarks.md.")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    parser.add_argument("--sessions", type=int, default=200_000,
                        help="sessions pre-filled and read by each throughput part "
                             "(rounded down to a multiple of 20,000)")
    parser.add_argument("--model", choices=("iforest", "eif"), default="iforest")
    parser.add_argument("--queue", choices=("classic", "classic-v2", "quorum"), default="classic",
                        help="type of the results queue")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="worker micro-batch (and the bare loop's consume batch)")
    parser.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")],
                        default=[1, 2, 3], help="worker counts of the scaleout part")
    parser.add_argument("--quix-commit-every", type=int, default=1000,
                        help="Quix checkpoint size in messages (its sink's batch)")
    parser.add_argument("--bare-grouping", choices=("auto", "message", "batch"), default="auto",
                        help="bare loop: one AMQP message per session or per batch and "
                             "partition (auto: the shape of the worker's results)")
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--baseline-seconds", type=float, default=20.0,
                        help="how long the seed part runs")
    parser.add_argument("--out", "--json", dest="out", type=Path,
                        help="also write the figures here (JSON)")
    args = parser.parse_args()

    from pipelines.data.synth import generate_sessions
    from serving.replay import replay

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
    run = Run(args, settings, queue, tmp, tag)
    figures = run.figures
    figures["run"] = {"parts": args.parts, "model": args.model, "queue": args.queue,
                      "batch_size": args.batch_size, "partitions": settings.topic_partitions,
                      "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                      # the worker processes load the same build (pipelines.native)
                      "stations_compiled": native.is_compiled(station_context),
                      "cpu_pressure_before": cpu_pressure(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t_run = time.monotonic()
    # a stopped benchmark still tears down its broker, children and RabbitMQ objects
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.up(only=("kafka",))
        figures["run"]["champion"] = train_champion(settings, args.model)
        declare_queue(settings, queue, args.queue)
        run.records, _ = generate_sessions(20_000, seed=1, anomaly_rate=0.02)
        throughput_parts = {"evguard", "quix", "bare", "scaleout"} & set(args.parts)
        if throughput_parts:
            rounds = max(1, args.sessions // len(run.records))
            t = time.monotonic()
            produced = replay(settings, run.records, repeat=rounds)
            run.n = produced.delivered
            figures["run"]["sessions"] = run.n
            figures["run"]["prefill_rate"] = run.n / (time.monotonic() - t)
            print(f"pre-filled {run.n} sessions at {figures['run']['prefill_rate']:.0f}/s",
                  flush=True)
        for part in args.parts:
            print(f"[{part}] running ...", flush=True)
            t = time.monotonic()
            try:
                figures[part] = getattr(run, f"part_{part}")()
            except Exception as exc:  # noqa: BLE001 - a failed part must not lose the others
                figures[part] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"[{part}] FAILED after {time.monotonic() - t:.0f} s: "
                      f"{figures[part]['error']}", flush=True)
                purge(settings, queue)  # what it published must not count for the next part
                continue
            if part == "latency":
                lat = figures[part]
                line = (f"p50/p99 to confirm {lat['confirm_p50_ms']:.0f}/"
                        f"{lat['confirm_p99_ms']:.0f} ms, at a consumer "
                        f"{lat['consumer_p50_ms'] or float('nan'):.0f}/"
                        f"{lat['consumer_p99_ms'] or float('nan'):.0f} ms")
            elif part == "scaleout":
                line = "; ".join(f"x{k} {f['throughput_steady']:,.0f}/s" if "error" not in f
                                 else f"x{k} failed" for k, f in figures[part].items())
            else:
                line = summary(figures[part])
            print(f"[{part}] done in {time.monotonic() - t:.0f} s: {line}", flush=True)
        figures["race"] = race_table(figures)
        figures["run"]["seconds"] = time.monotonic() - t_run
        figures["run"]["load_after"] = os.getloadavg()
        figures["run"]["cpu_pressure_after"] = cpu_pressure()
    finally:
        for proc in run.children:
            if proc.poll() is None:
                proc.kill()
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
    if figures.get("race"):
        print(f"\n{'part':<14}{'sessions/s':>12}{'x evguard':>11}  results")
        for row in figures["race"]:
            ratio = row["ratio_to_evguard"]
            print(f"{row['part']:<14}{row['sessions_per_s']:>12,.0f}"
                  f"{ratio if ratio is not None else float('nan'):>11.3f}  "
                  f"{'complete' if row['results_complete'] else 'INCOMPLETE'}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
